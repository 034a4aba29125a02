"""`faceserve storage migrate --to s3|file|postgres` (core/store_moves.py) on a real Postgres and a real
SeaweedFS: photos move between every pair of stores, a running app keeps serving them, a damaged original
holds its session back, and a run cut short is finished by the next."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from helpers import create_session, objects_of, stored_originals, upload

from faceserve.app import create_app
from faceserve.core import store_moves
from faceserve.http.appkeys import SERVICES


@pytest.fixture
def image_store() -> str:
    return "s3"  # the settings then name the test's bucket and prefix; each app below picks its store


async def _where(services) -> dict[int, str]:
    return {r["id"]: r["bytes_in"] for r in await services.pool.fetch("SELECT id, bytes_in FROM face_session_images")}


async def _move(services, target: str) -> store_moves.MoveReport:
    return await store_moves.move_all(services.pool, services.stores, services.storage, target)


async def test_photos_move_between_every_store_and_a_running_app_keeps_serving_them(
    settings, engine, photos, aiohttp_client
):
    on_disk = await aiohttp_client(create_app(replace(settings, image_store="file"), engine))
    in_postgres = await aiohttp_client(create_app(replace(settings, image_store="postgres"), engine))
    first, second = await create_session(on_disk), await create_session(on_disk, "second")
    [t1] = await upload(on_disk, first, ("t1.jpg", photos["t1"].read_bytes()))
    [gdp] = await upload(in_postgres, first, ("gdp.jpg", photos["gdp"].read_bytes()))
    [yao] = await upload(on_disk, second, ("yao.jpg", photos["yaoming"].read_bytes()))
    expected = {t1["image_id"]: photos["t1"], gdp["image_id"]: photos["gdp"], yao["image_id"]: photos["yaoming"]}
    services = on_disk.server.app[SERVICES]
    for image_id in expected:  # the app caches where each photo is
        assert (await on_disk.get(f"/api/face/image/{image_id}")).status == 200

    for target, moved in (("s3", 3), ("postgres", 3), ("file", 3), ("s3", 3)):
        report = await _move(services, target)
        assert (report.images_moved, report.failed) == (moved, [])
        assert set((await _where(services)).values()) == {target}
        blobs = await services.pool.fetchval("SELECT count(*) FROM image_blobs")
        assert blobs == (3 if target == "postgres" else 0)
        on_disk_now = {p for p in await stored_originals(services) if p not in await objects_of(services)}
        assert len(on_disk_now) == (3 if target == "file" else 0)
        assert len(await objects_of(services)) == (3 if target == "s3" else 0)
        for image_id, photo in expected.items():  # served from the new store by the app that cached the old
            response = await on_disk.get(f"/api/face/image/{image_id}")
            assert response.status == 200 and await response.read() == photo.read_bytes(), (target, image_id)
    assert (await _move(services, "s3")).images_moved == 0  # nothing left to do


async def test_a_damaged_original_holds_its_session_back_and_a_later_run_finishes(
    settings, engine, photos, aiohttp_client
):
    client = await aiohttp_client(create_app(replace(settings, image_store="file"), engine))
    services = client.server.app[SERVICES]
    first, second = await create_session(client), await create_session(client, "second")
    [kept, damaged] = await upload(
        client, first, ("t1.jpg", photos["t1"].read_bytes()), ("gdp.jpg", photos["gdp"].read_bytes())
    )
    [other] = await upload(client, second, ("yao.jpg", photos["yaoming"].read_bytes()))
    damaged_path = services.storage.absolute(f"face_sessions/{damaged['identity']}")
    damaged_path.write_bytes(b"not the photo that was uploaded")

    report = await _move(services, "s3")
    assert [image_id for image_id, _ in report.failed] == [damaged["image_id"]]
    assert "not the ones recorded" in report.failed[0][1]
    assert (report.sessions_switched, report.images_moved) == (1, 1)
    where = await _where(services)
    # the damaged photo's whole session stays on disk, its good photo too; the other session moved
    assert where == {kept["image_id"]: "file", damaged["image_id"]: "file", other["image_id"]: "s3"}
    assert (await client.get(f"/api/face/image/{kept['image_id']}")).status == 200

    damaged_path.write_bytes(photos["gdp"].read_bytes())  # restored from a backup
    report = await _move(services, "s3")
    assert (report.failed, report.images_moved) == ([], 2)
    assert set((await _where(services)).values()) == {"s3"}
    assert len(await objects_of(services)) == 3


async def test_the_command_moves_every_photo_and_says_what_it_did(settings, engine, photos, aiohttp_client, monkeypatch, capsys):
    client = await aiohttp_client(create_app(replace(settings, image_store="file"), engine))
    [image] = await upload(client, await create_session(client), ("t1.jpg", photos["t1"].read_bytes()))
    for name, value in (
        ("DATABASE_URL", settings.database_url),
        ("FACESERVE_STORAGE", str(settings.storage)),
        ("FACESERVE_S3_ENDPOINT", settings.s3_endpoint),
        ("FACESERVE_S3_BUCKET", settings.s3_bucket),
        ("FACESERVE_S3_PREFIX", settings.s3_prefix),
    ):
        monkeypatch.setenv(name, value)
    from faceserve.cli import main

    # the command opens its own loop and pool, as it does from a shell
    assert await asyncio.to_thread(main, ["storage", "migrate", "--to", "s3"]) == 0
    assert "images moved: 1, sessions switched: 1, failed: 0" in capsys.readouterr().out
    assert await _where(client.server.app[SERVICES]) == {image["image_id"]: "s3"}
    assert await asyncio.to_thread(main, ["storage", "migrate", "--to", "files"]) == 0
    assert await _where(client.server.app[SERVICES]) == {image["image_id"]: "file"}
