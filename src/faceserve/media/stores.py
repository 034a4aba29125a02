"""Where the bytes of a recorded image live: a file under the storage root (default), a row in Postgres, or
an object in an S3-compatible store.

Uploads always arrive as a .part file on disk (media/files.py): hashing, the header probe and the face models
read them there. Recording an image hands that file to the configured store inside the transaction that
inserts the image's row:
- FileStore renames it to face_sessions/{session}/db/{name}; a crash between the rename and the commit
  leaves a file without a row (`faceserve import` adopts it), never a row without a file;
- PostgresStore inserts its bytes into image_blobs in the same transaction: row and bytes commit together,
  and deleting the row (or its session) deletes them by cascade;
- S3Store uploads it as the object of its file_path (media/objects.py) inside that transaction, crash-safe
  as files are: the upload's intent is committed first, so an object whose row never committed is removed
  by the next start (core/upload_intents.py).
A file or an object goes after its row's delete committed, unless an upload of the same bytes took its path
meanwhile (core/tombstones.py remove_file_unless_taken).
Every row names its store (face_session_images.bytes_in), so switching FACESERVE_IMAGE_STORE strands
nothing: older images are served from where they were put. Derived files (resized copies, face crops) of
an original on disk or in Postgres are kept on disk under the session's derived/ folder; those of an object
are objects under {prefix}/derived/ (objects.derived_path), so that every node of a fleet serves the one
copy rendered first, and a delete or a forget removes it in one place rather than on each node's disk.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

import asyncpg
from botocore.exceptions import BotoCoreError, ClientError

from .. import db
from ..config import Settings
from ..errors import ImageNotFound, Unavailable
from . import renditions
from .files import PendingFile, Storage, disk_full_error
from .objects import ObjectStore, derived_path, open_object_store

log = logging.getLogger(__name__)

FILE = "file"
POSTGRES = "postgres"
S3 = "s3"

Undo = Callable[[], Awaitable[None]]


class StoredImage(Protocol):
    """What a store needs to find an image's bytes (db.ImageRecord, core.served.ServedFile)."""

    @property
    def id(self) -> int: ...

    @property
    def file_path(self) -> str: ...

    @property
    def bytes_in(self) -> str: ...


class ImageStore(Protocol):
    kind: str
    # bytes kept apart from the row, at its file_path: an upload records its intent before putting them
    # there, and a delete removes them after its commit (core/upload_intents.py, core/tombstones.py)
    by_path: bool

    async def save(self, conn: asyncpg.Connection, pending: PendingFile, image: db.ImageRecord) -> Undo | None:
        """Keep the pending file's bytes as this image's, inside the row's transaction. Returns what undoes
        it should that transaction fail afterwards (None: the rollback does)."""

    async def source(self, image: StoredImage) -> Path | bytes:
        """The bytes to render a derivative from (a path is read by the renderer). ImageNotFound if gone."""

    async def exists(self, image: StoredImage) -> bool: ...

    async def remove(self, file_path: str) -> None:
        """Remove the bytes at file_path (nothing there is no error); a by_path store's."""

    async def remove_session(self, session_id: int) -> None:
        """Remove everything of a session this store keeps apart from its rows."""


class FileStore:
    kind = FILE
    by_path = True

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def save(self, conn: asyncpg.Connection, pending: PendingFile, image: db.ImageRecord) -> Undo:
        final = await asyncio.to_thread(self._storage.commit, pending, image.file_path)
        return functools.partial(asyncio.to_thread, final.unlink, missing_ok=True)

    async def source(self, image: StoredImage) -> Path:
        # existence is the renderer's to find out (FileNotFoundError): it opens the file anyway
        return self._storage.absolute(image.file_path)

    async def exists(self, image: StoredImage) -> bool:
        return await asyncio.to_thread(self._storage.absolute(image.file_path).exists)

    async def remove(self, file_path: str) -> None:
        await asyncio.to_thread(self._storage.absolute(file_path).unlink, missing_ok=True)

    async def remove_session(self, session_id: int) -> None:
        await asyncio.to_thread(self._storage.remove_session, session_id)


class PostgresStore:
    kind = POSTGRES
    by_path = False

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def save(self, conn: asyncpg.Connection, pending: PendingFile, image: db.ImageRecord) -> None:
        # up to max_upload_bytes held once in memory, read off the loop; the .part file is removed by the caller
        data = await asyncio.to_thread(pending.path.read_bytes)
        try:
            await db.insert_blob(conn, image.id, data)
        except asyncpg.DiskFullError:
            raise disk_full_error("the upload") from None

    async def source(self, image: StoredImage) -> bytes:
        data = await db.blob(self._pool, image.id)
        if data is None:
            raise ImageNotFound(f"the bytes of image {image.id} are gone")
        return data

    async def exists(self, image: StoredImage) -> bool:
        return await db.blob_size(self._pool, image.id) is not None

    async def remove(self, file_path: str) -> None:
        return None  # the bytes go with their row

    async def remove_session(self, session_id: int) -> None:
        return None


