"""faceserve keys ..., signing ... and setup-link: straight to the database, so they work while a server
runs on the same storage (the embedded Postgres is shared, not started twice) and on another host alike."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime

import asyncpg

from .. import db
from ..config import Settings
from ..core import api_keys, setup_links, signing_store


def _when(moment: datetime | None, missing: str = "-") -> str:
    """One time format in every listing: minutes, in UTC."""
    return missing if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    async with AsyncExitStack() as stack:
        dsn = await stack.enter_async_context(db.database_uri(settings))
        pool = await db.create_pool(dsn, 1, 2)
        stack.push_async_callback(pool.close)
        await db.migrate(pool, settings.db_bulk_timeout_s)  # a fresh storage works too
        yield pool


def add_commands(commands: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    keys = commands.add_parser("keys", help="API keys: create, list, revoke")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key; prints it alone on the last line (shown once)")
    create.add_argument("--scope", action="append", choices=api_keys.SCOPES, help="repeatable (default search)")
    create.add_argument("--session", action="append", type=int, help="bind to this session id (repeatable)")
    create.add_argument("--expires-in", help="e.g. 30d, 12h (default: never)")
    create.add_argument("--name", default="", help="what the key is for")
    common(create)
    listing = actions.add_parser("list", help="every key: prefix, name, scopes, sessions, dates")
    common(listing)
    revoke = actions.add_parser("revoke", help="revoke the key with this prefix")
    revoke.add_argument("prefix")
    common(revoke)
    signing = commands.add_parser(
        "signing", help="the keys that sign image URLs and seal live tokens: rotate, retire, list"
    )
    signing_actions = signing.add_subparsers(dest="action", required=True)
    common(signing_actions.add_parser("rotate", help="add a new signing key (signs after the activation delay)"))
    retire = signing_actions.add_parser(
        "retire", help="stop a key verifying: its URLs answer 403 and its live tokens 400 from then on"
    )
    retire.add_argument("kid")
    common(retire)
    common(signing_actions.add_parser("list", help="key ids and dates (never the secrets)"))
    setup = commands.add_parser(
        "setup-link", help="print a one-time link that signs a browser in to the page as an admin"
    )
    setup.add_argument("--port", type=int, help="the port the service listens on (default 8000)")
    setup.add_argument("--public-base-url", help="the address browsers reach the service at")
    common(setup)


async def run_keys(settings: Settings, args: argparse.Namespace) -> int:
    async with database(settings) as pool:
        if args.action == "create":
            try:
                lifetime = None if args.expires_in is None else api_keys.parse_duration(args.expires_in)
                text, record = await api_keys.create(
                    pool, args.scope or ["search"], args.name, args.session, lifetime
                )
            except ValueError as exc:
                print(exc)
                return 2
            print(f"prefix {record.prefix}, scopes {','.join(record.scopes)}, "
                  f"sessions {'all' if record.session_ids is None else ','.join(map(str, record.session_ids))}, "
                  f"expires {_when(record.expires_at, 'never')}; the key (shown once):")
            print(text)
            return 0
        if args.action == "list":
            for key in await api_keys.list_keys(pool):
                state = "revoked" if key.revoked_at else "live"
                sessions = "all" if key.session_ids is None else ",".join(map(str, key.session_ids))
                print(
                    f"{key.prefix}  {state:<7} scopes={','.join(key.scopes)} sessions={sessions} "
                    f"name={key.name!r} created={_when(key.created_at)} "
                    f"last_used={_when(key.last_used_at)} expires={_when(key.expires_at, 'never')}"
                )
            return 0
        revoked = await api_keys.revoke(pool, args.prefix)
        if revoked is None:
            print(f"no key has the prefix {args.prefix!r}")
            return 1
        print(f"revoked {revoked.prefix} (running servers stop accepting it within FACESERVE_API_KEY_CACHE_S)")
        return 0


async def run_signing(settings: Settings, args: argparse.Namespace) -> int:
    async with database(settings) as pool:
        if args.action == "rotate":
            kid = await signing_store.rotate(pool)
            print(f"added signing key {kid}; it signs once every process has loaded it "
                  f"(2 x FACESERVE_SIGNING_KEY_REFRESH_S); retire the old one after its URLs have expired")
            return 0
        if args.action == "retire":
            if not await signing_store.retire(pool, args.kid):
                print(f"no signing key {args.kid!r}")
                return 1
            print(f"retired {args.kid}")
            return 0
        for kid, created, retired in await signing_store.list_keys(pool):
            print(f"{kid}  created={_when(created)}  {'retired=' + _when(retired) if retired else 'live'}")
        return 0


async def run_setup_link(settings: Settings, args: argparse.Namespace) -> int:
    async with database(settings) as pool:
        token = await setup_links.create_token(pool, settings.setup_link_ttl_h)
    print(f"open this link in the organiser's browser (it works once, for {settings.setup_link_ttl_h:g} h):")
    print(setup_links.link(settings, token))
    return 0


COMMANDS = {"keys": run_keys, "signing": run_signing, "setup-link": run_setup_link}
