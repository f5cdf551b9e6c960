"""Who may call celeriac, and what they may do. Secure by default: with no credentials
configured nothing but ``/healthcheck`` answers, unless celeriac was explicitly started with
``--unauthenticated-api``.

Identities come from HTTP basic auth (``--basic-auth``, Flower's format, and
``--basic-auth-read-only``), from API bearer tokens (``--api-token NAME:TOKEN[:read-only]``), or
from an OpenID Connect sign-in's session cookie (celeriac/oidc.py). With OIDC configured, a
browser asking for a page without credentials is redirected to the sign-in; every other
request without credentials still gets 401.
An admin may do everything; a read-only identity may read everything and gets 403 on every
request that could change something (any method but GET, HEAD and OPTIONS), before any handler
runs. Secrets are compared in constant time, as digests, against every configured secret, so
neither a match's position nor a secret's length shows in the timing; and no secret is ever
written into a response or a log line.

Browsers send basic-auth credentials on their own, so a state-changing request that a browser
marks as coming from another site is refused (CSRF): ``Sec-Fetch-Site``, or failing that
``Origin`` against ``Host``. Bearer tokens are never sent by a browser on its own and are exempt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from celeriac import oidc
from celeriac.settings import Settings

log = logging.getLogger("celeriac.auth")

#: Paths that answer without credentials (load balancers and process managers poll them).
PUBLIC_PATHS = frozenset({"/healthcheck"})
METRICS_PATH = "/metrics"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Where the request's identity is left for handlers and pages.
SCOPE_KEY = "celeriac.identity"

NO_AUTH_CONFIGURED = (
    "Unauthenticated access is disabled: start celeriac with --basic-auth user:password "
    "or --api-token NAME:TOKEN, or with --unauthenticated-api (FLOWER_UNAUTHENTICATED_API=true) "
    "to allow it"
)
AUTH_REQUIRED = "Authentication required"
BAD_CREDENTIALS = "Invalid credentials"
CROSS_SITE = "Cross-site request refused"


@dataclass(frozen=True)
class Identity:
    """Who is calling: ``kind`` is ``basic``, ``token``, ``oidc`` or ``anonymous``."""

    name: str
    kind: str
    read_only: bool = False


ANONYMOUS = Identity("anonymous", "anonymous")


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


class Credentials:
    """The configured secrets, kept as digests and compared in constant time."""

    def __init__(self, settings: Settings) -> None:
        self.users: list[tuple[bytes, bytes, Identity]] = [
            (_digest(user), _digest(password), Identity(user, "basic", read_only))
            for pairs, read_only in ((settings.basic_auth, False),
                                     (settings.basic_auth_read_only, True))
            for user, password in pairs
        ]
        self.tokens: list[tuple[bytes, Identity]] = [
            (_digest(t.token), Identity(t.name, "token", t.read_only)) for t in settings.api_tokens
        ]

    def __bool__(self) -> bool:
        return bool(self.users or self.tokens)

    def basic(self, user: str, password: str) -> Identity | None:
        u, p = _digest(user), _digest(password)
        found = None
        for du, dp, identity in self.users:  # every entry, no early exit
            if hmac.compare_digest(du, u) & hmac.compare_digest(dp, p) and found is None:
                found = identity
        return found

    def bearer(self, token: str) -> Identity | None:
        t = _digest(token)
        found = None
        for dt, identity in self.tokens:
            if hmac.compare_digest(dt, t) and found is None:
                found = identity
        return found


def describe(settings: Settings) -> str:
    """One log line on who may get in: user and token names, never a secret."""
    parts = []
    for label, pairs in (("admin", settings.basic_auth),
                         ("read-only", settings.basic_auth_read_only)):
        if pairs:
            parts.append(f"basic auth ({label}): {', '.join(u for u, _ in pairs)}")
    for label, read_only in (("admin", False), ("read-only", True)):
        names = [t.name for t in settings.api_tokens if t.read_only is read_only]
        if names:
            parts.append(f"API tokens ({label}): {', '.join(names)}")
    if settings.oidc_issuer:
        who = [f"e-mails matching {settings.auth!r}"] if settings.auth else []
        who += [f"@{d}" for d in settings.oidc_domains]
        role = ("admins: e-mails matching " + repr(settings.oidc_admins) if settings.oidc_admins
                else "read-only" if settings.oidc_read_only else "admins")
        parts.append(f"OpenID Connect sign-in via {settings.oidc_issuer} for "
                     f"{' or '.join(who)} ({role})")
        if not settings.cookie_secret:
            parts.append("sign-ins end when celeriac restarts (no --cookie-secret)")
    if not parts:
        if settings.unauthenticated_api:
            return "auth: none, everyone is admin (--unauthenticated-api)"
        return "auth: no credentials configured, every request but /healthcheck is refused"
    public = "; /metrics is public" if settings.metrics_public else ""
    return "auth: " + "; ".join(parts) + public


class AuthMiddleware:
    """Authenticates every HTTP request, refuses read-only identities anything but reads, and
    refuses cross-site state changes; the identity is left in ``scope["celeriac.identity"]``.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.credentials = Credentials(settings)
        self.login = oidc.Policy(settings) if settings.oidc_issuer else None
        self.configured = bool(self.credentials) or self.login is not None
        self.prefix = settings.prefix
        self.open_api = settings.unauthenticated_api
        self.public = PUBLIC_PATHS | ({METRICS_PATH} if settings.metrics_public else set())
        if self.login is not None:
            self.public |= oidc.PATHS
        challenges = []
        if self.credentials.users:
            challenges.append((b"www-authenticate", b'Basic realm="celeriac", charset="UTF-8"'))
        if self.credentials.tokens:
            challenges.append((b"www-authenticate", b'Bearer realm="celeriac"'))
        self.challenges = challenges

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if self.prefix and path.startswith(self.prefix):
            path = path[len(self.prefix) :] or "/"
        if self.login is not None:
            scope[oidc.POLICY_KEY] = self.login
        local = cluster_local(path)  # /clusters/NAME/metrics is public as /metrics is
        if local in self.public:
            await self.app(scope, receive, send)
            return
        identity, presented = self._identify(scope)
        if identity is None:
            if self.login is not None and not presented and _wants_page(scope, local):
                location = oidc.login_redirect(self.prefix, path, scope.get("query_string", b""))
                await _deny(send, 302, "Sign-in required", [(b"location", location.encode())])
                return
            if self.configured:
                reason = BAD_CREDENTIALS if presented else AUTH_REQUIRED
                await _deny(send, 401, reason, self.challenges)
            else:
                await _deny(send, 401, NO_AUTH_CONFIGURED)
            return
        method: str = scope["method"]
        if method not in SAFE_METHODS:
            if identity.read_only:
                await _deny(send, 403, f"Read-only access: '{identity.name}' cannot change "
                                       "anything")
                return
            if identity.kind != "token" and _cross_site(scope):
                log.warning("refused a cross-site %s %s", method, path)
                await _deny(send, 403, CROSS_SITE)
                return
        scope[SCOPE_KEY] = identity
        await self.app(scope, receive, send)

    def _identify(self, scope: Scope) -> tuple[Identity | None, bool]:
        """The caller's identity (None if refused), and whether credentials were presented."""
        header = _header(scope, b"authorization")
        if header is None:
            if self.login is not None:
                email = self.login.signed_in(scope)
                if email is not None:
                    return Identity(email, "oidc", not self.login.is_admin(email)), False
            if not self.configured and self.open_api:
                return ANONYMOUS, False
            return None, False
        scheme, _, value = header.strip().partition(b" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == b"basic" and self.credentials.users:
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None, True
            user, sep, password = decoded.partition(":")
            return (self.credentials.basic(user, password) if sep else None), True
        if scheme == b"bearer" and self.credentials.tokens:
            try:
                token = value.decode("ascii")
            except UnicodeDecodeError:
                return None, True
            return self.credentials.bearer(token), True
        if not self.configured and self.open_api:
            return ANONYMOUS, False  # stray credentials on an open celeriac are ignored
        return None, True


def cluster_local(path: str) -> str:
    """A path within one of several clusters (``/clusters/NAME/rest``) as ``/rest``; sign-in
    pages are the root's only, so they stay as they are."""
    if not path.startswith("/clusters/"):
        return path
    rest = path[len("/clusters/"):].partition("/")[2]
    local = f"/{rest}"
    return path if local in oidc.PATHS else local


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((v for k, v in scope["headers"] if k == name), None)


def _wants_page(scope: Scope, path: str) -> bool:
    """A browser navigating to a UI page (not the API, /metrics or a script's fetch)."""
    if scope["method"] not in ("GET", "HEAD") or path.startswith("/api/") or path == METRICS_PATH:
        return False
    accept = _header(scope, b"accept") or b""
    return b"text/html" in accept


def _cross_site(scope: Scope) -> bool:
    """Whether a browser says this request comes from another site (or another origin)."""
    fetch_site = _header(scope, b"sec-fetch-site")
    if fetch_site is not None:
        return fetch_site.strip().lower() not in (b"same-origin", b"none")
    origin = _header(scope, b"origin")
    if origin is None:
        return False  # not a browser, or one too old to say: nothing to compare
    try:
        origin_host = urlsplit(origin.decode("latin-1").strip()).netloc.lower()
    except ValueError:
        return True
    if not origin_host:
        return True  # "Origin: null" (sandboxed frames, file:// pages)
    hosts = {h.decode("latin-1").strip().lower()
             for h in (_header(scope, b"host"), _header(scope, b"x-forwarded-host")) if h}
    return origin_host not in hosts


async def _deny(
    send: Send, status: int, reason: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = reason.encode("utf-8")
    headers = [
        (b"content-type", b"text/plain; charset=UTF-8"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
