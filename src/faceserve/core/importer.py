"""`faceserve import DIR` or `faceserve import s3://bucket/prefix`: take in a tree laid out as
face_sessions/{session_id}/db/* (the old path-based system), from a folder or from objects in an
S3-compatible store (the endpoint, region and credentials of the S3 settings; any bucket they can read).
Files keep their names so old /storage/... URLs still resolve; what is already recorded is skipped without
reading it, so a second run (or a run after an interruption) takes in only what is missing. Objects stream
through the same ingest as uploads and files do. Unreadable files are reported and skipped."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path, PurePosixPath

import aiofiles
from botocore.exceptions import ClientError

from .. import db, layout
from ..config import Settings
from ..errors import FaceServeError
from ..inputs import cleaned_text
from ..layout import PHOTOS_DIR, SESSIONS_DIR
from ..media.files import is_plain_name, stored_name_for
from ..media.objects import ObjectStore, is_absent, open_object_store
from . import ingest
from .services import Services

log = logging.getLogger(__name__)
_CHUNK = 1024 * 1024


# what became of one file, as the progress callback hears it
IMPORTED, DUPLICATE, ALREADY_PRESENT, FAILED = "imported", "duplicate", "already present", "failed"
DELETED = "skipped as deleted"
Progress = Callable[["ImportReport", str, str], None]


class NoSessionsFound(ValueError):
    """The source has no face_sessions/{id}/db/ folder: most likely the wrong folder was named."""


@dataclass
class ImportReport:
    sessions_created: int = 0
    images_created: int = 0
    # files whose path is recorded already (a second run)
    already_present: int = 0
    # files of photos or sessions deleted through the API: never taken in again (tombstones.py)
    deleted_skipped: int = 0
    # files with the same bytes as an image of the session under another name: kept as an alias of it
    duplicates: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return self.images_created + self.already_present + self.duplicates + self.deleted_skipped + len(self.failed)


@dataclass(frozen=True)
class SourceFile:
    """One file of the tree: its name in its session's db folder, and how to read its bytes."""

    name: str
    read: Callable[[], AsyncIterator[bytes]]


@dataclass(frozen=True)
class Tree:
    """What an import takes in: the (session id, files in import order) found, and the source's name."""

    label: str
    sessions: list[tuple[int, list[SourceFile]]]

    @property
    def file_count(self) -> int:
        return sum(len(files) for _, files in self.sessions)


def sessions_in(source: Path) -> list[tuple[int, Path]]:
    """(session id, its db folder) for each numeric folder under source or source/face_sessions."""
    root = source / SESSIONS_DIR if (source / SESSIONS_DIR).is_dir() else source
    found = []
    for child in root.iterdir():
        if child.name.isascii() and child.name.isdigit() and (child / PHOTOS_DIR).is_dir():
            found.append((int(child.name), child / PHOTOS_DIR))
    return sorted(found)


def _label(last_part: str, parent_part: str) -> str:
    """The folder (or prefix) imported, as a session's name: its own name, or its parent's when it is the
    face_sessions folder itself."""
    return parent_part if last_part == SESSIONS_DIR else last_part


def imported_name(label: str, session_id: int, sessions: int) -> str:
    """A readable name for an imported session: the folder imported ("wedding"), with the old id when the
    tree held several sessions ("wedding 3"); renamed on the page or by PATCH later."""
    label = cleaned_text(label).strip()[:150] or "imported"
    return f"{label} {session_id}" if sessions > 1 else label


def files_in(folder: Path) -> list[Path]:
    """The files of one session's db folder, in the order they are imported (hidden ones skipped)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())


def _no_sessions(source: str) -> NoSessionsFound:
    return NoSessionsFound(
        f"{source} has no face_sessions/{{session id}}/db/ folders (nor {{session id}}/db/ ones): "
        "name the folder that holds face_sessions/, or face_sessions/ itself"
    )


def folder_tree(source: Path) -> Tree:
    """The tree under a folder; raises NoSessionsFound."""
    sessions = sessions_in(source)
    if not sessions:
        raise _no_sessions(str(source))
    found = [(session_id, [SourceFile(p.name, partial(_read, p)) for p in files_in(folder)]) for session_id, folder in sessions]
    return Tree(_label(source.name, source.parent.name), found)


async def _read(path: Path) -> AsyncIterator[bytes]:
    async with aiofiles.open(path, "rb") as source:
        while chunk := await source.read(_CHUNK):
            yield chunk


def parse_bucket_url(url: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> (bucket, "some/prefix"); ValueError for anything else."""
    if not url.startswith("s3://"):
        raise ValueError(f"{url!r} is not an s3://bucket/prefix address")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"{url!r} names no bucket: s3://bucket/prefix")
    return bucket, prefix.strip("/")


async def bucket_tree(objects: ObjectStore, url: str) -> Tree:
    """The tree under a bucket's prefix, found by listing it once: keys {prefix}/face_sessions/{id}/db/{name}
    (or {prefix}/{id}/db/{name} when the prefix is face_sessions itself), in name order; deeper keys and
    hidden names are skipped as a folder's subfolders and hidden files are. Raises NoSessionsFound."""
    root = ""
    keys = await objects.keys_under(objects.key(f"{SESSIONS_DIR}/"))
    if keys:
        root = f"{SESSIONS_DIR}/"
    else:
        keys = await objects.keys_under(objects.key(""))
    start = len(objects.key(root))
    found: dict[int, list[SourceFile]] = {}
    for key in sorted(keys):
        parts = key[start:].split("/")
        if len(parts) != 3 or not (parts[0].isascii() and parts[0].isdigit()) or parts[1] != PHOTOS_DIR:
            continue
        if not parts[2] or parts[2].startswith("."):
            continue
        found.setdefault(int(parts[0]), []).append(SourceFile(parts[2], partial(objects.stream, root + "/".join(parts))))
    if not found:
        raise _no_sessions(url)
    where = PurePosixPath(objects.bucket, *[p for p in objects.key("").split("/") if p])
    return Tree(_label(where.name, where.parent.name), sorted(found.items()))


