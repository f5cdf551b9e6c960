"""Sign-in to the UI with OpenID Connect: any standard provider, found by discovery.

The protocol is Authlib's (discovery, ``state``, ``nonce``, PKCE, the code exchange and the ID
token's signature, issuer, audience and expiry checks); celeriac decides only who may come in:
e-mail addresses that fully match ``--auth`` (Flower's option, a regular expression) or whose
domain is in ``--oidc-domains``. A sign-in is kept in a signed, HttpOnly, SameSite=Lax cookie
(Secure on https) holding the e-mail address and when the sign-in ends; the auth middleware
(celeriac/auth.py) turns it into an identity on every request, checking the rules again, so a
narrowed ``--auth`` takes effect on the next request. Without ``--cookie-secret`` the key is
random per start, and every sign-in ends when celeriac restarts.

Browsers are sent here by the auth middleware: a page asked for without credentials is
answered with a redirect to :data:`LOGIN_PATH`; API calls keep getting 401.
"""

from __future__ import annotations

import html
import logging
import re
import secrets
import time
from typing import Any
from urllib.parse import quote

from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from celeriac.settings import Settings

log = logging.getLogger("celeriac.oidc")

LOGIN_PATH = "/login"
CALLBACK_PATH = "/oauth2/callback"
LOGOUT_PATH = "/logout"
#: Paths that must answer before anyone has signed in.
PATHS = frozenset({LOGIN_PATH, CALLBACK_PATH, LOGOUT_PATH})
SESSION_COOKIE = "celeriac_session"
#: The session key holding the signed-in user: ``{"email", "exp": unix time, "sid"}``.
USER_KEY = "user"
#: Where the auth middleware leaves its :class:`Policy` for the sign-in routes.
POLICY_KEY = "celeriac.oidc"
NEXT_KEY = "next"
PROVIDER_NAME = "oidc"

PAGE_CSP = "default-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"


class Policy:
    """Who may sign in (``--auth``, ``--oidc-domains``) and who of them is an admin."""

    def __init__(self, settings: Settings) -> None:
        self.allowed = re.compile(settings.auth, re.IGNORECASE) if settings.auth else None
        self.domains = frozenset(settings.oidc_domains)
        self.admins = (re.compile(settings.oidc_admins, re.IGNORECASE)
                       if settings.oidc_admins else None)
        self.read_only = settings.oidc_read_only
        self.max_age = settings.session_max_age
        #: Signed-out sessions (id -> end), refused until they would have ended anyway: a
        #: copy of the cookie taken before signing out does not get back in. Kept in memory,
        #: so per process; a restart without --cookie-secret ends every session anyway.
        self.revoked: dict[str, float] = {}

    def start(self, session: dict[str, Any], email: str) -> None:
        """Sign ``email`` in: a fresh session (no fixation) with its own id and end."""
        session.clear()
        session[USER_KEY] = {"email": email, "exp": int(time.time() + self.max_age),
                             "sid": secrets.token_urlsafe(16)}

    def end(self, session: dict[str, Any]) -> str | None:
        """Sign out: forget the session and refuse its id from now on; the e-mail, if any."""
        user = session.get(USER_KEY)
        session.clear()
        if not isinstance(user, dict):
            return None
        now = time.time()
        self.revoked = {sid: exp for sid, exp in self.revoked.items() if exp > now}
        if isinstance(user.get("sid"), str) and isinstance(user.get("exp"), int | float):
            self.revoked[user["sid"]] = user["exp"]
        email = user.get("email")
        return email if isinstance(email, str) else None

    def allows(self, email: str) -> bool:
        if self.allowed is not None and self.allowed.fullmatch(email):
            return True
        _, at, domain = email.rpartition("@")
        return bool(at) and domain.lower() in self.domains

    def is_admin(self, email: str) -> bool:
        if self.admins is not None:
            return self.admins.fullmatch(email) is not None
        return not self.read_only

    def signed_in(self, scope: Scope) -> str | None:
        """The e-mail of the session's user if the sign-in holds and the rules still allow it;
        a session that no longer holds is cleared (its cookie is deleted)."""
        session = scope.get("session")
        if not session:
            return None
        user = session.get(USER_KEY)
        if not isinstance(user, dict):
            user = {}
        email, exp, sid = user.get("email"), user.get("exp"), user.get("sid")
        if (isinstance(email, str) and isinstance(exp, int | float) and exp > time.time()
                and isinstance(sid, str) and sid not in self.revoked and self.allows(email)):
            return email
        if user is not None:
            session.pop(USER_KEY, None)
        return None


