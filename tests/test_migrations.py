"""Schema versions on a real Postgres: the stairway of migrations, a database of the release before versions,
and concurrent starts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from helpers import create_session, search, upload

from faceserve.app import create_app
from faceserve.db import migrations
from faceserve.http.appkeys import SERVICES

PREVIOUS_RELEASE_SCHEMA = Path(__file__).parent / "data" / "schema_before_versions.sql"


async def schema_snapshot(conn: asyncpg.Connection) -> dict[str, list[tuple]]:
    """What makes two schemas the same: columns, constraints, indexes and column storage of every table."""
    columns = await conn.fetch(
        "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns "
        "WHERE table_schema = 'public' ORDER BY table_name, column_name"
    )
    constraints = await conn.fetch(
        "SELECT conrelid::regclass::text AS table_name, pg_get_constraintdef(oid) AS definition "
        "FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2"
    )
    indexes = await conn.fetch("SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexdef")
    storage = await conn.fetch(
        "SELECT c.relname, a.attname, a.attstorage FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY 1, 2"
    )
    return {
        "columns": [tuple(r) for r in columns],
        "constraints": [tuple(r) for r in constraints],
        "indexes": [tuple(r) for r in indexes],
        "storage": [tuple(r) for r in storage],
    }


async def _insert_sample_rows(conn: asyncpg.Connection, step: int) -> int:
    """A session with an image and a face, as any step of the schema can hold them; returns the image id."""
    session_id = await conn.fetchval("INSERT INTO face_sessions (name) VALUES ($1) RETURNING id", f"step {step}")
    image_id = await conn.fetchval(
        "INSERT INTO face_session_images (face_session_id, file_path, stored_name, original_name, content_type, "
        "byte_size, sha256, width, height) VALUES ($1, $2, $3, 'a.jpg', 'image/jpeg', 3, $4, 1, 1) RETURNING id",
        session_id,
        f"face_sessions/{session_id}/db/a.jpg",
        "a.jpg",
        bytes([step]) * 32,
    )
    await conn.execute(
        "INSERT INTO faces (image_id, face_session_id, box, landmarks, det_score, embedding, embedding_dim) "
        "VALUES ($1, $2, '{0,0,1,1}', '{0,0,0,0,0,0,0,0,0,0}', 0.9, $3, 1)",
        image_id,
        session_id,
        b"\0\0\x80?",
    )
    return image_id


async def test_the_stairway_with_data_ends_where_a_fresh_install_does(database_url, postgres_uri):
    steps = migrations.known_migrations()
    assert [m.version for m in steps] == list(range(1, len(steps) + 1))
    stairway = await asyncpg.connect(database_url)
    try:
        images = []
        for step in steps:
            applied = await migrations.upgrade(stairway, target=step.version)
            assert [m.version for m in applied] == [step.version]
            images.append(await _insert_sample_rows(stairway, step.version))
        assert await migrations.upgrade(stairway) == []  # nothing left: a second start changes nothing
        status = await migrations.status(stairway)
        assert status.current == len(steps) and status.pending == [] and status.unknown == []
        # every row written at any step is still there, with its face
        assert await stairway.fetchval(
            "SELECT count(*) FROM face_session_images i JOIN faces f ON f.image_id = i.id WHERE i.id = ANY($1)",
            images,
        ) == len(steps)
        walked = await schema_snapshot(stairway)
    finally:
        await stairway.close()

    fresh_name = urlsplit(database_url).path.lstrip("/") + "_fresh"
    admin = await asyncpg.connect(postgres_uri)
    await admin.execute(f'CREATE DATABASE "{fresh_name}"')
    try:
        fresh = await asyncpg.connect(urlunsplit(urlsplit(database_url)._replace(path="/" + fresh_name)))
        try:
            assert [m.version for m in await migrations.upgrade(fresh)] == [m.version for m in steps]
            assert await schema_snapshot(fresh) == walked
        finally:
            await fresh.close()
    finally:
        await admin.execute(f'DROP DATABASE "{fresh_name}" WITH (FORCE)')
        await admin.close()


async def test_a_database_of_the_release_before_versions_upgrades_in_place(
    settings, engine, photos, aiohttp_client, database_url
):
    """That release applied its schema.sql at every start and kept no version; today's starts on its data."""
    old = await asyncpg.connect(database_url)
    try:
        await old.execute(PREVIOUS_RELEASE_SCHEMA.read_text())
        image_id = await _insert_sample_rows(old, 0)
    finally:
        await old.close()

    client = await aiohttp_client(create_app(settings, engine))  # its start applies the missing steps
    pool = client.server.app[SERVICES].pool
    async with pool.acquire() as conn:
        status = await migrations.status(conn)
        assert status.pending == [] and status.current == len(migrations.known_migrations())
        assert await conn.fetchval("SELECT count(*) FROM faces WHERE image_id = $1", image_id) == 1
    # and the service works on it: the old session is listed, a new one takes photos and finds a face
    sessions = (await (await client.get("/api/face/sessions")).json())["data"]["sessions"]
    assert [s["name"] for s in sessions] == ["step 0"]
    session_id = await create_session(client)
    await upload(client, session_id, ("players.jpg", photos["players"].read_bytes()))
    status_code, body = await search(client, session_id, photos["yaoming"].read_bytes())
    assert status_code == 200 and len(body["data"]["matches"]) == 1


async def test_concurrent_upgrades_apply_each_step_once(database_url):
    connections = [await asyncpg.connect(database_url) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(migrations.upgrade(conn) for conn in connections))
        versions = sorted(m.version for run in applied for m in run)
        assert versions == [m.version for m in migrations.known_migrations()]
        assert await connections[0].fetchval("SELECT count(*) FROM schema_version") == len(versions)
    finally:
        for conn in connections:
            await conn.close()


async def test_a_database_ahead_of_the_code_is_reported_not_refused(database_url, caplog):
    conn = await asyncpg.connect(database_url)
    try:
        await migrations.upgrade(conn)
        await conn.execute("INSERT INTO schema_version (version, name) VALUES (9999, 'from_the_future')")
        with caplog.at_level("WARNING"):
            assert await migrations.upgrade(conn) == []
        assert "9999_from_the_future" in caplog.text
        assert [s.version for s in (await migrations.status(conn)).unknown] == [9999]
    finally:
        await conn.close()


def test_migration_files_are_numbered_without_gaps():
    names = sorted(p.name for p in (Path(migrations.__file__).parent / "migrations").glob("*.sql"))
    assert names and all(name[:4].isdigit() for name in names)
    assert [int(name[:4]) for name in names] == list(range(1, len(names) + 1))
    assert [m.version for m in migrations.known_migrations()] == [int(name[:4]) for name in names]


async def test_live_searches_made_before_live_versions_count_after_the_upgrade(database_url):
    """Migration 0010: a session whose live searches predate it gets a version, so uploads compare with them
    (version 0 means "never had one" to the processes' caches)."""
    conn = await asyncpg.connect(database_url)
    try:
        await migrations.upgrade(conn, target=9)
        session_id = await conn.fetchval("INSERT INTO face_sessions (name) VALUES ('before') RETURNING id")
        await conn.execute(
            "INSERT INTO live_searches (face_session_id, embedding, embedding_dim, expires_at) "
            "VALUES ($1, $2, 1, now() + interval '1 hour')",
            session_id,
            b"\0\0\x80?",
        )
        await migrations.upgrade(conn, target=10)
        assert await conn.fetchval("SELECT version FROM live_versions WHERE face_session_id = $1", session_id) > 0
    finally:
        await conn.close()
