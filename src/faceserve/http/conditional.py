"""RFC 9110 conditional requests and byte ranges, as small pure functions over header values.

Preconditions are evaluated in the order of RFC 9110 section 13.2.2: If-Match, If-Unmodified-Since (only
without If-Match), If-None-Match, If-Modified-Since (only without If-None-Match), then If-Range and Range.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

from ..inputs import is_ascii_digits


def _tags(header: str) -> list[str]:
    """Entity tags of a list header such as If-None-Match: 'W/"a", "b"' -> ['W/"a"', '"b"']."""
    tags, current, quoted = [], "", False
    for ch in header:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            tags.append(current.strip())
            current = ""
        else:
            current += ch
    tags.append(current.strip())
    return [t for t in tags if t]


def _opaque(tag: str) -> str:
    return tag.removeprefix("W/")


def strong_match(header: str, etag: str) -> bool:
    """If-Match semantics: '*' or a non-weak tag identical to ours (ours is always strong)."""
    if header == etag:
        return True  # one tag, ours: the usual case, without parsing
    tags = _tags(header)
    return "*" in tags or any(not t.startswith("W/") and t == etag for t in tags)


def weak_match(header: str, etag: str) -> bool:
    """If-None-Match semantics: '*' or a tag whose opaque part equals ours, weak or not."""
    if header == etag:
        return True  # a revalidation of what we sent: the usual case, without parsing
    tags = _tags(header)
    return "*" in tags or any(_opaque(t) == etag for t in tags)


def parse_http_date(value: str) -> datetime | None:
    if not value.isascii():  # the email parser's int() would read other scripts' digits
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo is not None else None


def evaluate(method: str, headers: Mapping[str, str], etag: str, last_modified: datetime) -> int:
    """200 to serve, 304 or 412 to answer without a body. last_modified is whole seconds, UTC."""
    if_match = headers.get("If-Match")
    if if_match is not None:
        if not strong_match(if_match, etag):
            return 412
    else:
        unmodified_since = headers.get("If-Unmodified-Since")
        since = parse_http_date(unmodified_since) if unmodified_since is not None else None
        if since is not None and last_modified > since:
            return 412
    if_none_match = headers.get("If-None-Match")
    if if_none_match is not None:
        if weak_match(if_none_match, etag):
            return 304 if method in ("GET", "HEAD") else 412
    elif method in ("GET", "HEAD"):
        modified_since = headers.get("If-Modified-Since")
        since = parse_http_date(modified_since) if modified_since is not None else None
        if since is not None and last_modified <= since:
            return 304
    return 200


# RFC 9110 optional whitespace; str.strip() would also take Unicode spaces such as U+00A0
_OWS = " \t"


class Unsatisfiable(Exception):
    pass


def range_applies(headers: Mapping[str, str], etag: str, last_modified: datetime) -> bool:
    """If-Range: a strong tag equal to ours, or a date equal to Last-Modified; otherwise send it all."""
    if_range = headers.get("If-Range")
    if if_range is None:
        return True
    if_range = if_range.strip()
    if if_range.startswith(('"', "W/")):
        return not if_range.startswith("W/") and if_range == etag
    date = parse_http_date(if_range)
    return date is not None and date == last_modified


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One 'bytes=' range -> (first, last) inclusive, clipped to size. None: serve the whole file (no header,
    another unit, several ranges, or a malformed value, all of which RFC 9110 lets us ignore).
    Raises Unsatisfiable when the only range lies past the end."""
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip(_OWS).lower() != "bytes" or "," in spec:
        return None
    first_raw, dash, last_raw = spec.strip(_OWS).partition("-")
    first_raw, last_raw = first_raw.strip(_OWS), last_raw.strip(_OWS)
    # ASCII digits only (RFC 9110 DIGIT): anything else makes the range invalid, and an invalid one is ignored
    if not dash or not all(is_ascii_digits(raw) or raw == "" for raw in (first_raw, last_raw)):
        return None
    if first_raw == "":
        if last_raw == "":
            return None
        suffix = int(last_raw)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - suffix), size - 1
    first = int(first_raw)
    last = int(last_raw) if last_raw else size - 1
    if last_raw and last < first:
        return None
    if first >= size:
        raise Unsatisfiable
    return first, min(last, size - 1)
