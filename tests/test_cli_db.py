"""`faceserve db status|upgrade` against a real database, as an operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys

from faceserve.db.migrations import known_migrations


def _faceserve(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "faceserve", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_status_shows_pending_steps_and_upgrade_applies_them(database_url):
    before = _faceserve("db", "status", database_url=database_url)
    assert before.returncode == 0, before.stderr
    steps = known_migrations()
    assert "0001_initial  pending" in before.stdout
    assert before.stdout.strip().endswith(f"schema version 0, {len(steps)} pending")

    upgraded = _faceserve("db", "upgrade", database_url=database_url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "applied 0001_initial" in upgraded.stdout

    after = _faceserve("db", "status", database_url=database_url)
    assert "0001_initial  applied" in after.stdout
    assert after.stdout.strip().endswith(f"schema version {len(steps)}, 0 pending")
    assert "  pending" not in after.stdout


def test_a_bad_setting_is_one_line_and_exit_code_2(database_url):
    env_result = subprocess.run(
        [sys.executable, "-m", "faceserve", "db", "status"],
        env={**os.environ, "DATABASE_URL": database_url, "FACESERVE_DEVICE": "gpu"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert env_result.returncode == 2
    assert env_result.stderr.strip() == "faceserve: error: FACESERVE_DEVICE must be one of auto, cpu, cuda (got 'gpu')"
