"""FACESERVE_IMAGE_STORE=s3 against a real S3 server (SeaweedFS on loopback, tests/seaweed.py): where the
bytes go, what deletes and a crashed upload leave, parts above a size, credentials, and the store going away.

The serving contract (ETag, ranges, 304/412/416, derivatives) runs against S3 with the other stores in
test_serving.py, test_serving_bodies.py and test_image_store.py; crash-safe deletes in
test_crash_safe_deletes.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
from dataclasses import replace
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import seaweed
from botocore.exceptions import ClientError
from helpers import backend_gone, create_session, derived_of, files_under, objects_of, search, upload

from faceserve import logs
from faceserve.app import create_app
from faceserve.core import upload_intents
from faceserve.core.services import open_services
from faceserve.errors import Unavailable
from faceserve.http.appkeys import SERVICES
from faceserve.layout import SessionLayout
from faceserve.media.objects import open_object_store


@pytest.fixture
def image_store() -> str:
    return "s3"


def _form(name: str, data: bytes) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name, content_type="image/jpeg")
    return form


def _originals_on_disk(settings) -> list[str]:
    return [p for p in files_under(SessionLayout(settings.storage).sessions_root) if p.split("/")[1] == "db"]


async def test_originals_are_objects_under_the_prefix_and_never_on_disk(client, services, settings, photos, caplog):
    logs.configure("DEBUG", "text")  # the most an operator can ask for
    caplog.set_level(logging.DEBUG)
    data = photos["t1"].read_bytes()
    session_id = await create_session(client)
    [image] = await upload(client, session_id, ("t1.jpg", data))
    name = image["identity"].split("/")[-1]
    assert await services.pool.fetchval(
        "SELECT bytes_in FROM face_session_images WHERE id = $1", image["image_id"]
    ) == "s3"
    assert await objects_of(services) == [f"face_sessions/{session_id}/db/{name}"]
    key = f"{settings.s3_prefix}/face_sessions/{session_id}/db/{name}"
    assert services.stores.objects.key(f"face_sessions/{session_id}/db/{name}") == key
    assert await services.stores.objects.read(f"face_sessions/{session_id}/db/{name}") == data
    assert _originals_on_disk(settings) == []  # nor the .part file it came in as

    response = await client.get(f"/api/face/image/{image['image_id']}")
    assert response.status == 200 and await response.read() == data
    assert response.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()[:32]}"'
    ranged = await client.get(f"/api/face/image/{image['image_id']}", headers={"Range": "bytes=100-199"})
    assert ranged.status == 206 and await ranged.read() == data[100:200]
    status, body = await search(client, session_id, data)
    assert status == 200 and body["data"]["matches"][0]["image_id"] == image["image_id"]
    # a thumbnail renders from the object and is kept as an object under derived/, not on this node's disk
    thumbnail = await client.get(f"/api/face/image/{image['image_id']}", params={"w": "320"})
    assert thumbnail.status == 200
    assert files_under(SessionLayout(settings.storage).derived_dir(session_id)) == []
    [derived] = await derived_of(services, session_id)
    assert derived.startswith(f"{image['image_id']}-w320-")
    kept = await services.stores.objects.read(f"derived/{session_id}/{derived}")
    assert kept == await thumbnail.read()
    # botocore's DEBUG lines carry every signed request's headers: kept out even when DEBUG is asked for
    assert logging.getLogger("botocore").getEffectiveLevel() == logging.INFO
    assert seaweed.SECRET_KEY not in caplog.text and seaweed.ACCESS_KEY not in caplog.text
    logs.configure("INFO", "text")


async def test_deleting_an_image_or_a_session_deletes_its_objects(client, services, photos):
    session_id = await create_session(client)
    first, second = await upload(
        client, session_id, ("t1.jpg", photos["t1"].read_bytes()), ("gdp.jpg", photos["gdp"].read_bytes())
    )
    other = await create_session(client, "other")
    [kept] = await upload(client, other, ("yao.jpg", photos["yaoming"].read_bytes()))
    assert len(await objects_of(services)) == 3

    assert (await client.delete(f"/api/face/image/{first['image_id']}")).status == 200
    assert (await client.get(f"/api/face/image/{first['image_id']}")).status == 404
    assert len(await objects_of(services)) == 2
    assert (await client.delete(f"/api/face/sessions/{session_id}")).status == 200
    assert await objects_of(services) == [f"face_sessions/{kept['identity']}"]
    assert (await client.get(f"/api/face/image/{second['image_id']}")).status == 404


async def test_an_upload_killed_between_its_object_and_its_row_is_swept_at_the_next_start(
    settings, engine, photos
):
    """The state SIGKILL leaves after the object went up and before the row committed: the upload's intent,
    committed on a connection that is gone now, and an object no row names. The next start removes it."""
    async with open_services(settings, engine) as services:
        session_id = (await services.pool.fetchrow("INSERT INTO face_sessions (name) VALUES ('a') RETURNING id"))[0]
        path = f"face_sessions/{session_id}/db/0123456789abcdef_killed.jpg"
        killed = await asyncpg.connect(settings.database_url)
        await upload_intents.record(killed, path)
        await services.stores.objects.put_file(
            path, photos["gdp"], photos["gdp"].stat().st_size, hashlib.sha256(photos["gdp"].read_bytes()).digest(), "image/jpeg"
        )
        pid = await killed.fetchval("SELECT pg_backend_pid()")
        await killed.close()
        await backend_gone(services.pool, pid)
        assert await objects_of(services) == [path]

    async with open_services(settings, engine) as services:  # the next start
        assert await objects_of(services) == []
        assert await services.pool.fetchval("SELECT count(*) FROM pending_uploads") == 0


async def test_a_failure_at_commit_leaves_no_object(client, services, photos):
    """A deferred trigger fails the COMMIT after the object went up: the object goes too."""
    session_id = await create_session(client)
    await services.pool.execute(
        "CREATE FUNCTION fail_at_commit() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'disk full at commit (simulated)'; END $$"
    )
    await services.pool.execute(
        "CREATE CONSTRAINT TRIGGER fail_images AFTER INSERT ON face_session_images "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail_at_commit()"
    )
    response = await client.post(f"/api/face/sessions/{session_id}/images", data=_form("t1.jpg", photos["t1"].read_bytes()))
    assert response.status == 500
    assert await objects_of(services) == []
    assert await services.pool.fetchval("SELECT count(*) FROM pending_uploads") == 0


async def test_a_large_body_goes_up_in_parts_and_reads_back_whole(services, settings, tmp_path):
    objects = services.stores.objects
    data = os.urandom(2 * settings.s3_multipart_threshold + 12345)
    source = tmp_path / "large.bin"
    source.write_bytes(data)
    await objects.put_file("face_sessions/1/db/large.bin", source, len(data), hashlib.sha256(data).digest(), "image/png")
    head = await objects._client.head_object(Bucket=objects.bucket, Key=objects.key("face_sessions/1/db/large.bin"))
    parts = -(-len(data) // settings.s3_multipart_chunk)
    assert head["ETag"].strip('"').endswith(f"-{parts}")  # S3's mark of an object made of parts
    assert await objects.size("face_sessions/1/db/large.bin") == len(data)
    assert await objects.read("face_sessions/1/db/large.bin") == data
    assert await objects.read("face_sessions/1/db/large.bin", 5_000_000, 10) == data[5_000_000:5_000_010]
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 1000)
    # a single PUT is checked by the store against the upload's SHA-256
    with pytest.raises(ClientError):
        await objects.put_file("face_sessions/1/db/bad.bin", small, 1000, hashlib.sha256(b"other").digest(), "image/png")
    assert await objects.size("face_sessions/1/db/bad.bin") is None


async def test_a_wrong_key_fails_the_start_and_names_no_secret(settings, caplog, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-0123456789")
    with pytest.raises(ClientError) as refused:
        async with open_object_store(settings):
            pass
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "not-the-secret" not in str(refused.value) and "not-the-secret" not in caplog.text


@pytest.fixture
async def own_seaweedfs(tmp_path: Path, request: pytest.FixtureRequest):
    """A SeaweedFS of this test's own, to kill."""
    request.getfixturevalue("seaweedfs")  # the shared one puts the test key into the environment
    server = await asyncio.to_thread(seaweed.start, tmp_path / "own-seaweedfs")
    yield server
    server.stop()


