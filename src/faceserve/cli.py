"""Command line: `faceserve serve` runs the service, `faceserve import DIR` takes in an old tree."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from .config import Settings, load_settings


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
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    names = ("host", "port", "public_base_url", "workers", "storage", "models_dir", "model_pack", "device")
    overrides: dict[str, Any] = {n: getattr(args, n, None) for n in names}
    return load_settings(overrides)


async def _import(settings: Settings, source: Path) -> int:
    from .importer import ImportReport, import_tree
    from .services import open_services

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
        f"already present: {report.already_present}, failed: {len(report.failed)}, "
        f"skipped as deleted: {report.deleted_skipped}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(args)
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
