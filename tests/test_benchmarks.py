"""The measuring instruments run: every benchmark's smoke mode (`--smoke`: its own code paths at tiny sizes,
a few seconds), as a subprocess, as a person would run it. A benchmark that can no longer run (a moved
folder, a renamed module, a changed signature: search_latency.py crashed at its save step for weeks) fails
here, not on a GPU machine's short lease. What each run costs is in its test's duration (`--durations`).

The tools the wrk and nginx benchmarks drive are Debian packages .ci/run installs; without them those runs
fail rather than skip, as tests/test_nginx_cache.py does, so that CI cannot pass them silently.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
# imported by the scripts, nothing to run
LIBRARIES = {"clustering_metrics.py", "gallery.py", "smoke.py"}
# a markdown table's separator line, which every script prints under its header
MARKDOWN_TABLE = r"^\|(:?-+:?\|)+$"

# script -> (arguments before --smoke, what its table looks like) per run. people.py quality is left out: its
# photos are other projects' checkouts (ageitgey/face_recognition, cmusatyalab/openface).
SMOKE_RUNS: dict[str, list[tuple[list[str], str]]] = {
    "connections.py": [([], MARKDOWN_TABLE)],
    "derivatives.py": [([], r"^source\s+method\s+ms\s+PSNR dB\s+bytes$")],
    "fleet.py": [([], MARKDOWN_TABLE)],
    "gpu_bench.py": [],  # its index, ingest and search run in gpu_run.sh's smoke run, as on the GPU machine
    "gpu_recogniser.py": [([], MARKDOWN_TABLE)],
    "gpu_run.sh": [([], r"^\| index \| \d+ \| ok \|$")],
    "ingest.py": [([], MARKDOWN_TABLE)],
    "ivf_probe.py": [([], MARKDOWN_TABLE)],
    "people.py": [(["scale"], MARKDOWN_TABLE), (["read"], MARKDOWN_TABLE)],
    "ratelimit.py": [([], MARKDOWN_TABLE)],
    "search_e2e.py": [([], MARKDOWN_TABLE)],
    "search_latency.py": [([], MARKDOWN_TABLE)],
    "serve.py": [([], MARKDOWN_TABLE)],
    "slow_clients.py": [([], MARKDOWN_TABLE)],
    "spine.py": [([], MARKDOWN_TABLE)],
    "threshold.py": [([], MARKDOWN_TABLE)],
}
# the longest smoke run takes ~60 s on a busy 2-core machine; a hung server must not hold CI for the suite's 600 s
TIMEOUT_S = 240


def test_every_benchmark_has_a_smoke_run() -> None:
    """A new script without a smoke run fails here: add --smoke to it (benchmarks/smoke.py) and a line above."""
    scripts = {path.name for path in BENCHMARKS.iterdir() if path.suffix in (".py", ".sh")}
    scripts -= LIBRARIES | {"gpu_pack.sh"}  # gpu_pack.sh downloads wheels: nothing to measure, no network in CI
    assert scripts == set(SMOKE_RUNS)


@pytest.mark.parametrize(
    ("script", "arguments", "table"),
    [
        pytest.param(script, arguments, table, id=" ".join([script, *arguments]))
        for script, runs in SMOKE_RUNS.items()
        for arguments, table in runs
    ],
)
def test_smoke_run(script: str, arguments: list[str], table: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    env.pop("DATABASE_URL", None)  # the benchmarks start their own Postgres
    if script.endswith(".sh"):
        command = ["bash", str(BENCHMARKS / script), *arguments, "--smoke", "--target", str(tmp_path / "site")]
        env["PYTHON"] = sys.executable
        env["OUT"] = str(tmp_path / "out")
    else:
        command = [sys.executable, str(BENCHMARKS / script), *arguments, "--smoke"]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    report = f"{' '.join(command)}: exit {done.returncode}\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
    assert done.returncode == 0, report
    assert "smoke run" in done.stdout, report
    assert re.search(table, done.stdout, re.MULTILINE), report
