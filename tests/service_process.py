"""A real `faceserve serve` in a subprocess, for tests that kill it (or its Postgres) with SIGKILL.

Imported by the fault tests as a plain module (tests/ is on sys.path under pytest's default import mode).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
from helpers import free_port

_START_TIMEOUT_S = 120
_STOP_TIMEOUT_S = 30


def postmaster_pid(pgdata: Path) -> int | None:
    """The pid in postmaster.pid when that process runs, else None."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def postmasters_on(pgdata: Path) -> list[int]:
    """Every running postgres server process whose command line names this data directory."""
    found = []
    for proc in psutil.process_iter(attrs=["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and str(pgdata) in cmdline and _alive(proc.pid):
            found.append(proc.pid)
    return found


class Service:
    """`python -m faceserve serve` on a free port with its own storage (embedded Postgres unless env says)."""

    def __init__(self, storage: Path, models_dir: Path, env: dict[str, str] | None = None, workers: int = 1):
        self.storage = storage
        self.models_dir = models_dir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # these services are for tests of faults, not of access: on loopback, keys and signatures off
        self.env = {"FACESERVE_AUTH": "off", **(env or {})}
        self.workers = workers
        self.process: subprocess.Popen | None = None
        self.log = storage.parent / f"service-{self.port}.log"

    def start(self) -> Service:
        self.storage.mkdir(parents=True, exist_ok=True)
        src = str(Path(__file__).resolve().parents[1] / "src")
        env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), **self.env}
        env.pop("DATABASE_URL", None) if "DATABASE_URL" not in self.env else None
        command = [
            sys.executable, "-m", "faceserve", "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--storage", str(self.storage), "--models-dir", str(self.models_dir), "--workers", str(self.workers),
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout_s: float = _START_TIMEOUT_S) -> float:
        """Seconds until /healthz answered 200."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"faceserve exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"faceserve was not healthy within {timeout_s} s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""

    def kill9(self) -> None:
        """SIGKILL the service (its parent process; workers die with it when their parent is gone)."""
        assert self.process is not None
        children = psutil.Process(self.process.pid).children(recursive=True)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        for child in children:  # workers and the resource tracker: only ours, by pid; never postgres
            if child.is_running() and child.name() != "postgres":
                child.kill()

    def stop(self) -> int:
        """SIGTERM and wait: a clean stop. Returns the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def shared_temp_dir() -> Path:
    """A folder outside pytest's tmp root. As root, the embedded Postgres runs as another user who must walk
    down to its data; every pytest start makes /tmp/pytest-of-<user> private again (mode 700), which breaks a
    Postgres (re)started later in the run. Remove it with shutil.rmtree."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="faceserve-faults-"))
