"""faceserve: find a person in a photo collection by their face.

  faceserve serve                    run the service (the page, the API)
  faceserve setup-link               print a one-time link that signs a browser in as the organiser
  faceserve import DIR|s3://B/P      take in an old face_sessions/{id}/db/ tree, from a folder or a bucket
  faceserve doctor                   check what a deployment needs
  faceserve db upgrade|status        apply or show the database schema's migrations
  faceserve people --session ID      show (or --recluster) the people of a session
  faceserve keys ..., signing ...    manage API keys and the keys that sign image URLs
  faceserve backup DIR, restore DIR  copy the database and photos out, and onto a fresh storage

Exit codes: 0 done; 1 it ran and something failed (port in use, database down, files that failed to
import, a failed doctor check); 2 bad usage (flags, settings, a source without the face_sessions layout);
130 interrupted. Errors are one line on stderr, never a traceback (--log-level DEBUG adds it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..config import CHOICES, Settings, env_name, load_settings
from ..logs import FORMATS, LEVELS
from . import admin, backup

if TYPE_CHECKING:
    from ..core.importer import Tree

log = logging.getLogger("faceserve")
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
_METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# commands whose output is a report: the log's INFO lines (a migration applied, Postgres started) stay out of it
_REPORTS = {"doctor", "db", "people", *admin.COMMANDS, *backup.COMMANDS}


class UsageError(Exception):
    """Bad input from the operator: a one-line message and exit code 2."""


class CannotListen(Exception):
    """The address is taken (or not ours): a one-line message and exit code 1."""


def _port(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a port (1-65535)")
    return int(raw)


def _positive(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number of at least 1")
    return int(raw)


def _default(name: str) -> str:
    """A flag's help names the setting's default and its variable, both read from config.py."""
    value = getattr(Settings, name)
    shown = f"./{value}" if isinstance(value, Path) and not value.is_absolute() else value
    return f"default {shown}, or {env_name(name)}"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", type=Path, help=f"storage root ({_default('storage')})")
    parser.add_argument("--models-dir", type=Path, help=f"folder of model packs ({_default('models_dir')})")
    parser.add_argument("--model-pack", help=f"model pack under --models-dir ({_default('model_pack')})")
    parser.add_argument("--device", choices=CHOICES["device"], help=f"where models run ({_default('device')})")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faceserve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"faceserve {__version__}")
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LEVELS,
        help=f"DEBUG shows libraries' start-up chatter and tracebacks too ({_default('log_level')})",
    )
    parser.add_argument(
        "--log-format", choices=FORMATS, help=f"text, or json: one object a line ({_default('log_format')})"
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{serve,setup-link,import,doctor,db,people,storage,keys,signing,backup,restore}"
    )
    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help=f"address to listen on ({_default('host')})")
    serve.add_argument("--port", type=_port, help=f"port ({_default('port')})")
    serve.add_argument("--public-base-url", help="absolute base of image URLs in responses")
    serve.add_argument("--workers", type=_positive, help=f"processes sharing the port ({_default('workers')})")
    _common(serve)
    importer = commands.add_parser("import", help="import a face_sessions/{id}/db/* tree from a folder or a bucket")
    importer.add_argument(
        "source",
        help="folder holding face_sessions/ (or that folder itself), or s3://bucket/prefix over such keys "
        "(read with FACESERVE_S3_ENDPOINT, FACESERVE_S3_REGION and the AWS credentials)",
    )
    _common(importer)
    doctor = commands.add_parser("doctor", help="check the database, models, providers, faiss, disk and clock")
    _common(doctor)
    database = commands.add_parser(
        "db", help="the database schema: apply or show its migrations, or print the schema they make"
    )
    database.add_argument("action", choices=["upgrade", "status", "schema"])
    database.add_argument("--storage", type=Path, help="storage root whose embedded Postgres to use")
    people = commands.add_parser("people", help="the people of a session; --recluster groups its faces again")
    people.add_argument("--session", type=int, required=True, help="face session id")
    people.add_argument("--recluster", action="store_true", help="run a full clustering now, with progress")
    people.add_argument("--top", type=int, default=20, help="people to list, most photographed first")
    _common(people)
    storage = commands.add_parser("storage", help="move photos' bytes between stores: migrate --to s3|file|postgres")
    storage.add_argument("action", choices=["migrate"])
    storage.add_argument(
        "--to", required=True, choices=["s3", "file", "files", "postgres"], help="the store every photo ends in"
    )
    _common(storage)
    admin.add_commands(commands, _common)
    backup.add_commands(commands, _common)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    names = ("host", "port", "public_base_url", "workers", "storage", "models_dir", "model_pack", "device")
    overrides: dict[str, Any] = {n: getattr(args, n, None) for n in names}
    overrides["log_level"], overrides["log_format"] = args.log_level, args.log_format
    try:
        return load_settings(overrides)
    except ValueError as exc:  # SettingsError: names the setting and what it accepts
        raise UsageError(str(exc)) from None


def _check_port_free(host: str, port: int) -> None:
    """Before minutes of loading: fail at once, in one line, when something already listens there."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp does: TIME_WAIT is no obstacle
        try:
            probe.bind(address)
        except OSError as exc:
            raise CannotListen(f"cannot listen on {host}:{port}: {exc.strerror}") from None


