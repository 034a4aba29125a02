"""Properties of the request parsers over generated input: numbers, ids, byte ranges, dates, text for Postgres,
file names, JSON, signatures, Accept. Each either answers or refuses with the domain's own error, never
another exception, and what it accepts is what the contract says (ASCII digits, storable text, bounded JSON).

Cases per test: 300 by default; FACESERVE_FUZZ_EXAMPLES=N runs N (fuzz_support.py)."""

from __future__ import annotations

import json
import math
import re
import unicodedata

import pytest
from fuzz_support import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from faceserve import inputs
from faceserve.core import signing
from faceserve.errors import BadRequest
from faceserve.http import conditional
from faceserve.media import renditions

EXAMPLES = 300

# pieces that broke a parser once, or could: NUL, lone surrogates, other scripts' digits, superscripts,
# Unicode spaces, '_' separators, signs, exponents, escapes
_PIECES = [
    "\x00", "\ud800", "\udcff", "\udfff", "٣", "٥", "۹", "²", "³", "①", "\u00a0", "\u2003", "\u200b", "_", "+",
    "-", " ", "\t", "0", "1", "9", "00", "e", "E", ".", "nan", "inf", "%00", "\r", "\n", "🎉", "é", ",", "=",
    "bytes", "\\", '"', "[", "{", "]", "}",
]  # fmt: skip
any_text = st.text(st.characters(exclude_categories=()))
hostile_text = st.one_of(any_text, st.lists(st.sampled_from(_PIECES), max_size=12).map("".join))
_ASCII_DIGITS = re.compile(r"[0-9]+")
# digits of several scripts, superscripts and Unicode spaces, mixed with ASCII ones
mixed_digits = st.text(st.sampled_from("0123456789٠٣٥۹०²³①\u00a0 _"), max_size=6)
range_headers = st.builds(lambda first, last: f"bytes={first}-{last}", mixed_digits, mixed_digits)
_OTHER_DIGITS = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
http_dates_in_other_digits = st.builds(
    lambda moment, mask: "".join(
        ch.translate(_OTHER_DIGITS) if ch.isdigit() and bit else ch
        for ch, bit in zip(moment.strftime("%a, %d %b %Y %H:%M:%S GMT"), mask * 40, strict=False)
    ),
    st.datetimes(),
    st.lists(st.booleans(), min_size=1, max_size=8),
)


@fuzz_settings(EXAMPLES)
@given(st.one_of(hostile_text, mixed_digits))
def test_integers_are_ascii_digits_or_refused(raw):
    try:
        value = inputs.ascii_int(raw, "n", 0, 2**63 - 1)
    except BadRequest:
        assert not (_ASCII_DIGITS.fullmatch(raw) and len(raw) <= 19)
        return
    assert _ASCII_DIGITS.fullmatch(raw) and value == int(raw)
    assert inputs.is_ascii_digits(raw)


@fuzz_settings(EXAMPLES)
@given(st.integers(0, 2**63 - 1))
def test_every_ascii_integer_in_range_is_read(value):
    assert inputs.ascii_int(str(value), "n", 0, 2**63 - 1) == value


@fuzz_settings(EXAMPLES)
@given(hostile_text)
def test_decimals_are_ascii_or_refused(raw):
    try:
        value = inputs.ascii_number(raw, "x", 0.0, 2.0)
    except BadRequest:
        return
    assert raw.isascii() and "_" not in raw and raw.strip() == raw
    assert math.isfinite(value) and 0.0 <= value <= 2.0


@fuzz_settings(EXAMPLES)
@given(st.floats(0.0, 2.0))
def test_every_decimal_in_range_is_read(value):
    assert inputs.ascii_number(repr(value), "x", 0.0, 2.0) == value


def _reference_range(first: int | None, last: int | None, size: int) -> tuple[int, int] | str | None:
    """RFC 9110 14.1.2 for one range spec, written out plainly."""
    if first is None:
        if last is None:
            return None
        if last == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - last), size - 1
    if last is not None and last < first:
        return None
    if first >= size:
        return "unsatisfiable"
    return first, size - 1 if last is None else min(last, size - 1)


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    try:
        return conditional.parse_range(header, size)
    except conditional.Unsatisfiable:
        return "unsatisfiable"


@fuzz_settings(EXAMPLES)
@given(
    st.one_of(st.none(), st.integers(0, 10**7)),
    st.one_of(st.none(), st.integers(0, 10**7)),
    st.integers(0, 10**6),
)
def test_ascii_ranges_follow_rfc_9110(first, last, size):
    header = f"bytes={'' if first is None else first}-{'' if last is None else last}"
    assert _parse_range(header, size) == _reference_range(first, last, size)


@fuzz_settings(EXAMPLES)
@given(
    st.one_of(hostile_text, hostile_text.map(lambda s: "bytes=" + s), range_headers), st.integers(0, 10**6)
)
def test_any_range_header_is_served_whole_ranged_or_416(header, size):
    result = _parse_range(header, size)
    if result is None or result == "unsatisfiable":
        if not header.isascii():
            assert result is None  # not a valid range (RFC 9110 DIGIT is ASCII): ignored, the whole file
        return
    first, last = result
    assert header.isascii() and 0 <= first <= last < size


