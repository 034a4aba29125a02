"""Bodies on both event loops (asyncio: zero-copy sendfile; uvloop: chunked fallback): large and huge files,
zero-byte files, ranges fetched concurrently and reassembled, a client leaving mid-body. The equivalents of
aiohttp's own tests/test_web_sendfile_functional.py, for our handler."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os

import numpy as np
import pytest
import uvloop
from helpers import IMAGE_STORES, create_session, replace_stored_bytes, upload, wait_until
from PIL import Image


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request):
    return uvloop.EventLoopPolicy() if request.param == "uvloop" else asyncio.DefaultEventLoopPolicy()


@pytest.fixture(params=IMAGE_STORES)
def image_store(request: pytest.FixtureRequest) -> str:
    """Bytes on disk (sendfile or pread) and in Postgres (read by range, streamed in chunks)."""
    return request.param


def _noise_png(side: int, seed: int = 0) -> bytes:
    """Random pixels do not compress: side 800 makes a PNG of about 1.9 MB, past the inline-body limit."""
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


async def _stored(client, data: bytes, name: str = "noise.png") -> dict:
    session_id = await create_session(client)
    [image] = await upload(client, session_id, (name, data))
    return image


async def test_large_file_whole_and_head(client, event_loop_policy):
    expected_loop = "uvloop" if isinstance(event_loop_policy, uvloop.EventLoopPolicy) else "asyncio"
    assert type(asyncio.get_running_loop()).__module__.split(".")[0] == expected_loop
    data = _noise_png(800)
    assert len(data) > 1_000_000
    image = await _stored(client, data)
    url = f"/api/face/image/{image['image_id']}"
    response = await client.get(url)
    assert response.status == 200
    assert await response.read() == data
    assert response.headers["Content-Type"] == "image/png"
    head = await client.head(url)
    assert int(head.headers["Content-Length"]) == len(data) and await head.read() == b""


async def test_huge_file_streams(client):
    """64 MiB behind one record (written straight to disk; serving goes by the row, whatever the bytes)."""
    image = await _stored(client, _noise_png(64, seed=1))
    block = os.urandom(1024 * 1024)
    await replace_stored_bytes(client, image["image_id"], block * 64)
    response = await client.get(f"/api/face/image/{image['image_id']}")
    digest, total = hashlib.sha256(), 0
    async for chunk in response.content.iter_chunked(1 << 20):
        digest.update(chunk)
        total += len(chunk)
    assert total == 64 * len(block)
    assert digest.digest() == hashlib.sha256(block * 64).digest()


async def test_concurrent_ranges_reassemble_the_file(client):
    data = _noise_png(800, seed=2)
    image = await _stored(client, data)
    url = f"/api/face/image/{image['image_id']}"
    step = len(data) // 7 + 1

    async def fetch(first: int) -> bytes:
        last = min(first + step, len(data)) - 1
        response = await client.get(url, headers={"Range": f"bytes={first}-{last}"})
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes {first}-{last}/{len(data)}"
        return await response.read()

    parts = await asyncio.gather(*(fetch(first) for first in range(0, len(data), step)))
    assert b"".join(parts) == data


async def test_zero_byte_file(client, photos):
    image = await _stored(client, photos["yaoming"].read_bytes(), "yao.jpg")
    await replace_stored_bytes(client, image["image_id"], b"")
    url = f"/api/face/image/{image['image_id']}"
    response = await client.get(url)
    assert response.status == 200
    assert response.headers["Content-Length"] == "0" and await response.read() == b""
    response = await client.get(url, headers={"Range": "bytes=0-"})
    assert response.status == 416 and response.headers["Content-Range"] == "bytes */0"


async def test_client_leaving_mid_body_harms_nothing(client):
    """A raw socket asks for a big file, reads a little, and hangs up; the server keeps serving and leaks no
    file descriptor."""
    image = await _stored(client, _noise_png(64, seed=3))
    await replace_stored_bytes(client, image["image_id"], os.urandom(32 * 1024 * 1024))
    fds_before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        writer.write(f"GET /api/face/image/{image['image_id']} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        assert (await reader.readexactly(64)).startswith(b"HTTP/1.1 200")
        writer.transport.abort()
    response = await client.get(f"/api/face/image/{image['image_id']}", headers={"Range": "bytes=0-99"})
    assert response.status == 206 and len(await response.read()) == 100
    # the server closes what the hung-up clients left (the test client keeps its own keep-alive sockets)
    await wait_until(lambda: len(os.listdir("/proc/self/fd")) <= fds_before + 2, what="descriptors released")
