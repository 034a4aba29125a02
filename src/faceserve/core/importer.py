"""`faceserve import DIR`: take in a tree laid out as face_sessions/{session_id}/db/* (the old path-based
system). Files keep their names so old /storage/... URLs still resolve; what is already recorded is skipped,
so a second run changes nothing. Unreadable files are reported and skipped."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiofiles

from .. import db, layout
from ..errors import FaceServeError
from ..inputs import cleaned_text
from ..layout import PHOTOS_DIR, SESSIONS_DIR
from ..media.files import is_plain_name, stored_name_for
from . import ingest, tombstones
from .services import Services

log = logging.getLogger(__name__)
_CHUNK = 1024 * 1024


@dataclass
class ImportReport:
    sessions_created: int = 0
    images_created: int = 0
    already_present: int = 0
    # files of photos or sessions deleted through the API: never taken in again (tombstones.py)
    deleted_skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return self.images_created + self.already_present + self.deleted_skipped + len(self.failed)


def sessions_in(source: Path) -> list[tuple[int, Path]]:
    """(session id, its db folder) for each numeric folder under source or source/face_sessions."""
    root = source / SESSIONS_DIR if (source / SESSIONS_DIR).is_dir() else source
    found = []
    for child in root.iterdir():
        if child.name.isascii() and child.name.isdigit() and (child / PHOTOS_DIR).is_dir():
            found.append((int(child.name), child / PHOTOS_DIR))
    return sorted(found)


async def _read(path: Path) -> AsyncIterator[bytes]:
    async with aiofiles.open(path, "rb") as source:
        while chunk := await source.read(_CHUNK):
            yield chunk


class _Deleted(Exception):
    """These bytes were deleted from the session: skipped."""


async def _analyze(services: Services, session_id: int, path: Path, name: str | None) -> ingest.Analyzed:
    pending = await services.storage.receive(session_id, _read(path), services.settings.max_upload_bytes)
    if await tombstones.content_was_deleted(services.pool, session_id, pending.sha256):
        await services.storage.discard(pending.path)
        raise _Deleted
    if name is None:
        name = stored_name_for(path.name, pending.sha256_hex, path.suffix.lstrip(".") or "img")
    # a name on disk need not be UTF-8 (it arrives surrogate-escaped): kept as the upload's names are
    original_name = cleaned_text(path.name) or "image"
    return await ingest.analyze_image(services, session_id, pending, original_name, stored_name=name)


async def _record(
    services: Services, session_id: int, label: str, work: asyncio.Task[ingest.Analyzed], report: ImportReport
) -> None:
    try:
        analyzed = await work
        outcome = await ingest.record_image(services, session_id, analyzed)
    except _Deleted:
        report.deleted_skipped += 1
        return
    except (FaceServeError, OSError) as exc:
        message = exc.message if isinstance(exc, FaceServeError) else str(exc)
        report.failed.append((label, message))
        log.warning("skipped %s: %s", label, message)
        return
    if outcome.created:
        report.images_created += 1
        return
    # the same bytes under another name: keep old links to this name working
    alias = layout.file_path(session_id, analyzed.stored_name or "")
    if alias != outcome.image.file_path:
        await db.add_alias(services.pool, alias, outcome.image.id)
    report.already_present += 1


async def import_tree(
    services: Services, source: Path, progress: Callable[[ImportReport, str], None] | None = None
) -> ImportReport:
    """Files are read and analysed a few at a time (reading one while the models work on another), and
    recorded strictly in name order, so which of two identical files keeps the bytes never varies."""
    report = ImportReport()
    window_size = services.settings.inference_threads + 1
    for session_id, folder in sessions_in(source):
        if await tombstones.session_was_deleted(services.pool, session_id):
            report.deleted_skipped += sum(1 for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
            continue
        if await db.get_session(services.pool, session_id) is None:
            await db.create_session(services.pool, f"session {session_id}", session_id=session_id)
            report.sessions_created += 1
        recorded = await db.session_file_paths(services.pool, session_id)
        deleted = await tombstones.deleted_paths(services.pool, session_id)
        window: deque[tuple[str, asyncio.Task[ingest.Analyzed]]] = deque()
        try:
            for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file()):
                label = layout.identity(session_id, path.name)
                name = path.name if is_plain_name(path.name) else None
                if name is not None and layout.file_path(session_id, name) in recorded:
                    report.already_present += 1
                    if progress is not None:
                        progress(report, label)
                    continue
                if name is not None and layout.file_path(session_id, name) in deleted:
                    report.deleted_skipped += 1
                    if progress is not None:
                        progress(report, label)
                    continue
                window.append((label, asyncio.create_task(_analyze(services, session_id, path, name))))
                if len(window) >= window_size:
                    label, work = window.popleft()
                    await _record(services, session_id, label, work, report)
                    if progress is not None:
                        progress(report, label)
            while window:
                label, work = window.popleft()
                await _record(services, session_id, label, work, report)
                if progress is not None:
                    progress(report, label)
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
