"""The database dies under the service: 503 `unavailable` meanwhile, never 500; back by itself, nothing lost.

A real embedded Postgres, killed with SIGKILL; and a real `faceserve serve` killed with SIGKILL, whose
Postgres is left running and must be adopted by the next start and stopped by its clean stop.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psutil
import pytest
from aiohttp.test_utils import TestClient
from service_process import Service, postmaster_pid, postmasters_on, shared_temp_dir
from yarl import URL

from faceserve.app import create_app
from faceserve.config import Settings
from faceserve.db import recovery as db_recovery
from faceserve.vision.engine import FaceEngine

_BACK_WITHIN_S = 30


@pytest.fixture
def pg_tmp() -> Iterator[Path]:
    """Where Postgres data of these tests lives (see shared_temp_dir)."""
    folder = shared_temp_dir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def embedded_settings(tmp_path: Path, models_dir: Path, **overrides: object) -> Settings:
    return Settings(
        storage=tmp_path / "storage",
        database_url=None,
        models_dir=models_dir,
        **overrides,  # type: ignore[arg-type]
    )


async def upload_one(client: TestClient, session_id: int, data: bytes, name: str) -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name, content_type="application/octet-stream")
    return await client.post(f"/api/face/sessions/{session_id}/images", data=form)


async def test_killed_embedded_postgres_answers_503_then_restarts_with_nothing_lost(
    pg_tmp: Path, models_dir: Path, engine: FaceEngine, photos: dict[str, Path], aiohttp_client
) -> None:
    # a slow watch, so the outage lasts long enough to be seen by the requests below
    settings = embedded_settings(pg_tmp, models_dir, db_watch_interval_s=2.0)
    client = await aiohttp_client(create_app(settings, engine))
    created = await client.post("/api/face/sessions", json={"name": "before"})
    session_id = (await created.json())["data"]["id"]
    uploaded = await upload_one(client, session_id, photos["t1"].read_bytes(), "t1.jpg")
    assert uploaded.status == 201
    # its signed URL, as a client has it from the upload's answer
    image_url = URL((await uploaded.json())["data"]["images"][0]["url"])

    pgdata = settings.pgdata.resolve()
    killed = postmaster_pid(pgdata)
    assert killed is not None
    os.kill(killed, signal.SIGKILL)

    seen: list[tuple[str, int, str | None, str | None]] = []
    started = time.monotonic()
    while time.monotonic() - started < _BACK_WITHIN_S:
        for method, path in [
            ("GET", f"/api/face/sessions/{session_id}"),
            ("GET", f"/api/face/sessions/{session_id}/images"),
            ("GET", str(image_url.update_query(w=64).relative())),
            ("POST", "/api/face/sessions"),
        ]:
            response = await client.request(
                method, path, json={"name": "during"} if method == "POST" else None
            )
            body = await response.json() if response.content_type == "application/json" else None
            code = body["error"]["code"] if body and not body["success"] else None
            seen.append((path, response.status, code, response.headers.get("Retry-After")))
        if seen[-4][1] == 200 and postmaster_pid(pgdata) not in (None, killed):
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError(f"not back within {_BACK_WITHIN_S} s: {seen[-4:]}")

    statuses = {status for _, status, _, _ in seen}
    assert statuses <= {200, 201, 503}, seen
    outage = [s for s in seen if s[1] == 503]
    assert outage, "the outage was never seen: the test proves nothing"
    assert {(code, retry) for _, _, code, retry in outage} == {
        ("unavailable", str(settings.db_retry_after_s))
    }
    # nothing lost: the session and its photo are there, and the service takes new work again
    shown = await (await client.get(f"/api/face/sessions/{session_id}")).json()
    assert (shown["data"]["image_count"], shown["data"]["face_count"]) == (1, 6)
    again = await upload_one(client, session_id, photos["gdp"].read_bytes(), "gdp.jpg")
    assert again.status == 201
    form = aiohttp.FormData()
    form.add_field("session_id", str(session_id))
    form.add_field("image", photos["yaoming"].read_bytes(), filename="p.jpg", content_type="image/jpeg")
    assert (await client.post("/api/face/search", data=form)).status == 200


async def test_an_external_postgres_restarted_under_the_service_is_used_again(
    pg_tmp: Path, models_dir: Path, engine: FaceEngine, aiohttp_client
) -> None:
    """DATABASE_URL: nothing of ours to restart; the pool reconnects when the server is back."""
    outside = await asyncio.to_thread(db_recovery.EmbeddedPostgres, pg_tmp / "outside-pgdata")
    try:
        settings = Settings(storage=pg_tmp / "storage", database_url=outside.uri, models_dir=models_dir)
        client = await aiohttp_client(create_app(settings, engine))
        created = await client.post("/api/face/sessions", json={"name": "kept"})
        session_id = (await created.json())["data"]["id"]
        assert outside.pid is not None
        os.kill(outside.pid, signal.SIGKILL)
        await asyncio.sleep(0.5)
        down = await client.get(f"/api/face/sessions/{session_id}")
        assert (down.status, (await down.json())["error"]["code"]) == (503, "unavailable")
        assert await asyncio.to_thread(outside.restart_if_down)
        started = time.monotonic()
        while (response := await client.get(f"/api/face/sessions/{session_id}")).status != 200:
            assert response.status == 503
            assert time.monotonic() - started < _BACK_WITHIN_S
            await asyncio.sleep(0.2)
        assert (await response.json())["data"]["name"] == "kept"
    finally:
        await asyncio.to_thread(outside.stop)


def test_a_killed_service_leaves_postgres_that_the_next_start_adopts_and_its_clean_stop_stops(
    pg_tmp: Path, models_dir: Path
) -> None:
    storage = pg_tmp / "storage"
    pgdata = (storage / "pgdata").resolve()
    first = Service(storage, models_dir).start()
    orphan = postmaster_pid(pgdata)
    assert orphan is not None
    first.kill9()
    assert postmaster_pid(pgdata) == orphan, "the postmaster lives on after its service was killed"

    second = Service(storage, models_dir).start()
    try:
        # adopted, not a second server on the same data directory
        assert postmaster_pid(pgdata) == orphan
        assert postmasters_on(pgdata) == [orphan]
    finally:
        assert second.stop() == 0, second.log_text()
    psutil.wait_procs([psutil.Process(orphan)] if psutil.pid_exists(orphan) else [], timeout=10)
    assert postmasters_on(pgdata) == [], second.log_text()
    assert postmaster_pid(pgdata) is None
