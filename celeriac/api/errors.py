"""API errors as Flower sends them: plain-text bodies with the status, never a traceback."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response


class APIError(Exception):
    """Raised anywhere in a handler; turned into ``status`` with ``message`` as the body."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def text_error(status: int, message: str = "") -> Response:
    return Response(message, status_code=status, media_type="text/plain; charset=UTF-8")


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return text_error(exc.status, exc.message)
