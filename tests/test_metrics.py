"""GET /metrics, scraped after real requests: request latencies by route and status, search steps, recogniser
batches, live gauges; and X-Request-ID honoured or generated."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def _scrape(client) -> dict[tuple[str, frozenset], float]:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return _samples(await response.text())


def _value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_requests_are_counted_by_route_template_and_status(client) -> None:
    before = await _scrape(client)
    route = "/api/face/sessions/{session_id}"
    count = "faceserve_http_request_duration_seconds_count"
    for _ in range(3):
        assert (await client.get("/api/face/sessions/999")).status == 404
    assert (await client.get("/no/such/path/123")).status == 404
    after = await _scrape(client)
    assert _value(after, count, method="GET", route=route, status="404") - _value(
        before, count, method="GET", route=route, status="404"
    ) == 3
    assert _value(after, count, method="GET", route="unmatched", status="404") >= 1
    # the histogram has buckets, and the unknown path made no series of its own
    assert any(name == "faceserve_http_request_duration_seconds_bucket" for name, _ in after)
    assert not any("/no/such/path" in str(labels) for _, labels in after)


async def test_search_steps_batches_and_live_gauges(client, photos) -> None:
    response = await client.post("/api/face/sessions", json={"name": "m"})
    session_id = (await response.json())["data"]["id"]
    form = aiohttp.FormData()
    form.add_field("file", photos["players"].read_bytes(), filename="players.jpg")
    assert (await client.post(f"/api/face/sessions/{session_id}/images", data=form)).status == 201
    before = await _scrape(client)
    form = aiohttp.FormData()
    form.add_field("session_id", str(session_id))
    form.add_field("image", photos["yaoming"].read_bytes(), filename="yaoming.jpg")
    search = await client.post("/api/face/search", data=form)
    assert search.status == 200
    after = await _scrape(client)
    steps = {part.split(";")[0].strip() for part in search.headers["Server-Timing"].split(",")}
    assert {"parse", "decode", "detect", "embed", "index", "db"} <= steps
    for step in steps:
        assert _value(after, "faceserve_search_step_seconds_count", step=step) == _value(
            before, "faceserve_search_step_seconds_count", step=step
        ) + 1
    # the probe's one face went through a recogniser run
    assert _value(after, "faceserve_recogniser_batch_faces_count") == _value(
        before, "faceserve_recogniser_batch_faces_count"
    ) + 1
    assert _value(after, "faceserve_db_pool_connections", state="max") == 10
    assert _value(after, "faceserve_uploads_in_flight") == 0
    # the session's flat index is in memory: one session of under 1k faces
    assert _value(after, "faceserve_index_sessions", kind="flat", size="lt1k") == 1
    assert _value(after, "faceserve_index_faces", kind="flat") >= 10
    # every owner's gauges are sampled (a missing one would be absent, not 0)
    for name, labels in (
        ("faceserve_inference_queue_depth", {"queue": "inference_threads"}),
        ("faceserve_inference_queue_depth", {"queue": "recogniser"}),
        ("faceserve_db_pool_connections", {"state": "in_use"}),
        ("faceserve_uploads_in_flight", {}),
        ("faceserve_live_streams", {}),
    ):
        assert (name, frozenset(labels.items())) in after, name


async def test_request_id_is_honoured_or_generated(client) -> None:
    given = await client.get("/api/face/sessions", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    made = await client.get("/api/face/sessions/999")  # errors carry it too
    assert len(made.headers["X-Request-ID"]) == 16
    odd = await client.get("/api/face/sessions", headers={"X-Request-ID": "a b" + "x" * 300})
    assert odd.headers["X-Request-ID"] != "a b"
    assert odd.headers["X-Request-ID"].isalnum()


def test_workers_report_together(tmp_path, database_url, models_dir) -> None:
    """`faceserve serve --workers 2`: a scrape of either worker counts the requests both answered, and the
    pools of both (10 connections each at most) add up."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
        "DATABASE_URL": database_url,
        "FACESERVE_MODELS_DIR": str(models_dir),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "faceserve", "--log-level", "WARNING", "serve", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "2", "--storage", str(tmp_path / "storage")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "workers did not start"
                time.sleep(0.3)

        key = (tmp_path / "storage" / "admin-key").read_text().strip()
        auth = {"Authorization": f"Bearer {key}"}

        def scrape() -> dict:
            request = urllib.request.Request(f"{base}/metrics", headers=auth)
            with urllib.request.urlopen(request, timeout=10) as response:
                return _samples(response.read().decode())

        # both workers sample their pool at start; wait until both have (each new connection may land on either)
        deadline = time.monotonic() + 60
        while _value(scrape(), "faceserve_db_pool_connections", state="max") != 20:
            assert time.monotonic() < deadline, "the second worker's samples never showed"
            time.sleep(0.5)
        for _ in range(20):  # a new connection each: SO_REUSEPORT spreads them over the workers
            request = urllib.request.Request(f"{base}/api/face/sessions", headers=auth)
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
        def count() -> float:
            return _value(
                scrape(), "faceserve_http_request_duration_seconds_count",
                method="GET", route="/api/face/sessions", status="200",
            )

        # each worker hands its counts over every second (METRICS_SAMPLE_S): within a few, all 20 show
        deadline = time.monotonic() + 30
        while (seen := count()) != 20:
            assert seen < 20 and time.monotonic() < deadline, seen
            time.sleep(0.5)
        for _ in range(3):  # whichever worker answers the scrape, it counts all 20, once
            assert count() == 20
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)



async def test_refused_searches_are_counted_as_searches(settings, engine, photos, aiohttp_client) -> None:
    """With room for one search in flight, concurrent searches beyond it get 503 busy, counted as refused
    searches, not as refused uploads."""
    import asyncio
    from dataclasses import replace

    from faceserve.app import create_app

    client = await aiohttp_client(create_app(replace(settings, max_pending_searches=1), engine))
    session_id = (await (await client.post("/api/face/sessions", json={"name": "m"})).json())["data"]["id"]
    before = await _scrape(client)

    async def search() -> aiohttp.ClientResponse:
        form = aiohttp.FormData()
        form.add_field("session_id", str(session_id))
        form.add_field("image", photos["players"].read_bytes(), filename="players.jpg")
        return await client.post("/api/face/search", data=form)

    responses = await asyncio.gather(*(search() for _ in range(6)))
    refused = [r for r in responses if r.status == 503]
    assert refused and any(r.status == 200 for r in responses)
    for response in refused:
        error = (await response.json())["error"]
        assert error["code"] == "busy" and "searches" in error["message"]
    after = await _scrape(client)
    assert _value(after, "faceserve_searches_rejected_total") - _value(before, "faceserve_searches_rejected_total") == len(
        refused
    )
    assert _value(after, "faceserve_uploads_rejected_total") == _value(before, "faceserve_uploads_rejected_total")


def test_the_cli_loads_without_prometheus_client() -> None:
    """prometheus_client picks in-memory or multiprocess storage at its first import, and `faceserve serve`
    sets PROMETHEUS_MULTIPROC_DIR only once its command is parsed: a metric defined in a module that the CLI
    imports at load (db/ is one) would be kept in memory and missing from every scrape of a served node."""
    import subprocess
    import sys

    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, faceserve.cli; print('prometheus_client' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "False"
