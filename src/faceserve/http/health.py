"""GET /healthz: 200 when the database answers and the models are loaded, 503 otherwise. It also says
whether the storage disk has less than storage_min_free_bytes free ("disk": "low"): still 200, since
searches and downloads go on, but uploads soon meet 507 `insufficient_storage`."""

from __future__ import annotations

import asyncio
import shutil

import asyncpg
from aiohttp import web

from .. import db
from ..errors import NotReady
from .appkeys import SERVICES
from .common import ok

_DB_TIMEOUT_S = 2.0


async def healthz(request: web.Request) -> web.Response:
    services = request.app.get(SERVICES)
    if services is None:
        raise NotReady("starting up")
    try:
        await asyncio.wait_for(db.ping(services.pool), _DB_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise NotReady(f"database is not answering: {type(exc).__name__}") from None
    free = (await asyncio.to_thread(shutil.disk_usage, services.storage.root)).free
    return ok(
        {
            "database": "ok",
            "models": services.models.engine.pack.name,
            "providers": services.models.engine.providers,
            "engine": services.models.engine.engine,
            "precision": services.models.engine.precision,
            "index": services.indexes.placement,
            # how many sessions' indexes this process holds (a fleet shards them by session: README)
            "sessions_loaded": len(services.indexes.loaded_sessions()),
            "disk": "low" if free < services.settings.storage_min_free_bytes else "ok",
            "disk_free_bytes": free,
        }
    )
