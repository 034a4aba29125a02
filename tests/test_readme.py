"""README's "Try it" block, run as written (bash, curl -sS) against a real `faceserve serve` started the
way README starts it: from a folder holding `.venv`, with the default ./storage and ./models."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import free_port
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def try_it_block() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Try it\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, "README's Try it has no ```sh block"
    return match.group(1)


def _wait_until_up(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"faceserve serve exited with {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout_s:.0f} s")


@pytest.mark.skipif(shutil.which("curl") is None, reason="README's Try it needs curl")
def test_try_it_runs_as_written(tmp_path: Path) -> None:
    # the folder README's commands run in: .venv (this interpreter's environment) and nothing else
    (tmp_path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "FACESERVE_DATABASE_URL")}
    env.update(PYTHONPATH=str(ROOT / "src"), FACESERVE_HOST="127.0.0.1", FACESERVE_PORT=str(port))
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "faceserve", "serve"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/healthz", server, timeout_s=300)
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", try_it_block()],
            cwd=tmp_path,
            env={**env, "API": f"http://127.0.0.1:{port}"},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        log.close()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""  # -sS: silent, but errors would show here
    out = done.stdout
    assert '"original_name": "players.jpg"' in out and '"original_name": "gdp.jpg"' in out
    search_line = next(line for line in out.splitlines() if '"matches"' in line)
    assert "players.jpg" in search_line  # Yao Ming found in players.jpg
    assert "HTTP/1.1 200 OK" in out and "ETag:" in out
    with Image.open(tmp_path / "players-320.jpg") as thumbnail:
        assert thumbnail.width == 320
    # the start was quiet: no initdb transcript, no traceback; the first line says where it listens
    started = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in started and "initdb" not in started
    assert f"starting on http://127.0.0.1:{port}" in started.splitlines()[0]
