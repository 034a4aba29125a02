"""Helpers the tests share: API calls as a client makes them, and looks at what is on disk or in the store."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import asyncpg
from aiohttp.test_utils import TestClient

from faceserve.http.appkeys import SERVICES

# where image bytes can live: serving tests run against each (s3: a real SeaweedFS, conftest.py)
IMAGE_STORES = ["file", "postgres", "s3"]


def free_port() -> int:
    """A TCP port free on the loopback address now (another process could take it before it is used)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nginx_binary() -> str:
    # /usr/sbin is not on every user's PATH
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError("the nginx binary is missing: install it with `apt-get install -y nginx`")
    return found


def authorize(client: TestClient) -> TestClient:
    """Every request of this started client carries the app's bootstrap admin key (<storage>/admin-key)."""
    key_file = client.server.app[SERVICES].settings.storage / "admin-key"
    if key_file.exists():
        client.session.headers["Authorization"] = f"Bearer {key_file.read_text().strip()}"
    return client


async def create_session(client: TestClient, name: str = "party") -> int:
    response = await client.post("/api/face/sessions", json={"name": name})
    assert response.status == 201, await response.text()
    return (await response.json())["data"]["id"]


async def upload(client: TestClient, session_id: int, *files: tuple[str, bytes]) -> list[dict]:
    """Upload (name, bytes) pairs in one request; returns data.images."""
    form = aiohttp.FormData()
    for name, data in files:
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
    response = await client.post(f"/api/face/sessions/{session_id}/images", data=form)
    body = await response.json()
    assert response.status == 201, body
    return body["data"]["images"]


async def search(client: TestClient, session_id: int, probe: bytes, **fields: str) -> tuple[int, dict]:
    form = aiohttp.FormData()
    form.add_field("session_id", str(session_id))
    for key, value in fields.items():
        form.add_field(key, value)
    form.add_field("image", probe, filename="probe.jpg", content_type="image/jpeg")
    response = await client.post("/api/face/search", data=form)
    return response.status, await response.json()


async def replace_stored_bytes(client: TestClient, image_id: int, data: bytes) -> None:
    """Put other bytes behind a recorded image, wherever its store keeps them (big bodies without uploads)."""
    services = client.server.app[SERVICES]
    bytes_in = await services.pool.fetchval("SELECT bytes_in FROM face_session_images WHERE id = $1", image_id)
    if bytes_in == "postgres":
        # the row's size is the blob's (serving trusts it), so both change together
        async with services.pool.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE image_blobs SET data = $2 WHERE image_id = $1", image_id, data)
            await conn.execute("UPDATE face_session_images SET byte_size = $2 WHERE id = $1", image_id, len(data))
    elif bytes_in == "s3":
        file_path, content_type = await services.pool.fetchrow(
            "SELECT file_path, content_type FROM face_session_images WHERE id = $1", image_id
        )
        replacement = services.storage.root / "replacement"
        replacement.write_bytes(data)
        await services.stores.objects.put_file(file_path, replacement, len(data), hashlib.sha256(data).digest(), content_type)
        replacement.unlink()
        # the row's size is the object's (serving trusts it)
        await services.pool.execute("UPDATE face_session_images SET byte_size = $2 WHERE id = $1", image_id, len(data))
    else:
        file_path = await services.pool.fetchval("SELECT file_path FROM face_session_images WHERE id = $1", image_id)
        services.storage.absolute(file_path).write_bytes(data)


async def lose_stored_bytes(client: TestClient, image_id: int) -> None:
    """What a disk failure or a hand-made delete does: the row stays, its bytes are gone."""
    services = client.server.app[SERVICES]
    bytes_in = await services.pool.fetchval("SELECT bytes_in FROM face_session_images WHERE id = $1", image_id)
    file_path = await services.pool.fetchval("SELECT file_path FROM face_session_images WHERE id = $1", image_id)
    if bytes_in == "postgres":
        assert await services.pool.fetchval("DELETE FROM image_blobs WHERE image_id = $1 RETURNING 1", image_id)
    elif bytes_in == "s3":
        assert await services.stores.objects.size(file_path) is not None
        await services.stores.objects.delete(file_path)
    else:
        services.storage.absolute(file_path).unlink()


async def objects_of(services) -> list[str]:
    """Every object key under the app's S3 prefix (the test's own), relative to it, sorted; [] without S3."""
    objects = services.stores.objects
    if objects is None:
        return []
    prefix = objects.key("")
    return sorted(key[len(prefix) :] for key in await objects.keys_under(prefix))


async def derived_of(services, session_id: int) -> list[str]:
    """A session's resized copies and face crops, by name: files under its derived/ folder (originals on disk
    or in Postgres) and objects under {prefix}/derived/{id}/ (originals in S3), sorted."""
    names = files_under(services.storage.layout.derived_dir(session_id))
    objects = services.stores.objects
    if objects is not None:
        prefix = objects.key(f"derived/{int(session_id)}/")
        names += [key[len(prefix) :] for key in await objects.keys_under(prefix)]
    return sorted(names)


def files_under(root: Path) -> list[str]:
    """Every file below root, relative, sorted: what is on disk, hidden ones included."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def copy_photo(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


async def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Wait for something another task or process does, checking often, failing after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        await asyncio.sleep(0.01)


async def terminate_listeners(database_url: str) -> int:
    """Ends every backend of this database that is LISTENing (as a Postgres restart or a network cut would
    end it); how many there were."""
    admin = await asyncpg.connect(database_url)
    try:
        return len(
            await admin.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'LISTEN %' AND pid <> pg_backend_pid()"
            )
        )
    finally:
        await admin.close()


async def backend_gone(pool: asyncpg.Pool, pid: int) -> None:
    """A closed connection's backend ends a moment later: wait until Postgres no longer lists it."""
    for _ in range(200):
        if not await pool.fetchval("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)", pid):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"backend {pid} still alive after 4 s")


async def create_session_at(http: aiohttp.ClientSession, base: str, name: str = "party") -> int:
    """A session made through a running service or nginx at base (create_session: a test client)."""
    async with http.post(base + "/api/face/sessions", json={"name": name}) as response:
        assert response.status == 201, await response.text()
        return (await response.json())["data"]["id"]


async def upload_at(http: aiohttp.ClientSession, base: str, session_id: int, path: Path) -> dict:
    """One photo uploaded through a running service or nginx at base; its entry of the answer."""
    form = aiohttp.FormData()
    form.add_field("file", path.read_bytes(), filename=path.name, content_type="image/jpeg")
    async with http.post(f"{base}/api/face/sessions/{session_id}/images", data=form) as response:
        body = await response.json()
        assert response.status == 201, body
        return body["data"]["images"][0]


async def stored_originals(services) -> set[str]:
    """The file_paths of every original kept apart from its row: files under face_sessions/*/db/ (hidden .part
    files too) and objects under the app's S3 prefix (but its derived/ ones)."""
    root = services.storage.root
    on_disk = {str(p.relative_to(root)) for p in (root / "face_sessions").glob("*/db/*") if p.is_file()}
    return on_disk | {path for path in await objects_of(services) if path.startswith("face_sessions/")}


async def put_original(services, file_path: str, source: Path) -> None:
    """What an upload puts in place before its row commits, in the store new uploads go to."""
    if services.stores.configured.kind == "s3":
        data = source.read_bytes()
        await services.stores.objects.put_file(file_path, source, len(data), hashlib.sha256(data).digest(), "image/jpeg")
    else:
        services.storage.absolute(file_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, services.storage.absolute(file_path))


async def original_exists(services, file_path: str) -> bool:
    return file_path in await stored_originals(services)
