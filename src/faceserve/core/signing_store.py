"""The secrets that sign image URLs, kept in Postgres so every worker and node signs and verifies alike.

The first start makes one. `faceserve signing rotate` adds another; it starts signing only once it is older
than the activation delay (every process reloads the keys more often than that), so no process is handed a
URL signed by a key it has not loaded yet. Older keys keep verifying until `faceserve signing retire KID`.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from .. import db
from .signing import SigningKeys


def _new_kid() -> str:
    return "k" + secrets.token_hex(4)


async def ensure_key(pool: db.Connection) -> None:
    async with pool.acquire() as conn, conn.transaction():  # type: ignore[union-attr]
        await db.lock_signing_key_creation(conn)
        if not await db.any_live_signing_key(conn):
            await db.insert_signing_key(conn, _new_kid(), secrets.token_bytes(32))


async def rotate(conn: db.Connection) -> str:
    kid = _new_kid()
    await db.insert_signing_key(conn, kid, secrets.token_bytes(32))
    return kid


async def retire(conn: db.Connection, kid: str) -> bool:
    return await db.retire_signing_key(conn, kid)


async def list_keys(conn: db.Connection) -> list[tuple[str, datetime, datetime | None]]:
    rows = await db.list_signing_keys(conn)
    return [(r["kid"], r["created_at"], r["retired_at"]) for r in rows]


async def load(conn: db.Connection, activation: timedelta) -> SigningKeys | None:
    """Every live key; the newest one older than `activation` signs (the oldest while none is)."""
    rows = await db.live_signing_keys(conn)
    if not rows:
        return None
    cutoff = datetime.now(UTC) - activation
    signer = next((r for r in rows if r["created_at"] <= cutoff), rows[-1])
    ordered = [signer, *(r for r in rows if r is not signer)]
    return SigningKeys(tuple((r["kid"], bytes(r["secret"])) for r in ordered))
