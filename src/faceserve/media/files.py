"""Files on disk: layout, safe stored names, atomic writes with hashing, removal.

Where files go is layout.py's. Uploads go to a hidden .part file in the same folder (same filesystem, so the final rename is atomic) and
are fsynced before the rename; a .part left by a crash is swept at the next start.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import time
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiofiles
import aiofiles.os

from ..errors import InsufficientStorage, PayloadTooLarge
from ..layout import PHOTOS_DIR, SessionLayout

log = logging.getLogger(__name__)

_PART_PREFIX = ".upload-"
_PART_SUFFIX = ".part"
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")
_DOT_RUN = re.compile(r"\.{2,}")
_MAX_STEM = 60
_HASH_PREFIX = 16
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    """No space left on the device, or the user's quota on it spent."""
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL


def disk_full_error(what: str) -> InsufficientStorage:
    return InsufficientStorage(f"the storage is full: {what} could not be kept; nothing was stored")


def safe_stem(original_name: str) -> str:
    """What survives of a client's file name in ours: the last path part, ASCII letters, digits, . _ -."""
    base = re.split(r"[/\\]", original_name.replace("\x00", ""))[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode("ascii")
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    stem = _DOT_RUN.sub(".", _UNSAFE_RUN.sub("_", stem)).strip("._-")[:_MAX_STEM].strip("._-")
    return stem or "image"


def stored_name_for(original_name: str, sha256_hex: str, extension: str) -> str:
    """Unique in a session because a session holds each content hash once; stable for the same upload."""
    return f"{sha256_hex[:_HASH_PREFIX]}_{safe_stem(original_name)}.{extension}"


def is_plain_name(name: str) -> bool:
    """A name we can keep as it is on disk (import of an old tree): one path part, printable, not hidden."""
    return (
        0 < len(name) <= 200
        and name == os.path.basename(name)
        and not name.startswith(".")
        and all(ch.isprintable() and ch not in "\\/\x00" for ch in name)
    )


@dataclass
class PendingFile:
    """Bytes received and fsynced under a temporary name; either committed (renamed) or discarded."""

    path: Path
    size: int
    sha256: bytes

    @property
    def sha256_hex(self) -> str:
        return self.sha256.hex()


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.layout = SessionLayout(self.root)

    def absolute(self, file_path: str) -> Path:
        """The file behind a row's file_path; refuses anything that would leave the storage root."""
        path = (self.root / file_path).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"file_path {file_path!r} leaves the storage root")
        return path

    async def receive(self, session_id: int, chunks: AsyncIterator[bytes], max_bytes: int) -> PendingFile:
        """Stream chunks into a .part file, hashing as they arrive; fsync. Over max_bytes -> PayloadTooLarge;
        a full disk -> InsufficientStorage, the .part file removed."""
        folder = self.layout.photos_dir(session_id)
        try:
            await aiofiles.os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error("the upload") from None
            raise
        path = folder / f"{_PART_PREFIX}{secrets.token_hex(8)}{_PART_SUFFIX}"
        digest = hashlib.sha256()
        size = 0
        try:
            async with aiofiles.open(path, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(f"file is larger than {max_bytes} bytes")
                    # one chunk (tens of KB) hashes in microseconds; a thread hop per chunk would cost more
                    digest.update(chunk)
                    await out.write(chunk)
                await out.flush()
                await asyncio.to_thread(os.fsync, out.fileno())
        except BaseException as exc:
            await self.discard(path)
            if is_disk_full(exc):
                raise disk_full_error("the upload") from None
            raise
        return PendingFile(path, size, digest.digest())

    @staticmethod
    async def discard(path: Path) -> None:
        try:
            await aiofiles.os.remove(path)
        except FileNotFoundError:
            pass

    def commit(self, pending: PendingFile, file_path: str) -> Path:
        """Atomically give the pending file its final name and make the rename durable."""
        final = self.absolute(file_path)
        try:
            os.replace(pending.path, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            if is_disk_full(exc):  # a directory that needed one more block for the new name
                raise disk_full_error("the upload") from None
            raise
        return final

    def remove_session(self, session_id: int) -> None:
        shutil.rmtree(self.layout.session_dir(session_id), ignore_errors=True)

    def sweep_partial_uploads(self, min_idle_s: float) -> int:
        """Delete .part files left by a crash mid-upload. Run at start, before serving. On storage shared by
        several nodes another node may be writing one: only those unwritten for min_idle_s go."""
        removed = 0
        written_after = time.time() - min_idle_s
        for _, part in self.layout.sessions_with(f"{PHOTOS_DIR}/{_PART_PREFIX}*{_PART_SUFFIX}"):
            try:
                if min_idle_s and part.stat().st_mtime > written_after:
                    continue
            except FileNotFoundError:
                continue  # its upload finished meanwhile
            part.unlink(missing_ok=True)
            removed += 1
        if removed:
            log.info("removed %d partial uploads left by an earlier run", removed)
        return removed


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
