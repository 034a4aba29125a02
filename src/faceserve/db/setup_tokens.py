"""Table setup_tokens: one-time tokens of setup links, by their SHA-256 (core/setup_links.py)."""

from __future__ import annotations

from datetime import datetime

from .pool import Connection


async def insert_setup_token(conn: Connection, token_hash: bytes, expires_at: datetime) -> None:
    await conn.execute("INSERT INTO setup_tokens (token_hash, expires_at) VALUES ($1, $2)", token_hash, expires_at)


async def use_setup_token(conn: Connection, token_hash: bytes) -> bool:
    """Marks the token used; False when no live unused token has this hash (one statement: two browsers
    racing with the same link cannot both win)."""
    used = await conn.fetchval(
        "UPDATE setup_tokens SET used_at = now() "
        "WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING id",
        token_hash,
    )
    return used is not None