class Sessions:
    """Starlette's signed-cookie sessions, with the ``Secure`` flag on https requests (TLS
    here, or ``X-Forwarded-Proto: https`` from a trusted proxy) and only there, so the same
    celeriac works behind a TLS proxy and on plain http on this machine."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        secret = settings.cookie_secret or secrets.token_urlsafe(32)
        common: dict[str, Any] = {
            "secret_key": secret,
            "session_cookie": SESSION_COOKIE,
            "max_age": int(settings.session_max_age),
            "path": settings.prefix or "/",
            "same_site": "lax",
        }
        self.plain = SessionMiddleware(app, https_only=False, **common)
        self.secure = SessionMiddleware(app, https_only=True, **common)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        https = scope.get("scheme") in ("https", "wss")
        await (self.secure if https else self.plain)(scope, receive, send)


def routes_for(settings: Settings) -> list[BaseRoute]:
    """The sign-in routes, when OpenID Connect is configured."""
    return list(routes) if settings.oidc_issuer else []


def middleware(settings: Settings) -> list[Middleware]:
    """The session cookie, outside the auth middleware that reads it (when configured)."""
    return [Middleware(Sessions, settings=settings)] if settings.oidc_issuer else []


def _client(request: Request) -> Any:
    """The app's Authlib client, made at the first sign-in (and kept)."""
    state = request.app.state
    if getattr(state, "oidc_client", None) is None:
        state.oidc_client = create_client(state.settings)
    return state.oidc_client


def create_client(settings: Settings) -> Any:
    """The Authlib client for the provider; discovery happens at the first sign-in, so a
    provider that is down delays sign-ins, never celeriac's start."""
    from authlib.integrations.starlette_client import OAuth

    for name in ("authlib", "httpx", "httpcore"):  # at debug they log PKCE verifiers, codes
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    oauth = OAuth()
    issuer = (settings.oidc_issuer or "").rstrip("/")
    return oauth.register(
        PROVIDER_NAME,
        client_id=settings.oidc_client_id,
        client_secret=settings.oidc_client_secret,
        server_metadata_url=f"{issuer}/.well-known/openid-configuration",
        client_kwargs={"scope": settings.oidc_scopes, "code_challenge_method": "S256",
                       "timeout": 10.0},
    )


def login_redirect(prefix: str, path: str, query: bytes) -> str:
    """Where a browser without a session is sent: the login page, remembering the page."""
    target = path + (f"?{query.decode('latin-1')}" if query else "")
    return f"{prefix}{LOGIN_PATH}?next={quote(target, safe='/')}"


