"""RFC 9110 precondition order and range parsing, case by case, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from faceserve.http.conditional import Unsatisfiable, evaluate, parse_range, range_applies

ETAG = '"abc"'
MODIFIED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
BEFORE = "Thu, 01 Jan 2026 00:00:00 GMT"
AT = "Fri, 02 Jan 2026 03:04:05 GMT"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, 200),
        ({"If-Match": ETAG}, 200),
        ({"If-Match": "*"}, 200),
        ({"If-Match": f"W/{ETAG}"}, 412),  # If-Match compares strongly
        ({"If-Match": '"x"'}, 412),
        ({"If-Unmodified-Since": BEFORE}, 412),
        ({"If-Unmodified-Since": AT}, 200),
        ({"If-Match": ETAG, "If-Unmodified-Since": BEFORE}, 200),  # ignored when If-Match is present
        ({"If-None-Match": f"W/{ETAG}"}, 304),  # If-None-Match compares weakly
        ({"If-None-Match": '"x", "y"'}, 200),
        ({"If-Modified-Since": AT}, 304),
        ({"If-Modified-Since": BEFORE}, 200),
        ({"If-None-Match": '"x"', "If-Modified-Since": AT}, 200),  # ignored when If-None-Match is present
        ({"If-Match": '"x"', "If-None-Match": ETAG}, 412),  # If-Match is evaluated first
        ({"If-Modified-Since": "garbage"}, 200),
    ],
)
def test_preconditions(headers, expected):
    assert evaluate("GET", headers, ETAG, MODIFIED) == expected


def test_if_none_match_on_unsafe_method_is_412():
    assert evaluate("DELETE", {"If-None-Match": ETAG}, ETAG, MODIFIED) == 412


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=90-200", 100, (90, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-500", 100, (0, 99)),
        ("bytes=50-", 100, (50, 99)),
        ("items=0-9", 100, None),
        ("bytes=0-1,5-6", 100, None),
        ("bytes=9-1", 100, None),
        ("bytes=abc", 100, None),
    ],
)
def test_ranges(header, size, expected):
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=100-", 100), ("bytes=-0", 100), ("bytes=0-", 0)])
def test_unsatisfiable_ranges(header, size):
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)


def test_if_range():
    assert range_applies({}, ETAG, MODIFIED)
    assert range_applies({"If-Range": ETAG}, ETAG, MODIFIED)
    assert not range_applies({"If-Range": f"W/{ETAG}"}, ETAG, MODIFIED)
    assert range_applies({"If-Range": AT}, ETAG, MODIFIED)
    assert not range_applies({"If-Range": BEFORE}, ETAG, MODIFIED)
