"""Every handler's inputs, generated, against the real app (embedded Postgres, real models, files): never a
5xx, every error the JSON envelope, and nothing stored by a request answered with an error.

Requests are written as raw bytes where a client library would refuse or re-encode what a hostile client
sends. Cases per test: 40 by default; FACESERVE_FUZZ_EXAMPLES=N runs N (fuzz_support.py)."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from fuzz_support import (
    MULTIPART,
    assert_answer,
    check_raw_answer,
    fuzz_settings,
    multipart,
    raw_request,
    small_png,
    stored_state,
)
from hypothesis import example, given
from hypothesis import strategies as st

from faceserve import inputs
from faceserve.errors import BadRequest

EXAMPLES = 40

_PIECES = [
    "\x00", "\ud800", "\udcff", "٣", "²", "\u00a0", "_", "+", "-", " ", "0", "1", "9", "e", ".", "nan", "%",
    "%00", "/", "..", "\\", '"', "'", "🎉", "é", "db", "1/db/x.png", "face_sessions", "?", "#", "&", "=",
]  # fmt: skip
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
# values that broke a handler once, drawn often so that a few dozen cases meet each class
_KNOWN_BAD = [
    "\x00",
    "a\x00b.jpg",
    "\ud800",
    "x\udcff.png",
    "٣",
    "²",
    "1_0",
    " 1",
    "+1",
    "1/db/a\x00b",
    "٣/db/x",
]
hostile_text = st.one_of(
    any_text, st.lists(st.sampled_from(_PIECES), max_size=8).map("".join), st.sampled_from(_KNOWN_BAD)
)
# header field values an HTTP parser lets through (visible ASCII, space, tab, obs-text bytes): whatever
# these do, the app answers them, not aiohttp's parser
field_bytes = st.one_of(
    st.binary(max_size=60).map(lambda b: bytes(c for c in b if c in (9, 32) or 33 <= c <= 126 or c >= 128)),
    hostile_text.map(lambda s: s.encode("utf-8", "surrogatepass")).map(
        lambda b: bytes(c for c in b if c in (9, 32) or 33 <= c <= 126 or c >= 128)
    ),
)


def _segment(text: str) -> str:
    """A path segment or query value carrying any text, even what is not UTF-8, percent-encoded."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


@pytest.fixture
async def seeded(client) -> dict[str, int]:
    """One session with one image, so generated requests also reach the paths past 'unknown id'."""
    response = await client.post("/api/face/sessions", json={"name": "seed"})
    session_id = (await response.json())["data"]["id"]
    body = multipart([(b'name="file"; filename="seed.png"', small_png(12345))])
    response = await client.post(
        f"/api/face/sessions/{session_id}/images", data=body, headers={"Content-Type": MULTIPART}
    )
    assert response.status == 201, await response.text()
    image_id = (await response.json())["data"]["images"][0]["image_id"]
    return {"session_id": session_id, "image_id": image_id}


_ROUTES = [
    "/api/face/sessions/{x}",
    "/api/face/sessions/{x}/images",
    "/api/face/image/{x}",
    "/api/face/face/{x}",
    "/storage/face_sessions/{x}/db/{y}",
    "/storage/face_sessions/{seed}/db/{x}",
]


@fuzz_settings(EXAMPLES)
@example(route=_ROUTES[-1], method="GET", x="a\x00b.jpg", y="")
@given(
    route=st.sampled_from(_ROUTES),
    method=st.sampled_from(["GET", "HEAD", "DELETE"]),
    x=hostile_text,
    y=hostile_text,
)
async def test_any_path_is_answered_without_5xx(client, services, settings, seeded, route, method, x, y):
    target = route.format(x=_segment(x), y=_segment(y), seed=seeded["session_id"])
    before = await stored_state(services, settings.storage)
    status, headers, payload = await raw_request(client, f"{method} {target} HTTP/1.1\r\n".encode())
    check_raw_answer(status, headers, payload, method)
    if status >= 400:
        assert await stored_state(services, settings.storage) == before
    if inputs.parse_id(x) is None and route.endswith("{x}") and "face_sessions" not in route:
        assert status in (404, 405), (target, status)  # not an id (in any spelling): unknown, as the contract says


