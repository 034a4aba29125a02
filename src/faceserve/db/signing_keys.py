"""Table url_signing_keys: the secrets that sign image URLs, shared by every process (core/signing_store.py).

Every change (a key made, rotated in or retired) is announced on SIGNING_KEYS_CHANNEL in the statement or
transaction that makes it: every process reloads the live keys at once (http/access.py).
"""

from __future__ import annotations

import asyncpg

from . import locks
from .pool import Connection

SIGNING_KEYS_CHANNEL = "faceserve_signing_keys"


async def lock_signing_key_creation(conn: asyncpg.Connection) -> None:
    """Inside a transaction: the one process that may make the first key, until it commits."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", locks.SIGNING_KEY_CREATE)  # workers starting together make one key, not one each


async def any_live_signing_key(conn: Connection) -> bool:
    return await conn.fetchval("SELECT EXISTS (SELECT 1 FROM url_signing_keys WHERE retired_at IS NULL)")


async def insert_signing_key(conn: Connection, kid: str, secret: bytes) -> None:
    """A new key, announced to every process at commit."""
    await conn.execute(
        "WITH added AS (INSERT INTO url_signing_keys (kid, secret) VALUES ($1, $2) RETURNING kid) "
        "SELECT pg_notify($3, '') FROM added",
        kid,
        secret,
        SIGNING_KEYS_CHANNEL,
    )


async def retire_signing_key(conn: Connection, kid: str) -> bool:
    """Retired now (or kept retired when it was), announced at commit; False when no key has this kid."""
    done = await conn.fetchval(
        "WITH retired AS (UPDATE url_signing_keys SET retired_at = COALESCE(retired_at, now()) WHERE kid = $1 "
        "RETURNING kid) "
        "SELECT retired.kid FROM retired, LATERAL pg_notify($2, '')",
        kid,
        SIGNING_KEYS_CHANNEL,
    )
    return done is not None


async def list_signing_keys(conn: Connection) -> list[asyncpg.Record]:
    """kid, created_at, retired_at of every key, oldest first."""
    return await conn.fetch("SELECT kid, created_at, retired_at FROM url_signing_keys ORDER BY created_at")


async def live_signing_keys(conn: Connection) -> list[asyncpg.Record]:
    """kid, secret, created_at of every key not retired, newest first."""
    return await conn.fetch(
        "SELECT kid, secret, created_at FROM url_signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC"
    )
