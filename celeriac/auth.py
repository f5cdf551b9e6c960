"""Who may call the API. Secure by default: no credentials configured means no API access,
unless celeriac was explicitly started with ``--unauthenticated-api``.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from celeriac.settings import Settings

#: Paths that answer without credentials (load balancers and process managers poll them).
PUBLIC_PATHS = frozenset({"/healthcheck"})

NO_AUTH_CONFIGURED = (
    "Unauthenticated access is disabled: start celeriac with --basic-auth user:password, "
    "or with --unauthenticated-api (FLOWER_UNAUTHENTICATED_API=true) to allow it"
)


class BasicAuthMiddleware:
    """HTTP basic auth over the whole site when users are configured.

    With no users configured the site is open only when started unauthenticated: the UI shows
    the same data the API does, so it follows the same rule.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.users = dict(settings.basic_auth)
        self.prefix = settings.prefix
        self.open_api = settings.unauthenticated_api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if self.prefix and path.startswith(self.prefix):
            path = path[len(self.prefix) :] or "/"
        if path in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        if self.users:
            if self._authorized(scope):
                await self.app(scope, receive, send)
                return
            await _deny(send, "Authentication required", challenge=True)
            return
        if not self.open_api:
            await _deny(send, NO_AUTH_CONFIGURED, challenge=False)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if header is None or header[:6].lower() != b"basic ":
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, _, password = decoded.partition(":")
        expected = self.users.get(user)
        return expected is not None and hmac.compare_digest(
            expected.encode("utf-8"), password.encode("utf-8")
        )


async def _deny(send: Send, reason: str, *, challenge: bool) -> None:
    body = reason.encode("utf-8")
    headers = [
        (b"content-type", b"text/plain; charset=UTF-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    if challenge:
        headers.append((b"www-authenticate", b'Basic realm="celeriac"'))
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})
