"""Schema versions: numbered SQL files in db/migrations/, applied once each, recorded in schema_version.

Every start applies what is missing under one advisory lock, so several workers or nodes starting together
apply each step once; `faceserve db upgrade` does the same by hand and `faceserve db status` shows where a
database stands. Steps only ever add: a node of the previous release keeps working against a database one
step ahead during a rolling upgrade, so a database newer than the code is reported, not refused.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

import asyncpg

from . import locks

log = logging.getLogger(__name__)

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@dataclass(frozen=True)
class AppliedStep:
    version: int
    name: str
    applied_at: datetime


@dataclass(frozen=True)
class SchemaStatus:
    applied: list[AppliedStep]
    pending: list[Migration]
    # versions recorded in the database that this release does not know (a newer release applied them)
    unknown: list[AppliedStep]

    @property
    def current(self) -> int:
        return max((step.version for step in self.applied), default=0)


def known_migrations() -> list[Migration]:
    """The package's migration files, in order; numbered 0001, 0002, ... without gaps."""
    folder = resources.files("faceserve.db").joinpath("migrations")
    migrations = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            migrations.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    migrations.sort(key=lambda m: m.version)
    if [m.version for m in migrations] != list(range(1, len(migrations) + 1)):
        raise RuntimeError(f"migration files must be numbered 1..n without gaps: {[m.version for m in migrations]}")
    return migrations


async def _applied(conn: asyncpg.Connection) -> list[AppliedStep]:
    if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
        return []
    rows = await conn.fetch("SELECT version, name, applied_at FROM schema_version ORDER BY version")
    return [AppliedStep(r["version"], r["name"], r["applied_at"]) for r in rows]


async def status(conn: asyncpg.Connection) -> SchemaStatus:
    applied = await _applied(conn)
    known = known_migrations()
    done = {step.version for step in applied}
    known_versions = {m.version for m in known}
    return SchemaStatus(
        applied=[step for step in applied if step.version in known_versions],
        pending=[m for m in known if m.version not in done],
        unknown=[step for step in applied if step.version not in known_versions],
    )


async def upgrade(
    conn: asyncpg.Connection, target: int | None = None, timeout: float | None = None
) -> list[Migration]:
    """Apply the missing steps up to target (all by default), each in its own transaction, under the lock.
    Returns the steps applied by this call (none when another process got there first). timeout: for the
    wait for the lock and for a step (the connection's command timeout when None)."""
    applied_now: list[Migration] = []
    for migration in known_migrations():
        if target is not None and migration.version > target:
            break
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", locks.SCHEMA, timeout=timeout)
            await conn.execute(_VERSION_TABLE)
            if await conn.fetchval("SELECT 1 FROM schema_version WHERE version = $1", migration.version):
                continue
            log.info("applying schema migration %04d_%s", migration.version, migration.name)
            await conn.execute(migration.sql, timeout=timeout)
            await conn.execute(
                "INSERT INTO schema_version (version, name) VALUES ($1, $2)", migration.version, migration.name
            )
            applied_now.append(migration)
    newer = (await status(conn)).unknown
    if newer:
        log.warning(
            "the database has schema steps this release does not know (%s): a newer release applied them",
            ", ".join(f"{step.version:04d}_{step.name}" for step in newer),
        )
    return applied_now


async def migrate(pool: asyncpg.Pool, timeout: float | None = None) -> SchemaStatus:
    """Bring the database's schema to this release's version on one of the pool's connections (upgrade), as
    every start does before its first query; where the schema stands after."""
    async with pool.acquire() as conn:
        await upgrade(conn, timeout=timeout)
        return await status(conn)
