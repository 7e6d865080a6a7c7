"""Every value a request brings, checked before anything uses it: a bad one is answered 400
with a message that says what is wrong, never passed on to become a 500 deeper down (a NUL in a
query parameter, an impossible date, a number of 5,000 digits).

Forms are read here too, with a size cap, as application/x-www-form-urlencoded only (what the
console's own forms send): no multipart uploads to spool to disk.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from datetime import date

from starlette.requests import ClientDisconnect, Request

MAX_FORM_BYTES = 64 * 1024
MAX_FORM_FIELDS = 20
MAX_ID = 2**63 - 1  # bigint
# C0 controls, DEL and C1 controls. A reason may hold tabs and line breaks; nothing else may.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_EXCEPT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DIGITS = re.compile(r"^[0-9]{1,19}$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?$")


class BadInput(ValueError):
    """A request value that is malformed; `str()` is the message the client gets (400)."""

    status_code = 400


class PayloadTooLarge(BadInput):
    status_code = 413


def text(value: object, name: str, *, max_length: int, lines: bool = False) -> str:
    """A text value without control characters (line breaks too, unless `lines`)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadInput(f"{name}: expected text")
    if len(value) > max_length:
        raise BadInput(f"{name}: at most {max_length} characters")
    if (_CONTROL_EXCEPT_LINES if lines else _CONTROL).search(value):
        raise BadInput(f"{name}: control characters (such as NUL) are not allowed")
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
        raise BadInput(f"{name}: not valid UTF-8")
    return value


def optional_text(value: object, name: str, *, max_length: int = 200) -> str | None:
    return text(value, name, max_length=max_length) or None


def optional_number(value: object, name: str, *, low: float, high: float) -> float | None:
    """A decimal number in [low, high], or None when empty."""
    raw = text(value, name, max_length=32)
    if not raw:
        return None
    if not _NUMBER.match(raw):
        raise BadInput(f"{name}: not a number")
    number = float(raw)
    if not math.isfinite(number) or not low <= number <= high:
        raise BadInput(f"{name}: must be between {low:g} and {high:g}")
    return number


def optional_day(value: object, name: str) -> str | None:
    """A calendar date YYYY-MM-DD that exists, or None when empty."""
    raw = text(value, name, max_length=10)
    if not raw:
        return None
    if not _DAY.match(raw):
        raise BadInput(f"{name}: expected a date as YYYY-MM-DD")
    try:
        return date.fromisoformat(raw).isoformat()
    except ValueError:
        raise BadInput(f"{name}: {raw} is not a date") from None


def record_id(value: object, name: str) -> int:
    """A database id: a whole number from 1 to 2^63 - 1, given as plain digits."""
    raw = value if isinstance(value, str) else ""
    if not _DIGITS.match(raw) or not 1 <= int(raw) <= MAX_ID:
        raise BadInput(f"{name}: expected a whole number from 1 to {MAX_ID}")
    return int(raw)


def choice(value: object, name: str, allowed: tuple[str, ...]) -> str:
    raw = text(value, name, max_length=64)
    if raw not in allowed:
        raise BadInput(f"{name}: expected one of {', '.join(allowed)}")
    return raw


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded body as {name: value} (the last value of a repeated name), at most
    MAX_FORM_BYTES and MAX_FORM_FIELDS. Values are checked by the handler that uses them."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise BadInput("send the form as application/x-www-form-urlencoded")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and len(declared) < 20 and int(declared) > MAX_FORM_BYTES:
        raise PayloadTooLarge(f"a form may hold at most {MAX_FORM_BYTES} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise PayloadTooLarge(f"a form may hold at most {MAX_FORM_BYTES} bytes")
    except ClientDisconnect:
        # An ordinary event (a closed tab, a lost network), not an error to log with a
        # traceback; the 400 goes nowhere and the server logs nothing for it.
        raise BadInput("the client went away before its form was sent") from None
    try:
        pairs = urllib.parse.parse_qsl(
            bytes(body).decode("ascii"),
            keep_blank_values=True,
            strict_parsing=False,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except UnicodeDecodeError:
        raise BadInput("the form must be percent-encoded UTF-8") from None
    except ValueError:
        raise BadInput(f"a form may hold at most {MAX_FORM_FIELDS} fields") from None
    return dict(pairs)