@contextmanager
def metrics_folder() -> Iterator[str]:
    """PROMETHEUS_MULTIPROC_DIR for every process of this service, set before prometheus_client loads:
    the operator's (emptied of an earlier run's samples), or a fresh folder removed at exit."""
    given = os.environ.get(_METRICS_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.unlink(os.path.join(given, name))
        yield given
        return
    folder = tempfile.mkdtemp(prefix="faceserve-metrics-")
    os.environ[_METRICS_ENV] = folder
    try:
        yield folder
    finally:
        os.environ.pop(_METRICS_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)


def _serve(settings: Settings) -> int:
    _check_port_free(settings.host, settings.port)
    with metrics_folder():
        from ..server import serve  # imports prometheus_client: after the folder is set

        interrupted = serve(settings)
    return EXIT_INTERRUPTED if interrupted else 0


async def _import(settings: Settings, source: str) -> int:
    from ..core.importer import bucket_tree, folder_tree, open_bucket, parse_bucket_url

    if not source.startswith("s3://"):
        folder = Path(source)
        if not folder.is_dir():
            raise UsageError(f"{source} is not a folder")
        return await _import_tree(settings, folder_tree(folder.resolve()))  # NoSessionsFound before anything starts
    try:
        parse_bucket_url(source)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    async with open_bucket(settings, source) as objects:
        # listed once, before anything starts (NoSessionsFound); each object is read as its turn comes
        return await _import_tree(settings, await bucket_tree(objects, source))


async def _import_tree(settings: Settings, tree: Tree) -> int:
    from tqdm import tqdm

    from ..core.importer import FAILED, ImportReport, import_tree
    from ..core.services import open_services

    total = tree.file_count
    interactive = sys.stderr.isatty()
    bar = tqdm(total=total, unit="file", file=sys.stderr, disable=not interactive, dynamic_ncols=True)

    def progress(report: ImportReport, label: str, outcome: str) -> None:
        if interactive:
            bar.set_postfix_str(
                f"{report.images_created} new, {report.duplicates} dup, {len(report.failed)} failed", refresh=False
            )
            bar.update(1)
            if outcome == FAILED:
                bar.write(f"failed: {label}: {report.failed[-1][1]}", file=sys.stderr)
        else:  # piped: plain lines a log or a script can read
            detail = f": {report.failed[-1][1]}" if outcome == FAILED else ""
            print(f"[{report.seen}/{total}] {label}: {outcome}{detail}", file=sys.stderr, flush=True)

    try:
        async with open_services(settings) as services:
            report = await import_tree(services, tree, progress)
    finally:
        bar.close()
    print(
        f"sessions created: {report.sessions_created}, images imported: {report.images_created}, "
        f"duplicates: {report.duplicates}, already present: {report.already_present}, "
        f"failed: {len(report.failed)}, skipped as deleted: {report.deleted_skipped}"
    )
    return EXIT_FAILED if report.failed else 0


async def _database(settings: Settings, action: str) -> int:
    import asyncpg

    from ..db import database_uri, migrations

    async with database_uri(settings) as uri:
        if action == "schema":
            from ..db import schema

            print(await schema.fresh_schema(uri), end="")
            return 0
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
    from .. import db
    from ..core import people
    from ..core.face_sessions import require_session
    from ..core.services import open_services

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
        await require_session(services, session_id)  # SessionNotFound: one line, exit 1
        if recluster:
            report = await people.recluster(services, session_id, progress)
            if interactive:
                sys.stderr.write("\n")
            if report is None:
                print(f"session {session_id} is being clustered by another process; try again later")
                return EXIT_FAILED
            print(
                f"clustered {report.faces} faces in {report.seconds:.1f} s: {report.people} people, "
                f"{report.placed_faces} faces placed"
            )
        for person in await db.list_people(services.pool, session_id, None, top):
            print(f"person {person.id}: {person.image_count} photos, {person.face_count} faces")
    return 0


async def _migrate(settings: Settings, target: str) -> int:
    from .. import db
    from ..core.store_moves import MoveReport, move_all
    from ..media.files import Storage
    from ..media.stores import open_image_stores

    if target == "s3" and not settings.s3_bucket:
        raise UsageError("--to s3 needs FACESERVE_S3_BUCKET (and FACESERVE_S3_ENDPOINT for a store other than AWS)")

    def progress(report: MoveReport, image: db.ImageRecord) -> None:
        print(f"image {image.id} ({image.bytes_in} -> {target}): {report.images_moved} moved", file=sys.stderr)

    async with db.database_uri(settings) as uri:
        pool = await db.create_pool(uri, 1, 2)
        try:
            await db.migrate(pool, settings.db_bulk_timeout_s)
            async with open_image_stores(settings, Storage(settings.storage), pool) as stores:
                report = await move_all(pool, stores, Storage(settings.storage), target, progress)
        finally:
            await pool.close()
    for image_id, reason in report.failed:
        print(f"not moved: image {image_id}: {reason}", file=sys.stderr)
    print(
        f"images moved: {report.images_moved}, sessions switched: {report.sessions_switched}, "
        f"failed: {len(report.failed)} (their sessions stay where they are; run again once fixed)"
    )
    return EXIT_FAILED if report.failed else 0


def _run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from .. import logs

    level = settings.log_level.upper()
    if args.command in _REPORTS and args.log_level is None and "FACESERVE_LOG_LEVEL" not in os.environ:
        level = "WARNING"
    logs.configure(level, settings.log_format)
    if args.command == "db":
        return asyncio.run(_database(settings, args.action))
    if args.command == "people":
        return asyncio.run(_people(settings, args.session, args.recluster, args.top))
    if args.command == "storage":
        return asyncio.run(_migrate(settings, "file" if args.to == "files" else args.to))
    if args.command in admin.COMMANDS:
        return asyncio.run(admin.COMMANDS[args.command](settings, args))
    if args.command in backup.COMMANDS:
        return asyncio.run(backup.COMMANDS[args.command](settings, args))
    if args.command == "serve":
        return _serve(settings)
    if args.command == "doctor":
        from . import doctor

        return doctor.run(settings)
    from ..core.importer import NoSessionsFound

    try:
        return asyncio.run(_import(settings, args.source))
    except NoSessionsFound as exc:
        raise UsageError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # bad flags: argparse's usage line and one error line, exit 2
    try:
        return _run(args)
    except UsageError as exc:
        print(f"faceserve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        log.debug("traceback", exc_info=True)
        print(f"faceserve: error: {str(exc) or type(exc).__name__}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
