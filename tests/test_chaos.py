"""Chaos: upload/delete/search traffic against a real `faceserve serve`, SIGKILL of the service or of its
Postgres at a random moment, restart, then check that files on disk (or objects in S3: a real SeaweedFS)
= rows = index and that no acknowledged write was lost. Never a 500 on the way.

FACESERVE_CHAOS_TRIALS sets the number of trials (2 by default, so CI stays short); FACESERVE_CHAOS_SEED
replays one run. Every trial prints one line (pytest -s shows them): what was killed when, and the counts.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import seaweed
from aiobotocore.session import get_session
from PIL import Image, ImageDraw
from service_process import Service, postmaster_pid, postmasters_on, shared_temp_dir

TRIALS = int(os.environ.get("FACESERVE_CHAOS_TRIALS", "2"))
SEED = int(os.environ.get("FACESERVE_CHAOS_SEED", str(random.SystemRandom().randrange(1 << 30))))
_CLIENTS = 4
_BACK_WITHIN_S = 30
_SETTLE_S = 10


@pytest.fixture
def chaos_dir() -> Iterator[Path]:
    folder = shared_temp_dir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def variant(photo: Path, n: int) -> bytes:
    """The photo with a small mark that makes its bytes unique; the faces stay as they are."""
    with Image.open(photo) as image:
        image = image.convert("RGB")
        ImageDraw.Draw(image).rectangle((0, 0, 6, 6), fill=(n * 37 % 256, n * 91 % 256, n * 13 % 256))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=90)
        return out.getvalue()


@dataclass
class Ledger:
    """What the service acknowledged."""

    uploaded: dict[int, str] = field(default_factory=dict)  # image id -> identity (201 answered)
    deleted: set[int] = field(default_factory=set)  # 200 answered to DELETE
    sessions_deleted: set[int] = field(default_factory=set)
    # deletes sent: one cut short by the kill may have committed or not, either is right
    delete_sent: set[int] = field(default_factory=set)
    session_delete_sent: set[int] = field(default_factory=set)
    statuses: dict[int, int] = field(default_factory=dict)


async def _call(
    ledger: Ledger, http: aiohttp.ClientSession, method: str, url: str, **kwargs
) -> tuple[int, dict]:
    async with http.request(method, url, **kwargs) as response:
        ledger.statuses[response.status] = ledger.statuses.get(response.status, 0) + 1
        body = await response.json() if response.content_type == "application/json" else {}
        assert response.status < 500 or body["error"]["code"] in ("unavailable", "busy", "not_ready"), body
        return response.status, body


async def _upload(
    ledger: Ledger, http: aiohttp.ClientSession, base: str, session_id: int, data: bytes
) -> None:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="p.jpg", content_type="image/jpeg")
    status, body = await _call(
        ledger, http, "POST", f"{base}/api/face/sessions/{session_id}/images", data=form
    )
    if status == 201:
        for image in body["data"]["images"]:
            ledger.uploaded[image["image_id"]] = image["identity"]


async def traffic(
    ledger: Ledger, base: str, session_id: int, yao: Path, rng: random.Random, counter: list[int]
) -> None:
    """One client: uploads of new Yao Ming variants, deletes of acknowledged ones, searches, and now and then
    a session of its own uploaded to and deleted. Runs until cancelled; connection errors are normal."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        while True:
            try:
                roll = rng.random()
                live = sorted(set(ledger.uploaded) - ledger.deleted)
                if roll < 0.45 or not live:
                    counter[0] += 1
                    await _upload(ledger, http, base, session_id, variant(yao, counter[0]))
                elif roll < 0.8:
                    image_id = rng.choice(live)
                    ledger.delete_sent.add(image_id)
                    status, _ = await _call(ledger, http, "DELETE", f"{base}/api/face/image/{image_id}")
                    if status in (200, 404):  # 404: another client's delete won
                        ledger.deleted.add(image_id)
                elif roll < 0.95:
                    form = aiohttp.FormData()
                    form.add_field("session_id", str(session_id))
                    form.add_field("image", yao.read_bytes(), filename="q.jpg", content_type="image/jpeg")
                    await _call(ledger, http, "POST", f"{base}/api/face/search", data=form)
                else:
                    status, body = await _call(
                        ledger, http, "POST", f"{base}/api/face/sessions", json={"name": "tmp"}
                    )
                    if status == 201:
                        other = body["data"]["id"]
                        counter[0] += 1
                        await _upload(ledger, http, base, other, variant(yao, counter[0]))
                        ledger.session_delete_sent.add(other)
                        status, _ = await _call(ledger, http, "DELETE", f"{base}/api/face/sessions/{other}")
                        if status == 200:
                            ledger.sessions_deleted.add(other)
            except (TimeoutError, aiohttp.ClientError):
                await asyncio.sleep(0.1)


