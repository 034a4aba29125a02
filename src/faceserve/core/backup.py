"""`faceserve backup DIR` and `faceserve restore DIR`: a consistent copy of a service's data, and that copy
put onto a fresh storage.

A backup is one folder: database.dump (pg_dump's custom format, made by the embedded server's own pg_dump,
so photos kept in Postgres are in it), photos/ (every photo kept as a file, by its path under the storage
root) and manifest.json (each file's SHA-256 and size). The dump and the list of photos come from one
snapshot of the database, so they agree: a photo uploaded meanwhile is in neither, one deleted meanwhile
makes the backup fail (run it again). Resized copies, face crops and saved indexes are caches: not copied,
made again on use. A restore checks every SHA-256 first, then loads the dump into an empty database and puts
the photos in place; the service then starts on it as on any database (pending migrations apply).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from .. import __version__, db
from ..config import Settings
from ..media.files import Storage

MANIFEST = "manifest.json"
DUMP = "database.dump"
PHOTOS = "photos"
_FORMAT = 1


class BackupError(Exception):
    """A backup or restore that cannot go on; the message says why in one line."""


@dataclass(frozen=True)
class Outcome:
    photos: int
    bytes: int


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def _run(*command: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await process.communicate()
    if process.returncode != 0:
        message = err.decode(errors="replace").strip().splitlines()
        raise BackupError(f"{Path(command[0]).name} failed: {message[-1] if message else process.returncode}")


def _copy_photos(storage: Storage, file_paths: list[str], target: Path) -> dict[str, dict[str, int | str]]:
    """Copies and hashes each photo; a photo missing (deleted after the snapshot) stops the backup."""
    entries: dict[str, dict[str, int | str]] = {}
    for file_path in file_paths:
        source = storage.absolute(file_path)
        destination = target / PHOTOS / file_path
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(source, destination)
        except FileNotFoundError:
            raise BackupError(f"{file_path} was deleted while the backup ran: run it again") from None
        entries[f"{PHOTOS}/{file_path}"] = {"sha256": _sha256(destination), "bytes": destination.stat().st_size}
    return entries


async def backup(settings: Settings, target: Path) -> Outcome:
    if target.exists() and any(target.iterdir()):
        raise BackupError(f"{target} is not empty: a backup goes into a new or empty folder")
    target.mkdir(parents=True, exist_ok=True)
    async with db.database_uri(settings) as uri:
        conn = await asyncpg.connect(uri)
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                snapshot = await db.export_snapshot(conn)
                file_paths = await db.stored_file_paths(conn)
                dump = target / DUMP
                await _run(str(db.postgres_tool("pg_dump")), "--format=custom", f"--snapshot={snapshot}",
                           f"--file={dump}", f"--dbname={uri}")  # fmt: skip
                photos = await asyncio.to_thread(_copy_photos, Storage(settings.storage), file_paths, target)
        finally:
            await conn.close()
    dump_facts: dict[str, int | str] = {"sha256": await asyncio.to_thread(_sha256, dump), "bytes": dump.stat().st_size}
    files = {DUMP: dump_facts, **photos}
    manifest = {
        "format": _FORMAT,
        "faceserve": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": files,
    }
    (target / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return Outcome(len(photos), sum(int(f["bytes"]) for f in files.values()))


def _checked_manifest(source: Path) -> dict[str, dict[str, int | str]]:
    """The manifest's files, each present with its SHA-256: a copy damaged in transit is refused whole."""
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{source} holds no readable {MANIFEST}: {exc}") from None
    if manifest.get("format") != _FORMAT:
        raise BackupError(f"{source}/{MANIFEST} is of an unknown format {manifest.get('format')!r}")
    files: dict[str, dict[str, int | str]] = manifest["files"]
    for name, facts in files.items():
        path = (source / name).resolve()
        if not path.is_relative_to(source.resolve()) or not path.is_file():
            raise BackupError(f"{name} is missing from the backup")
        if _sha256(path) != facts["sha256"]:
            raise BackupError(f"{name} does not match its SHA-256 in the manifest: the backup is damaged")
    return files


async def restore(settings: Settings, source: Path) -> Outcome:
    files = await asyncio.to_thread(_checked_manifest, source)
    storage = Storage(settings.storage)
    sessions_root = storage.layout.sessions_root
    if sessions_root.exists() and any(sessions_root.iterdir()):
        raise BackupError(f"{sessions_root} holds photos already: restore onto a fresh storage")
    async with db.database_uri(settings) as uri:
        conn = await asyncpg.connect(uri)
        try:
            if await db.has_schema(conn):
                raise BackupError("the database holds faceserve's tables already: restore into an empty one")
        finally:
            await conn.close()
        await _run(str(db.postgres_tool("pg_restore")), "--no-owner", "--no-privileges", "--exit-on-error",
                   "--single-transaction", f"--dbname={uri}", str(source / DUMP))  # fmt: skip
    photos = [name for name in files if name.startswith(f"{PHOTOS}/")]

    def put_photos() -> None:
        for name in photos:
            destination = storage.absolute(name.removeprefix(f"{PHOTOS}/"))
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, destination)

    await asyncio.to_thread(put_photos)
    return Outcome(len(photos), sum(int(f["bytes"]) for f in files.values()))
