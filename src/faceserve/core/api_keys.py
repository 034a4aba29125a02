"""API keys: made, found, listed and revoked. Used by the HTTP layer, the CLI and the first start alike.

A key is "fsk_" + 43 characters of base64url (256 random bits). Only its SHA-256 is stored: a key that
random needs no slow hash, and the row is found by the key's prefix (not secret, shown in lists) and then
compared in constant time, so no timing tells how much of a guessed key was right.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from .. import db

log = logging.getLogger(__name__)

SCOPES = ("admin", "write", "search")
KEY_MARK = "fsk_"
PREFIX_LENGTH = len(KEY_MARK) + 8  # "fsk_" and 48 random bits: unique enough to find the row, useless to guess
_KEY_SHAPE = re.compile(r"fsk_[A-Za-z0-9_-]{43}")
BOOTSTRAP_FILE = "admin-key"


@dataclass(frozen=True)
class ApiKey:
    id: int
    prefix: str
    name: str
    scopes: tuple[str, ...]
    session_ids: tuple[int, ...] | None  # None: every session
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    def live(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def has_scope(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def sees(self, session_id: int) -> bool:
        return self.session_ids is None or session_id in self.session_ids

    def as_json(self) -> dict:
        def iso(moment: datetime | None) -> str | None:
            return None if moment is None else moment.isoformat()

        return {
            "prefix": self.prefix,
            "name": self.name,
            "scopes": list(self.scopes),
            "sessions": None if self.session_ids is None else list(self.session_ids),
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "last_used_at": iso(self.last_used_at),
            "revoked_at": iso(self.revoked_at),
        }


def _record(row: asyncpg.Record) -> ApiKey:
    values = dict(row)
    values["scopes"] = tuple(values["scopes"])
    values["session_ids"] = None if values["session_ids"] is None else tuple(values["session_ids"])
    return ApiKey(**values)


def new_key_text() -> str:
    return KEY_MARK + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def hash_of(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


# as long as a session may last (expires_in_days): 9999999d ran past the year 9999, an OverflowError and a 500
MAX_KEY_LIFETIME = timedelta(days=36500)


def parse_duration(text: str) -> timedelta:
    """'30d', '12h', '90m' or '45s' -> a positive timedelta of at most MAX_KEY_LIFETIME."""
    match = re.fullmatch(r"([1-9][0-9]{0,6})([dhms])", text.strip(), re.ASCII)
    if not match:
        raise ValueError("a duration looks like 30d, 12h, 90m or 45s")
    unit = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}[match.group(2)]
    lifetime = timedelta(**{unit: int(match.group(1))})
    if lifetime > MAX_KEY_LIFETIME:
        raise ValueError(f"a key lives at most {MAX_KEY_LIFETIME.days}d")
    return lifetime


def check_scopes(scopes: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if not scopes or unknown:
        raise ValueError(f"scopes must be one or more of {', '.join(SCOPES)}")
    return tuple(s for s in SCOPES if s in scopes)


async def create(
    conn: db.Connection,
    scopes: list[str] | tuple[str, ...],
    name: str = "",
    session_ids: list[int] | tuple[int, ...] | None = None,
    expires_in: timedelta | None = None,
) -> tuple[str, ApiKey]:
    """A new key: its text (shown once, never stored) and its record."""
    scopes = check_scopes(scopes)
    sessions = None if session_ids is None else sorted({int(s) for s in session_ids})
    if sessions is not None and not sessions:
        raise ValueError("a key bound to sessions needs at least one session id")
    expires_at = None if expires_in is None else datetime.now(UTC) + expires_in
    while True:
        text = new_key_text()
        try:
            row = await db.insert_api_key(
                conn, text[:PREFIX_LENGTH], hash_of(text), name, list(scopes), sessions, expires_at
            )
        except asyncpg.UniqueViolationError:  # a prefix taken already: 2^-48 per key, simply draw again
            continue
        return text, _record(row)


async def find(conn: db.Connection, key: str) -> ApiKey | None:
    """The record of a presented key (live or not), or None when no key has this text."""
    if not _KEY_SHAPE.fullmatch(key):
        return None
    row = await db.api_key_with_hash(conn, key[:PREFIX_LENGTH])
    if row is None:
        return None
    if not hmac.compare_digest(bytes(row["key_hash"]), hash_of(key)):
        return None
    values = dict(row)
    del values["key_hash"]
    return _record(values)  # type: ignore[arg-type]


async def list_keys(conn: db.Connection) -> list[ApiKey]:
    return [_record(r) for r in await db.list_api_keys(conn)]


async def get(conn: db.Connection, prefix: str) -> ApiKey | None:
    row = await db.get_api_key(conn, prefix)
    return None if row is None else _record(row)


async def revoke(conn: db.Connection, prefix: str) -> ApiKey | None:
    """Revoked from now on, in every process: each drops the key from its cache when told (KeyCache)."""
    row = await db.revoke_api_key(conn, prefix)
    return None if row is None else _record(row)


async def record_last_used(conn: db.Connection, used: dict[str, float]) -> None:
    """One statement for every key used since the last flush (prefix -> unix time)."""
    if not used:
        return
    prefixes = list(used)
    moments = [datetime.fromtimestamp(used[p], UTC) for p in prefixes]
    await db.record_keys_last_used(conn, prefixes, moments)


def _write_private(path: Path, text: str) -> None:
    """Mode 0600 from the first byte (no moment where another user could read it), then renamed in."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (text + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(partial, 0o600)
    os.replace(partial, path)


