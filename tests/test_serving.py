"""GET/HEAD /api/face/image/{id}: same bytes, right headers, conditional and range requests, 404s."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace

import pytest
from helpers import IMAGE_STORES, create_session, lose_stored_bytes, upload

from faceserve import db
from faceserve.app import create_app
from faceserve.http.served import SERVED
from faceserve.http.serving import CACHE_FOREVER, served_file


@pytest.fixture(params=IMAGE_STORES)
def image_store(request: pytest.FixtureRequest) -> str:
    """Every test here runs with the bytes on disk and in Postgres: same answers, byte for byte."""
    return request.param


async def _one_image(client, photos) -> tuple[dict, bytes]:
    data = photos["t1"].read_bytes()
    session_id = await create_session(client)
    [image] = await upload(client, session_id, ("t1.jpg", data))
    return image, data


async def test_serves_the_uploaded_bytes_with_caching_headers(client, photos):
    image, data = await _one_image(client, photos)
    assert image["url"].endswith(f"/api/face/image/{image['image_id']}")
    response = await client.get(f"/api/face/image/{image['image_id']}")
    assert response.status == 200
    assert await response.read() == data
    assert response.headers["Content-Type"] == "image/jpeg"
    assert response.headers["Cache-Control"] == CACHE_FOREVER
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Last-Modified" in response.headers
    etag = response.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert etag.strip('"') == hashlib.sha256(data).hexdigest()[:32]


async def test_the_url_in_the_response_is_what_the_app_follows(client, photos):
    image, data = await _one_image(client, photos)
    # the app only follows `url`: take its path and fetch it
    path = "/" + image["url"].split("/", 3)[3]
    response = await client.get(path)
    assert await response.read() == data


async def test_head_has_the_headers_and_no_body(client, photos):
    image, data = await _one_image(client, photos)
    response = await client.head(f"/api/face/image/{image['image_id']}")
    assert response.status == 200
    assert int(response.headers["Content-Length"]) == len(data)
    assert response.headers["Content-Type"] == "image/jpeg"
    assert await response.read() == b""


async def test_matching_if_none_match_gives_304_without_body(client, photos):
    image, _ = await _one_image(client, photos)
    url = f"/api/face/image/{image['image_id']}"
    etag = (await client.get(url)).headers["ETag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        response = await client.get(url, headers={"If-None-Match": header})
        assert response.status == 304, header
        assert response.headers["ETag"] == etag
        assert response.headers["Cache-Control"] == CACHE_FOREVER
        assert await response.read() == b""
    response = await client.get(url, headers={"If-None-Match": '"something-else"'})
    assert response.status == 200


async def test_if_modified_since_and_if_match(client, photos):
    image, _ = await _one_image(client, photos)
    url = f"/api/face/image/{image['image_id']}"
    first = await client.get(url)
    last_modified = first.headers["Last-Modified"]
    assert (await client.get(url, headers={"If-Modified-Since": last_modified})).status == 304
    assert (await client.get(url, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})).status == 200
    assert (await client.get(url, headers={"If-Match": '"nope"'})).status == 412
    assert (await client.get(url, headers={"If-Match": first.headers["ETag"]})).status == 200


async def test_byte_ranges(client, photos):
    image, data = await _one_image(client, photos)
    url = f"/api/face/image/{image['image_id']}"
    response = await client.get(url, headers={"Range": "bytes=10-19"})
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    assert await response.read() == data[10:20]
    response = await client.get(url, headers={"Range": "bytes=-100"})
    assert await response.read() == data[-100:]
    response = await client.get(url, headers={"Range": f"bytes={len(data) - 5}-"})
    assert await response.read() == data[-5:]
    response = await client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert response.status == 416
    assert response.headers["Content-Range"] == f"bytes */{len(data)}"
    response = await client.get(url, headers={"Range": "items=0-5"})
    assert response.status == 200 and await response.read() == data
    # If-Range with a different validator: the whole file
    response = await client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert response.status == 200 and await response.read() == data


async def test_unknown_and_non_numeric_ids_are_404_json(client):
    for path in ("/api/face/image/999999", "/api/face/image/abc", "/api/face/image/-1", "/api/face/image/1e3"):
        response = await client.get(path)
        assert response.status == 404, path
        body = await response.json()
        assert body["success"] is False and body["error"]["code"] == "image_not_found"
        assert response.headers["Cache-Control"] == "no-store"


async def test_record_whose_bytes_are_gone_is_404_once_rechecked(settings, engine, photos, aiohttp_client):
    client = await aiohttp_client(create_app(replace(settings, served_recheck_s=0), engine))
    image, _ = await _one_image(client, photos)
    url = f"/api/face/image/{image['image_id']}"
    etag = (await client.get(url)).headers["ETag"]  # the row is in the metadata cache from here on
    await lose_stored_bytes(client, image["image_id"])
    response = await client.get(url, headers={"If-None-Match": etag})
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "image_not_found"
    response = await client.get(url)
    assert response.status == 404


async def test_a_revalidation_soon_after_a_fetch_does_not_touch_the_bytes(settings, engine, photos, aiohttp_client):
    """Within served_recheck_s of seeing the bytes, a 304 is answered from memory; a body never is."""
    client = await aiohttp_client(create_app(replace(settings, served_recheck_s=3600), engine))
    image, _ = await _one_image(client, photos)
    url = f"/api/face/image/{image['image_id']}"
    etag = (await client.get(url)).headers["ETag"]
    await lose_stored_bytes(client, image["image_id"])
    response = await client.get(url, headers={"If-None-Match": etag})
    assert response.status == 304 and response.headers["ETag"] == etag
    assert response.headers["Cache-Control"] == CACHE_FOREVER
    assert (await client.get(url)).status == 404  # a body needs the bytes: looked for, gone, evicted
    assert (await client.get(url, headers={"If-None-Match": etag})).status == 404


async def test_deleting_an_image_stops_its_revalidations_at_once(client, photos):
    image, _ = await _one_image(client, photos)
    url = f"/api/face/image/{image['image_id']}"
    etag = (await client.get(url)).headers["ETag"]
    assert (await client.delete(url)).status == 200
    response = await client.get(url, headers={"If-None-Match": etag})
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "image_not_found"


async def test_deleting_a_session_stops_its_images_revalidations_at_once(client, photos):
    """The cache (http/served.py) hears the drop from the unit of work (core/removals.py), not per image."""
    image, _ = await _one_image(client, photos)
    url = f"/api/face/image/{image['image_id']}"
    etag = (await client.get(url)).headers["ETag"]
    assert client.server.app[SERVED].get(image["image_id"]) is not None
    session_id = int(image["identity"].split("/")[0])
    assert (await client.delete(f"/api/face/sessions/{session_id}")).status == 200
    assert client.server.app[SERVED].get(image["image_id"]) is None
    response = await client.get(url, headers={"If-None-Match": etag})
    assert response.status == 404


async def test_legacy_path_redirects_to_the_id_url(client, photos):
    image, _ = await _one_image(client, photos)
    response = await client.get(f"/storage/face_sessions/{image['identity']}", allow_redirects=False)
    assert response.status == 301
    assert response.headers["Location"].endswith(f"/api/face/image/{image['image_id']}")
    response = await client.get("/storage/face_sessions/1/db/typo.jpg", allow_redirects=False)
    assert response.status == 404
    assert (await response.json())["success"] is False


async def test_resolve_turns_an_identity_into_an_id(client, photos):
    image, _ = await _one_image(client, photos)
    response = await client.get("/api/face/resolve", params={"path": image["identity"]})
    body = await response.json()
    assert body["data"]["image_id"] == image["image_id"]
    assert body["data"]["url"] == image["url"]
    response = await client.get("/api/face/resolve", params={"path": "1/db/nothing.jpg"})
    assert response.status == 404
    response = await client.get("/api/face/resolve", params={"path": "../../etc/passwd"})
    assert response.status == 400


async def test_unknown_route_is_json_not_html(client):
    response = await client.get("/nope")
    assert response.status == 404
    assert (await response.json())["success"] is False


def _slow_row_reads(monkeypatch, after_read=None) -> list[int]:
    """Counts the rows serving reads from Postgres (the real query), each taking a while, as under load."""
    reads: list[int] = []
    real = db.get_served_image

    async def counted(pool, image_id):
        reads.append(image_id)
        await asyncio.sleep(0.05)
        row = await real(pool, image_id)
        if after_read is not None:
            after_read(image_id)
        return row

    monkeypatch.setattr(db, "get_served_image", counted)
    return reads


async def test_a_photo_opened_by_many_phones_at_once_is_read_from_postgres_once(client, photos, monkeypatch):
    image, data = await _one_image(client, photos)
    client.server.app[SERVED].evict(image["image_id"])  # a cold process
    reads = _slow_row_reads(monkeypatch)
    responses = await asyncio.gather(*(client.get(f"/api/face/image/{image['image_id']}") for _ in range(40)))
    assert [r.status for r in responses] == [200] * 40
    assert all([await r.read() == data for r in responses])
    assert reads == [image["image_id"]]


async def test_a_caller_that_goes_away_does_not_cancel_the_shared_read(client, photos, monkeypatch):
    image, _ = await _one_image(client, photos)
    client.server.app[SERVED].evict(image["image_id"])
    reads = _slow_row_reads(monkeypatch)
    request = type("Request", (), {"app": client.server.app})()  # served_file reads request.app only
    first = asyncio.create_task(served_file(request, image["image_id"]))
    await asyncio.sleep(0.01)
    others = [asyncio.create_task(served_file(request, image["image_id"])) for _ in range(3)]
    await asyncio.sleep(0.01)
    first.cancel()  # the phone that asked first hangs up
    entries = await asyncio.gather(*others)
    assert {entry.image_id for entry in entries} == {image["image_id"]} and len(reads) == 1


async def test_a_delete_during_the_read_leaves_nothing_cached(client, photos, monkeypatch):
    image, _ = await _one_image(client, photos)
    served = client.server.app[SERVED]
    served.evict(image["image_id"])
    _slow_row_reads(monkeypatch, after_read=served.evict)  # a delete on this process evicts meanwhile
    request = type("Request", (), {"app": client.server.app})()
    assert (await served_file(request, image["image_id"])).image_id == image["image_id"]
    assert served.get(image["image_id"]) is None
