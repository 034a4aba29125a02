"""Forget a person in a session (real photos: players.jpg shows Yao Ming, yaoming.jpg is his selfie), and
sessions that expire and are deleted by the service itself, once across processes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from faceserve.app import create_app
from faceserve.core import privacy
from faceserve.http.appkeys import SERVICES


async def _search(client, session_id: int, probe: bytes) -> list[dict]:
    form = aiohttp.FormData()
    form.add_field("session_id", str(session_id))
    form.add_field("image", probe, filename="probe.jpg", content_type="image/jpeg")
    response = await client.post("/api/face/search", data=form)
    assert response.status == 200, await response.text()
    return (await response.json())["data"]["matches"]


async def _forget(client, session_id: int, selfie: bytes, **fields: str):
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    form.add_field("image", selfie, filename="me.jpg", content_type="image/jpeg")
    return await client.post(f"/api/face/sessions/{session_id}/forget", data=form)


async def _session_with(client, photos, *names: str) -> tuple[int, dict[str, dict]]:
    response = await client.post("/api/face/sessions", json={"name": "event"})
    session_id = (await response.json())["data"]["id"]
    form = aiohttp.FormData()
    for name in names:
        form.add_field("file", photos[name].read_bytes(), filename=f"{name}.jpg", content_type="image/jpeg")
    response = await client.post(f"/api/face/sessions/{session_id}/images", data=form)
    images = (await response.json())["data"]["images"]
    return session_id, {name: image for name, image in zip(names, images)}


async def test_forget_erases_that_person_everywhere_and_keeps_the_photos(client, photos, settings, engine):
    services = client.server.app[SERVICES]
    session_id, images = await _session_with(client, photos, "players", "t1")
    players = images["players"]
    selfie = photos["yaoming"].read_bytes()
    [yao] = [m for m in await _search(client, session_id, selfie) if m["image_id"] == players["image_id"]]
    # another person in the same photo, as a probe: their face crop
    other_face = await services.pool.fetchval(
        "SELECT id FROM faces WHERE image_id = $1 AND id <> $2 ORDER BY det_score DESC LIMIT 1",
        players["image_id"], yao["face_id"],
    )
    other_probe = await (await client.get(f"/api/face/face/{other_face}?w=320")).read()
    assert players["image_id"] in [m["image_id"] for m in await _search(client, session_id, other_probe)]
    # a cached crop of the person to forget
    assert (await client.get(f"/api/face/face/{yao['face_id']}")).status == 200
    derived = settings.storage / "face_sessions" / str(session_id) / "derived"
    assert list(derived.glob(f"{players['image_id']}-face{yao['face_id']}-*"))

    async with TestClient(TestServer(create_app(settings, engine, sweep_partial_uploads=False))) as second:
        second.session.headers.update(client.session.headers)
        assert [m["face_id"] for m in await _search(second, session_id, selfie)][:1] == [yao["face_id"]]
        faces_before = (await (await client.get(f"/api/face/sessions/{session_id}")).json())["data"]["face_count"]

        response = await _forget(client, session_id, selfie)
        assert response.status == 200, await response.text()
        result = (await response.json())["data"]
        assert result["faces_erased"] >= 1 and result["images_touched"] == 1

        await asyncio.sleep(0.05)
        await second.server.app[SERVICES].sync.follower.drain()
        for instance in (client, second):
            # the person is gone in this process and the other one; other people still match
            assert await _search(instance, session_id, selfie) == []
            matched = [m["image_id"] for m in await _search(instance, session_id, other_probe)]
            assert players["image_id"] in matched
        index = await second.server.app[SERVICES].indexes.get(session_id)
        assert len(index) == faces_before - result["faces_erased"]

    shown = (await (await client.get(f"/api/face/sessions/{session_id}")).json())["data"]
    assert shown["image_count"] == 2 and shown["face_count"] == faces_before - result["faces_erased"]
    response = await client.get(f"/api/face/image/{players['image_id']}")
    assert response.status == 200 and await response.read() == photos["players"].read_bytes()
    assert not list(derived.glob(f"*-face{yao['face_id']}-*"))
    assert (await client.get(f"/api/face/face/{yao['face_id']}")).status == 404

    admin_prefix = client.session.headers["Authorization"].split()[1][:12]
    audit = await services.pool.fetch("SELECT * FROM privacy_audit")
    assert [(a["action"], a["key_prefix"], a["face_session_id"], a["faces_erased"], a["images_touched"])
            for a in audit] == [("forget", admin_prefix, session_id, result["faces_erased"], 1)]
    kinds = await services.pool.fetch(
        "SELECT data_type FROM information_schema.columns WHERE table_name = 'privacy_audit'"
    )
    assert "bytea" not in {k["data_type"] for k in kinds} and "ARRAY" not in {k["data_type"] for k in kinds}


async def test_forget_needs_a_face_and_a_session(client, photos):
    session_id, _ = await _session_with(client, photos, "t1")
    response = await _forget(client, session_id, b"not an image at all")
    assert response.status in (400, 415)
    response = await client.post(f"/api/face/sessions/{session_id}/forget", data=aiohttp.FormData({"x": "1"}))
    assert response.status == 400
    response = await _forget(client, 999999, photos["yaoming"].read_bytes())
    assert response.status == 404
    response = await _forget(client, session_id, photos["yaoming"].read_bytes(), threshold="9")
    assert response.status == 400


async def test_sessions_expire_and_the_service_deletes_them(settings, engine, aiohttp_client, photos):
    client = await aiohttp_client(create_app(replace(settings, session_expiry_check_s=0.2), engine))
    services = client.server.app[SERVICES]
    for bad in (0, -1, 1.5, "7", True, 40000):
        response = await client.post("/api/face/sessions", json={"name": "x", "expires_in_days": bad})
        assert response.status == 400, bad
    response = await client.post("/api/face/sessions", json={"name": "party", "expires_in_days": 7})
    assert response.status == 201
    doomed = (await response.json())["data"]["id"]
    kept, _ = await _session_with(client, photos, "t1")
    form = aiohttp.FormData()
    form.add_field("file", photos["players"].read_bytes(), filename="p.jpg", content_type="image/jpeg")
    assert (await client.post(f"/api/face/sessions/{doomed}/images", data=form)).status == 201
    expires = await services.pool.fetchval("SELECT expires_at - now() FROM face_sessions WHERE id = $1", doomed)
    assert 6.9 < expires.total_seconds() / 86400 <= 7
    folder = settings.storage / "face_sessions" / str(doomed)
    assert folder.is_dir()

    # while another process holds the sweep, this one leaves the session alone
    await services.pool.execute("UPDATE face_sessions SET expires_at = now() - interval '1 second' WHERE id = $1", doomed)
    async with services.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(7312004)")
        assert await privacy.delete_expired(services) is None
        await asyncio.sleep(0.5)
        assert (await client.get(f"/api/face/sessions/{doomed}")).status == 200
    # then the service's own task deletes it: rows, files, index
    deadline = time.monotonic() + 10
    while (await client.get(f"/api/face/sessions/{doomed}")).status != 404:
        assert time.monotonic() < deadline, "the expired session was not deleted"
        await asyncio.sleep(0.1)
    # the files go right after the rows' commit (the index and its saved copy first)
    while folder.exists():
        assert time.monotonic() < deadline, "the expired session's files were not removed"
        await asyncio.sleep(0.1)
    assert await services.pool.fetchval("SELECT count(*) FROM faces WHERE face_session_id = $1", doomed) == 0
    assert (await client.get(f"/api/face/sessions/{kept}")).status == 200