@fuzz_settings(EXAMPLES)
@given(st.one_of(hostile_text, http_dates_in_other_digits))
def test_http_dates_parse_or_are_ignored(value):
    parsed = conditional.parse_http_date(value)
    assert parsed is None or (value.isascii() and parsed.tzinfo is not None)


@fuzz_settings(EXAMPLES)
@given(
    st.dictionaries(
        st.sampled_from(
            ["If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range"]
        ),
        hostile_text,
    )
)
def test_preconditions_always_decide(headers):
    from datetime import UTC, datetime

    moment = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
    assert conditional.evaluate("GET", headers, '"abc"', moment) in (200, 304, 412)
    assert conditional.range_applies(headers, '"abc"', moment) in (True, False)


def _postgres_refuses(value: str) -> bool:
    return "\x00" in value or any(0xD800 <= ord(ch) <= 0xDFFF for ch in value)


@fuzz_settings(EXAMPLES)
@given(hostile_text)
def test_text_for_postgres_is_kept_as_sent_or_refused(value):
    try:
        kept = inputs.storable_text(value, "name")
    except BadRequest:
        assert _postgres_refuses(value)
        return
    assert kept == value and not _postgres_refuses(value)
    kept.encode("utf-8")


@fuzz_settings(EXAMPLES)
@given(st.one_of(hostile_text, st.binary().map(lambda b: b.decode("utf-8", "surrogateescape"))))
def test_file_names_are_cleaned_to_storable_text(value):
    cleaned = inputs.cleaned_text(value)
    assert inputs.is_storable(cleaned)
    assert not any(unicodedata.category(ch) == "Cc" for ch in cleaned)
    assert inputs.cleaned_text(cleaned) == cleaned
    if not _postgres_refuses(value) and not any(unicodedata.category(ch) == "Cc" for ch in value):
        assert cleaned == value  # nothing to clean: kept as sent


@fuzz_settings(EXAMPLES)
@given(st.binary())
def test_header_bytes_that_are_utf8_survive_cleaning(raw):
    """A file name arrives as header bytes decoded with surrogateescape; what was UTF-8 in it is kept."""
    expected = "".join(ch for ch in raw.decode("utf-8", "replace") if unicodedata.category(ch) != "Cc")
    assert inputs.cleaned_text(raw.decode("utf-8", "surrogateescape")) == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=20,
)


def _depth(value) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


@fuzz_settings(EXAMPLES)
@given(json_values)
def test_json_within_bounds_parses_as_json_does(value):
    data = json.dumps(value).encode()
    assert inputs.json_depth(data) == _depth(value)
    assert inputs.parse_json(data, 1 << 20, 32) == json.loads(data)


@fuzz_settings(EXAMPLES)
@given(st.integers(1, 60_000), st.sampled_from([b"[", b'{"a":', b'[{"b":']), st.booleans())
def test_deep_json_is_refused_before_parsing(depth, opener, closed):
    closer = {b"[": b"]", b'{"a":': b"}", b'[{"b":': b"}]"}[opener]
    data = opener * depth + (b"0" + closer * depth if closed else b"")
    levels = depth * (2 if opener == b'[{"b":' else 1)
    if levels > 32:
        with pytest.raises(BadRequest, match="nest"):
            inputs.parse_json(data, 1 << 20, 32)
    elif closed:
        assert inputs.parse_json(data, 1 << 20, 32) == json.loads(data)
    else:
        with pytest.raises(BadRequest, match="UTF-8 JSON"):
            inputs.parse_json(data, 1 << 20, 32)


@fuzz_settings(EXAMPLES)
@given(st.one_of(st.binary(), hostile_text.map(lambda s: s.encode("utf-8", "surrogatepass"))))
def test_any_body_is_json_or_bad_request(data):
    try:
        inputs.parse_json(data, 1 << 16, 32)
    except BadRequest:
        pass


_KEYS = signing.SigningKeys.parse("k1:" + "s" * 32)


@fuzz_settings(EXAMPLES)
@given(st.fixed_dictionaries({}, optional={"exp": hostile_text, "kid": hostile_text, "sig": hostile_text}))
def test_signatures_verify_or_are_refused(query):
    try:
        signing.verify(_KEYS, "/api/face/image/1", query, 0.0)
    except (signing.BadSignature, signing.SignatureExpired):
        return
    raise AssertionError(f"a made-up signature verified: {query!r}")


@fuzz_settings(EXAMPLES)
@given(st.integers(1, 10**11))
def test_a_real_signature_has_one_spelling(expires):
    query = dict(part.split("=") for part in signing.sign(_KEYS, "/p", expires).split("&"))
    assert signing.verify(_KEYS, "/p", query, 0.0) == expires
    for other in ("0" + query["exp"], query["exp"].translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))):
        with pytest.raises(signing.BadSignature):
            signing.verify(_KEYS, "/p", {**query, "exp": other}, 0.0)


@fuzz_settings(EXAMPLES)
@given(hostile_text)
def test_accept_picks_a_format(accept):
    assert renditions.negotiate_format(accept) in ("jpeg", "webp")


@fuzz_settings(EXAMPLES)
@given(st.dictionaries(st.sampled_from(["w", "h", "fit"]), hostile_text))
def test_derivative_queries_give_a_spec_or_bad_request(query):
    try:
        spec = renditions.parse_spec(query, None, (64, 128), 82)
    except BadRequest:
        return
    assert spec.width in (None, 64, 128) and spec.height in (None, 64, 128) and spec.fit in renditions.FITS