@asynccontextmanager
async def open_bucket(settings: Settings, url: str) -> AsyncIterator[ObjectStore]:
    """A client for the bucket and prefix a s3:// address names, with the S3 settings' endpoint, region,
    retries and credentials (a bucket other than FACESERVE_S3_BUCKET is fine)."""
    bucket, prefix = parse_bucket_url(url)
    opened = False
    try:
        async with open_object_store(replace(settings, s3_bucket=bucket, s3_prefix=prefix)) as objects:
            opened = True
            yield objects
    except ClientError as exc:
        if opened or not is_absent(exc):
            raise
        raise NoSessionsFound(f"there is no bucket {bucket} at {settings.s3_endpoint or 'AWS'}") from None


class _Deleted(Exception):
    """These bytes were deleted from the session: skipped."""


async def _analyze(
    services: Services, session_id: int, source: SourceFile, name: str | None
) -> ingest.Analyzed:
    pending = await services.storage.receive(session_id, source.read(), services.settings.max_upload_bytes)
    try:
        deleted = await db.content_was_deleted(services.pool, session_id, pending.sha256)
    except BaseException:  # cancelled (an import cut short) or the database gone: the .part file goes
        await services.storage.discard(pending.path)
        raise
    if deleted:
        await services.storage.discard(pending.path)
        raise _Deleted
    if name is None:
        suffix = PurePosixPath(source.name).suffix.lstrip(".")
        name = stored_name_for(source.name, pending.sha256_hex, suffix or "img")
    # a name on disk need not be UTF-8 (it arrives surrogate-escaped): kept as the upload's names are
    original_name = cleaned_text(source.name) or "image"
    return await ingest.analyze_image(services, session_id, pending, original_name, stored_name=name)


async def _record(
    services: Services, session_id: int, label: str, work: asyncio.Task[ingest.Analyzed], report: ImportReport
) -> str:
    try:
        analyzed = await work
        outcome = await ingest.record_image(services, session_id, analyzed)
    except _Deleted:
        report.deleted_skipped += 1
        return DELETED
    except (FaceServeError, OSError) as exc:
        message = exc.message if isinstance(exc, FaceServeError) else str(exc)
        report.failed.append((label, message))
        log.debug("skipped %s: %s", label, message)  # the CLI reports failures itself, once
        return FAILED
    if outcome.created:
        report.images_created += 1
        return IMPORTED
    # the same bytes under another name: keep old links to this name working
    alias = layout.file_path(session_id, analyzed.stored_name or "")
    if alias != outcome.image.file_path:
        await db.add_alias(services.pool, alias, outcome.image.id)
        report.duplicates += 1
        return DUPLICATE
    report.already_present += 1
    return ALREADY_PRESENT


async def import_tree(
    services: Services, source: Path | Tree, progress: Progress | None = None
) -> ImportReport:
    """Files are read and analysed a few at a time (reading one while the models work on another), and
    recorded strictly in name order, so which of two identical files keeps the bytes never varies."""
    report = ImportReport()
    window_size = services.settings.inference_threads + 1
    tree = source if isinstance(source, Tree) else folder_tree(source)
    for session_id, files in tree.sessions:
        if await db.session_was_deleted(services.pool, session_id):
            report.deleted_skipped += len(files)
            continue
        if await db.get_session(services.pool, session_id) is None:
            session_name = imported_name(tree.label, session_id, len(tree.sessions))
            await db.create_session(services.pool, session_name, session_id=session_id)
            report.sessions_created += 1
        recorded = await db.session_file_paths(services.pool, session_id)
        deleted = await db.deleted_paths(services.pool, session_id)
        window: deque[tuple[str, asyncio.Task[ingest.Analyzed]]] = deque()
        try:
            for file in files:
                label = layout.identity(session_id, file.name)
                name = file.name if is_plain_name(file.name) else None
                if name is not None and layout.file_path(session_id, name) in recorded:
                    report.already_present += 1
                    if progress is not None:
                        progress(report, label, ALREADY_PRESENT)
                    continue
                if name is not None and layout.file_path(session_id, name) in deleted:
                    report.deleted_skipped += 1
                    if progress is not None:
                        progress(report, label, DELETED)
                    continue
                window.append((label, asyncio.create_task(_analyze(services, session_id, file, name))))
                if len(window) >= window_size:
                    label, work = window.popleft()
                    outcome = await _record(services, session_id, label, work, report)
                    if progress is not None:
                        progress(report, label, outcome)
            while window:
                label, work = window.popleft()
                outcome = await _record(services, session_id, label, work, report)
                if progress is not None:
                    progress(report, label, outcome)
        finally:
            await _abandon(services, window)
    return report


async def _abandon(services: Services, window: deque[tuple[str, asyncio.Task[ingest.Analyzed]]]) -> None:
    """Interrupted: cancel what is in flight and drop files analysed but never recorded."""
    for _, work in window:
        work.cancel()
    # a cancelled or failed analysis has cleaned up already; a finished one still holds its .part file
    for result in await asyncio.gather(*(work for _, work in window), return_exceptions=True):
        if isinstance(result, ingest.Analyzed):
            await services.storage.discard(result.pending.path)