async def _all_images(http: aiohttp.ClientSession, base: str) -> dict[int, str]:
    images: dict[int, str] = {}
    async with http.get(f"{base}/api/face/sessions") as response:
        sessions = (await response.json())["data"]["sessions"]
    for session in sessions:
        after = 0
        while True:
            url = f"{base}/api/face/sessions/{session['id']}/images?limit=1000&after={after}"
            async with http.get(url) as response:
                data = (await response.json())["data"]
            images.update({i["image_id"]: i["identity"] for i in data["images"]})
            if data["next_after"] is None:
                break
            after = data["next_after"]
    return images


@dataclass
class Originals:
    """Where the service keeps originals: files under storage, and objects under s3_env's prefix if set."""

    storage: Path
    s3_env: dict[str, str] = field(default_factory=dict)

    async def identities(self) -> set[str]:
        """Identities of every file in the sessions' db folders (hidden .part ones included) and object."""
        root = self.storage / "face_sessions"
        found = {str(p.relative_to(root)) for p in root.glob("*/db/*") if p.is_file()}
        if self.s3_env:
            prefix = self.s3_env["FACESERVE_S3_PREFIX"] + "/face_sessions/"
            async with get_session().create_client(
                "s3", endpoint_url=self.s3_env["FACESERVE_S3_ENDPOINT"], region_name="us-east-1"
            ) as client:
                async for page in client.get_paginator("list_objects_v2").paginate(
                    Bucket=seaweed.BUCKET, Prefix=prefix
                ):
                    found |= {item["Key"].removeprefix(prefix) for item in page.get("Contents", ())}
        return found


async def check(ledger: Ledger, base: str, originals: Originals, session_id: int, yao: Path) -> dict[str, int]:
    storage = originals.storage
    async with aiohttp.ClientSession() as http:
        images = await _all_images(http, base)
        # no acknowledged write lost
        for image_id, identity in ledger.uploaded.items():
            if (
                image_id not in ledger.delete_sent
                and int(identity.split("/")[0]) not in ledger.session_delete_sent
            ):
                assert images.get(image_id) == identity, f"acknowledged upload {image_id} is gone"
        for image_id in ledger.deleted:
            assert image_id not in images, f"acknowledged delete of {image_id} came back"
            async with http.get(f"{base}/api/face/image/{image_id}") as response:
                assert response.status == 404
        for sid in ledger.sessions_deleted:
            async with http.get(f"{base}/api/face/sessions/{sid}") as response:
                assert response.status == 404
            assert not (storage / "face_sessions" / str(sid) / "db").exists() or not any(
                (storage / "face_sessions" / str(sid) / "db").iterdir()
            )
            assert not any(identity.startswith(f"{sid}/") for identity in await originals.identities())
        # files on disk = rows; after a Postgres outage, uploads whose commit answer was lost keep their file
        # until the database tells whether the row made it (upload_intents.settle, retried every second)
        for _ in range(_SETTLE_S * 10):
            if await originals.identities() == set(images.values()):
                break
            await asyncio.sleep(0.1)
        assert await originals.identities() == set(images.values())
        # index = rows: every live image of the session shows Yao Ming, and a search finds each exactly once
        form = aiohttp.FormData()
        form.add_field("session_id", str(session_id))
        form.add_field("limit", "500")
        form.add_field("image", yao.read_bytes(), filename="q.jpg", content_type="image/jpeg")
        async with http.post(f"{base}/api/face/search", data=form) as response:
            assert response.status == 200, await response.text()
            matches = (await response.json())["data"]["matches"]
        live = {i for i, identity in images.items() if identity.startswith(f"{session_id}/")}
        assert sorted(m["image_id"] for m in matches) == sorted(live)
    return {
        "images": len(images),
        "acked_uploads": len(ledger.uploaded),
        "acked_deletes": len(ledger.deleted),
    }


