"""A real nginx with proxy_cache in front of faceserve: repeat image fetches are cache hits, errors never are.

Needs the nginx binary (`apt-get install -y nginx`). Without it these tests fail rather than skip, so a CI
image that lacks it is noticed.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from helpers import create_session, free_port, nginx_binary, upload

NGINX_CONF = """\
{user}
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    proxy_cache_path {prefix}/cache levels=1:2 keys_zone=images:1m max_size=64m inactive=1d use_temp_path=off;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache images;
            # caches any answer for 10 minutes unless the upstream's Cache-Control says otherwise, so whether
            # an error is stored is decided by faceserve's own header (no-store), not by this line
            proxy_cache_valid any 10m;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
}}
"""
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Fetched:
    status: int
    cache_status: str | None
    etag: str | None
    cache_control: str | None
    body: bytes


def write_config(prefix: Path, port: int, upstream_port: int) -> Path:
    prefix.mkdir(parents=True, exist_ok=True)
    # as root, nginx workers would drop to `nobody`, who cannot write the cache under pytest's tmp_path
    user = "user root;" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user=user, prefix=prefix, port=port, upstream_port=upstream_port))
    return conf


async def wait_for_port(port: int, process: asyncio.subprocess.Process, prefix: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _START_TIMEOUT_S
    while loop.time() < deadline:
        if process.returncode is not None:
            _, stderr = await process.communicate()
            message = f"nginx exited with {process.returncode}:\n{stderr.decode(errors='replace')}"
            pytest.fail(f"{message}\n{error_log(prefix)}", pytrace=False)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    pytest.fail(
        f"nginx did not listen on {port} within {_START_TIMEOUT_S} s:\n{error_log(prefix)}", pytrace=False
    )


def error_log(prefix: Path) -> str:
    path = prefix / "error.log"
    return path.read_text(errors="replace") if path.exists() else ""


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGQUIT)  # nginx's graceful shutdown
    try:
        await asyncio.wait_for(process.communicate(), _STOP_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.communicate()


@asynccontextmanager
async def nginx_cache_in_front(prefix: Path, upstream_port: int) -> AsyncIterator[str]:
    """nginx in the foreground (daemon off) with proxy_cache to the app; yields its base URL."""
    binary = nginx_binary()
    port = free_port()
    conf = write_config(prefix, port, upstream_port)
    # stderr only carries what nginx says before it reads error_log from the config (a bad config)
    process = await asyncio.create_subprocess_exec(
        binary, "-p", str(prefix), "-c", str(conf), stderr=asyncio.subprocess.PIPE
    )
    try:
        await wait_for_port(port, process, prefix)
        yield f"http://127.0.0.1:{port}"
    finally:
        await stop(process)


async def fetch(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> Fetched:
    async with http.get(url, headers=headers) as response:
        return Fetched(
            status=response.status,
            cache_status=response.headers.get("X-Cache-Status"),
            etag=response.headers.get("ETag"),
            cache_control=response.headers.get("Cache-Control"),
            body=await response.read(),
        )


async def test_repeat_image_fetches_are_cache_hits(
    client: TestClient, photos: dict[str, Path], tmp_path: Path
) -> None:
    original = photos["t1"].read_bytes()
    [image] = await upload(client, await create_session(client), ("t1.jpg", original))
    path = f"/api/face/image/{image['image_id']}"
    direct = await client.get(path)
    assert direct.status == 200

    async with (
        nginx_cache_in_front(tmp_path / "nginx", client.server.port) as base,
        aiohttp.ClientSession() as http,
    ):
        fetches = [await fetch(http, base + path) for _ in range(3)]
        revalidation = await fetch(http, base + path, {"If-None-Match": direct.headers["ETag"]})

    assert [f.status for f in fetches] == [200, 200, 200]
    assert [f.cache_status for f in fetches] == ["MISS", "HIT", "HIT"]
    assert all(f.body == original for f in fetches)
    assert {f.etag for f in fetches} == {direct.headers["ETag"]}
    assert {f.cache_control for f in fetches} == {"public, max-age=31536000, immutable"}
    # nginx answers a revalidation from its cache too: the app is not asked
    assert (revalidation.status, revalidation.cache_status, revalidation.body) == (304, "HIT", b"")


async def test_errors_are_not_cached(client: TestClient, tmp_path: Path) -> None:
    path = "/api/face/image/987654321"

    async with (
        nginx_cache_in_front(tmp_path / "nginx", client.server.port) as base,
        aiohttp.ClientSession() as http,
    ):
        fetches = [await fetch(http, base + path) for _ in range(3)]

    assert [f.status for f in fetches] == [404, 404, 404]
    assert {f.cache_control for f in fetches} == {"no-store"}
    # each request goes to the app: never stored, so never a HIT
    assert [f.cache_status for f in fetches] == ["MISS", "MISS", "MISS"]
