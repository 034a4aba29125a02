"""faceserve backup and restore: a populated service backed up while it runs, restored onto a fresh storage
and an empty database, answers the same searches, serves the same bytes and knows the same people; a damaged
backup is refused before anything is written."""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from helpers import create_session, search, upload

from faceserve.app import create_app
from faceserve.cli import main as cli_main
from faceserve.http.appkeys import SERVICES


@pytest.fixture
async def empty_database(postgres_uri):
    name = "faceserve_restored_" + secrets.token_hex(4)
    admin = await asyncpg.connect(postgres_uri)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit(urlsplit(postgres_uri)._replace(path="/" + name))
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _state(client, session_id: int, probe: bytes) -> dict:
    """What a client sees of a session: its images (with their bytes), a search, its people."""
    images = (await (await client.get(f"/api/face/sessions/{session_id}/images")).json())["data"]["images"]
    files = {}
    for image in images:
        response = await client.get(urlsplit(image["url"]).path, params=dict(
            pair.split("=", 1) for pair in urlsplit(image["url"]).query.split("&") if pair
        ))
        assert response.status == 200
        files[image["image_id"]] = await response.read()
    status, found = await search(client, session_id, probe)
    assert status == 200
    people = (await (await client.get(f"/api/face/sessions/{session_id}/people")).json())["data"]["people"]
    return {
        "images": [(i["image_id"], i["identity"], i["original_name"], i["faces"]) for i in images],
        "files": files,
        "matches": [(m["image_id"], round(m["distance"], 5)) for m in found["data"]["matches"]],
        "people": [(p["person_id"], p["image_count"], p["face_count"]) for p in people],
    }


async def test_a_backup_restored_elsewhere_answers_alike(
    client, settings, engine, photos, tmp_path, monkeypatch, empty_database, aiohttp_client
):
    session_id = await create_session(client, "wedding")
    await upload(client, session_id, *[(f"{n}.jpg", photos[n].read_bytes()) for n in ("players", "yaoming", "t1")])
    # the session's first people are clustered in the background after the upload answered
    await client.server.app[SERVICES].jobs.wait(("people", session_id))
    probe = photos["yaoming"].read_bytes()
    before = await _state(client, session_id, probe)
    assert before["matches"] and before["people"] and len(before["files"]) == 3

    target = tmp_path / "backup"
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    argv = ["backup", str(target), "--storage", str(settings.storage)]
    assert await asyncio.to_thread(cli_main, argv) == 0  # while the service runs
    manifest = json.loads((target / "manifest.json").read_text())
    assert "database.dump" in manifest["files"] and sum(n.startswith("photos/") for n in manifest["files"]) == 3

    restored = tmp_path / "restored"
    monkeypatch.setenv("DATABASE_URL", empty_database)
    assert await asyncio.to_thread(cli_main, ["restore", str(target), "--storage", str(restored)]) == 0
    other = await aiohttp_client(create_app(replace(settings, storage=restored, database_url=empty_database), engine))
    other.session.headers["Authorization"] = client.session.headers["Authorization"]  # the keys came along
    after = await _state(other, session_id, probe)
    assert after == before

    # a second restore onto the same storage and database is refused
    assert await asyncio.to_thread(cli_main, ["restore", str(target), "--storage", str(restored)]) == 1


async def test_a_damaged_backup_is_refused_before_anything_is_written(
    client, settings, photos, tmp_path, monkeypatch, empty_database, capsys
):
    session_id = await create_session(client, "party")
    await upload(client, session_id, ("gdp.jpg", photos["gdp"].read_bytes()))
    target = tmp_path / "backup"
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    assert await asyncio.to_thread(cli_main, ["backup", str(target), "--storage", str(settings.storage)]) == 0
    (photo,) = (target / "photos").rglob("*.jpg")
    photo.write_bytes(photo.read_bytes()[:-1] + b"\0")
    restored = tmp_path / "restored"
    monkeypatch.setenv("DATABASE_URL", empty_database)
    assert await asyncio.to_thread(cli_main, ["restore", str(target), "--storage", str(restored)]) == 1
    assert "does not match its SHA-256" in capsys.readouterr().err
    assert not (restored / "face_sessions").exists()
    conn = await asyncpg.connect(empty_database)
    try:
        assert await conn.fetchval("SELECT to_regclass('public.schema_version')") is None
    finally:
        await conn.close()
    # and a backup never overwrites one
    assert await asyncio.to_thread(cli_main, ["backup", str(target), "--storage", str(settings.storage)]) == 1
