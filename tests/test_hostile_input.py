"""Input that was a 500 (or the wrong answer) and must be a clear 4xx that stores nothing: one test per class
seen, with the example that showed it. tests/test_api_fuzz.py generates many more of each class."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web
from fuzz_support import MULTIPART, multipart, small_png, stored_state
from helpers import replace_stored_bytes
from PIL import Image

from faceserve.app import create_app

IMAGE_STORES = ["file", "postgres"]


async def _session(client, name: str = "party") -> int:
    response = await client.post("/api/face/sessions", json={"name": name})
    assert response.status == 201, await response.text()
    return (await response.json())["data"]["id"]


async def _post_raw(client, path: str, body: bytes, content_type: str = MULTIPART):
    return await client.post(path, data=body, headers={"Content-Type": content_type})


async def _error_code(response, status: int) -> str:
    assert response.status == status, await response.text()
    body = await response.json()
    assert body["success"] is False
    return body["error"]["code"]


async def test_session_names_postgres_cannot_keep_are_400(client, services, settings):
    before = await stored_state(services, settings.storage)
    for raw in (b'{"name": "a\\u0000b"}', b'{"name": "a\\ud800b"}', b'{"name": "\\udfff"}'):
        response = await _post_raw(client, "/api/face/sessions", raw, "application/json")
        assert await _error_code(response, 400) == "bad_request", raw
    assert await stored_state(services, settings.storage) == before
    # what UTF-8 allows is kept as sent, astral characters included
    response = await client.post("/api/face/sessions", json={"name": "fête 🎉 \u200b"})
    assert (await response.json())["data"]["name"] == "fête 🎉 \u200b"


async def test_json_nested_deep_or_large_is_refused_before_parsing(client, services, settings):
    before = await stored_state(services, settings.storage)
    for raw in (b"[" * 60_000, b'{"a":' * 10_000, b'{"name": "x", "deep": ' + b"[" * 33 + b"]" * 33 + b"}"):
        response = await _post_raw(client, "/api/face/sessions", raw, "application/json")
        assert await _error_code(response, 400) == "bad_request"
    response = await _post_raw(
        client, "/api/face/sessions", b'{"name": "' + b"x" * 70_000 + b'"}', "application/json"
    )
    assert await _error_code(response, 413) == "payload_too_large"
    for raw in (b'{"name": NaN}', b"\xff\xfe{}", b'{"name": "a"'):
        response = await _post_raw(client, "/api/face/sessions", raw, "application/json")
        assert await _error_code(response, 400) == "bad_request"
    assert await stored_state(services, settings.storage) == before
    # nesting within the bound is JSON like any other
    response = await _post_raw(
        client, "/api/face/sessions", b'{"name": "ok", "x": ' + b"[" * 30 + b"]" * 30 + b"}"
    )
    assert response.status == 201


async def test_every_json_body_goes_through_the_one_bounded_reader(client, services, settings):
    """merge, split and key creation parsed bodies on their own: 500s for deep nesting, huge numbers, text
    Postgres cannot keep and lifetimes past the year 9999, and no size cap at all."""
    session_id = await _session(client)
    before = await stored_state(services, settings.storage)
    keys_before = await services.pool.fetchval("SELECT count(*) FROM api_keys")
    people = f"/api/face/sessions/{session_id}/people/1"
    hostile = {
        f"{people}/merge": [b"[" * 60_000, b'{"other": ' + b"7" * 5_000 + b"}"],
        f"{people}/split": [b"[" * 60_000, b'{"face_ids": [' + b"7" * 5_000 + b"]}"],
        "/api/face/keys": [
            b"[" * 60_000,
            b'{"scopes": ["search"], "expires_in": ' + b"7" * 5_000 + b"}",
            b'{"scopes": ["search"], "name": "a\\ud800"}',
            b'{"scopes": ["search"], "name": "a\\u0000b"}',
            b'{"scopes": ["search"], "expires_in": "9999999d"}',
            b'{"scopes": ["search"], "expires_in": "9999999h"}',
        ],
    }
    for path, bodies in hostile.items():
        for raw in bodies:
            response = await _post_raw(client, path, raw, "application/json")
            assert await _error_code(response, 400) == "bad_request", (path, raw[:60])
        for big in (b"[" * 100_000, b'{"face_ids": [' + b"1, " * 30_000 + b"1]}"):
            response = await _post_raw(client, path, big, "application/json")
            assert await _error_code(response, 413) == "payload_too_large", path
    assert await stored_state(services, settings.storage) == before
    assert await services.pool.fetchval("SELECT count(*) FROM api_keys") == keys_before


async def test_forget_with_an_extra_part_and_no_closing_boundary_is_400(client, services, settings, photos):
    session_id = await _session(client)
    before = await stored_state(services, settings.storage)
    body = multipart(
        [(b'name="image"; filename="s.jpg"', photos["yaoming"].read_bytes()), (b'name="extra"', b"x" * 100)],
        closed=False,
    )
    response = await _post_raw(client, f"/api/face/sessions/{session_id}/forget", body)
    assert await _error_code(response, 400) == "bad_request"
    assert await stored_state(services, settings.storage) == before


def _jpeg_with_exif_segments(jpeg: bytes, count: int, size: int, kind: bytes = b"Exif\0\0") -> bytes:
    """The photo with `count` extra APP1 segments of `size` bytes after its SOI: Pillow joins repeated Exif
    segments quadratically (700 x 64 KB cost ~10-20 s of CPU at each open)."""
    payload = kind + b"\0" * (size - 2 - len(kind))
    segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    after = 2  # past the photo's own APPn segments, so its Exif stays first and valid, as an attacker's would
    while jpeg[after] == 0xFF and 0xE0 <= jpeg[after + 1] <= 0xEF:
        after += 2 + int.from_bytes(jpeg[after + 2 : after + 4], "big")
    return jpeg[:after] + segment * count + jpeg[after:]


async def test_a_jpeg_with_hundreds_of_metadata_segments_is_refused_413(client, services, settings, photos):
    session_id = await _session(client)
    before = await stored_state(services, settings.storage)
    bomb = _jpeg_with_exif_segments(photos["yaoming"].read_bytes(), 200, 16 * 1024)
    body = multipart([(b'name="file"; filename="exif.jpg"', bomb)])
    response = await _post_raw(client, f"/api/face/sessions/{session_id}/images", body)
    assert await _error_code(response, 413) == "metadata_too_large"
    assert await stored_state(services, settings.storage) == before
    # a probe likewise, before any decoding
    body = multipart([(b'name="session_id"', str(session_id).encode()), (b'name="image"; filename="p.jpg"', bomb)])
    response = await _post_raw(client, "/api/face/search", body)
    assert await _error_code(response, 413) == "metadata_too_large"
    # a phone's few dozen (extended XMP: a portrait's depth map) are nothing unusual
    normal = _jpeg_with_exif_segments(photos["yaoming"].read_bytes(), 40, 16 * 1024, b"http://ns.adobe.com/xmp/extension/\0")
    body = multipart([(b'name="file"; filename="fine.jpg"', normal)])
    response = await _post_raw(client, f"/api/face/sessions/{session_id}/images", body)
    assert response.status == 201, await response.text()


async def test_a_stored_jpeg_with_hundreds_of_metadata_segments_renders_promptly(client, services, settings, photos):
    """Files stored before uploads were checked: their renders drop the segments past the limit."""
    session_id = await _session(client)
    body = multipart([(b'name="file"; filename="y.jpg"', photos["yaoming"].read_bytes())])
    response = await _post_raw(client, f"/api/face/sessions/{session_id}/images", body)
    image_id = (await response.json())["data"]["images"][0]["image_id"]
    await replace_stored_bytes(client, image_id, _jpeg_with_exif_segments(photos["yaoming"].read_bytes(), 700, 65533))
    started = time.monotonic()
    response = await client.get(f"/api/face/image/{image_id}?w=64")
    assert response.status == 200, await response.text()
    assert time.monotonic() - started < 5  # ~20 s on 2 cores when Pillow reads every segment
    with Image.open(io.BytesIO(await response.read())) as rendered:
        assert rendered.width == 64


async def test_file_names_are_cleaned_not_refused(client, services, settings):
    session_id = await _session(client)
    names = {
        b"filename*=UTF-8''a%00b%01c.png": "abc.png",  # NUL and controls dropped
        b'filename="caf\xe9 \xff.png"': "caf\ufffd \ufffd.png",  # Latin-1 bytes: not UTF-8, replaced
        b"filename*=UTF-8''%E7%85%A7%E7%89%87.png": "照片.png",
        b'filename="\xe7\x85\xa7.png"': "照.png",  # raw UTF-8 bytes, as mobile stacks send them
    }
    for seed, (disposition, expected) in enumerate(names.items()):
        body = multipart([(b'name="file"; ' + disposition, small_png(seed))])
        response = await _post_raw(client, f"/api/face/sessions/{session_id}/images", body)
        assert response.status == 201, await response.text()
        [image] = (await response.json())["data"]["images"]
        assert image["original_name"] == expected
        stored_name = image["identity"].split("/db/", 1)[1]
        assert stored_name.isascii() and stored_name.isprintable()
    listed = (await (await client.get(f"/api/face/sessions/{session_id}/images")).json())["data"]["images"]
    assert sorted(i["original_name"] for i in listed) == sorted(names.values())


async def test_paths_and_queries_postgres_cannot_keep_are_400(client):
    for url in (
        "/api/face/resolve?path=1/db/a%00b.jpg",
        "/storage/face_sessions/1/db/a%00b.jpg",
        "/api/face/resolve?path=x/db/x.jpg",  # not a session id
    ):
        response = await client.get(url, allow_redirects=False)
        assert await _error_code(response, 400) == "bad_request", url
    # the session id of a path is read by the one id parser: '٣' is 3, which holds no such file
    response = await client.get("/api/face/resolve?path=%D9%A3/db/x.jpg")
    assert await _error_code(response, 404) == "image_not_found"
    # invalid UTF-8 in a path stays percent-encoded (no stored name looks like that): unknown, 404
    response = await client.get("/storage/face_sessions/1/db/a%ED%A0%80b.jpg", allow_redirects=False)
    assert await _error_code(response, 404) == "image_not_found"


async def test_numbers_are_ascii_digits_only(client, services, settings):
    session_id = await _session(client)
    data = small_png(1)
    response = await _post_raw(
        client,
        f"/api/face/sessions/{session_id}/images",
        multipart([(b'name="file"; filename="a.png"', data)]),
    )
    image_id = (await response.json())["data"]["images"][0]["image_id"]
    url = f"/api/face/image/{image_id}"
    # an invalid Range is ignored (RFC 9110 14.2): the whole file, 200; the ASCII one is honoured
    for header in ("bytes=٣-٥", "bytes=²-", "bytes=\u00a00-5", "bytes=1_0-20", "bytes=+3-5"):
        response = await client.get(url, headers={"Range": header})
        assert response.status == 200, header
        assert await response.read() == data
    response = await client.get(url, headers={"Range": "bytes=3-5"})
    assert response.status == 206 and await response.read() == data[3:6]
    # a date written in other digits is no date: the precondition is ignored
    response = await client.get(url, headers={"If-Modified-Since": "Sun, ٠٦ Nov 2094 08:49:37 GMT"})
    assert response.status == 200
    for query in ("limit=%D9%A3", "limit=%C2%B2", "after=%D9%A3", "limit=1_0", "limit=+3", "limit=%203"):
        response = await client.get(f"/api/face/sessions/{session_id}/images?{query}")
        assert await _error_code(response, 400) == "bad_request", query
    # ids in a path are the exception (inputs.parse_id, issue 28): every spelling of a number is that number,
    # so the guard and the handler can never read two different ids
    arabic = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
    response = await client.get(f"/api/face/image/{str(image_id).translate(arabic)}")
    assert response.status == 200 and await response.read() == data
    canonical = await client.get(f"/api/face/sessions/{session_id}")
    spelled = await client.get(f"/api/face/sessions/{str(session_id).translate(arabic)}")
    assert (spelled.status, await spelled.json()) == (canonical.status, await canonical.json())
    for fields in (
        {"session_id": "1x"},  # an id field in other digits is that id, like a path's (common.form_id)
        {"session_id": str(session_id), "threshold": "٠.٥"},
        {"session_id": str(session_id), "limit": "٣"},
        {"session_id": str(session_id), "threshold": "nan"},
    ):
        form = aiohttp.FormData()
        for key, value in fields.items():
            form.add_field(key, value)
        form.add_field("image", data, filename="probe.png", content_type="image/png")
        response = await client.post("/api/face/search", data=form)
        assert await _error_code(response, 400) == "bad_request", fields


async def test_signature_expiry_in_other_digits_is_refused(settings, engine, aiohttp_client):
    client = await aiohttp_client(create_app(replace(settings, signing_keys="k1:" + "s" * 32), engine))
    session_id = await _session(client)
    response = await _post_raw(
        client,
        f"/api/face/sessions/{session_id}/images",
        multipart([(b'name="file"; filename="a.png"', small_png(2))]),
    )
    signed = (await response.json())["data"]["images"][0]["url"]
    path_and_query = signed.split("://", 1)[1].split("/", 1)[1]
    assert (await client.get("/" + path_and_query)).status == 200
    exp = path_and_query.split("exp=", 1)[1].split("&", 1)[0]
    other_digits = exp.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
    for bad in (other_digits, "0" + exp, exp[:3] + "_" + exp[3:]):
        response = await client.get("/" + path_and_query.replace(f"exp={exp}", f"exp={bad}"))
        assert await _error_code(response, 403) == "bad_signature", bad
    response = await client.get("/" + path_and_query.replace("sig=", "sig=%C3%A9"))
    assert await _error_code(response, 403) == "bad_signature"


async def test_a_body_cut_before_its_closing_boundary_stores_nothing(client, services, settings, photos):
    session_id = await _session(client)
    before = await stored_state(services, settings.storage)
    body = multipart([(b'name="file"; filename="t1.jpg"', photos["yaoming"].read_bytes())], closed=False)
    response = await _post_raw(client, f"/api/face/sessions/{session_id}/images", body)
    assert await _error_code(response, 400) == "bad_request"
    assert await stored_state(services, settings.storage) == before


async def test_an_upload_that_fails_stores_none_of_its_files(client, services, settings):
    """All or nothing: the good part before a bad one is not kept either; the whole request can be retried."""
    session_id = await _session(client)
    before = await stored_state(services, settings.storage)
    good = (b'name="file"; filename="good.png"', small_png(3))
    body = multipart([good, (b'name="file"; filename="bad.png"', b"not an image")])
    response = await _post_raw(client, f"/api/face/sessions/{session_id}/images", body)
    assert await _error_code(response, 415) == "not_an_image"
    assert await stored_state(services, settings.storage) == before
    response = await _post_raw(client, f"/api/face/sessions/{session_id}/images", multipart([good, good]))
    assert response.status == 201
    images = (await response.json())["data"]["images"]
    assert images[0]["image_id"] == images[1]["image_id"] and [i["created"] for i in images] == [True, False]


@pytest.mark.parametrize("image_store", IMAGE_STORES)
async def test_a_deleted_session_stops_its_images_at_once_revalidations_included(client, services, settings):
    session_id = await _session(client)
    response = await _post_raw(
        client,
        f"/api/face/sessions/{session_id}/images",
        multipart([(b'name="file"; filename="a.png"', small_png(4))]),
    )
    image_id = (await response.json())["data"]["images"][0]["image_id"]
    etag = (await client.get(f"/api/face/image/{image_id}")).headers["ETag"]
    assert (await client.get(f"/api/face/image/{image_id}", headers={"If-None-Match": etag})).status == 304
    assert (await client.delete(f"/api/face/sessions/{session_id}")).status == 200
    response = await client.get(f"/api/face/image/{image_id}", headers={"If-None-Match": etag})
    assert await _error_code(response, 404) == "image_not_found"
    response = await client.get(f"/api/face/image/{image_id}?w=64", headers={"If-None-Match": etag})
    assert await _error_code(response, 404) == "image_not_found"


async def test_an_upload_racing_its_session_delete_is_404_and_leaves_nothing(
    client, services, settings, photos
):
    session_id = await _session(client)
    data = photos["t1"].read_bytes()
    body = multipart([(b'name="file"; filename="t1.jpg"', data)])
    head, tail = body[:2000], body[2000:]
    session_dir = settings.storage / "face_sessions" / str(session_id) / "db"

    async def stream():
        yield head
        # the session is deleted while the upload's bytes are on their way to its folder
        for _ in range(500):
            if session_dir.exists() and any(session_dir.iterdir()):
                break
            await asyncio.sleep(0.01)
        assert (await client.delete(f"/api/face/sessions/{session_id}")).status == 200
        yield tail

    response = await client.post(
        f"/api/face/sessions/{session_id}/images", data=stream(), headers={"Content-Type": MULTIPART}
    )
    assert await _error_code(response, 404) == "session_not_found"
    assert await stored_state(services, settings.storage) == (0, 0, 0, [])


async def test_a_client_hanging_up_mid_upload_is_one_info_line(settings, engine, photos, caplog):
    """Served the way `faceserve serve` serves (run_app: handlers are not cancelled when a client goes)."""
    runner = web.AppRunner(create_app(settings, engine), handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    key = (settings.storage / "admin-key").read_text().strip()
    try:
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http,
            http.post(f"http://{host}:{port}/api/face/sessions", json={"name": "x"}) as response,
        ):
            session_id = (await response.json())["data"]["id"]
        data = photos["t1"].read_bytes()
        body = multipart([(b'name="file"; filename="t1.jpg"', data)])
        session_dir = settings.storage / "face_sessions" / str(session_id) / "db"
        caplog.set_level(logging.INFO)
        caplog.clear()  # what the start logged (the bootstrap key's path) is not about the hang-up
        _reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            f"POST /api/face/sessions/{session_id}/images HTTP/1.1\r\nHost: x\r\nContent-Type: {MULTIPART}\r\n"
            f"Authorization: Bearer {key}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[: len(body) // 2]
        )
        await writer.drain()
        for _ in range(500):
            if session_dir.exists() and any(session_dir.iterdir()):
                break
            await asyncio.sleep(0.01)
        writer.close()
        for _ in range(500):
            if any("went away" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        mine = [
            r for r in caplog.records if r.name.startswith(("faceserve", "aiohttp.server", "aiohttp.web"))
        ]
        assert [(r.levelname, r.getMessage()) for r in mine] == [
            ("INFO", f"client went away during POST /api/face/sessions/{session_id}/images")
        ]
        assert not any(r.exc_info for r in mine)
        assert list(session_dir.iterdir()) == []
    finally:
        await runner.cleanup()


def test_json_depth_is_measured_outside_strings():
    from faceserve.inputs import json_depth

    assert json_depth(b'{"a": [1, {"b": "[[[[{{{"}]}') == 3
    assert json_depth(json.dumps({"a": '\\"[[['}).encode()) == 1


async def test_import_keeps_a_file_name_that_is_not_utf8(tmp_path, settings, engine):
    """A name on disk is bytes; one that is not UTF-8 is cleaned like an uploaded one, not a crash."""
    import os

    from faceserve.core.importer import import_tree
    from faceserve.core.services import open_services

    folder = tmp_path / "old" / "face_sessions" / "5" / "db"
    folder.mkdir(parents=True)
    (folder / os.fsdecode(b"caf\xe9\x01.png")).write_bytes(small_png(9))
    async with open_services(settings, engine) as services:
        report = await import_tree(services, tmp_path / "old")
        assert report.failed == []
        names = await services.pool.fetch("SELECT original_name, stored_name FROM face_session_images")
    assert [r["original_name"] for r in names] == ["caf\ufffd.png"]
    assert names[0]["stored_name"].isascii()


@pytest.mark.parametrize("image_store", IMAGE_STORES)
async def test_another_process_stops_serving_a_deleted_session_within_its_recheck(
    settings, engine, aiohttp_client
):
    """Workers share no memory: another process's entries go stale, and its 304s from memory stop once
    SERVED_RECHECK_S has passed and the recheck finds the bytes gone."""
    deleting = await aiohttp_client(create_app(settings, engine))
    serving = await aiohttp_client(create_app(replace(settings, served_recheck_s=0.3), engine))
    session_id = await _session(deleting)
    body = multipart([(b'name="file"; filename="a.png"', small_png(5))])
    response = await _post_raw(deleting, f"/api/face/sessions/{session_id}/images", body)
    image_id = (await response.json())["data"]["images"][0]["image_id"]
    etag = (await serving.get(f"/api/face/image/{image_id}")).headers["ETag"]
    assert (await deleting.delete(f"/api/face/sessions/{session_id}")).status == 200
    await asyncio.sleep(0.4)
    response = await serving.get(f"/api/face/image/{image_id}", headers={"If-None-Match": etag})
    assert await _error_code(response, 404) == "image_not_found"
