"""Argument parsing with Flower's error texts, shared by every handler.

Arguments come from the query string or, for POSTs, from a form body; the first wins.
Form bodies (urlencoded, as the seed's examples send them, or multipart) are parsed with the
standard library: Starlette's ``request.form()`` needs the optional ``python-multipart``
package and fails without it.
"""

from __future__ import annotations

import json
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from starlette.requests import Request

from celeriac.api.errors import APIError

T = TypeVar("T")

_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


async def arguments(request: Request) -> dict[str, str]:
    """Query arguments merged with form fields of a urlencoded/multipart body."""
    merged: dict[str, str] = {}
    ctype = request.headers.get("content-type", "")
    kind = ctype.split(";", 1)[0].strip().lower()
    if request.method == "POST" and kind in ("application/x-www-form-urlencoded",
                                             "multipart/form-data"):
        body = await request.body()
        try:
            if kind == "multipart/form-data":
                merged.update(_multipart_fields(ctype, body))
            else:
                merged.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except (ValueError, UnicodeDecodeError):
            raise APIError(400, "Invalid form body") from None
    merged.update(request.query_params)
    return merged


def _multipart_fields(ctype: str, body: bytes) -> dict[str, str]:
    """The plain fields of a multipart/form-data body (uploaded files are skipped)."""
    if "boundary=" not in ctype:
        raise ValueError("multipart body without a boundary")
    head = f"Content-Type: {ctype}\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ValueError("not a multipart body")
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or part.get_filename() is not None:
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        fields[name] = payload.decode(charset)
    return fields


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