_QUERIES = {
    "/api/face/sessions/{session}/images": ["limit", "after"],
    "/api/face/image/{image}": ["w", "h", "fit", "exp", "kid", "sig"],
    "/api/face/face/{face}": ["w"],
    "/api/face/resolve": ["path"],
}


@fuzz_settings(EXAMPLES)
@example(route="/api/face/resolve", values=["1/db/a\x00b"] * 6, present=[True] * 6)
@example(route="/api/face/sessions/{session}/images", values=["٣"] * 6, present=[True] * 6)
@given(
    route=st.sampled_from(sorted(_QUERIES)),
    values=st.lists(hostile_text, min_size=6, max_size=6),
    present=st.lists(st.booleans(), min_size=6, max_size=6),
)
async def test_any_query_is_answered_without_5xx(client, services, settings, seeded, route, values, present):
    face_id = await services.pool.fetchval("SELECT coalesce(min(id), 1) FROM faces")
    path = route.format(session=seeded["session_id"], image=seeded["image_id"], face=face_id)
    names = _QUERIES[route]
    query = {name: value for name, value, keep in zip(names, values, present, strict=False) if keep}
    target = path + "?" + "&".join(f"{name}={_segment(value)}" for name, value in query.items())
    before = await stored_state(services, settings.storage)
    status, headers, payload = await raw_request(client, f"GET {target} HTTP/1.1\r\n".encode())
    check_raw_answer(status, headers, payload)
    for name in ("limit", "after"):
        value = query.get(name, "")
        if value and not inputs.is_ascii_digits(value):
            assert status == 400, (target, status)
    if status >= 400:
        # derived copies are a cache (a new size may be rendered and kept); rows never change on a GET
        assert (await stored_state(services, settings.storage))[:3] == before[:3]


@fuzz_settings(EXAMPLES)
@example(fields={b"Range": "bytes=٣-٥".encode()}, method="GET")
@given(
    fields=st.dictionaries(
        st.sampled_from(
            [b"Range", b"If-Range", b"If-None-Match", b"If-Modified-Since", b"If-Match", b"Accept"]
        ),
        field_bytes,
    ),
    method=st.sampled_from(["GET", "HEAD"]),
)
async def test_any_image_request_header_is_answered_without_5xx(client, seeded, fields, method):
    head = f"{method} /api/face/image/{seeded['image_id']} HTTP/1.1\r\n".encode()
    head += b"".join(name + b": " + value.strip(b" \t") + b"\r\n" for name, value in fields.items())
    status, headers, payload = await raw_request(client, head)
    check_raw_answer(status, headers, payload, method)
    assert status in (200, 206, 304, 412, 416), (fields, status)
    if status == 206:
        assert fields[b"Range"].isascii()  # other scripts' digits make no range (RFC 9110 DIGIT is ASCII)


@fuzz_settings(EXAMPLES)
@example(body=b'{"name": "a\\u0000b"}')
@example(body=b"[" * 50_000)
@given(
    body=st.one_of(
        st.builds(lambda name: json.dumps({"name": name}).encode(), hostile_text),
        st.builds(lambda value: json.dumps(value).encode(), st.recursive(st.none() | hostile_text, st.lists)),
        st.builds(lambda n, b: b * n, st.integers(1, 70_000), st.sampled_from([b"[", b"{", b'{"name":'])),
        st.binary(max_size=200),
    )
)
async def test_any_session_body_is_answered_without_5xx(client, services, settings, body):
    before = await stored_state(services, settings.storage)
    response = await client.post(
        "/api/face/sessions", data=body, headers={"Content-Type": "application/json"}
    )
    answer = await assert_answer(response)
    if response.status >= 400:
        assert response.status in (400, 413)
        assert await stored_state(services, settings.storage) == before
        return
    name = json.loads(body)["name"]
    assert response.status == 201 and answer["data"]["name"] == name.strip() and inputs.is_storable(name)