class S3Store:
    kind = S3
    by_path = True

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    async def save(self, conn: asyncpg.Connection, pending: PendingFile, image: db.ImageRecord) -> Undo:
        await self.objects.put_file(image.file_path, pending.path, pending.size, pending.sha256, image.content_type)
        return functools.partial(self.objects.delete, image.file_path)

    async def source(self, image: StoredImage) -> bytes:
        data = await self.objects.read(image.file_path)
        if data is None:
            raise ImageNotFound(f"the object of image {image.id} is gone")
        return data

    async def exists(self, image: StoredImage) -> bool:
        return await self.objects.size(image.file_path) is not None

    async def remove(self, file_path: str) -> None:
        await self.objects.delete(file_path)

    async def remove_session(self, session_id: int) -> None:
        await self.objects.delete_session(session_id)


class ImageStores:
    """The store new images go to, the store of any row by its bytes_in, and removal from every store that
    keeps bytes by path (a tombstone or an upload's intent names a path, not a store)."""

    def __init__(
        self, configured: str, storage: Storage, pool: asyncpg.Pool, objects: ObjectStore | None = None
    ) -> None:
        # configured is one of FILE, POSTGRES, S3: Settings refuses anything else (and S3 without a bucket)
        self.storage = storage
        self._by_kind: dict[str, ImageStore] = {FILE: FileStore(storage), POSTGRES: PostgresStore(pool)}
        if objects is not None:
            self._by_kind[S3] = S3Store(objects)
        self.configured = self._by_kind[configured]

    def of(self, image: StoredImage) -> ImageStore:
        store = self._by_kind.get(image.bytes_in)
        if store is None:
            raise RuntimeError(f"image {image.id} is kept in {image.bytes_in}, which is not configured here")
        return store

    @property
    def objects(self) -> ObjectStore | None:
        s3 = self._by_kind.get(S3)
        return s3.objects if isinstance(s3, S3Store) else None

    async def remove(self, file_path: str, bytes_in: str | None = None) -> None:
        """Remove the bytes at file_path from the store bytes_in names, or, where the caller knows only the
        path, from every store that keeps bytes by path: removing what is not there costs one call, and a
        store switched since the upload or the delete is still cleaned."""
        for kind, store in self._by_kind.items():
            if store.by_path and bytes_in in (None, kind):
                await store.remove(file_path)

    async def remove_derivatives(self, session_id: int, image_id: int) -> None:
        """An image's resized copies and face crops, on this node's disk and as objects."""
        await asyncio.to_thread(renditions.remove_derivatives, self.storage.layout, session_id, image_id)
        if self.objects is not None:
            # "12-" never names image 123's: the id is always followed by "-"
            await self.objects.delete_under(self.objects.key(derived_path(session_id, f"{int(image_id)}-")))

    async def remove_face_crops(self, session_id: int, crops: list[tuple[int, int]]) -> None:
        """The crop objects of these (image id, face id) pairs (forget; its files go in core/privacy.py).
        The forget has committed: a store that does not answer does not fail it, and the crops (never
        served meanwhile: their faces are gone) are removed in the background once the store answers."""
        objects = self.objects
        if objects is None or not crops:
            return
        prefixes = [objects.key(derived_path(session_id, f"{int(i)}-face{int(f)}-")) for i, f in crops]
        try:
            await _delete_under_all(objects, prefixes)
        except Unavailable:
            task = asyncio.create_task(_delete_when_back(objects, prefixes))
            _retrying.add(task)
            task.add_done_callback(_retrying.discard)

    async def remove_session(self, session_id: int) -> None:
        """A deleted session's files and objects (its photos, renders and saved index)."""
        for store in self._by_kind.values():
            if store.by_path:
                await store.remove_session(session_id)


# removals waiting for the object store to answer again (a reference, so that they are not collected)
_retrying: set[asyncio.Task[None]] = set()
_RETRY_MAX_S = 30.0


async def _delete_under_all(objects: ObjectStore, prefixes: list[str]) -> None:
    for prefix in prefixes:
        await objects.delete_under(prefix)


async def _delete_when_back(objects: ObjectStore, prefixes: list[str]) -> None:
    delay = 1.0
    while True:
        await asyncio.sleep(delay)
        try:
            await _delete_under_all(objects, prefixes)
            return
        except Unavailable:
            delay = min(_RETRY_MAX_S, 2 * delay)
        except (RuntimeError, BotoCoreError, ClientError) as exc:  # a refusal, or the client closed at a stop
            log.warning("gave up removing %d face crops from the object store: %s", len(prefixes), exc)
            return


@asynccontextmanager
async def open_image_stores(settings: Settings, storage: Storage, pool: asyncpg.Pool) -> AsyncIterator[ImageStores]:
    """The stores, with the bucket's client whenever a bucket is set (rows kept in S3 stay served and
    removable after FACESERVE_IMAGE_STORE changed back)."""
    if settings.s3_bucket is None:
        yield ImageStores(settings.image_store, storage, pool)
        return
    async with open_object_store(settings) as objects:
        yield ImageStores(settings.image_store, storage, pool, objects)