async def test_the_store_going_away_is_a_503_with_retry_after_and_service_resumes(
    settings, engine, photos, aiohttp_client, own_seaweedfs
):
    settings = replace(settings, s3_endpoint=own_seaweedfs.endpoint, s3_max_attempts=2, s3_timeout_s=2.0)
    client = await aiohttp_client(create_app(settings, engine))
    session_id = await create_session(client)
    [image] = await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes()))
    url = f"/api/face/image/{image['image_id']}"
    assert (await client.get(url)).status == 200

    own_seaweedfs.process.send_signal(signal.SIGKILL)
    own_seaweedfs.process.wait()
    for response in (
        await client.get(url, headers={"Range": "bytes=0-99"}),
        await client.get(url, params={"w": "160"}),
        await client.post(f"/api/face/sessions/{session_id}/images", data=_form("gdp.jpg", photos["gdp"].read_bytes())),
    ):
        assert response.status == 503, await response.text()
        assert response.headers["Retry-After"] == str(settings.db_retry_after_s)
        assert (await response.json())["error"]["code"] == "unavailable"

    restarted = await asyncio.to_thread(seaweed.restart, own_seaweedfs)
    try:
        # the same app: its pool reconnects by itself once the store is whole again (SeaweedFS's volume
        # server joins its master a moment after the gateway answers: 503 until then, never a 500)
        for _ in range(60):
            response = await client.get(url)
            if response.status == 200:
                break
            assert response.status == 503 and "Retry-After" in response.headers
            await asyncio.sleep(0.5)
        assert response.status == 200 and await response.read() == photos["t1"].read_bytes()
        # the object the failed upload may have left, and its intent, go once the store answers (settle_later
        # retries every second: the intent can outlast the first moment the objects look right)
        pool = client.server.app[SERVICES].pool
        for _ in range(60):
            objects = len(await objects_of(client.server.app[SERVICES]))
            intents = await pool.fetchval("SELECT count(*) FROM pending_uploads")
            if objects == 1 and intents == 0:
                break
            await asyncio.sleep(0.5)
        assert (objects, intents) == (1, 0)
        [again] = await upload(client, session_id, ("gdp.jpg", photos["gdp"].read_bytes()))
        assert (await client.get(f"/api/face/image/{again['image_id']}")).status == 200
    finally:
        restarted.stop()


