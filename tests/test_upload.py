"""Upload: faces counted, dedupe, hostile names, and bad input that leaves disk, database and index clean."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import aiohttp
import numpy as np
from helpers import create_session, files_under, upload
from PIL import Image


async def _counts(services, session_id: int) -> tuple[int, int]:
    from faceserve import db

    return await db.session_counts(services.pool, session_id)


async def _post_file(client, session_id: int, name: str, data: bytes):
    """A multipart body written by hand, file name as raw bytes the way mobile HTTP stacks send it (aiohttp's
    own client would percent-encode it)."""
    boundary = "faceserve-test-boundary"
    escaped = name.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8", "surrogateescape")
    body = (
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="file"; filename="' + escaped + b'"\r\n'
        + b"Content-Type: application/octet-stream\r\n\r\n"
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return await client.post(
        f"/api/face/sessions/{session_id}/images",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )


async def test_faces_are_counted_and_recorded(client, photos, services, settings):
    session_id = await create_session(client)
    [image] = await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes()))
    assert image["faces"] == 6
    assert image["original_name"] == "t1.jpg"
    assert image["identity"].startswith(f"{session_id}/db/")
    assert (settings.storage / "face_sessions" / image["identity"]).read_bytes() == photos["t1"].read_bytes()
    assert await _counts(services, session_id) == (1, 6)
    response = await client.get(f"/api/face/sessions/{session_id}")
    data = (await response.json())["data"]
    assert (data["image_count"], data["face_count"]) == (1, 6)


async def test_same_bytes_twice_return_the_existing_image(client, photos, services, settings):
    session_id = await create_session(client)
    data = photos["gdp"].read_bytes()
    [first] = await upload(client, session_id, ("gdp.jpg", data))
    [second] = await upload(client, session_id, ("renamed.jpg", data))
    assert second["image_id"] == first["image_id"]
    assert second["created"] is False and first["created"] is True
    assert len(files_under(settings.storage / "face_sessions")) == 1
    assert (await _counts(services, session_id))[0] == 1
    # another session is another album: it gets its own copy
    other = await create_session(client, "other")
    [third] = await upload(client, other, ("gdp.jpg", data))
    assert third["image_id"] != first["image_id"]


async def test_several_files_in_one_request(client, photos):
    session_id = await create_session(client)
    images = await upload(
        client, session_id, ("a.jpg", photos["gdp"].read_bytes()), ("b.jpg", photos["yaoming"].read_bytes())
    )
    assert [i["original_name"] for i in images] == ["a.jpg", "b.jpg"]
    assert images[1]["faces"] == 1


async def test_hostile_names_never_reach_the_disk(client, photos, settings):
    session_id = await create_session(client)
    session_dir = settings.storage / "face_sessions" / str(session_id) / "db"
    hostile = [
        "../../../etc/passwd",
        "..\\..\\windows\\win.ini",
        "/absolute/path.jpg",
        "x" * 5000 + ".jpg",
        "...",
        "ünïcødé 照片.jpg",
    ]
    base = Image.open(photos["yaoming"])
    for i, name in enumerate(hostile):
        buffer = io.BytesIO()
        base.rotate(i + 1).save(buffer, "JPEG")  # distinct bytes, so no dedupe
        response = await _post_file(client, session_id, name, buffer.getvalue())
        assert response.status == 201, name
        [image] = (await response.json())["data"]["images"]
        stored_name = image["identity"].split("/db/", 1)[1]
        assert "/" not in stored_name and "\\" not in stored_name and ".." not in stored_name
        assert stored_name.isascii() and stored_name.isprintable() and len(stored_name) < 100
        assert (session_dir / stored_name).is_file()
    on_disk = [p for p in files_under(settings.storage) if p != "admin-key"]  # the bootstrap key
    assert all(p.startswith(f"face_sessions/{session_id}/db/") for p in on_disk)
    assert len(on_disk) == len(hostile)
    response = await client.get(f"/api/face/sessions/{session_id}/images")
    kept = {image["original_name"] for image in (await response.json())["data"]["images"]}
    assert "../../../etc/passwd" in kept and "ünïcødé 照片.jpg" in kept
    # control characters in a part header are refused by the multipart parser: a clear 400, nothing kept
    response = await _post_file(client, session_id, "tab\tnul\x00.jpg", photos["t1"].read_bytes())
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "bad_request"
    assert len(files_under(settings.storage)) == len(hostile) + 1  # and admin-key


async def _assert_nothing_kept(services, settings, session_id: int) -> None:
    assert files_under(settings.storage / "face_sessions") == []
    assert await _counts(services, session_id) == (0, 0)
    index = await services.indexes.get(session_id)
    assert len(index) == 0


async def test_non_image_is_415_and_leaves_nothing(client, services, settings):
    session_id = await create_session(client)
    response = await _post_file(client, session_id, "notes.jpg", b"this is not an image" * 100)
    assert response.status == 415
    body = await response.json()
    assert body == {"success": False, "error": {"code": "not_an_image", "message": body["error"]["message"]}}
    await _assert_nothing_kept(services, settings, session_id)


async def test_half_written_upload_is_rejected_and_leaves_nothing(client, photos, services, settings):
    session_id = await create_session(client)
    data = photos["players"].read_bytes()
    response = await _post_file(client, session_id, "cut.jpg", data[: len(data) // 3])
    assert response.status == 415
    await _assert_nothing_kept(services, settings, session_id)


def _png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge canvas: the classic decompression bomb shape."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


async def test_decompression_bomb_is_413_before_decoding(client, services, settings):
    session_id = await create_session(client)
    response = await _post_file(client, session_id, "bomb.png", _png_header_claiming(60_000, 60_000))
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "image_too_large"
    await _assert_nothing_kept(services, settings, session_id)


async def test_file_over_the_size_limit_is_413(client, services, settings):
    session_id = await create_session(client)
    response = await _post_file(client, session_id, "big.jpg", b"\xff\xd8\xff" + bytes(settings.max_upload_bytes))
    assert response.status == 413
    await _assert_nothing_kept(services, settings, session_id)


async def test_unknown_session_is_404(client, photos, settings):
    response = await _post_file(client, 424242, "t1.jpg", photos["t1"].read_bytes())
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "session_not_found"
    assert files_under(settings.storage / "face_sessions") == []
    response = await _post_file(client, "abc", "t1.jpg", photos["t1"].read_bytes())
    assert response.status == 404


async def test_a_request_without_file_part_is_400(client):
    session_id = await create_session(client)
    form = aiohttp.FormData()
    form.add_field("other", "x")
    response = await client.post(f"/api/face/sessions/{session_id}/images", data=form)
    assert response.status == 400
    response = await client.post(f"/api/face/sessions/{session_id}/images", json={"file": "x"})
    assert response.status == 400
    # said plainly, from the raw header (not left to the multipart reader's own complaint)
    assert "multipart/form-data" in (await response.json())["error"]["message"]


async def test_png_without_faces_is_stored_with_zero_faces(client, settings):
    session_id = await create_session(client)
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 200, dtype=np.uint8)).save(buffer, "PNG")
    [image] = await upload(client, session_id, ("blank.png", buffer.getvalue()))
    assert image["faces"] == 0
    assert image["content_type"] == "image/png"
    assert image["identity"].endswith(".png")
    response = await client.get(f"/api/face/image/{image['image_id']}")
    assert response.headers["Content-Type"] == "image/png"


async def test_failure_mid_ingest_leaves_no_file_row_or_face(client, photos, services, settings):
    """A real database failure while faces are written (a trigger raising in Postgres) must roll back the
    image row and remove the file that was already renamed into place."""
    session_id = await create_session(client)
    async with services.pool.acquire() as conn:
        await conn.execute(
            "CREATE FUNCTION fail_insert() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'disk full (simulated)'; END $$"
        )
        await conn.execute("CREATE TRIGGER fail_faces BEFORE INSERT ON faces FOR EACH ROW EXECUTE FUNCTION fail_insert()")
    response = await _post_file(client, session_id, "t1.jpg", photos["t1"].read_bytes())
    assert response.status == 500
    assert (await response.json())["error"]["code"] == "internal_error"
    await _assert_nothing_kept(services, settings, session_id)
    async with services.pool.acquire() as conn:
        await conn.execute("DROP TRIGGER fail_faces ON faces")
    [image] = await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes()))
    assert image["faces"] == 6


async def test_partial_uploads_left_by_a_crash_are_swept_at_start(settings, engine, aiohttp_client):
    from faceserve.app import create_app

    leftover = Path(settings.storage) / "face_sessions" / "7" / "db" / ".upload-deadbeef.part"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half an upload")
    await aiohttp_client(create_app(settings, engine))
    assert not leftover.exists()


async def test_a_flood_of_uploads_gets_503_with_retry_after(settings, engine, photos, aiohttp_client):
    """With room for one image in flight, concurrent uploads beyond it are refused, not queued without end;
    the refused ones leave nothing behind, and a retry after the flood succeeds."""
    import asyncio
    from dataclasses import replace

    from faceserve.app import create_app

    client = await aiohttp_client(create_app(replace(settings, max_pending_images=1, retry_after_s=3), engine))
    session_id = await create_session(client)
    base = Image.open(photos["t1"])
    bodies = []
    for i in range(4):
        buffer = io.BytesIO()
        base.rotate(i + 1).save(buffer, "JPEG")
        bodies.append(buffer.getvalue())
    responses = await asyncio.gather(*(_post_file(client, session_id, f"{i}.jpg", b) for i, b in enumerate(bodies)))
    statuses = sorted(r.status for r in responses)
    assert statuses[0] == 201 and 503 in statuses
    for response in responses:
        if response.status == 503:
            assert response.headers["Retry-After"] == "3"
            assert (await response.json())["error"]["code"] == "busy"
    accepted = statuses.count(201)
    assert len(files_under(settings.storage / "face_sessions")) == accepted
    refused = [b for r, b in zip(responses, bodies) if r.status == 503]
    response = await _post_file(client, session_id, "retry.jpg", refused[0])
    assert response.status == 201
