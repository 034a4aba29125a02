"""The service's parts, opened in order and closed in reverse: used by the web app and by the CLI alike."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
from prometheus_client import Gauge

from .. import db
from ..config import Settings
from ..index import sync as index_sync
from ..index.kinds import IndexPolicy
from ..index.registry import IndexRegistry
from ..index.store import IndexStore
from ..media.files import Storage
from ..media.stores import ImageStores, open_image_stores
from ..runtime import conflicting_builds
from ..vision.batcher import RecogniserBatcher
from ..vision.engine import FaceEngine
from . import start_sweep
from .admission import Admission
from .live_hub import LiveHub
from .models import Models
from .removals import Removals

log = logging.getLogger(__name__)

POOL_CONNECTIONS = Gauge(
    "faceserve_db_pool_connections", "Database pool connections, by state", ["state"], multiprocess_mode="livesum"
)


class BackgroundJobs:
    """Work a request starts and does not wait for (a session's re-clustering): at most one per key in this
    process, cancelled and awaited when the services close, before the pool and the indexes they use."""

    def __init__(self) -> None:
        self._tasks: dict[Any, asyncio.Task] = {}
        self._closed = False

    def start(self, key: Any, job: Callable[[], Awaitable[Any]], what: str) -> bool:
        """Start job() unless one with this key is still running or the services are closing; True when
        started. A failure is logged as `what` failed."""
        running = self._tasks.get(key)
        if self._closed or (running is not None and not running.done()):
            return False
        task = asyncio.create_task(_logged(job, what))
        self._tasks[key] = task
        task.add_done_callback(lambda done: self._tasks.pop(key, None) if self._tasks.get(key) is done else None)
        return True

    async def wait(self, key: Any) -> None:
        """Until the job with this key (if any) has ended."""
        running = self._tasks.get(key)
        if running is not None:
            await asyncio.gather(running, return_exceptions=True)

    async def close(self) -> None:
        self._closed = True
        while self._tasks:
            await _cancel(next(iter(self._tasks.values())))


async def _logged(job: Callable[[], Awaitable[Any]], what: str) -> None:
    try:
        await job()
    except Exception:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # stopped at shutdown: a cut query can end in an error of its own rather than CancelledError
            log.info("%s stopped", what)
            raise asyncio.CancelledError from None
        log.exception("%s failed", what)


@dataclass(kw_only=True)
class Sync:
    """How this process hears the others' changes: indexes, API keys, signing keys."""

    # names this process in index change notifications (index/sync.py)
    process_token: str
    # the connection that hears other processes' changes (db/notifications.py)
    listener: db.NotificationListener
    # applies the other processes' index changes here, catching up after a reconnect (index/sync.py)
    follower: index_sync.IndexFollower


@dataclass(kw_only=True)  # named where made, never by their order
class Services:
    """The parts; the settings and the pool are what every part shares."""

    settings: Settings
    pool: asyncpg.Pool
    # the data: the storage root's layout, where image bytes are kept (files, Postgres or S3: media/stores.py),
    # and the per-session indexes
    storage: Storage
    stores: ImageStores
    indexes: IndexRegistry
    models: Models
    admission: Admission
    sync: Sync
    # who hears what a committed change removed here: http's served-file cache (removals.py)
    removals: Removals
    # background work of this process (core/people.py re-clusterings), cancelled before the parts close
    jobs: BackgroundJobs
    # live searches: new faces against the sessions' live probes, and the streams waiting here (live_hub.py)
    live: LiveHub

    def sample_pool(self) -> None:
        """The pool's gauge, as of now (http/observability.py samples every metrics_sample_s)."""
        idle = self.pool.get_idle_size()
        POOL_CONNECTIONS.labels("in_use").set(self.pool.get_size() - idle)
        POOL_CONNECTIONS.labels("idle").set(idle)
        POOL_CONNECTIONS.labels("max").set(self.pool.get_max_size())


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def load_engine(settings: Settings) -> FaceEngine:
    engine = FaceEngine.from_settings(settings)
    engine.warm_up()
    return engine


@asynccontextmanager
async def open_services(
    settings: Settings, engine: FaceEngine | None = None, sweep_partial_uploads: bool = True
) -> AsyncIterator[Services]:
    """Database (embedded unless DATABASE_URL), storage, models, indexes. An engine may be passed in to share
    loaded models (the tests do). Workers started by a parent leave the sweep of crashed uploads to it:
    one worker must not delete another's upload in flight."""
    for problem in conflicting_builds():
        log.warning(problem)
    async with AsyncExitStack() as stack:
        storage = Storage(settings.storage)
        storage.layout.sessions_root.mkdir(parents=True, exist_ok=True)
        if sweep_partial_uploads:
            await asyncio.to_thread(storage.sweep_partial_uploads, settings.partial_upload_min_idle_s)

        # an embedded Postgres is restarted by itself if it dies while serving (db/recovery.py)
        dsn = await stack.enter_async_context(db.database_uri(settings, settings.db_watch_interval_s))
        pool = await db.create_pool(
            dsn, settings.db_pool_min, settings.db_pool_max, settings.db_acquire_timeout_s, settings.db_command_timeout_s
        )
        stack.push_async_callback(pool.close)
        # a migration step rewrites whole tables, and another process may be applying it: the bulk bound
        schema = await db.migrate(pool, settings.db_bulk_timeout_s)
        log.info("database schema at version %d", schema.current)
        stores = await stack.enter_async_context(open_image_stores(settings, storage, pool))
        if sweep_partial_uploads:
            # files and objects of deletes and uploads that a killed run left half done (start_sweep.py)
            await start_sweep.finish_interrupted(pool, stores)

        inference = ThreadPoolExecutor(max_workers=settings.inference_threads, thread_name_prefix="inference")
        stack.callback(inference.shutdown, wait=True)
        if engine is None:
            engine = await asyncio.get_running_loop().run_in_executor(inference, load_engine, settings)
        recogniser = RecogniserBatcher(
            engine, inference, max_rows=settings.recogniser_max_batch, window_ms=settings.recogniser_window_ms
        )
        stack.push_async_callback(recogniser.close)  # before the inference threads stop (closed in reverse)

        async def load_session(session_id: int, expected: int | None) -> tuple[np.ndarray, np.ndarray]:
            return await db.session_embeddings(
                pool, session_id, engine.embedding_dim, expected, timeout=settings.db_bulk_timeout_s
            )

        async def session_stats(session_id: int) -> tuple[int, int]:
            return await db.session_face_stats(pool, session_id, engine.embedding_dim)

        store = IndexStore(storage.layout, settings.model_pack)
        indexes = IndexRegistry(
            engine.embedding_dim,
            load_session,
            settings.device,
            stats=session_stats,
            store=store,
            policy=IndexPolicy.from_settings(settings),
            max_batch=settings.index_max_batch,
            device_id=settings.cuda_device_id,
            save_settle_s=settings.index_save_settle_s,
            save_max_lag_s=settings.index_save_max_lag_s,
        )
        stack.callback(indexes.close)
        stack.push_async_callback(indexes.save_changed)  # stops the saver, writes what it had not yet
        token = index_sync.new_token()
        listener = db.NotificationListener(dsn)
        await listener.start()
        stack.push_async_callback(listener.close)
        follower = index_sync.IndexFollower(listener, token, pool, indexes)
        await follower.start()
        stack.push_async_callback(follower.close)
        jobs = BackgroundJobs()
        live_hub = LiveHub(listener, engine.embedding_dim, settings.match_threshold, jobs.start)
        await live_hub.start()
        stack.callback(live_hub.close)
        if settings.index_preload:
            saved = set(await asyncio.to_thread(store.saved_sessions))
            live = [s.id for s in await db.list_sessions(pool) if s.id in saved]
            stack.push_async_callback(_cancel, indexes.preload(sorted(live, reverse=True)))  # newest first
        stack.push_async_callback(jobs.close)  # first to close: its jobs use the pool and the indexes
        yield Services(
            settings=settings,
            pool=pool,
            storage=storage,
            stores=stores,
            indexes=indexes,
            models=Models(engine=engine, inference=inference, recogniser=recogniser),
            admission=Admission.from_settings(settings),
            sync=Sync(process_token=token, listener=listener, follower=follower),
            removals=Removals(),
            jobs=jobs,
            live=live_hub,
        )
