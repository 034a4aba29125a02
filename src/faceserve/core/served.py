"""What serving an image needs of its row, computed once per process and kept in a bounded LRU.

Image ids are never reused and files are immutable, so an entry only goes stale when its image (or its
session) is deleted: deletion (ingest.py, face_sessions.py) evicts it in this process; other processes notice through the
file's absence, or within `served_recheck_s` for answers without a body.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..config import Settings
from ..media import stores


@dataclass(slots=True)
class ServedFile:
    """What serving needs of a row, computed once per process."""

    image_id: int
    path: Path  # for bytes kept in Postgres: the row's name under the storage root, never opened
    content_type: str
    etag: str
    last_modified: datetime  # whole seconds: HTTP dates have no finer resolution
    headers: tuple[tuple[str, str], ...]
    bytes_in: str = stores.FILE
    byte_size: int = 0  # the row's; a file's own size (fstat) is what serving a file goes by
    # of an original: what its derivatives are made and named from (empty for a derivative itself)
    file_path: str = ""
    session_id: int = 0
    sha256_hex: str = ""
    # time.monotonic() until which the bytes count as present without looking (answers without a body)
    present_until: float = float("-inf")

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

    def seen_present(self, entry: ServedFile) -> None:
        entry.present_until = time.monotonic() + self._recheck_s

    def get(self, image_id: int) -> ServedFile | None:
        entry = self._entries.get(image_id)
        if entry is not None:
            self._entries.move_to_end(image_id)
        return entry

    def put(self, entry: ServedFile) -> None:
        self._entries[entry.image_id] = entry
        self._by_session.setdefault(entry.session_id, set()).add(entry.image_id)
        if len(self._entries) > self._capacity:
            self.evict(next(iter(self._entries)))

    def evict(self, image_id: int) -> None:
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

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def from_settings(cls, settings: Settings) -> ServedFileCache:
        return cls(settings.served_cache_entries, settings.served_recheck_s)
