"""kill -9 of SeaweedFS's volume server alone (master, filer and gateway stay up, tests/seaweed.py
start_split) while clients read originals, ask for new thumbnails and upload: every answer is a success or
a 503 with Retry-After, never a 500 nor a wrong 404, and service comes back by itself once the volume server
is started again on the same data."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
import seaweed
from helpers import create_session, objects_of, upload

from faceserve.app import create_app
from faceserve.http.appkeys import SERVICES

_SIZES = (64, 96, 128, 160, 200, 240, 256, 320, 400, 480, 512, 640, 720, 800, 960, 1024)
_CLIENTS = 6
_OUTAGE_S = 4.0
_RESUME_TIMEOUT_S = 60.0


@pytest.fixture
def split_seaweedfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name, value in seaweed.credentials_env().items():
        monkeypatch.setenv(name, value)
    cluster = seaweed.start_split(tmp_path / "seaweedfs")
    yield cluster
    cluster.stop()


def _form(name: str, data: bytes) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name, content_type="image/jpeg")
    return form


async def test_killing_the_volume_server_under_load_is_503s_and_service_resumes(
    settings, engine, photos, aiohttp_client, split_seaweedfs
):
    settings = replace(
        settings,
        image_store="s3",
        s3_endpoint=split_seaweedfs.endpoint,
        s3_bucket=seaweed.BUCKET,
        s3_prefix=f"chaos/{secrets.token_hex(4)}",
        s3_max_attempts=2,
        s3_timeout_s=2.0,
        derivative_sizes=_SIZES,
    )
    client = await aiohttp_client(create_app(settings, engine))
    session_id = await create_session(client)
    originals = {"t1": photos["t1"].read_bytes(), "gdp": photos["gdp"].read_bytes()}
    images = await upload(client, session_id, *((f"{name}.jpg", data) for name, data in originals.items()))
    by_id = {image["image_id"]: originals[name] for image, name in zip(images, originals)}

    answers: Counter[tuple[str, int]] = Counter()
    bad: list[str] = []
    stop = asyncio.Event()

    async def check(kind: str, response: aiohttp.ClientResponse, ok: tuple[int, ...]) -> None:
        answers[(kind, response.status)] += 1
        if response.status == 503:
            if "Retry-After" not in response.headers or (await response.json())["error"]["code"] != "unavailable":
                bad.append(f"{kind}: 503 without Retry-After or code")
        elif response.status not in ok:
            bad.append(f"{kind}: {response.status} {await response.text()}")

    async def load(worker: int) -> None:
        rng = random.Random(worker)
        uploads = 0
        while not stop.is_set():
            image_id, data = rng.choice(list(by_id.items()))
            start = rng.randrange(len(data) - 100)
            # a range: never answered from memory, the node asks the store every time
            response = await client.get(f"/api/face/image/{image_id}", headers={"Range": f"bytes={start}-{start + 99}"})
            await check("original", response, (206,))
            if response.status == 206 and await response.read() != data[start : start + 100]:
                bad.append("original: wrong bytes")
            # a size not rendered yet, or one that is: the render reads the original, the copy is an object
            response = await client.get(f"/api/face/image/{image_id}", params={"w": str(rng.choice(_SIZES))})
            await check("thumbnail", response, (200,))
            if worker % 3 == 0:
                uploads += 1
                # new bytes each time (a dedupe would need no store): the photo with a unique trailer
                body = originals["t1"] + secrets.token_bytes(16) + f"{worker}-{uploads}".encode()
                response = await client.post(f"/api/face/sessions/{session_id}/images", data=_form("new.jpg", body))
                await check("upload", response, (201,))

    workers = [asyncio.create_task(load(n)) for n in range(_CLIENTS)]
    try:
        await asyncio.sleep(2.0)
        assert answers and not bad, (answers, bad)
        split_seaweedfs.kill("volume")
        killed_at = time.monotonic()
        before = sum(n for (_, status), n in answers.items() if status == 503)
        await asyncio.sleep(_OUTAGE_S)
        outage_503s = sum(n for (_, status), n in answers.items() if status == 503) - before
        split_seaweedfs.start_part("volume")
        # back by itself: the same app, no restart; reads of originals succeed again
        deadline = time.monotonic() + _RESUME_TIMEOUT_S
        while True:
            ranged = await client.get(f"/api/face/image/{images[0]['image_id']}", headers={"Range": "bytes=0-99"})
            if ranged.status == 206:
                break
            assert ranged.status == 503 and time.monotonic() < deadline, ranged.status
            await asyncio.sleep(0.5)
        resumed_s = time.monotonic() - killed_at
        await asyncio.sleep(1.0)  # the load on a whole store again
    finally:
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
    print(f"answers by kind and status: {dict(answers)}; served again {resumed_s:.1f} s after the kill")
    for worker in workers:
        assert worker.exception() is None, worker.exception()
    assert not bad, (bad[:5], answers)
    assert outage_503s > 0, answers  # the outage was seen, as 503s
    assert resumed_s < _RESUME_TIMEOUT_S

    # whole afterwards: every original reads back, an upload and a new thumbnail work
    for image_id, data in by_id.items():
        response = await client.get(f"/api/face/image/{image_id}")
        assert response.status == 200 and await response.read() == data
    [again] = await upload(client, session_id, ("yao.jpg", photos["yaoming"].read_bytes()))
    assert (await client.get(f"/api/face/image/{again['image_id']}", params={"w": "128"})).status == 200
    # every row's object is there, and no object of a failed upload is left once the store answers again
    services = client.server.app[SERVICES]
    rows = {r["file_path"] for r in await services.pool.fetch("SELECT file_path FROM face_session_images")}
    for _ in range(60):
        originals_left = {p for p in await objects_of(services) if p.startswith("face_sessions/")}
        if originals_left == rows:
            break
        await asyncio.sleep(0.5)
    assert originals_left == rows
