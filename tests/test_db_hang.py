"""A hung Postgres (its processes stopped with SIGSTOP, as a frozen host or a stuck postmaster leaves it):
every database wait is bounded, so requests answer 503 `unavailable` with Retry-After within seconds, and
the service is back by itself once Postgres runs again. A Postgres of this test's own: the one the other
tests share is never stopped."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from aiohttp.test_utils import TestClient
from service_process import shared_temp_dir

from faceserve.app import create_app
from faceserve.config import Settings
from faceserve.db import recovery as db_recovery
from faceserve.vision.engine import FaceEngine

_ACQUIRE_S = 1.0
_COMMAND_S = 2.0
# a connection's wait, then a statement's and the wait for its cancel request (asyncpg bounds that by the
# command timeout too), and the test machine's slack
_ANSWER_WITHIN_S = _ACQUIRE_S + 2 * _COMMAND_S + 3


@pytest.fixture
def pg_tmp() -> Iterator[Path]:
    folder = shared_temp_dir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def stop(pids: list[int], how: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, how)
        except ProcessLookupError:
            pass


async def timed(client: TestClient, method: str, path: str, **kwargs) -> tuple[float, int, str | None, str | None]:
    started = time.monotonic()
    response = await client.request(method, path, **kwargs)
    body = await response.json()
    code = None if body["success"] else body["error"]["code"]
    return time.monotonic() - started, response.status, code, response.headers.get("Retry-After")


@pytest.mark.parametrize("stopped", ["postmaster", "every process"])
async def test_a_hung_postgres_answers_503_within_seconds_then_recovers(
    pg_tmp: Path, models_dir: Path, engine: FaceEngine, aiohttp_client, stopped: str
) -> None:
    postgres = await asyncio.to_thread(db_recovery.EmbeddedPostgres, pg_tmp / "pgdata")
    try:
        settings = Settings(
            storage=pg_tmp / "storage",
            database_url=postgres.uri,
            models_dir=models_dir,
            db_acquire_timeout_s=_ACQUIRE_S,
            db_command_timeout_s=_COMMAND_S,
        )
        client = await aiohttp_client(create_app(settings, engine))
        created = await client.post("/api/face/sessions", json={"name": "kept"})
        session_id = (await created.json())["data"]["id"]
        assert postgres.pid is not None
        postmaster = psutil.Process(postgres.pid)
        # the postmaster alone: connections open keep working, a new one waits for ever; every process:
        # statements on open connections wait too
        pids = [postgres.pid] + ([p.pid for p in postmaster.children(recursive=True)] if stopped != "postmaster" else [])
        stop(pids, signal.SIGSTOP)
        try:
            # more at once than the pool holds open: some need a new connection
            answers = await asyncio.gather(
                *(timed(client, "GET", f"/api/face/sessions/{session_id}") for _ in range(4)),
                *(timed(client, "GET", "/api/face/sessions") for _ in range(4)),
                *(timed(client, "POST", "/api/face/sessions", json={"name": "during"}) for _ in range(4)),
            )
        finally:
            stop(pids, signal.SIGCONT)
        assert all(elapsed < _ANSWER_WITHIN_S for elapsed, *_ in answers), answers
        refused = [answer[1:] for answer in answers if answer[1] != 200 and answer[1] != 201]
        assert refused, "no request met the hung database: the test proves nothing"
        assert set(refused) == {(503, "unavailable", str(settings.db_retry_after_s))}, answers
        # back by itself, with what was there before
        started = time.monotonic()
        while (response := await client.get(f"/api/face/sessions/{session_id}")).status != 200:
            assert response.status == 503
            assert time.monotonic() - started < 30
            await asyncio.sleep(0.2)
        assert (await response.json())["data"]["name"] == "kept"
        assert (await client.post("/api/face/sessions", json={"name": "after"})).status == 201
    finally:
        await asyncio.to_thread(postgres.stop)
