"""The CLI as an operator meets it: --version, one-line errors with exit codes (never a traceback),
`faceserve import` progress and outcome counts, `faceserve doctor`."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from faceserve import __version__
from faceserve.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]


def _faceserve(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "faceserve", *args],
        check=False,
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
    )


def _no_traceback(done: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr


def test_version() -> None:
    done = _faceserve("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"faceserve {__version__}"


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--log-level", "LOUD", "serve"], {}, "invalid choice: 'LOUD'"),
        (["serve", "--port", "99999"], {}, "is not a port"),
        (["serve", "--workers", "0"], {}, "at least 1"),
        (["--log-format", "xml", "serve"], {}, "invalid choice: 'xml'"),
        (["serve"], {"FACESERVE_PORT": "eighty"}, "FACESERVE_PORT must be an integer (got 'eighty')"),
        (["serve"], {"FACESERVE_LOG_LEVEL": "chatty"}, "FACESERVE_LOG_LEVEL must be one of"),
    ],
)
def test_bad_flags_and_settings_are_one_line_and_exit_2(args, env, says) -> None:
    done = _faceserve(*args, env=env)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(("faceserve: error:", "faceserve serve: error:"))
    _no_traceback(done)


def test_port_in_use_is_one_line_and_exit_1_before_anything_loads(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _faceserve("serve", "--host", "127.0.0.1", "--port", str(port), "--storage", str(tmp_path / "s"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"faceserve: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert not (tmp_path / "s" / "pgdata").exists()  # nothing started: no Postgres, no models
    _no_traceback(done)


def test_import_of_a_folder_without_the_layout_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    done = _faceserve("import", str(tmp_path / "photos"), "--storage", str(tmp_path / "s"))
    assert done.returncode == 2
    assert "has no face_sessions/{session id}/db/ folders" in done.stderr
    assert "imported" not in done.stdout  # not "0 imported"
    _no_traceback(done)


async def test_import_reports_each_file_when_piped_and_exits_1_when_files_failed(
    tmp_path: Path, photos, settings, capsys
) -> None:
    source = tmp_path / "old" / "face_sessions" / "4" / "db"
    source.mkdir(parents=True)
    source.joinpath("a.jpg").write_bytes(photos["gdp"].read_bytes())
    source.joinpath("b.jpg").write_bytes(photos["gdp"].read_bytes())  # the same bytes: a duplicate
    source.joinpath("c.jpg").write_bytes(b"not a photo")
    argv = ["import", str(tmp_path / "old"), "--storage", str(settings.storage)]
    os.environ["DATABASE_URL"] = settings.database_url
    os.environ["FACESERVE_MODELS_DIR"] = str(settings.models_dir)
    try:
        code = await asyncio.to_thread(cli_main, argv)
    finally:
        del os.environ["DATABASE_URL"], os.environ["FACESERVE_MODELS_DIR"]
    out, err = capsys.readouterr()
    assert code == 1
    # stderr is not a terminal here: plain lines, numbered against the total, one per file
    assert "[1/3] 4/db/a.jpg: imported" in err
    assert "[2/3] 4/db/b.jpg: duplicate" in err
    assert "[3/3] 4/db/c.jpg: failed: " in err
    assert "images imported: 1, duplicates: 1, already present: 0, failed: 1" in out


def test_import_shows_a_progress_bar_with_a_total_on_a_terminal(tmp_path: Path, photos, settings) -> None:
    import fcntl
    import pty
    import struct
    import termios

    source = tmp_path / "old" / "face_sessions" / "5" / "db"
    source.mkdir(parents=True)
    source.joinpath("a.jpg").write_bytes(photos["yaoming"].read_bytes())
    source.joinpath("b.txt").write_text("no")
    primary, secondary = pty.openpty()
    # a terminal of 100 x 30, as a person's would be (a new pty has 0 columns)
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "DATABASE_URL": settings.database_url,
        "FACESERVE_MODELS_DIR": str(settings.models_dir),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "faceserve", "import", str(tmp_path / "old"), "--storage", str(settings.storage)],
        stdout=subprocess.PIPE, stderr=secondary, env=env, text=True,
    )
    os.close(secondary)
    out, _ = process.communicate(timeout=180)
    terminal = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:
            break
        if not chunk:
            break
        terminal += chunk
    os.close(primary)
    assert process.returncode == 1
    text = terminal.decode(errors="replace")
    assert "2/2" in text and "file" in text  # tqdm's bar: done/total and the unit
    assert "failed: 5/db/b.txt" in text
    assert "images imported: 1" in out


def test_doctor_checks_a_reachable_database_and_the_models(settings) -> None:
    done = _faceserve(
        "doctor",
        "--storage", str(settings.storage),
        env={"DATABASE_URL": settings.database_url, "FACESERVE_MODELS_DIR": str(settings.models_dir)},
    )
    _no_traceback(done)
    assert done.returncode == 0, done.stdout + done.stderr
    names = {line.split()[1].rstrip(":") for line in done.stdout.splitlines()[1:]}
    assert {"database", "clock", "models", "providers", "openvino", "faiss", "disk"} <= names
    assert "ok    database: external Postgres answers, PostgreSQL" in done.stdout
    assert "buffalo_s" in done.stdout
    assert " INFO " not in done.stderr, done.stderr  # a report, not a log: a fresh database's migrations stay out


def test_doctor_fails_when_the_database_does_not_answer(settings, tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once closed
    done = _faceserve(
        "doctor",
        "--storage", str(tmp_path / "s"),
        env={"DATABASE_URL": f"postgresql://nobody@127.0.0.1:{port}/x", "FACESERVE_MODELS_DIR": str(settings.models_dir)},
    )
    _no_traceback(done)
    assert done.returncode == 1
    assert "FAIL  database: external Postgres does not answer" in done.stdout
    assert "ok    models:" in done.stdout  # one failed check does not hide the others
