"""The smoke mode of every benchmark: `--smoke` runs the script's own code paths at tiny sizes in seconds, so
that CI (tests/test_benchmarks.py) fails when a benchmark can no longer run. Its numbers mean nothing."""

from __future__ import annotations

import argparse

HELP = "tiny sizes, a few seconds: the code paths only, as CI runs them (the numbers mean nothing)"


def add_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", help=HELP)


def shrink(args: argparse.Namespace, **tiny: object) -> None:
    """With --smoke, the tiny values replace the arguments of those names, and a line above the tables says so."""
    if not args.smoke:
        return
    for name, value in tiny.items():
        setattr(args, name, value)
    sizes = ", ".join(f"{name}={value}" for name, value in tiny.items()) or "the usual sizes, already small"
    print(f"smoke run, the numbers mean nothing: {sizes}", flush=True)
