"""Argument parsing with Flower's error texts, shared by every handler.

Arguments come from the query string or, for POSTs, from a form body; the first wins.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from starlette.datastructures import FormData
from starlette.requests import Request

from celeriac.api.errors import APIError

T = TypeVar("T")

_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


async def arguments(request: Request) -> dict[str, str]:
    """Query arguments merged with form fields of a urlencoded/multipart body."""
    merged: dict[str, str] = {}
    ctype = request.headers.get("content-type", "")
    if request.method == "POST" and (
        ctype.startswith("application/x-www-form-urlencoded") or ctype.startswith("multipart/")
    ):
        try:
            form: FormData = await request.form()
        except Exception:
            raise APIError(400, "Invalid form body") from None
        merged.update({k: v for k, v in form.items() if isinstance(v, str)})
    merged.update(request.query_params)
    return merged


def get_str(args: dict[str, str], name: str, *, required: bool = False) -> str | None:
    value = args.get(name)
    if required and not value:
        raise APIError(400, f"Missing argument {name}")
    return value if value not in (None, "") else None


def get_int(args: dict[str, str], name: str, default: int | None = None) -> int | None:
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise APIError(400, f"Invalid argument '{raw}' of type 'int'") from None


def get_float(args: dict[str, str], name: str, default: float | None = None) -> float | None:
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise APIError(400, f"Invalid argument '{raw}' of type 'float'") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise APIError(400, f"Invalid argument '{raw}' of type 'float'")
    return value


def get_bool(args: dict[str, str], name: str, default: bool = False) -> bool:
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    try:
        return _BOOL[raw.strip().lower()]
    except KeyError:
        raise APIError(400, f"Invalid argument '{raw}' of type 'bool'") from None


async def json_object(request: Request) -> dict[str, Any]:
    """The JSON body as an object; an empty body is ``{}``."""
    body = await request.body()
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise APIError(400, str(exc)) from None
    if not isinstance(value, dict):
        raise APIError(400, "invalid options")
    return value
