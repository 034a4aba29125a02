"""The measuring instruments run: every benchmark's smoke mode (`--smoke`: its own code paths at tiny sizes,
a few seconds), as a subprocess, as a person would run it. A benchmark that can no longer run (a moved
folder, a renamed module, a changed signature: search_latency.py crashed at its save step since the regrouping) fails
here, not on a GPU machine's short lease. The runs go on side by side (PARALLEL_RUNS): a test's duration
is its wait; what a run took is printed (pytest -rP) and in its report when it fails.

The tools the wrk and nginx benchmarks drive are Debian packages .ci/run installs; without them those runs
fail rather than skip, as tests/test_nginx_cache.py does, so that CI cannot pass them silently.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
# imported by the scripts, nothing to run
LIBRARIES = {"clustering_metrics.py", "gallery.py", "gpu_figures.py", "reference.py", "smoke.py"}
# a markdown table's separator line, which every script prints under its header
MARKDOWN_TABLE = r"^\|(:?-+:?\|)+$"

# script -> (arguments before --smoke, what its table looks like) per run. people.py quality is left out: its
# photos are other projects' checkouts (ageitgey/face_recognition, cmusatyalab/openface).
SMOKE_RUNS: dict[str, list[tuple[list[str], str]]] = {
    "closeups.py": [([], MARKDOWN_TABLE)],
    "connections.py": [([], MARKDOWN_TABLE)],
    "derivatives.py": [([], r"^source\s+method\s+ms\s+PSNR dB\s+bytes$")],
    "engines.py": [([], MARKDOWN_TABLE)],
    "fleet.py": [([], MARKDOWN_TABLE)],
    "gpu_bench.py": [],  # its index, ingest and search run in gpu_run.sh's smoke run, as on the GPU machine
    "gpu_recogniser.py": [([], MARKDOWN_TABLE)],
    "gpu_run.sh": [([], r"^\| index \| \d+ \| ok \|$")],
    "ingest.py": [([], MARKDOWN_TABLE)],
    "ivf_probe.py": [([], MARKDOWN_TABLE)],
    "live.py": [([], MARKDOWN_TABLE)],
    "middleware_cost.py": [([], MARKDOWN_TABLE)],
    "people.py": [(["scale"], MARKDOWN_TABLE), (["read"], MARKDOWN_TABLE)],
    "quality.py": [([], MARKDOWN_TABLE)],
    "ratelimit.py": [([], MARKDOWN_TABLE)],
    "s3_store.py": [([], MARKDOWN_TABLE)],
    "search_e2e.py": [([], MARKDOWN_TABLE)],
    "search_latency.py": [([], MARKDOWN_TABLE)],
    "serve.py": [([], MARKDOWN_TABLE)],
    "slow_clients.py": [([], MARKDOWN_TABLE)],
    "spine.py": [([], MARKDOWN_TABLE)],
    "threshold.py": [([], MARKDOWN_TABLE)],
}
# the longest smoke run (fleet.py) took 69 s alone, 130 s beside the others, on a busy 2-core machine; a hung
# server must not hold CI for the suite's 600 s
TIMEOUT_S = 300
# smoke runs at once: much of one is a server or Postgres starting and stopping, the cores idle meanwhile
PARALLEL_RUNS = 3
# started first, so that the whole takes about as long as the longest (fleet.py: 2 nodes, nginx, 30 wrk runs;
# s3_store.py: SeaweedFS, then 2 nodes and 2 nginx)
LONGEST = ("fleet.py", "s3_store.py", "ratelimit.py", "connections.py", "search_e2e.py")


def test_every_benchmark_has_a_smoke_run() -> None:
    """A new script without a smoke run fails here: add --smoke to it (benchmarks/smoke.py) and a line above."""
    scripts = {path.name for path in BENCHMARKS.iterdir() if path.suffix in (".py", ".sh")}
    # gpu_pack.sh downloads wheels: nothing to measure, no network in CI; kernel_compile.py needs NVRTC (a CUDA
    # toolkit), and gpu_run.sh's check step runs it on the GPU machine
    scripts -= LIBRARIES | {"gpu_pack.sh", "kernel_compile.py"}
    assert scripts == set(SMOKE_RUNS)


RUNS = {
    " ".join([script, *arguments]): (script, arguments, table)
    for script, runs in SMOKE_RUNS.items()
    for arguments, table in runs
}


@dataclass(frozen=True)
class Finished:
    command: list[str]
    returncode: int | None  # None: killed at TIMEOUT_S
    stdout: str
    stderr: str
    seconds: float


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def run_smoke(script: str, arguments: list[str], folder: Path) -> Finished:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    env.pop("DATABASE_URL", None)  # the benchmarks start their own Postgres
    if script.endswith(".sh"):
        command = ["bash", str(BENCHMARKS / script), *arguments, "--smoke", "--target", str(folder / "site")]
        env["PYTHON"] = sys.executable
        env["OUT"] = str(folder / "out")
    else:
        command = [sys.executable, str(BENCHMARKS / script), *arguments, "--smoke"]
    start = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        return Finished(command, None, _text(exc.stdout), _text(exc.stderr), time.monotonic() - start)
    return Finished(command, done.returncode, done.stdout, done.stderr, time.monotonic() - start)


@pytest.fixture(scope="module")
def smoke_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[Finished]]]:
    """Every selected smoke run, started at once, PARALLEL_RUNS at a time; each test waits for its own."""
    selected = [
        item.callspec.id for item in request.session.items if getattr(item, "originalname", "") == "test_smoke_run"
    ]
    selected.sort(key=lambda run_id: run_id not in LONGEST)
    with ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        yield {
            run_id: pool.submit(run_smoke, *RUNS[run_id][:2], tmp_path_factory.mktemp("smoke"))
            for run_id in selected
        }


@pytest.mark.parametrize("run_id", list(RUNS))
def test_smoke_run(run_id: str, smoke_runs: dict[str, Future[Finished]]) -> None:
    done = smoke_runs[run_id].result()
    report = (
        f"{' '.join(done.command)}: exit {done.returncode} after {done.seconds:.0f} s\n"
        f"{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
    )
    print(f"{run_id}: {done.seconds:.1f} s")  # shown by pytest -rP
    assert done.returncode == 0, report
    assert "smoke run" in done.stdout, report
    assert re.search(RUNS[run_id][2], done.stdout, re.MULTILINE), report
