"""Who may do what, checked here: the one middleware that holds each request to its route's declared access
(http/routes.py; the values are explained in http/routing.py).

A key bound to sessions gets 403 `forbidden` for anything of another session (not 404: the ids are
sequential, so hiding existence would hide little, and one clear answer is easier to debug).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiohttp import web

from .. import db
from ..config import Settings
from ..core import api_keys, setup_links, signing_store
from ..core.signing import SigningKeys
from ..errors import Forbidden, Unauthorized
from .appkeys import SERVICES, URLS
from .middleware import Handler
from .route_params import route_ids
from .routing import LEGACY, PUBLIC, SIGNED, Route, declared

log = logging.getLogger(__name__)

_KEY = web.RequestKey("api_key", api_keys.ApiKey)


@dataclass
class AccessState:
    settings: Settings
    keys: api_keys.KeyCache
    # the service's signing key material, whether or not image URLs are signed: live tokens are sealed under
    # keys derived from it (core/live_tokens.py). FACESERVE_SIGNING_KEYS when set, else the keys kept in
    # Postgres, loaded at start and on every refresh (and then the URL policy's too, when it signs)
    signing: SigningKeys | None = None


ACCESS = web.AppKey("access", AccessState)


def presented_key(request: web.Request) -> str:
    authorization = request.headers.get("Authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""
    return request.headers.get("X-API-Key", "").strip()


async def authenticate(request: web.Request) -> api_keys.ApiKey:
    text = presented_key(request)
    if not text:
        raise Unauthorized("this request needs an API key: Authorization: Bearer <key> (or X-API-Key)")
    state = request.app[ACCESS]
    record = await state.keys.lookup(request.app[SERVICES].pool, text)
    if record is None or not record.live(datetime.now(UTC)):
        raise Unauthorized("the API key is unknown, revoked or expired")
    state.keys.touch(record)
    return record


def presents_known_key(request: web.Request) -> bool:
    """Whether the request carries a key this process knows to exist without asking Postgres."""
    text = presented_key(request)
    return bool(text) and request.app[ACCESS].keys.knows(text)


def current_key(request: web.Request) -> api_keys.ApiKey | None:
    """The key that authorised this request; None with auth off or on an open route."""
    return request.get(_KEY)


def require_key_sees(request: web.Request, session_id: int) -> None:
    """403 unless this request's key may see session_id (handlers that learn a session id from a body)."""
    key = current_key(request)
    if key is not None and not key.sees(session_id):
        raise Forbidden(f"this key is not for session {session_id}")


def visible_sessions(request: web.Request, session_ids: Iterable[int]) -> set[int]:
    key = current_key(request)
    return set(session_ids) if key is None else {s for s in session_ids if key.sees(s)}


async def _check_sessions(request: web.Request, key: api_keys.ApiKey) -> None:
    """Session binding for what the path names; search, resolve, listing and keys check in their handlers.
    The ids are the ones the handlers will use (route_params.py parsed them before this runs)."""
    if key.session_ids is None:
        return
    ids = route_ids(request)
    if "session_id" in ids:
        require_key_sees(request, ids["session_id"])
    elif "image_id" in ids:
        session_id = await db.session_of_image(request.app[SERVICES].pool, ids["image_id"])
        if session_id is not None:
            require_key_sees(request, session_id)
    elif request.method == "POST" and request.match_info.route.resource is not None and (
        request.match_info.route.resource.canonical == "/api/face/sessions"
    ):
        raise Forbidden("a key bound to sessions cannot create sessions")


def may_need_key(route: Route) -> bool:
    """Whether the guard has anything to check on this route (routing.Layer): a route open to everyone, or
    whose signed URL is the credential, never passes through it."""
    return route.access not in (PUBLIC, SIGNED)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.app[ACCESS].settings.auth:
        return await handler(request)
    route = declared(request)
    if route is None or route.access in (PUBLIC, SIGNED):
        return await handler(request)  # no route matched: its 404/405 tells nothing
    needed = route.access
    if needed == LEGACY:
        if request.app[URLS].keys is None:
            return await handler(request)
        needed = "search"
    key = await authenticate(request)
    if not key.has_scope(needed):
        raise Forbidden(f"this key lacks the {needed!r} scope")
    request[_KEY] = key
    await _check_sessions(request, key)
    return await handler(request)


