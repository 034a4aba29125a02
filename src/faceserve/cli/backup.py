"""faceserve backup DIR and faceserve restore DIR (core/backup.py); the server may run during a backup."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from ..config import Settings
from ..core import backup


def add_commands(commands: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    save = commands.add_parser(
        "backup", help="copy the database and the photos into a new folder, with a manifest of SHA-256s"
    )
    save.add_argument("target", type=Path, help="a new or empty folder")
    common(save)
    load = commands.add_parser("restore", help="put a backup onto a fresh storage (and an empty database)")
    load.add_argument("source", type=Path, help="a folder made by faceserve backup")
    common(load)


async def run_backup(settings: Settings, args: argparse.Namespace) -> int:
    outcome = await backup.backup(settings, args.target)
    print(f"backed up the database and {outcome.photos} photos ({outcome.bytes:,} bytes) to {args.target}")
    return 0


async def run_restore(settings: Settings, args: argparse.Namespace) -> int:
    outcome = await backup.restore(settings, args.source)
    print(f"restored the database and {outcome.photos} photos ({outcome.bytes:,} bytes) into {settings.storage}")
    return 0


COMMANDS = {"backup": run_backup, "restore": run_restore}
