"""Run the HTTP service: one process, or N worker processes sharing the port through SO_REUSEPORT.

With workers, the parent does what must happen once (embedded Postgres, sweep of crashed uploads, model
layout) and then only watches; each worker opens its own pool, models and indexes, which stay in step
through index/sync.py.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import time
from contextlib import ExitStack
from dataclasses import replace

from aiohttp import web

from . import db
from .app import create_app
from .config import Settings
from .media.files import Storage
from .vision.packs import locate_pack

log = logging.getLogger(__name__)
_WATCH_INTERVAL_S = 0.5
_STOP_TIMEOUT_S = 15


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed; using asyncio's loop")
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _run_one(settings: Settings, *, reuse_port: bool, sweep_partial_uploads: bool) -> None:
    loop = _new_loop(settings.event_loop)
    asyncio.set_event_loop(loop)
    web.run_app(
        create_app(settings, sweep_partial_uploads=sweep_partial_uploads),
        host=settings.host,
        port=settings.port,
        reuse_port=reuse_port or None,
        backlog=settings.listen_backlog,
        access_log=None,
        loop=loop,
        print=None if reuse_port else print,
    )


def _worker(settings: Settings, level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
    _run_one(settings, reuse_port=True, sweep_partial_uploads=False)


def serve(settings: Settings) -> None:
    if settings.workers <= 1:
        _run_one(settings, reuse_port=False, sweep_partial_uploads=True)
        return
    with ExitStack() as stack:
        if settings.database_url is None:
            uri = stack.enter_context(db.embedded_postgres_blocking(settings.pgdata))
            settings = replace(settings, database_url=uri)
        Storage(settings.storage).sweep_partial_uploads(settings.partial_upload_min_idle_s)
        locate_pack(settings.models_dir, settings.model_pack)  # lay models out once, before workers race
        context = multiprocessing.get_context("spawn")
        workers = [
            context.Process(
                target=_worker, args=(settings, logging.getLogger().level), name=f"worker-{i}", daemon=False
            )
            for i in range(settings.workers)
        ]
        for process in workers:
            process.start()
        print(f"faceserve: {len(workers)} workers on http://{settings.host}:{settings.port}", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
        try:
            while all(p.is_alive() for p in workers):
                time.sleep(_WATCH_INTERVAL_S)
            log.error("a worker exited; stopping the others")
        except KeyboardInterrupt:
            pass
        finally:
            for process in workers:
                if process.is_alive():
                    process.terminate()  # SIGTERM: aiohttp shuts the worker down gracefully
            for process in workers:
                process.join(_STOP_TIMEOUT_S)
                if process.is_alive():
                    process.kill()
