"""Table api_keys: API keys, by their prefix; only a key's SHA-256 is kept (core/api_keys.py).

A change that takes access away (revoke) is announced on API_KEYS_CHANNEL in the statement that makes it,
with the key's prefix as payload: every process drops that key from its cache at once (http/access.py).
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from . import locks
from .pool import Connection

API_KEYS_CHANNEL = "faceserve_api_keys"

_COLUMNS = "id, prefix, name, scopes, session_ids, created_at, expires_at, last_used_at, revoked_at"


async def insert_api_key(
    conn: Connection,
    prefix: str,
    key_hash: bytes,
    name: str,
    scopes: list[str],
    session_ids: list[int] | None,
    expires_at: datetime | None,
) -> asyncpg.Record:
    """The new key's row; asyncpg.UniqueViolationError when the prefix is taken."""
    return await conn.fetchrow(
        f"INSERT INTO api_keys (prefix, key_hash, name, scopes, session_ids, expires_at) "
        f"VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}",
        prefix, key_hash, name, scopes, session_ids, expires_at,
    )  # fmt: skip


async def api_key_with_hash(conn: Connection, prefix: str) -> asyncpg.Record | None:
    """The row with its key_hash, for checking a presented key."""
    return await conn.fetchrow(f"SELECT {_COLUMNS}, key_hash FROM api_keys WHERE prefix = $1", prefix)


async def get_api_key(conn: Connection, prefix: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE prefix = $1", prefix)


async def list_api_keys(conn: Connection) -> list[asyncpg.Record]:
    return await conn.fetch(f"SELECT {_COLUMNS} FROM api_keys ORDER BY id")


async def revoke_api_key(conn: Connection, prefix: str) -> asyncpg.Record | None:
    """Revoked now (or kept revoked when it was), and announced to every process at commit."""
    return await conn.fetchrow(
        f"WITH revoked AS (UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE prefix = $1 "
        f"RETURNING {_COLUMNS}) "
        f"SELECT revoked.* FROM revoked, LATERAL pg_notify($2, revoked.prefix)",
        prefix,
        API_KEYS_CHANNEL,
    )


async def revoke_session_keys(conn: Connection, session_id: int) -> list[str]:
    """Keys bound to this session alone (its guest links) revoked with it, each announced like a revoke."""
    rows = await conn.fetch(
        "WITH revoked AS (UPDATE api_keys SET revoked_at = now() "
        "WHERE session_ids = ARRAY[$1]::bigint[] AND revoked_at IS NULL RETURNING prefix) "
        "SELECT revoked.prefix FROM revoked, LATERAL pg_notify($2, revoked.prefix)",
        session_id,
        API_KEYS_CHANNEL,
    )
    return [r["prefix"] for r in rows]


async def record_keys_last_used(conn: Connection, prefixes: list[str], moments: list[datetime]) -> None:
    """One statement for every key used since the last flush."""
    await conn.execute(
        "UPDATE api_keys k SET last_used_at = GREATEST(k.last_used_at, u.at) "
        "FROM unnest($1::text[], $2::timestamptz[]) AS u(prefix, at) WHERE k.prefix = u.prefix",
        prefixes,
        moments,
    )


async def lock_key_bootstrap(conn: asyncpg.Connection) -> None:
    """Inside a transaction: the one process that may make the first admin key, until it commits."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", locks.KEY_BOOTSTRAP)  # two workers starting at once make one bootstrap key


async def any_api_key(conn: Connection) -> bool:
    return await conn.fetchval("SELECT EXISTS (SELECT 1 FROM api_keys)")
