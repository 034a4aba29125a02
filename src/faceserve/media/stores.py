"""Where the bytes of a recorded image live: a file under the storage root (default) or a row in Postgres.

Uploads always arrive as a .part file on disk (media/files.py): hashing, the header probe and the face models
read them there. Recording an image hands that file to the configured store inside the transaction that
inserts the image's row:
- FileStore renames it to face_sessions/{session}/db/{name}; a crash between the rename and the commit
  leaves a file without a row (`faceserve import` adopts it), never a row without a file;
- PostgresStore inserts its bytes into image_blobs in the same transaction: row and bytes commit together,
  and deleting the row (or its session) deletes them by cascade.
A file goes after its row's delete committed, unless an upload of the same bytes took its path meanwhile
(core/tombstones.py remove_file_unless_taken).
Every row names its store (face_session_images.bytes_in), so switching FACESERVE_IMAGE_STORE strands
nothing: older images are served from where they were put. Derived files (resized copies, face crops)
stay on disk in both cases; they are a cache that can always be made again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import asyncpg

from .. import db
from ..errors import ImageNotFound
from .files import PendingFile, Storage, disk_full_error

FILE = "file"
POSTGRES = "postgres"

Undo = Callable[[], None]


class StoredImage(Protocol):
    """What a store needs to find an image's bytes (db.ImageRecord, http.serving.ServedFile)."""

    @property
    def id(self) -> int: ...

    @property
    def file_path(self) -> str: ...

    @property
    def bytes_in(self) -> str: ...


class ImageStore(Protocol):
    kind: str

    async def save(self, conn: asyncpg.Connection, pending: PendingFile, image: db.ImageRecord) -> Undo | None:
        """Keep the pending file's bytes as this image's, inside the row's transaction. Returns what undoes
        it should that transaction fail afterwards (None: the rollback does)."""

    async def source(self, image: StoredImage) -> Path | bytes:
        """The bytes to render a derivative from (a path is read by the renderer). ImageNotFound if gone."""

    async def exists(self, image: StoredImage) -> bool: ...


class FileStore:
    kind = FILE

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def save(self, conn: asyncpg.Connection, pending: PendingFile, image: db.ImageRecord) -> Undo:
        final = await asyncio.to_thread(self._storage.commit, pending, image.file_path)
        return lambda: final.unlink(missing_ok=True)

    async def source(self, image: StoredImage) -> Path:
        # existence is the renderer's to find out (FileNotFoundError): it opens the file anyway
        return self._storage.absolute(image.file_path)

    async def exists(self, image: StoredImage) -> bool:
        return await asyncio.to_thread(self._storage.absolute(image.file_path).exists)


class PostgresStore:
    kind = POSTGRES

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


class ImageStores:
    """The store new images go to, and the store of any row by its bytes_in."""

    def __init__(self, configured: str, storage: Storage, pool: asyncpg.Pool) -> None:
        # configured is one of FILE, POSTGRES: Settings refuses anything else when it is read
        self._by_kind: dict[str, ImageStore] = {FILE: FileStore(storage), POSTGRES: PostgresStore(pool)}
        self.configured = self._by_kind[configured]

    def of(self, image: StoredImage) -> ImageStore:
        return self._by_kind[image.bytes_in]
