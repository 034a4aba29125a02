"""Deletes survive a crash between their commit and the removal of their files, and stay deleted.

The state a SIGKILL leaves between the commit of a delete and the removal of its files is made here by
running the delete's transaction alone (tests/test_chaos.py kills a real service instead); the next start
must remove those files, and `faceserve import` must never take a deleted photo or session in again.

The tests of what a crash leaves run against files and against objects in S3 (a real SeaweedFS): both keep
an original apart from its row, at its path.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from helpers import authorize, backend_gone, derived_of, original_exists, put_original, stored_originals

from faceserve import db, layout
from faceserve.app import create_app
from faceserve.config import Settings
from faceserve.core import tombstones
from faceserve.core.importer import import_tree
from faceserve.core.services import open_services
from faceserve.http.appkeys import SERVICES
from faceserve.index import sync as index_sync
from faceserve.vision.engine import FaceEngine


async def _upload(client: TestClient, session_id: int, name: str, data: bytes) -> dict:
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("file", data, filename=name, content_type="application/octet-stream")
    response = await client.post(f"/api/face/sessions/{session_id}/images", data=form)
    assert response.status == 201, await response.text()
    return (await response.json())["data"]["images"][0]


BY_PATH = ["file", "s3"]


async def _rows(services) -> set[str]:
    return {r["file_path"] for r in await services.pool.fetch("SELECT file_path FROM face_session_images")}


@pytest.mark.parametrize("image_store", BY_PATH)
async def test_a_delete_cut_short_after_its_commit_is_finished_at_the_next_start(
    settings: Settings, engine: FaceEngine, photos: dict[str, Path]
) -> None:
    async with TestClient(TestServer(create_app(settings, engine))) as client:
        authorize(client)
        services = client.server.app[SERVICES]
        session_id = (await (await client.post("/api/face/sessions", json={"name": "a"})).json())["data"][
            "id"
        ]
        kept = await _upload(client, session_id, "gdp.jpg", photos["gdp"].read_bytes())
        doomed = await _upload(client, session_id, "t1.jpg", photos["t1"].read_bytes())
        assert (
            await client.get(f"/api/face/image/{doomed['image_id']}?w=64")
        ).status == 200  # a derived copy
        other = (await (await client.post("/api/face/sessions", json={"name": "b"})).json())["data"]["id"]
        await _upload(client, other, "yao.jpg", photos["yaoming"].read_bytes())
        # what a delete had committed when the process was killed: rows gone, files still there
        async with services.pool.acquire() as conn, conn.transaction():
            image, face_ids = await db.delete_image_row(conn, doomed["image_id"])
            await tombstones.record_image_deleted(conn, image)
            await index_sync.announce_removed(conn, services.process_token, session_id, face_ids)
        async with services.pool.acquire() as conn, conn.transaction():
            assert await db.delete_session(conn, other)
            await tombstones.record_session_deleted(conn, other)
        root = services.storage.root
        assert len(await stored_originals(services)) == 3 and len(await _rows(services)) == 1
        assert any(name.startswith(f"{doomed['image_id']}-") for name in await derived_of(services, session_id))

    async with open_services(settings, engine) as services:  # the next start
        assert (
            await stored_originals(services)
            == await _rows(services)
            == {f"face_sessions/{session_id}/db/{kept['identity'].split('/')[-1]}"}
        )
        assert not any(name.startswith(f"{doomed['image_id']}-") for name in await derived_of(services, session_id))
        assert not (root / "face_sessions" / str(other)).exists()
        pending = await services.pool.fetchval(
            "SELECT (SELECT count(*) FROM deleted_images WHERE NOT files_removed) + "
            "       (SELECT count(*) FROM deleted_sessions WHERE NOT files_removed)"
        )
        assert pending == 0


async def test_import_never_brings_deleted_photos_or_sessions_back(
    tmp_path: Path, settings: Settings, engine: FaceEngine, photos: dict[str, Path]
) -> None:
    async with TestClient(TestServer(create_app(settings, engine))) as client:
        authorize(client)
        services = client.server.app[SERVICES]
        session_id = (await (await client.post("/api/face/sessions", json={"name": "a"})).json())["data"][
            "id"
        ]
        gone = await _upload(client, session_id, "t1.jpg", photos["t1"].read_bytes())
        await _upload(client, session_id, "gdp.jpg", photos["gdp"].read_bytes())
        dropped = (await (await client.post("/api/face/sessions", json={"name": "b"})).json())["data"]["id"]
        await _upload(client, dropped, "yao.jpg", photos["yaoming"].read_bytes())
        # an old tree (a backup of the storage) taken before the deletes
        backup = tmp_path / "backup"
        shutil.copytree(services.storage.layout.sessions_root, backup / "face_sessions")
        assert (await client.delete(f"/api/face/image/{gone['image_id']}")).status == 200
        assert (await client.delete(f"/api/face/sessions/{dropped}")).status == 200
        # the deleted photo's bytes again under another name in the old tree
        shutil.copyfile(photos["t1"], backup / "face_sessions" / str(session_id) / "db" / "renamed.jpg")
        rows_before = await _rows(services)

    async with open_services(settings, engine) as services:
        report = await import_tree(services, backup)
        assert (report.images_created, report.sessions_created, report.failed) == (0, 0, [])
        # the deleted file, its copy under another name, and the dropped session's photo
        assert report.deleted_skipped == 3
        assert await _rows(services) == rows_before
        assert await db.get_session(services.pool, dropped) is None
        assert await stored_originals(services) == rows_before


@pytest.mark.parametrize("image_store", BY_PATH)
async def test_the_same_bytes_uploaded_again_after_a_delete_are_kept(
    settings: Settings, engine: FaceEngine, photos: dict[str, Path]
) -> None:
    """A tombstone does not block a deliberate upload, and finishing old deletes never removes its file."""
    async with TestClient(TestServer(create_app(settings, engine))) as client:
        authorize(client)
        services = client.server.app[SERVICES]
        session_id = (await (await client.post("/api/face/sessions", json={"name": "a"})).json())["data"][
            "id"
        ]
        first = await _upload(client, session_id, "t1.jpg", photos["t1"].read_bytes())
        async with services.pool.acquire() as conn, conn.transaction():
            image, _ = await db.delete_image_row(conn, first["image_id"])
            await tombstones.record_image_deleted(conn, image)
        again = await _upload(client, session_id, "t1.jpg", photos["t1"].read_bytes())
        assert again["identity"] == first["identity"] and again["image_id"] != first["image_id"]

    async with open_services(settings, engine) as services:
        assert (
            await stored_originals(services) == await _rows(services) == {f"face_sessions/{again['identity']}"}
        )


@pytest.mark.parametrize("image_store", BY_PATH)
async def test_an_upload_whose_commit_answer_was_lost_keeps_its_file_only_if_its_row_exists(
    client: TestClient, services, photos: dict[str, Path]
) -> None:
    """Postgres died while an upload committed: once it answers, the file stays if the row made it."""
    from faceserve.core import upload_intents

    session_id = (await (await client.post("/api/face/sessions", json={"name": "a"})).json())["data"]["id"]
    committed = await _upload(client, session_id, "t1.jpg", photos["t1"].read_bytes())
    committed_path = f"face_sessions/{committed['identity']}"
    lost_path = layout.file_path(session_id, "0123456789abcdef_lost.jpg")
    await put_original(services, lost_path, photos["gdp"])
    for path in (committed_path, lost_path):
        await upload_intents.record(services.pool, path)  # what both uploads left when the answer was lost

    for path in (committed_path, lost_path):
        await upload_intents.settle(services.pool, services.stores, path)

    assert await stored_originals(services) == await _rows(services) == {committed_path}
    assert await services.pool.fetchval("SELECT count(*) FROM pending_uploads") == 0


@pytest.mark.parametrize("image_store", BY_PATH)
async def test_a_delete_leaves_its_file_to_an_upload_of_the_same_bytes_in_flight(
    client: TestClient, services, photos: dict[str, Path]
) -> None:
    """The same photo deleted on one node while it is uploaded again on another (the same bytes and name: the
    same path). The upload recorded its intent and puts its file there before its row commits; a delete that
    looked for a row and then removed the file would take the new upload's file with it. The delete leaves
    the file to the upload, and an upload that gives up removes it."""
    import asyncpg

    from faceserve.core import upload_intents

    session_id = (await (await client.post("/api/face/sessions", json={"name": "a"})).json())["data"]["id"]
    image = await _upload(client, session_id, "t1.jpg", photos["t1"].read_bytes())
    path = f"face_sessions/{image['identity']}"
    other_node = await asyncpg.connect(services.settings.database_url)  # its upload's connection, alive
    try:
        await upload_intents.record(other_node, path)
        assert (await client.delete(f"/api/face/image/{image['image_id']}")).status == 200
        assert await original_exists(services, path), "the delete removed the file of an upload in flight"

        await upload_intents.give_up(services.pool, services.stores, path)  # that upload fails after all
        assert not await original_exists(services, path)
        assert await services.pool.fetchval("SELECT count(*) FROM pending_uploads") == 0
    finally:
        await other_node.close()


async def test_an_upload_records_its_intent_only_between_removals_of_its_path(client: TestClient, services) -> None:
    """A removal decides and removes under the path's lock; an upload of that path waits for it to record its
    intent (and only then puts its file in place), so no removal decided before the intent removes after."""
    import asyncio

    import asyncpg

    from faceserve.core import upload_intents

    path = layout.file_path(1, "0123456789abcdef_same.jpg")
    other_node = await asyncpg.connect(services.settings.database_url)
    try:
        async with services.pool.acquire() as conn, conn.transaction():
            await db.lock_path(conn, path)  # a removal deciding
            recording = asyncio.ensure_future(upload_intents.record(other_node, path))
            await asyncio.sleep(0.5)
            assert not recording.done(), "the upload recorded its intent while a removal of its path decided"
            assert not await db.path_taken(conn, path)
        await asyncio.wait_for(recording, 5)
        async with services.pool.acquire() as conn, conn.transaction():
            await db.lock_path(conn, path)
            assert await db.path_taken(conn, path)  # the next removal sees it
    finally:
        await other_node.close()


async def test_a_sweep_leaves_a_dead_delete_s_file_to_an_upload_that_began_during_the_sweep(
    client: TestClient, services, photos: dict[str, Path]
) -> None:
    """A node killed between a delete's commit and its file's removal; the next start's sweep finishes that
    delete while an upload of the same bytes, on a connection opened after the sweep began, is putting its
    file in place: the sweep judges the upload's writer by the backends alive now, not when it began."""
    import asyncpg

    from faceserve.core import upload_intents

    session_id = (await (await client.post("/api/face/sessions", json={"name": "a"})).json())["data"]["id"]
    image = await _upload(client, session_id, "t1.jpg", photos["t1"].read_bytes())
    path = f"face_sessions/{image['identity']}"
    dsn = services.settings.database_url
    killed = await asyncpg.connect(dsn)
    async with killed.transaction():
        record, _ = await db.delete_image_row(killed, image["image_id"])
        await tombstones.record_image_deleted(killed, record)
    killed_pid = await killed.fetchval("SELECT pg_backend_pid()")
    await killed.close()
    await backend_gone(services.pool, killed_pid)

    uploader = None
    try:
        async with services.pool.acquire() as conn, conn.transaction():
            await db.lock_sweeps(conn)
            [pending] = await db.abandoned_image_removals(conn)  # the sweep has read which backends live
            uploader = await asyncpg.connect(dsn)  # an upload on another node, begun after that
            await upload_intents.record(uploader, path)
            assert not await tombstones.remove_file_unless_taken(conn, services.stores, pending.file_path)
        assert services.storage.absolute(path).is_file(), "the sweep removed the file of an upload in flight"
    finally:
        if uploader is not None:
            await uploader.close()


async def test_a_removal_waits_for_an_upload_recording_its_path(client: TestClient, services, photos) -> None:
    """The other half of the path's lock: while an upload is recording its intent, a removal of that path
    waits, and then sees the intent and leaves the file."""
    import asyncio

    import asyncpg

    path = layout.file_path(1, "0123456789abcdef_same.jpg")
    services.storage.absolute(path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(photos["t1"], services.storage.absolute(path))
    uploader = await asyncpg.connect(services.settings.database_url)
    try:
        async with services.pool.acquire() as conn:
            async with uploader.transaction():  # upload_intents.record's statement, stopped halfway
                await db.lock_path(uploader, path)
                removing = asyncio.ensure_future(tombstones.remove_file_unless_taken(conn, services.stores, path))
                await asyncio.sleep(0.5)
                assert not removing.done(), "a removal decided while an upload was recording its path"
                await db.insert_upload_intent(uploader, path)
            assert await asyncio.wait_for(removing, 5) is False
        assert services.storage.absolute(path).is_file()
    finally:
        await uploader.close()