async def test_the_redirect_option_sends_clients_to_a_presigned_url_of_a_bounded_life(
    settings, engine, photos, aiohttp_client
):
    client = await aiohttp_client(create_app(replace(settings, s3_redirect_ttl_s=120), engine))
    data = photos["t1"].read_bytes()
    [image] = await upload(client, await create_session(client), ("t1.jpg", data))
    url = f"/api/face/image/{image['image_id']}"
    redirected = await client.get(url, allow_redirects=False)
    assert redirected.status == 308
    assert redirected.headers["Cache-Control"] == "public, max-age=60"  # never cached past the URL's life
    location = redirected.headers["Location"]
    assert location.startswith(settings.s3_endpoint) and "X-Amz-Expires=120" in location
    async with aiohttp.ClientSession() as anyone:  # no key, no credentials: the URL is the permission
        async with anyone.get(location) as response:
            assert response.status == 200 and await response.read() == data
        async with anyone.get(location, headers={"Range": "bytes=10-19"}) as response:
            assert response.status == 206 and await response.read() == data[10:20]
        async with anyone.get(location.replace("X-Amz-Expires=120", "X-Amz-Expires=999")) as response:
            assert response.status == 403  # the life is part of the signature
    # answers without a body, HEAD and derivatives stay the node's
    etag = redirected.headers.get("ETag") or (await client.head(url)).headers["ETag"]
    assert (await client.get(url, headers={"If-None-Match": etag}, allow_redirects=False)).status == 304
    assert (await client.head(url, allow_redirects=False)).status == 200
    assert (await client.get(url, params={"w": "160"}, allow_redirects=False)).status == 200