async def _flush_forever(app: web.Application) -> None:
    state = app[ACCESS]
    while True:
        await asyncio.sleep(state.settings.api_key_flush_s)
        try:
            await state.keys.flush(app[SERVICES].pool)
        except Exception:
            log.exception("could not record keys' last use; trying again at the next flush")


def signs_from_database(settings: Settings) -> bool:
    return settings.auth and not settings.public_images and not settings.signing_keys


def signing_keys(request: web.Request) -> SigningKeys | None:
    """The service's signing key material (AccessState.signing); None only before the start loaded it."""
    return request.app[ACCESS].signing


async def _load_signing_keys(app: web.Application) -> None:
    settings = app[ACCESS].settings
    activation = timedelta(seconds=2 * settings.signing_key_refresh_s)
    # with every key retired a new one is made: never None here, which would mean unsigned (open) images
    await signing_store.ensure_key(app[SERVICES].pool)
    keys = await signing_store.load(app[SERVICES].pool, activation)
    app[ACCESS].signing = keys
    if signs_from_database(settings):
        app[URLS].keys = keys


async def _refresh_signing_keys_forever(app: web.Application, changed: asyncio.Event) -> None:
    """Reload when a change is announced (a rotation or retirement by any process, or the listening
    connection back after it was lost), and every SIGNING_KEY_REFRESH_S anyway: a rotated-in key starts
    signing once older than twice that, so even a process that heard nothing has it by then."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), app[ACCESS].settings.signing_key_refresh_s)
        changed.clear()
        try:
            await _load_signing_keys(app)
        except Exception:
            log.exception("could not reload the URL signing keys; keeping the loaded ones")


async def _follow_changes(app: web.Application, signing_keys_changed: asyncio.Event | None) -> None:
    """What other processes do to keys reaches this one through Postgres (db/notifications.py): a revoked
    API key is dropped from the cache at once, and the signing keys are reloaded."""
    keys = app[ACCESS].keys
    listener = app[SERVICES].sync.listener

    async def forget_every_key() -> None:
        keys.clear()  # revocations announced while no one listened are lost: ask Postgres afresh

    await listener.subscribe(db.Subscription(db.API_KEYS_CHANNEL, keys.forget, forget_every_key))
    if signing_keys_changed is not None:
        changed = signing_keys_changed

        async def reload_signing_keys() -> None:
            changed.set()

        await listener.subscribe(
            db.Subscription(db.SIGNING_KEYS_CHANNEL, lambda _payload: changed.set(), reload_signing_keys)
        )


async def access_ctx(app: web.Application) -> AsyncIterator[None]:
    """After the services: the first admin key, the signing keys (image URLs, live tokens), the batched
    writes of keys' last use, and the changes other processes make to either."""
    settings = app[ACCESS].settings
    pool = app[SERVICES].pool
    if settings.auth and await api_keys.bootstrap(pool, settings.storage) is not None:
        token = await setup_links.create_token(pool, settings.setup_link_ttl_h)
        say_setup_link(settings, token)
    tasks = [asyncio.create_task(_flush_forever(app))]
    signing_keys_changed: asyncio.Event | None = None
    if not settings.signing_keys:  # kept in Postgres: live tokens use them even where image URLs are plain
        await _load_signing_keys(app)
        signing_keys_changed = asyncio.Event()
        tasks.append(asyncio.create_task(_refresh_signing_keys_forever(app, signing_keys_changed)))
    await _follow_changes(app, signing_keys_changed)
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(Exception):
        await app[ACCESS].keys.flush(pool)


def say_setup_link(settings: Settings, token: str) -> None:
    """On the console, not in the log: the link is a credential (once, for a day) that log shippers keep."""
    print(
        f"\nFirst start: open this link in the organiser's browser to sign it in to the page "
        f"(it works once, for {settings.setup_link_ttl_h:g} h; faceserve setup-link prints a new one):\n"
        f"    {setup_links.link(settings, token)}\n",
        flush=True,
    )


def install(app: web.Application, settings: Settings) -> None:
    configured = SigningKeys.parse(settings.signing_keys) if settings.signing_keys else None
    app[ACCESS] = AccessState(settings, api_keys.KeyCache(settings.api_key_cache_s), configured)
    app.cleanup_ctx.append(access_ctx)


def refuse_open_network(settings: Settings) -> None:
    """With auth off, only a loopback address may be served: anyone else could then do anything."""
    if settings.auth:
        return
    host = settings.host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(
            f"FACESERVE_AUTH=off is for local development only: listen on 127.0.0.1 (--host 127.0.0.1), "
            f"not {settings.host!r}"
        )