def _disposition(name_field: bytes, file_name: str | None, style: str) -> bytes:
    disposition = b'name="' + name_field + b'"'
    if file_name is None:
        return disposition
    raw = file_name.encode("utf-8", "surrogatepass")
    if style == "extended":  # RFC 5987, as browsers send non-ASCII names
        return disposition + b"; filename*=UTF-8''" + quote(raw, safe="").encode()
    # raw bytes in quotes, as mobile HTTP stacks send them (no CR, LF or quote: those end the field)
    return disposition + b'; filename="' + bytes(c for c in raw if c not in b'\r\n"\\') + b'"'


_payloads = st.one_of(
    st.integers(0, 50).map(small_png),
    st.integers(0, 50).map(lambda seed: small_png(seed)[: 20 + seed]),  # cut short
    st.binary(max_size=64),
)
_parts = st.lists(
    st.tuples(
        st.sampled_from([b"file", b"file", b"other", b"fil\xc3\xa9"]),
        st.one_of(st.none(), hostile_text),
        st.sampled_from(["extended", "raw"]),
        _payloads,
    ),
    min_size=0,
    max_size=3,
)


@fuzz_settings(EXAMPLES)
@example(parts=[(b"file", "a\udcff.png", "raw", small_png(1))], closed=False, cut=None, session=None)
@given(
    parts=_parts,
    closed=st.booleans(),
    cut=st.one_of(st.none(), st.integers(0, 400)),
    session=st.one_of(st.none(), st.none(), st.none(), hostile_text),
)
async def test_any_upload_is_answered_without_5xx_and_an_error_stores_nothing(
    client, services, settings, seeded, parts, closed, cut, session
):
    body = multipart([(_disposition(n, f, style), payload) for n, f, style, payload in parts], closed=closed)
    if cut is not None:
        body = body[:cut]
    session_segment = str(seeded["session_id"]) if session is None else _segment(session)
    before = await stored_state(services, settings.storage)
    status, headers, payload = await raw_request(
        client,
        f"POST /api/face/sessions/{session_segment}/images HTTP/1.1\r\n"
        f"Content-Type: {MULTIPART}\r\nContent-Length: {len(body)}\r\n".encode(),
        body,
    )
    answer = check_raw_answer(status, headers, payload, "POST")
    if status >= 400:
        assert await stored_state(services, settings.storage) == before, (status, answer)
        return
    assert status == 201
    images = answer["data"]["images"]
    assert len(images) == sum(1 for n, *_ in parts if n == b"file")
    for image in images:
        assert (
            inputs.is_storable(image["original_name"])
            and inputs.cleaned_text(image["original_name"]) == image["original_name"]
        )


@fuzz_settings(EXAMPLES)
@example(fields={b"limit": "١".encode()}, probe=small_png(7))
@given(
    fields=st.dictionaries(st.sampled_from([b"session_id", b"threshold", b"limit"]), field_bytes),
    probe=st.one_of(st.none(), st.just(small_png(7)), st.binary(max_size=64)),
)
async def test_any_search_form_is_answered_without_5xx(client, services, settings, seeded, fields, probe):
    parts = [(b'name="' + name + b'"', value) for name, value in fields.items()]
    if probe is not None:
        parts.append((b'name="image"; filename="probe.png"', probe))
    body = multipart(parts)
    before = await stored_state(services, settings.storage)
    response = await client.post("/api/face/search", data=body, headers={"Content-Type": MULTIPART})
    await assert_answer(response)
    assert await stored_state(services, settings.storage) == before
    # threshold and limit are ASCII numbers only; session_id is an id, read like the ids of paths (any
    # spelling of a number, inputs.parse_id)
    numbers = {name: value.strip() for name, value in fields.items() if name != b"session_id"}
    if any(value and not value.isascii() for value in numbers.values()):
        assert response.status == 400


@fuzz_settings(EXAMPLES * 5)
@given(hostile_text)
async def test_text_accepted_for_postgres_is_what_postgres_keeps(services, value):
    cleaned = inputs.cleaned_text(value)
    assert await services.pool.fetchval("SELECT $1::text", cleaned) == cleaned
    try:
        kept = inputs.storable_text(value, "name")
    except BadRequest:
        return
    assert await services.pool.fetchval("SELECT $1::text", kept) == value