async def _wait_back(base: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(_BACK_WITHIN_S * 5):
            try:
                async with http.get(f"{base}/api/face/sessions") as response:
                    if response.status == 200:
                        return
                    assert response.status == 503, await response.text()
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"the service did not answer again within {_BACK_WITHIN_S} s")


@pytest.mark.parametrize("image_store", ["file", "s3"])
async def test_kill_9_under_traffic_loses_nothing_and_leaves_nothing(
    chaos_dir: Path, models_dir: Path, photos: dict[str, Path], image_store: str, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(SEED)
    storage = chaos_dir / "storage"
    pgdata = (storage / "pgdata").resolve()
    yao = photos["yaoming"]
    ledger = Ledger()
    counter = [0]
    s3_env = {}
    if image_store == "s3":
        server = request.getfixturevalue("seaweedfs")  # also puts its key into the environment
        s3_env = {
            "FACESERVE_IMAGE_STORE": "s3",
            "FACESERVE_S3_ENDPOINT": server.endpoint,
            "FACESERVE_S3_BUCKET": seaweed.BUCKET,
            "FACESERVE_S3_PREFIX": f"chaos/{chaos_dir.name}",
        }
    originals = Originals(storage, s3_env)
    service = await asyncio.to_thread(Service(storage, models_dir, s3_env).start)
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{service.base}/api/face/sessions", json={"name": "chaos"}) as response,
    ):
        session_id = (await response.json())["data"]["id"]
    try:
        for trial in range(TRIALS):
            victim = "postgres" if trial % 3 == 2 else "service"
            clients = [
                asyncio.create_task(
                    traffic(ledger, service.base, session_id, yao, random.Random(rng.random()), counter)
                )
                for _ in range(_CLIENTS)
            ]
            at = rng.uniform(0.5, 4.0)
            await asyncio.sleep(at)
            if victim == "service":
                await asyncio.to_thread(service.kill9)
            else:
                pid = postmaster_pid(pgdata)
                assert pid is not None
                os.kill(pid, 9)
                await asyncio.sleep(rng.uniform(0.5, 2.0))  # the traffic goes on while Postgres is down
            for client in clients:
                client.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
            if victim == "service":
                service = await asyncio.to_thread(Service(storage, models_dir, s3_env).start)
            await _wait_back(service.base)
            counts = await check(ledger, service.base, originals, session_id, yao)
            print(
                f"chaos seed={SEED} trial={trial} killed={victim} at={at:.2f}s {counts} statuses={ledger.statuses}"
            )
    finally:
        stopped = await asyncio.to_thread(service.stop)
    assert stopped == 0, service.log_text()
    assert postmasters_on(pgdata) == [], "a clean stop left Postgres running"
    # and an import of the storage itself brings no deleted photo back
    src = str(Path(__file__).resolve().parents[1] / "src")
    imported = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "faceserve",
            "import",
            str(storage),
            "--storage",
            str(storage),
            "--models-dir",
            str(models_dir),
        ],
        env={**{k: v for k, v in os.environ.items() if k != "DATABASE_URL"}, "PYTHONPATH": src},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert "images imported: 0," in imported.stdout, imported.stdout
    assert postmasters_on(pgdata) == []
