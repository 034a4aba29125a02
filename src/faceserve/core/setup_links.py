"""One-time setup links: `http://host:port/#setup=<token>` signs an organiser's browser in.

The page sends the token once (POST /api/face/setup) and gets a new admin key back, which that browser
keeps. A token works once and for SETUP_LINK_TTL_H hours; only its SHA-256 is stored, as for keys.
"""

from __future__ import annotations

import base64
import re
import secrets
from datetime import UTC, datetime, timedelta

import asyncpg

from .. import db
from ..config import Settings
from ..errors import SetupLinkInvalid
from . import api_keys

TOKEN_MARK = "fst_"
_TOKEN_SHAPE = re.compile(r"fst_[A-Za-z0-9_-]{43}")


async def create_token(conn: db.Connection, ttl_h: float) -> str:
    """A new token's text (never stored: only its hash)."""
    text = TOKEN_MARK + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    await db.insert_setup_token(conn, api_keys.hash_of(text), datetime.now(UTC) + timedelta(hours=ttl_h))
    return text


def page_url(settings: Settings) -> str:
    """Where a browser finds the page: PUBLIC_BASE_URL, else this host's port (localhost for a wildcard
    address, which no browser can open)."""
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/") + "/"
    host = "localhost" if settings.host in ("0.0.0.0", "::", "") else settings.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.port}/"


def link(settings: Settings, token: str) -> str:
    return f"{page_url(settings)}#setup={token}"


async def exchange(pool: asyncpg.Pool, token: str) -> tuple[str, api_keys.ApiKey]:
    """The token used up, and a new admin key for the browser that presented it (both or neither)."""
    if not _TOKEN_SHAPE.fullmatch(token):
        raise SetupLinkInvalid("this setup link is not valid: print a new one with: faceserve setup-link")
    async with pool.acquire() as conn, conn.transaction():
        if not await db.use_setup_token(conn, api_keys.hash_of(token)):
            raise SetupLinkInvalid(
                "this setup link was used already or has expired: print a new one with: faceserve setup-link"
            )
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        return await api_keys.create(conn, ["admin"], name=f"browser signed in by a setup link, {stamp}")
