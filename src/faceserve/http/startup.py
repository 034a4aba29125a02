"""The first lines an operator reads: where the service listens, where its data lives, which device and
index it uses. say_starting before anything loads (from the settings), say_ready once the models and the
database are open (what was actually found: providers, index placement)."""

from __future__ import annotations

import logging
import os

from aiohttp import web

from .. import __version__
from ..config import Settings
from ..core.setup_links import page_url
from ..layout import SessionLayout
from .appkeys import SERVICES

log = logging.getLogger("faceserve")


def _listen_url(settings: Settings) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.port}"


def say_starting(settings: Settings) -> None:
    database = "external Postgres (DATABASE_URL)" if settings.database_url else f"embedded Postgres in {settings.pgdata}"
    workers = f", {settings.workers} workers" if settings.workers > 1 else ""
    log.info("faceserve %s starting on %s%s", __version__, _listen_url(settings), workers)
    log.info("data: photos in %s, %s", SessionLayout(settings.storage).sessions_root, database)
    log.info("models: %s from %s, device %s", settings.model_pack, settings.models_dir, settings.device)


async def say_ready(app: web.Application) -> None:
    services = app[SERVICES]
    settings = services.settings
    log.info(
        "ready on %s (pid %d): models %s on %s, indexes on %s; the page at %s, API at %s/docs, metrics at %s/metrics",
        _listen_url(settings), os.getpid(), services.models.engine.pack.name, services.models.engine.runs_on,
        services.indexes.placement, page_url(settings), _listen_url(settings), _listen_url(settings),
    )