def _local_path(value: str | None) -> str:
    """``next`` as a path on this celeriac, never another site (``//evil``, ``/\\evil``)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    if any(ord(c) < 0x20 for c in value):
        return "/"
    return value


def _prefix(request: Request) -> str:
    prefix: str = request.app.state.settings.prefix
    return prefix


def _page(request: Request, title: str, text: str, status_code: int,
          link: tuple[str, str] | None = None) -> HTMLResponse:
    """A small page of its own: shown to people not signed in, so it loads no UI asset."""
    action = ""
    if link is not None:
        href, label = link
        action = f'<p><a href="{html.escape(_prefix(request) + href)}">{html.escape(label)}</a></p>'
    body = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)} · celeriac</title></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>{action}</body></html>")
    return HTMLResponse(body, status_code=status_code,
                        headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store"})


async def login(request: Request) -> Response:
    """Start a sign-in: remember the page asked for, send the browser to the provider."""
    import httpx

    for key in [k for k in request.session if k.startswith("_state_")]:
        del request.session[key]  # one pending sign-in at a time: the cookie stays small
    request.session[NEXT_KEY] = _local_path(request.query_params.get("next"))
    client = _client(request)
    callback_url = request.app.state.settings.oidc_redirect_uri or request.url_for("oidc_callback")
    try:
        return await client.authorize_redirect(request, callback_url)  # type: ignore[no-any-return]
    except (httpx.HTTPError, ValueError, KeyError, RuntimeError) as exc:
        log.warning("cannot start a sign-in: the OpenID provider did not answer discovery "
                    "(%s)", type(exc).__name__)
        return _page(request, "Sign-in unavailable",
                     "The sign-in provider cannot be reached. Try again in a moment.", 502,
                     (LOGIN_PATH, "Try again"))


async def callback(request: Request) -> Response:
    """The provider's answer: verify it (Authlib), then let the user in if the rules allow."""
    import httpx
    from authlib.common.errors import AuthlibBaseError
    from authlib.integrations.base_client import OAuthError
    from joserfc.errors import JoseError

    client = _client(request)
    policy: Policy = request.scope[POLICY_KEY]
    try:
        token = await client.authorize_access_token(request)
        claims = dict(token.get("userinfo") or {})
        if claims and not isinstance(claims.get("email"), str):
            claims.update(await client.userinfo(token=token))
    except OAuthError as exc:  # the provider's error, a state mismatch, a refused code
        error = exc.error or type(exc).__name__
        log.warning("sign-in failed: %s", error)
        if error == "access_denied":
            return _page(request, "Sign-in refused", "The provider did not sign you in.", 403,
                         (LOGIN_PATH, "Try again"))
        return _page(request, "Sign-in failed",
                     "The sign-in could not be completed (it may have expired, or been started "
                     "in another browser).", 400, (LOGIN_PATH, "Sign in again"))
    except (AuthlibBaseError, JoseError, ValueError, KeyError, TypeError) as exc:
        log.warning("sign-in failed: the provider's ID token did not verify (%s)",
                    type(exc).__name__)
        return _page(request, "Sign-in failed", "The provider's answer could not be verified.",
                     400, (LOGIN_PATH, "Sign in again"))
    except httpx.HTTPError as exc:
        log.warning("sign-in failed: the OpenID provider did not answer (%s)",
                    type(exc).__name__)
        return _page(request, "Sign-in unavailable",
                     "The sign-in provider cannot be reached. Try again in a moment.", 502,
                     (LOGIN_PATH, "Try again"))
    if not claims:
        log.warning("sign-in failed: the provider sent no ID token")
        return _page(request, "Sign-in failed", "The provider sent no ID token.", 400,
                     (LOGIN_PATH, "Sign in again"))
    next_path = _local_path(request.session.get(NEXT_KEY))
    request.session.clear()  # a fresh session for the new user (no fixation)
    email = claims.get("email")
    if not isinstance(email, str) or not email:
        log.warning("refused a sign-in: the provider gave no e-mail address")
        return _page(request, "Access denied",
                     "The provider gave no e-mail address; celeriac needs the email scope.", 403,
                     (LOGOUT_PATH, "Sign out"))
    if claims.get("email_verified") in (False, "false"):
        log.warning("refused a sign-in of %s: e-mail address not verified", email)
        return _page(request, "Access denied",
                     f"The provider has not verified the e-mail address {email}.", 403,
                     (LOGOUT_PATH, "Sign out"))
    if not policy.allows(email):
        log.warning("refused a sign-in of %s: not allowed by --auth / --oidc-domains", email)
        return _page(request, "Access denied",
                     f"You are signed in as {email}, which may not use this celeriac. Ask its "
                     "administrators for access, or sign in with another account.", 403,
                     (LOGOUT_PATH, "Sign out"))
    policy.start(request.session, email)
    role = "admin" if policy.is_admin(email) else "read-only"
    log.info("%s signed in (%s)", email, role)
    return RedirectResponse(_prefix(request) + next_path, status_code=303)


async def logout(request: Request) -> Response:
    """End the sign-in here. The provider's own session lives on, so signing in again may not
    ask for a password."""
    policy: Policy = request.scope[POLICY_KEY]
    email = policy.end(request.session)
    if email is not None:
        log.info("%s signed out", email)
    return _page(request, "Signed out", "You are signed out of celeriac.", 200,
                 (LOGIN_PATH, "Sign in again"))


routes: list[BaseRoute] = [
    Route(LOGIN_PATH, login, methods=["GET", "HEAD"]),
    Route(CALLBACK_PATH, callback, methods=["GET"], name="oidc_callback"),
    Route(LOGOUT_PATH, logout, methods=["GET", "POST"]),
]
