"""`faceserve import` of an old tree, run twice; and a restart on the same storage finds everything."""

from __future__ import annotations

import shutil
from dataclasses import replace

from aiohttp.test_utils import TestClient, TestServer
from helpers import authorize, copy_photo, create_session, files_under, search, upload

from faceserve import db
from faceserve.app import create_app
from faceserve.cli import main as cli_main
from faceserve.core.importer import import_tree
from faceserve.core.services import open_services
from faceserve.http.appkeys import SERVICES


def _old_tree(root, photos):
    sessions = root / "face_sessions"
    copy_photo(photos["t1"], sessions / "3" / "db" / "party_001.jpg")
    copy_photo(photos["gdp"], sessions / "3" / "db" / "party 002.JPG")
    copy_photo(photos["t1"], sessions / "3" / "db" / "copy_of_001.jpg")  # same bytes as party_001
    (sessions / "3" / "db" / "notes.txt").write_text("not a photo")
    copy_photo(photos["yaoming"], sessions / "8" / "db" / "yao.jpg")
    (sessions / "not-a-session").mkdir()
    return root


async def _snapshot(services):
    async with services.pool.acquire() as conn:
        images = await conn.fetch("SELECT id, file_path, sha256 FROM face_session_images ORDER BY id")
        faces = await conn.fetchval("SELECT count(*) FROM faces")
        sessions = await conn.fetch("SELECT id, name FROM face_sessions ORDER BY id")
    return [tuple(r) for r in images], faces, [tuple(r) for r in sessions], files_under(services.storage.root)


async def test_import_twice_changes_nothing_the_second_time(tmp_path, photos, settings, engine):
    source = _old_tree(tmp_path / "old", photos)
    async with open_services(settings, engine) as services:
        first = await import_tree(services, source)
        # copy_of_001.jpg and party_001.jpg hold the same bytes: one image, the second name a duplicate
        assert (first.sessions_created, first.images_created, first.duplicates, first.already_present) == (2, 3, 1, 0)
        assert [label for label, _ in first.failed] == ["3/db/notes.txt"]
        after_first = await _snapshot(services)
        # readable names: the folder imported, with the old id where it held several sessions
        assert [name for _, name in after_first[2]] == ["old 3", "old 8"]
        image = await db.find_image_by_path(services.pool, "face_sessions/3/db/party 002.JPG")
        assert image is not None and image.face_count == 5 and image.content_type == "image/jpeg"
        # each imported face is measured and marked as an upload's is (gdp.jpg: a profile and two tiny faces)
        marks = await services.pool.fetch("SELECT quality FROM faces WHERE image_id = $1 ORDER BY id", image.id)
        assert sorted(r["quality"] for r in marks) == ["ok", "ok", "too_small", "too_small", "turned"]

        second = await import_tree(services, source)
        assert (second.sessions_created, second.images_created) == (0, 0)
        assert await _snapshot(services) == after_first
        # new sessions made later do not collide with imported ids
        created = await db.create_session(services.pool, "new")
        assert created.id > 8


async def test_imported_names_keep_old_urls_working(tmp_path, photos, settings, engine, aiohttp_client):
    source = _old_tree(tmp_path / "old", photos)
    async with open_services(settings, engine) as services:
        await import_tree(services, source)
    client = await aiohttp_client(create_app(settings, engine))
    response = await client.get("/storage/face_sessions/3/db/party_001.jpg")  # follows the 301
    assert response.status == 200, await response.text()
    assert await response.read() == photos["t1"].read_bytes()
    resolved = await (await client.get("/api/face/resolve", params={"path": "8/db/yao.jpg"})).json()
    assert resolved["success"] is True
    status, body = await search(client, 3, photos["t1"].read_bytes())
    # files are taken in name order: copy_of_001.jpg came first and holds the bytes; party_001.jpg is an alias
    assert status == 200 and body["data"]["matches"][0]["identity"] == "3/db/copy_of_001.jpg"


async def test_import_in_place_of_the_storage_folder(photos, settings, engine, capsys):
    """The operator copies the old tree into storage/ and imports it where it lies."""
    _old_tree(settings.storage, photos)
    shutil.rmtree(settings.storage / "face_sessions" / "not-a-session")
    before = files_under(settings.storage / "face_sessions")
    argv = ["import", str(settings.storage), "--storage", str(settings.storage)]
    import os

    os.environ["DATABASE_URL"] = settings.database_url
    os.environ["FACESERVE_MODELS_DIR"] = str(settings.models_dir)
    try:
        # notes.txt fails to import, every time: the exit code says so
        assert await _run_cli(argv) == 1
        assert "images imported: 3, duplicates: 1, already present: 0, failed: 1" in capsys.readouterr().out
        assert await _run_cli(argv) == 1
        assert "images imported: 0, duplicates: 0, already present: 4, failed: 1" in capsys.readouterr().out
    finally:
        del os.environ["DATABASE_URL"], os.environ["FACESERVE_MODELS_DIR"]
    assert files_under(settings.storage / "face_sessions") == before


async def _run_cli(argv):
    import asyncio

    return await asyncio.to_thread(cli_main, argv)


async def test_restart_on_the_same_storage_finds_everything(settings, engine, photos):
    """A new process finds every photo and answers searches as before. Without preloading (the saved indexes
    are loaded in the background at start by default, so whether one is in memory yet would be a race) it
    opens the session's index on first use."""
    async with TestClient(TestServer(create_app(settings, engine))) as first:
        authorize(first)
        session_id = await create_session(first)
        [players, _] = await upload(
            first, session_id, ("players.jpg", photos["players"].read_bytes()), ("t1.jpg", photos["t1"].read_bytes())
        )
        status, before = await search(first, session_id, photos["yaoming"].read_bytes())
        assert status == 200

    async with TestClient(TestServer(create_app(replace(settings, index_preload=False), engine))) as second:
        authorize(second)
        services = second.server.app[SERVICES]
        assert not services.indexes.is_loaded(session_id)
        status, after = await search(second, session_id, photos["yaoming"].read_bytes())
        assert status == 200
        def without_url(matches):
            return [{k: v for k, v in m.items() if k not in ("url", "face_url")} for m in matches]

        assert without_url(after["data"]["matches"]) == without_url(before["data"]["matches"])
        assert after["data"]["matches"][0]["image_id"] == players["image_id"]
        response = await second.get(f"/api/face/image/{players['image_id']}")
        assert await response.read() == photos["players"].read_bytes()
