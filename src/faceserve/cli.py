"""Command line: `faceserve serve` runs the service, `faceserve import DIR` takes in an old tree,
`faceserve db upgrade|status` moves or shows the database schema, `faceserve people --session ID
[--recluster]` shows (or clusters again) the people of a session."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from .config import Settings, SettingsError, load_settings


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", type=Path, help="storage root (default ./storage, or FACESERVE_STORAGE)")
    parser.add_argument("--models-dir", type=Path, help="folder of model packs (default ./models)")
    parser.add_argument("--model-pack", help="model pack under --models-dir (default buffalo_s)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where models run (default auto)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faceserve", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--public-base-url", help="absolute base of image URLs in responses")
    serve.add_argument("--workers", type=int, help="processes sharing the port (default 1)")
    _common(serve)
    importer = commands.add_parser("import", help="import a face_sessions/{id}/db/* tree")
    importer.add_argument("source", type=Path, help="folder holding face_sessions/ (or that folder itself)")
    _common(importer)
    database = commands.add_parser("db", help="the database schema: apply or show its migrations")
    database.add_argument("action", choices=["upgrade", "status"])
    database.add_argument("--storage", type=Path, help="storage root whose embedded Postgres to use")
    people = commands.add_parser("people", help="the people of a session; --recluster groups its faces again")
    people.add_argument("--session", type=int, required=True, help="face session id")
    people.add_argument("--recluster", action="store_true", help="run a full clustering now, with progress")
    people.add_argument("--top", type=int, default=20, help="people to list, most photographed first")
    _common(people)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    names = ("host", "port", "public_base_url", "workers", "storage", "models_dir", "model_pack", "device")
    overrides: dict[str, Any] = {n: getattr(args, n, None) for n in names}
    return load_settings(overrides)


async def _import(settings: Settings, source: Path) -> int:
    from .core.importer import ImportReport, import_tree
    from .core.services import open_services

    interactive = sys.stderr.isatty()

    def progress(report: ImportReport, label: str) -> None:
        if interactive:
            line = (
                f"\r{report.seen} files: {report.images_created} imported, {report.already_present} already there, "
                f"{len(report.failed)} failed  {label[-40:]:<40}"
            )
            sys.stderr.write(line)
            sys.stderr.flush()

    async with open_services(settings) as services:
        report = await import_tree(services, source.resolve(), progress)
    if interactive:
        sys.stderr.write("\n")
    for label, message in report.failed:
        print(f"failed: {label}: {message}")
    print(
        f"sessions created: {report.sessions_created}, images imported: {report.images_created}, "
        f"already present: {report.already_present}, failed: {len(report.failed)}"
    )
    return 0


async def _database(settings: Settings, action: str) -> int:
    import asyncpg

    from .db import database_uri, migrations

    async with database_uri(settings.database_url, settings.pgdata) as uri:
        conn = await asyncpg.connect(uri)
        try:
            if action == "upgrade":
                applied = await migrations.upgrade(conn)
                for migration in applied:
                    print(f"applied {migration.version:04d}_{migration.name}")
            status = await migrations.status(conn)
        finally:
            await conn.close()
    for step in status.applied:
        print(f"{step.version:04d}_{step.name}  applied {step.applied_at.isoformat(timespec='seconds')}")
    for migration in status.pending:
        print(f"{migration.version:04d}_{migration.name}  pending")
    for step in status.unknown:
        print(f"{step.version:04d}_{step.name}  applied by a newer release")
    print(f"schema version {status.current}, {len(status.pending)} pending")
    return 0


async def _people(settings: Settings, session_id: int, recluster: bool, top: int) -> int:
    from . import db
    from .core import people
    from .core.face_sessions import require_session
    from .core.services import open_services
    from .errors import SessionNotFound

    interactive = sys.stderr.isatty()
    last_stage = ""

    def progress(stage: str, done: int, total: int) -> None:
        nonlocal last_stage
        if interactive:
            sys.stderr.write(f"\r{stage:<12} {done:>10,} / {total:,}    ")
        elif stage != last_stage:
            sys.stderr.write(f"{stage}...\n")
        last_stage = stage
        sys.stderr.flush()

    async with open_services(settings, sweep_partial_uploads=False) as services:
        try:
            await require_session(services, session_id)
        except SessionNotFound as exc:
            print(exc.message, file=sys.stderr)
            return 1
        if recluster:
            report = await people.recluster(services, session_id, progress)
            if interactive:
                sys.stderr.write("\n")
            if report is None:
                print(f"session {session_id} is being clustered by another process; try again later")
                return 1
            print(
                f"clustered {report.faces} faces in {report.seconds:.1f} s: {report.people} people, "
                f"{report.placed_faces} faces placed"
            )
        for person in await db.list_people(services.pool, session_id, None, top):
            print(f"person {person.id}: {person.image_count} photos, {person.face_count} faces")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = _settings(args)
    except SettingsError as exc:
        print(f"faceserve: {exc}", file=sys.stderr)
        return 2
    if args.command == "db":
        return asyncio.run(_database(settings, args.action))
    if args.command == "people":
        return asyncio.run(_people(settings, args.session, args.recluster, args.top))
    if args.command == "serve":
        from .server import serve

        serve(settings)
        return 0
    if not args.source.is_dir():
        print(f"{args.source} is not a folder", file=sys.stderr)
        return 2
    return asyncio.run(_import(settings, args.source))


if __name__ == "__main__":
    sys.exit(main())
