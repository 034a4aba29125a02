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

from . import db, logs, metrics
from .app import create_app
from .config import Settings
from .core import start_sweep
from .db import recovery as db_recovery
from .http import access_log, listener, startup
from .http.access import refuse_open_network
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


class _Terminated(Exception):
    """SIGTERM to the parent of workers: a service manager's stop, not an interrupt."""


def _raise_terminated(*_: object) -> None:
    raise _Terminated


def _run_one(settings: Settings, *, reuse_port: bool, sweep_partial_uploads: bool) -> bool:
    loop = _new_loop(settings.event_loop)
    asyncio.set_event_loop(loop)
    app = create_app(settings, sweep_partial_uploads=sweep_partial_uploads)
    app.on_startup.append(startup.say_ready)  # after cleanup_ctx has opened the services
    return listener.run(  # web.run_app with limits on connections and idle time (http/listener.py)
        app,
        settings,
        reuse_port=reuse_port,
        loop=loop,
        announce=None,  # startup.say_ready says where it listens, in the log's format
        access_log={
            "access_log": access_log.LOGGER if settings.access_log else None,
            "access_log_class": access_log.AccessLogger,
            "access_log_format": settings.log_format,
        },
    )


def _worker(settings: Settings) -> None:
    logs.configure(settings.log_level, settings.log_format)
    _run_one(settings, reuse_port=True, sweep_partial_uploads=False)


def _restart_postgres_if_down(postgres: db_recovery.EmbeddedPostgres) -> None:
    try:
        postgres.restart_if_down()
    except Exception:
        log.exception("could not restart the embedded Postgres; trying again")


def serve(settings: Settings) -> bool:
    """Serve until stopped; True when SIGINT (Ctrl-C) stopped it, False for SIGTERM."""
    refuse_open_network(settings)
    startup.say_starting(settings)
    if settings.workers <= 1:
        return _run_one(settings, reuse_port=False, sweep_partial_uploads=True)
    interrupted = False
    with ExitStack() as stack:
        # the workers reach an embedded Postgres as an external one: this process keeps it alive
        uri, postgres = stack.enter_context(db.database_uri_blocking(settings))
        settings = replace(settings, database_url=uri)
        Storage(settings.storage).sweep_partial_uploads(settings.partial_upload_min_idle_s)
        start_sweep.finish_interrupted_blocking(settings, uri)
        locate_pack(settings.models_dir, settings.model_pack)  # lay models out once, before workers race
        context = multiprocessing.get_context("spawn")
        workers = [
            context.Process(target=_worker, args=(settings,), name=f"worker-{i}", daemon=False)
            for i in range(settings.workers)
        ]
        for process in workers:
            process.start()
        signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            last_check = time.monotonic()
            while all(p.is_alive() for p in workers):
                time.sleep(_WATCH_INTERVAL_S)
                if postgres is not None and time.monotonic() - last_check >= settings.db_watch_interval_s:
                    # the workers' pools reconnect by themselves once it is back (db_recovery.py)
                    _restart_postgres_if_down(postgres)
                    last_check = time.monotonic()
            log.error("a worker exited; stopping the others")
        except KeyboardInterrupt:
            interrupted = True
        except _Terminated:
            pass
        finally:
            for process in workers:
                if process.is_alive():
                    process.terminate()  # SIGTERM: aiohttp shuts the worker down gracefully
            for process in workers:
                process.join(_STOP_TIMEOUT_S)
                if process.is_alive():
                    process.kill()
                if process.pid is not None:
                    metrics.process_exited(process.pid)
    return interrupted
