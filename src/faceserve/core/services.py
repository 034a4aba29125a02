"""The service's parts, opened in order and closed in reverse: used by the web app and by the CLI alike."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import numpy as np
from prometheus_client import Counter

from .. import db
from ..config import Settings
from ..errors import Busy
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
from .live_hub import LiveHub
from .served import ServedFileCache

log = logging.getLogger(__name__)
T = TypeVar("T")

UPLOADS_REJECTED = Counter(
    "faceserve_uploads_rejected_total", "Uploaded images refused with 503 busy because too many were in flight"
)
SEARCHES_REJECTED = Counter(
    "faceserve_searches_rejected_total", "Searches refused with 503 busy because too many were in flight"
)


class AdmissionGate:
    """Counts work in flight (images or searches) and refuses past a limit, so a flood gets 503 instead of
    memory."""

    def __init__(self, limit: int, retry_after_s: int, what: str, rejected: Counter) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self._what = what
        self._rejected = rejected

    @classmethod
    def for_uploads(cls, settings: Settings) -> AdmissionGate:
        return cls(settings.max_pending_images, settings.retry_after_s, "images", UPLOADS_REJECTED)

    @classmethod
    def for_searches(cls, settings: Settings) -> AdmissionGate:
        return cls(settings.max_pending_searches, settings.retry_after_s, "searches", SEARCHES_REJECTED)

    @contextmanager
    def admit(self) -> Iterator[None]:
        if self.in_flight >= self.limit:
            self._rejected.inc()
            raise Busy(f"{self.in_flight} {self._what} are being processed; try again shortly", self.retry_after_s)
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1


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


@dataclass(kw_only=True)  # sixteen parts: named where made, never by their order
class Services:
    settings: Settings
    pool: asyncpg.Pool
    storage: Storage
    # where image bytes are kept: files, Postgres or S3 (media/stores.py)
    stores: ImageStores
    engine: FaceEngine
    indexes: IndexRegistry
    inference: ThreadPoolExecutor
    # embeds the aligned faces of concurrent uploads and searches in shared recogniser runs
    recogniser: RecogniserBatcher
    # uploads being analysed at once (their files received); past it an upload gets 503 busy
    upload_gate: AdmissionGate
    # serving facts of recently served images; deletions here evict from it (served.py)
    served: ServedFileCache
    # searches being decoded, detected and matched at once; past it a search gets 503 busy
    search_gate: AdmissionGate
    # resized copies and face crops rendered at once (http/downloads.py)
    renders: asyncio.Semaphore
    # names this process in index change notifications (index/sync.py)
    process_token: str
    # the connection that hears other processes' changes: indexes, API keys, signing keys (db/notifications.py)
    listener: db.NotificationListener
    follower: index_sync.IndexFollower
    # background work of this process (core/people.py re-clusterings), cancelled before the parts close
    jobs: BackgroundJobs
    # live searches: new faces against the sessions' live probes, and the streams waiting here (live_hub.py)
    live: LiveHub

    def inference_waiting(self) -> int:
        """Blocking jobs queued for the inference threads (ThreadPoolExecutor keeps no public count)."""
        return self.inference._work_queue.qsize()

    async def infer(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work (decode, detection, embedding) on the inference threads."""
        return await asyncio.get_running_loop().run_in_executor(self.inference, fn, *args)


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
        live_hub = LiveHub(listener, engine.embedding_dim, settings.match_threshold)
        await live_hub.start()
        stack.callback(live_hub.close)
        if settings.index_preload:
            saved = set(await asyncio.to_thread(store.saved_sessions))
            live = [s.id for s in await db.list_sessions(pool) if s.id in saved]
            stack.push_async_callback(_cancel, indexes.preload(sorted(live, reverse=True)))  # newest first
        upload_gate = AdmissionGate.for_uploads(settings)
        search_gate = AdmissionGate.for_searches(settings)
        jobs = BackgroundJobs()
        stack.push_async_callback(jobs.close)  # first to close: its jobs use the pool and the indexes
        yield Services(
            settings=settings,
            pool=pool,
            storage=storage,
            stores=stores,
            engine=engine,
            indexes=indexes,
            inference=inference,
            recogniser=recogniser,
            upload_gate=upload_gate,
            served=ServedFileCache.from_settings(settings),
            search_gate=search_gate,
            renders=asyncio.Semaphore(settings.max_concurrent_renders),
            process_token=token,
            listener=listener,
            follower=follower,
            jobs=jobs,
            live=live_hub,
        )