async def bootstrap(pool: asyncpg.Pool, storage_root: Path) -> Path | None:
    """With no key at all, make an admin key and write it to <storage>/admin-key; returns that path then.
    Deleting the file later revokes nothing: it is only how the first key reaches its owner."""
    async with pool.acquire() as conn, conn.transaction():
        await db.lock_key_bootstrap(conn)
        if await db.any_api_key(conn):
            return None
        text, _ = await create(conn, ["admin"], name="bootstrap admin")
        path = storage_root / BOOTSTRAP_FILE
        await asyncio.to_thread(storage_root.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(_write_private, path, text)  # in the transaction: no file, no key
    log.warning("no API key existed: an admin key was written to %s (mode 0600)", path)
    return path


class KeyCache:
    """Presented key text -> record, for a few seconds, so a request costs no query; last uses are gathered
    here and written in one statement per flush. A revocation anywhere is announced through Postgres and
    forgotten here at once (forget(), http/access.py); ttl_s bounds how long a record lives when that
    announcement was lost (clear() after the listening connection comes back)."""

    def __init__(self, ttl_s: float, capacity: int = 10_000) -> None:
        self._ttl_s = ttl_s
        self._capacity = capacity
        self._entries: dict[bytes, tuple[float, ApiKey | None]] = {}
        # counts forget() and clear(): a lookup whose query raced one of them keeps its answer uncached
        self._generation = 0
        self.used: dict[str, float] = {}

    async def lookup(self, conn: db.Connection, key: str) -> ApiKey | None:
        digest = hash_of(key)
        now = time.monotonic()
        hit = self._entries.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        generation = self._generation
        record = await find(conn, key)
        if generation != self._generation:
            return record  # read before a revocation was announced, perhaps: not to be kept
        if len(self._entries) >= self._capacity:
            self._entries.clear()  # a flood of made-up keys must not grow memory
        self._entries[digest] = (now + self._ttl_s, record)
        return record

    def knows(self, key: str) -> bool:
        """Whether this key's record is cached here as a key that exists (no query needed to answer it)."""
        hit = self._entries.get(hash_of(key))
        return hit is not None and hit[0] > time.monotonic() and hit[1] is not None

    def touch(self, record: ApiKey) -> None:
        self.used[record.prefix] = time.time()

    def forget(self, prefix: str) -> None:
        self._generation += 1
        self._entries = {d: e for d, e in self._entries.items() if e[1] is None or e[1].prefix != prefix}

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()

    async def flush(self, conn: db.Connection) -> None:
        used, self.used = self.used, {}
        try:
            await record_last_used(conn, used)
        except BaseException:
            for prefix, moment in used.items():  # kept for the next flush
                self.used[prefix] = max(moment, self.used.get(prefix, 0.0))
            raise
