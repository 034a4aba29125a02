"""Untrusted text from requests: numbers in ASCII digits, text that Postgres and UTF-8 can keep, bounded JSON.

Every number, id, name and JSON body a client sends goes through one of these, so a class of bad input is
refused (or cleaned) in one place instead of surfacing as a 500 wherever it first meets int(), Postgres or
the json module:
- Python's int(), float() and str.isdigit() accept other scripts' digits ('٣' is 3), superscripts (isdigit
  but not int), '_' separators and surrounding Unicode spaces; HTTP and our API mean ASCII digits only.
- Postgres text cannot hold NUL, and UTF-8 has no lone surrogates (which JSON '\\ud800' escapes and raw
  non-UTF-8 header bytes, decoded with surrogateescape, both produce).
- json.loads recurses once per nesting level: a body of 100 000 '[' raises RecursionError.
Ids are the exception to "ASCII only": parse_id reads every spelling of a number as that number, so that
whatever decides access and whatever does the work can never see two different ids in one request.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from .errors import BadRequest

_ASCII_INT = re.compile(r"[0-9]+")
# decimal notation, ASCII only: 0.5, .5, 5, 1e-3 (no nan, inf, '_' or Unicode digits)
_ASCII_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# longer than any value we accept: refused before int() or float() spends time on it
_MAX_NUMBER_CHARS = 32
# ids are Postgres bigints
MAX_ID = 2**63 - 1
_MAX_ID_DIGITS = len(str(MAX_ID))

# JSON strings (escapes included) and brackets: what depth is measured over, strings being opaque
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


def is_ascii_digits(raw: str) -> bool:
    """One or more of 0-9 and nothing else (str.isdigit() also says yes to '٣' and '²')."""
    return _ASCII_INT.fullmatch(raw) is not None


def parse_id(raw: str) -> int | None:
    """An id as a client may spell it: the number for every spelling of it (leading zeros to any length, a
    '+', spaces around it, other scripts' decimal digits), None for what is no id (anything else, or more
    than a bigint). The one id parser: the access guard and every handler read ids through it."""
    if raw.isascii() and raw.isdigit():  # the usual spelling (every image request): no walk per character
        digits = raw.lstrip("0")
    else:
        text = raw.strip().removeprefix("+")
        digits = "".join(str(unicodedata.decimal(ch, -1)) for ch in text).lstrip("0")
        if not text or "-" in digits:  # -1 marks a character that is no decimal digit
            return None
    if len(digits) > _MAX_ID_DIGITS:
        return None
    value = int(digits or "0")
    return value if value <= MAX_ID else None


def ascii_int(raw: str, name: str, low: int, high: int) -> int:
    """An integer written in ASCII digits (no sign, space or '_'), within [low, high]; else BadRequest."""
    if len(raw) > _MAX_NUMBER_CHARS or not is_ascii_digits(raw):
        raise BadRequest(f"{name} must be an integer in ASCII digits")
    value = int(raw)
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}")
    return value


def ascii_number(raw: str, name: str, low: float, high: float) -> float:
    """A decimal number in ASCII (0.5, .5, 1e-3), within [low, high]; else BadRequest."""
    if len(raw) > _MAX_NUMBER_CHARS or _ASCII_DECIMAL.fullmatch(raw) is None:
        raise BadRequest(f"{name} must be a number in ASCII digits")
    value = float(raw)
    if not low <= value <= high:  # also refuses the inf that 1e999 becomes
        raise BadRequest(f"{name} must be between {low} and {high}")
    return value


def is_storable(value: str) -> bool:
    """Whether Postgres can keep this text as it is: valid UTF-8 (no lone surrogates) and no NUL."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def storable_text(value: str, name: str) -> str:
    """Text that goes to Postgres (a lookup or a row) as the client sent it, or BadRequest saying why not."""
    if not is_storable(value):
        raise BadRequest(f"{name} must be UTF-8 text without NUL characters")
    return value


def cleaned_text(value: str) -> str:
    """What can be kept of a client's text that is informational only (a file name): bytes that were not UTF-8
    become U+FFFD, control characters (NUL included) are dropped. Valid printable text is unchanged."""
    try:
        # header bytes that were not UTF-8 arrive as surrogateescape'd U+DC80-U+DCFF: back to those bytes
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogatepass")  # other lone surrogates (JSON escapes, %-decoding)
    text = raw.decode("utf-8", "replace")
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cc")


def json_depth(data: bytes) -> int:
    """Deepest nesting of arrays and objects, counted without parsing (strings are skipped whole)."""
    depth = deepest = 0
    for bracket in _JSON_BRACKET.finditer(_JSON_STRING.sub(b'""', data)):
        if bracket.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(data: bytes, max_bytes: int, max_depth: int) -> Any:
    """A JSON document of at most max_bytes and max_depth levels, as UTF-8 JSON (RFC 8259) allows it;
    BadRequest for anything else. Checked before parsing, so no input makes the parser recurse deeply."""
    if len(data) > max_bytes:
        raise BadRequest(f"a JSON body may have at most {max_bytes} bytes")
    if json_depth(data) > max_depth:
        raise BadRequest(f"a JSON body may nest at most {max_depth} levels")
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest("body must be UTF-8 JSON") from None