async def test_derivatives_are_objects_every_node_serves_and_deletes_remove(settings, engine, photos, aiohttp_client):
    """Two nodes on one database and one bucket, no shared disk: a thumbnail and a face crop rendered on A
    are the objects B serves (B could not render them: the original is gone by then); deleting the image, a
    forget and deleting the session remove them from the bucket, whichever node did it."""
    a = await aiohttp_client(create_app(settings, engine))
    settings_b = replace(settings, storage=settings.storage.parent / "node-b")
    b = await aiohttp_client(create_app(settings_b, engine, sweep_partial_uploads=False))
    b.session.headers.update(a.session.headers)  # the key A wrote on its first start (its hash is a row)
    services = a.server.app[SERVICES]
    session_id = await create_session(a)
    players, t1 = await upload(
        a, session_id, ("players.jpg", photos["players"].read_bytes()), ("t1.jpg", photos["t1"].read_bytes())
    )
    face_id = await services.pool.fetchval("SELECT min(id) FROM faces WHERE image_id = $1", t1["image_id"])
    rendered = {}
    for url in (f"/api/face/image/{t1['image_id']}?w=320", f"/api/face/face/{face_id}"):
        first = await a.get(url)
        assert first.status == 200 and first.headers["Vary"] == "Accept"
        rendered[url] = (await first.read(), first.headers["ETag"])
    names = await derived_of(services, session_id)
    assert len(names) == 2 and all(name.startswith(f"{t1['image_id']}-") for name in names)

    await services.stores.objects.delete(t1["identity"].join(["face_sessions/", ""]))  # no original to render from
    for url, (body, tag) in rendered.items():
        again = await b.get(url)
        assert again.status == 200 and await again.read() == body and again.headers["ETag"] == tag
        assert (await b.get(url, headers={"If-None-Match": tag})).status == 304
        ranged = await b.get(url, headers={"Range": "bytes=0-9"})
        assert ranged.status == 206 and await ranged.read() == body[:10]
    assert files_under(SessionLayout(settings_b.storage).derived_dir(session_id)) == []

    assert (await b.delete(f"/api/face/image/{t1['image_id']}")).status == 200
    assert await derived_of(services, session_id) == []

    # a forget removes the crops of the faces it erases, from the bucket
    selfie = photos["yaoming"].read_bytes()
    form = aiohttp.FormData()
    form.add_field("image", selfie, filename="me.jpg", content_type="image/jpeg")
    matched = [m["face_id"] for m in (await search(a, session_id, selfie))[1]["data"]["matches"]]
    assert (await a.get(f"/api/face/face/{matched[0]}")).status == 200
    other = await services.pool.fetchval(
        "SELECT min(id) FROM faces WHERE image_id = $1 AND id <> ALL($2::bigint[])", players["image_id"], matched
    )
    assert (await a.get(f"/api/face/face/{other}")).status == 200
    assert len(await derived_of(services, session_id)) == 2
    assert (await b.post(f"/api/face/sessions/{session_id}/forget", data=form)).status == 200
    [kept] = await derived_of(services, session_id)
    assert kept.startswith(f"{players['image_id']}-face{other}-")

    assert (await b.delete(f"/api/face/sessions/{session_id}")).status == 200
    assert await derived_of(services, session_id) == [] and await objects_of(services) == []


async def test_a_forget_while_the_store_is_down_erases_and_its_crops_go_once_the_store_is_back(
    settings, engine, photos, aiohttp_client, own_seaweedfs
):
    """The forget commits in Postgres; the store down is no reason to answer it with an error, nor to keep the
    forgotten face's crop: it is removed in the background once the store answers again."""
    settings = replace(settings, s3_endpoint=own_seaweedfs.endpoint, s3_max_attempts=2, s3_timeout_s=2.0)
    client = await aiohttp_client(create_app(settings, engine))
    services = client.server.app[SERVICES]
    session_id = await create_session(client)
    [players] = await upload(client, session_id, ("players.jpg", photos["players"].read_bytes()))
    selfie = photos["yaoming"].read_bytes()
    face_id = (await search(client, session_id, selfie))[1]["data"]["matches"][0]["face_id"]
    assert (await client.get(f"/api/face/face/{face_id}")).status == 200
    [crop] = await derived_of(services, session_id)
    assert crop.startswith(f"{players['image_id']}-face{face_id}-")

    own_seaweedfs.process.send_signal(signal.SIGKILL)
    own_seaweedfs.process.wait()
    form = aiohttp.FormData()
    form.add_field("image", selfie, filename="me.jpg", content_type="image/jpeg")
    response = await client.post(f"/api/face/sessions/{session_id}/forget", data=form)
    assert response.status == 200, await response.text()
    assert (await response.json())["data"]["faces_erased"] >= 1
    assert (await client.get(f"/api/face/face/{face_id}")).status == 404  # never served again

    restarted = await asyncio.to_thread(seaweed.restart, own_seaweedfs)
    try:
        for _ in range(90):
            with contextlib.suppress(Unavailable):  # the store still on its way up
                if await derived_of(services, session_id) == []:
                    break
            await asyncio.sleep(0.5)
        assert await derived_of(services, session_id) == []
        assert len(await objects_of(services)) == 1  # the photo stays
    finally:
        restarted.stop()
