"""What serving an image needs of its row, computed once per process and kept in a bounded LRU.

Image ids are never reused and files are immutable, so an entry only goes stale when its image (or its
session) is deleted: the unit of work (core/changes.py) tells this process's subscribers after the commit
(core/removals.py) and the cache, subscribed at start-up (install), evicts; other processes notice through
the file's absence, or within `served_recheck_s` for answers without a body.

A miss is loaded once however many requests ask at the same moment (get_or_load): a photo shared at an
event is opened by hundreds of phones at once, and each doing its own query queued them behind the pool for
seconds (benchmarks/connections.py, 1,000 connections on a cold process).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from aiohttp import web
from multidict import CIMultiDictProxy

from ..config import Settings
from ..core.removals import Removed
from ..media import stores
from .appkeys import SERVICES


@dataclass(slots=True)
class ServedFile:
    """What serving needs of a row, computed once per process."""

    image_id: int
    # the file on this node's disk that holds the bytes where they are kept in files (an original in the file
    # store, every derivative); for bytes in Postgres or S3 the row's name under the storage root, never opened
    disk_path: Path
    content_type: str
    etag: str
    last_modified: datetime  # whole seconds: HTTP dates have no finer resolution
    # the answers' fixed headers (http/serving.py copies them for each answer: cheaper than building them)
    headers: CIMultiDictProxy[str]
    bytes_in: str = stores.FILE
    byte_size: int = 0  # the row's; a file's own size (fstat) is what serving a file goes by
    # of an original: what its derivatives are made and named from (empty for a derivative itself)
    file_path: str = ""
    session_id: int = 0
    sha256_hex: str = ""
    # time.monotonic() until which the bytes count as present without looking (answers without a body)
    present_until: float = float("-inf")
    # the headers of the bodiless answer that hands the file to nginx (http/accel.py), made on the first
    # hand-off and shared by the next (never changed); empty where it cannot be handed off, None until then
    accel_headers: dict[str, str] | None = None

    @property
    def id(self) -> int:  # stores.StoredImage
        return self.image_id


class ServedFileCache:
    """A bounded LRU of id -> ServedFile, with the ids of each session's entries (a session delete evicts them)."""

    def __init__(self, capacity: int, recheck_s: float) -> None:
        self._capacity = capacity
        self._recheck_s = recheck_s
        self._entries: OrderedDict[int, ServedFile] = OrderedDict()
        self._by_session: dict[int, set[int]] = {}
        self._loading: dict[int, asyncio.Task[ServedFile | None]] = {}
        self._evicted_while_loading: set[int] = set()

    def seen_present(self, entry: ServedFile) -> None:
        entry.present_until = time.monotonic() + self._recheck_s

    def get(self, image_id: int) -> ServedFile | None:
        entry = self._entries.get(image_id)
        if entry is not None:
            self._entries.move_to_end(image_id)
        return entry

    async def get_or_load(
        self, image_id: int, load: Callable[[], Awaitable[ServedFile | None]]
    ) -> ServedFile | None:
        """The entry, loaded by `load` (None: no such image) on a miss; callers missing together share one
        load, which a caller that goes away does not cancel for the others."""
        entry = self.get(image_id)
        if entry is not None:
            return entry
        task = self._loading.get(image_id)
        if task is None:
            task = asyncio.ensure_future(self._load(image_id, load))
            task.add_done_callback(_retrieve)
            self._loading[image_id] = task
        return await asyncio.shield(task)

    async def _load(self, image_id: int, load: Callable[[], Awaitable[ServedFile | None]]) -> ServedFile | None:
        try:
            entry = await load()
            # a delete that evicted this id while its row was being read: serve what was read, keep nothing
            if entry is not None and image_id not in self._evicted_while_loading:
                self.put(entry)
            return entry
        finally:
            del self._loading[image_id]
            self._evicted_while_loading.discard(image_id)

    def put(self, entry: ServedFile) -> None:
        self._entries[entry.image_id] = entry
        self._by_session.setdefault(entry.session_id, set()).add(entry.image_id)
        if len(self._entries) > self._capacity:
            self.evict(next(iter(self._entries)))

    def evict(self, image_id: int) -> None:
        if image_id in self._loading:
            self._evicted_while_loading.add(image_id)
        entry = self._entries.pop(image_id, None)
        if entry is not None:
            ids = self._by_session.get(entry.session_id)
            if ids is not None:
                ids.discard(image_id)
                if not ids:
                    del self._by_session[entry.session_id]

    def evict_session(self, session_id: int) -> None:
        """Every entry of a deleted session: its images must stop answering at once, 304s included."""
        for image_id in self._by_session.pop(session_id, set()):
            self._entries.pop(image_id, None)
        # loads under way of this session's images cannot be told apart by id here: keep none of them
        self._evicted_while_loading.update(self._loading)

    def removed(self, removed: Removed) -> None:
        """A committed change of this process (core/changes.py) took these away."""
        if removed.session_dropped is not None:
            self.evict_session(removed.session_dropped)
        for image_id in removed.image_ids:
            self.evict(image_id)

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def from_settings(cls, settings: Settings) -> ServedFileCache:
        return cls(settings.served_cache_entries, settings.served_recheck_s)


def _retrieve(task: asyncio.Task[ServedFile | None]) -> None:
    """A load's error reaches its callers; if every caller went away first, nobody is left to log it."""
    if not task.cancelled():
        task.exception()


SERVED = web.AppKey("served", ServedFileCache)


def install(app: web.Application, settings: Settings) -> None:
    """The cache, subscribed to this process's removals once the services are open (its context runs after
    theirs)."""
    app[SERVED] = cache = ServedFileCache.from_settings(settings)

    async def subscribed(app: web.Application) -> AsyncIterator[None]:
        unsubscribe = app[SERVICES].removals.subscribe(cache.removed)
        yield
        unsubscribe()

    app.cleanup_ctx.append(subscribed)
