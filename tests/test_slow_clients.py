"""Slow and greedy clients: trickling bodies hold no upload slot and are cut off, stalled headers and idle
connections are closed, and connections past the cap are refused, while normal clients are served."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
from helpers import free_port

from faceserve.app import create_app
from faceserve.config import Settings
from faceserve.http import listener
from faceserve.http.appkeys import SERVICES
from faceserve.vision.engine import FaceEngine

_BOUNDARY = "trickle-boundary"
_PROMPTLY_S = 20  # an upload of one photo on a loaded 2-core machine, with room to spare


async def _listen(settings: Settings, engine: FaceEngine) -> tuple[listener.web.AppRunner, str]:
    # about slow clients, not access: keys off on loopback, so raw sockets need no Authorization field
    settings = replace(settings, host="127.0.0.1", port=free_port(), auth=False)
    runner = await listener.start(create_app(settings, engine), settings, handle_signals=False)
    return runner, f"http://127.0.0.1:{settings.port}"


async def _create_session(http: aiohttp.ClientSession, base: str) -> int:
    async with http.post(f"{base}/api/face/sessions", json={"name": "slow"}) as response:
        assert response.status == 201
        return (await response.json())["data"]["id"]


async def _trickling_upload(
    port: int, session_id: int, data: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Headers and the start of a photo's part sent; the rest is to come (a byte at a time)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="t.jpg"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    body_length = len(head) + len(data) + len(f"\r\n--{_BOUNDARY}--\r\n")
    writer.write(
        f"POST /api/face/sessions/{session_id}/images HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: multipart/form-data; boundary={_BOUNDARY}\r\nContent-Length: {body_length}\r\n\r\n".encode()
        + head
        + data[:1000]
    )
    await writer.drain()
    return reader, writer


async def _answer(reader: asyncio.StreamReader, within_s: float) -> bytes:
    return await asyncio.wait_for(reader.read(65536), within_s)


async def _upload(http: aiohttp.ClientSession, base: str, session_id: int, data: bytes) -> tuple[int, dict]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="p.jpg", content_type="image/jpeg")
    async with http.post(f"{base}/api/face/sessions/{session_id}/images", data=form) as response:
        return response.status, await response.json()


async def test_twenty_trickling_uploads_leave_slots_for_a_normal_one(
    settings: Settings, engine: FaceEngine, photos: dict[str, Path]
) -> None:
    # fewer slots than tricklers: each of them holding one would starve everyone else
    settings = replace(settings, max_pending_images=4, body_idle_timeout_s=60, body_grace_s=60)
    runner, base = await _listen(settings, engine)
    port = int(base.rsplit(":", 1)[1])
    data = photos["t1"].read_bytes()
    try:
        async with aiohttp.ClientSession() as http:
            session_id = await _create_session(http, base)
            tricklers = [await _trickling_upload(port, session_id, data) for _ in range(20)]
            for _, writer in tricklers:  # a byte more each: still coming
                writer.write(data[1000:1001])
                await writer.drain()
            started = time.monotonic()
            status, body = await _upload(http, base, session_id, photos["gdp"].read_bytes())
            took = time.monotonic() - started
            assert status == 201, body
            assert took < _PROMPTLY_S
            services = runner.app[SERVICES]
            assert services.admission.uploads.in_flight == 0  # the 20 trickling ones hold no slot
            for _, writer in tricklers:
                writer.close()
    finally:
        await runner.cleanup()


async def test_a_stalled_body_is_answered_408_and_leaves_nothing(
    settings: Settings, engine: FaceEngine, photos: dict[str, Path]
) -> None:
    settings = replace(settings, body_idle_timeout_s=1.0)
    runner, base = await _listen(settings, engine)
    port = int(base.rsplit(":", 1)[1])
    try:
        async with aiohttp.ClientSession() as http:
            session_id = await _create_session(http, base)
        reader, writer = await _trickling_upload(port, session_id, photos["t1"].read_bytes())
        answer = await _answer(reader, 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"request_timeout"' in answer
        folder = settings.storage / "face_sessions" / str(session_id) / "db"
        assert not folder.exists() or list(folder.iterdir()) == []
    finally:
        await runner.cleanup()


async def test_a_body_slower_than_the_minimum_rate_is_cut_off(
    settings: Settings, engine: FaceEngine, photos: dict[str, Path]
) -> None:
    settings = replace(settings, body_idle_timeout_s=5.0, body_grace_s=1.0, body_min_bytes_per_s=50_000)
    runner, base = await _listen(settings, engine)
    port = int(base.rsplit(":", 1)[1])
    data = photos["t1"].read_bytes()
    try:
        async with aiohttp.ClientSession() as http:
            session_id = await _create_session(http, base)
        reader, writer = await _trickling_upload(port, session_id, data)
        started = time.monotonic()
        answer = b""
        for offset in range(1000, len(data)):  # a byte every 0.2 s: never idle long, far too slow on average
            writer.write(data[offset : offset + 1])
            await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(65536), 0.2)
            except TimeoutError:
                continue
            break
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert time.monotonic() - started < 10
    finally:
        await runner.cleanup()


async def test_stalled_headers_and_idle_connections_are_closed_and_connections_are_capped(
    settings: Settings, engine: FaceEngine
) -> None:
    settings = replace(settings, keepalive_timeout_s=1.0, max_connections=8)
    runner, base = await _listen(settings, engine)
    port = int(base.rsplit(":", 1)[1])
    try:
        # a header that never ends is closed after the timeout, with no answer
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        await writer.drain()
        started = time.monotonic()
        assert await _answer(reader, 10) == b""
        assert time.monotonic() - started < 5
        writer.close()

        # connections past the cap are closed at once; those within it are served
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(8)]
        extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", port)
        extra_writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            refused = await _answer(extra_reader, 5)
        except ConnectionResetError:
            refused = b""
        assert refused == b""
        first_reader, first_writer = held[0]
        first_writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await _answer(first_reader, 10)).startswith(b"HTTP/1.1 200")
        # an idle keep-alive connection is closed after the timeout too, freeing its place
        assert await _answer(first_reader, 10) == b""
        for _, writer in held:
            writer.close()
        extra_writer.close()
        await asyncio.sleep(1.5)
        async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz") as response:
            assert response.status == 200
    finally:
        await runner.cleanup()


async def _stalled_ignored_part(port: int, path: str) -> bytes:
    """A part no handler reads (`junk`), begun and then stalled: the answer, or b"" if none came in time."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="junk"\r\n\r\n'.encode()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={_BOUNDARY}\r\n"
        f"Content-Length: {len(head) + 100_000}\r\n\r\n".encode()
        + head
        + b"x" * 100
    )
    await writer.drain()
    try:
        return await _answer(reader, 10)
    except TimeoutError:
        return b""
    finally:
        writer.close()


async def test_a_stalled_part_the_handler_ignores_is_answered_408_on_every_form_route(
    settings: Settings, engine: FaceEngine
) -> None:
    settings = replace(settings, body_idle_timeout_s=1.0)
    runner, base = await _listen(settings, engine)
    port = int(base.rsplit(":", 1)[1])
    try:
        async with aiohttp.ClientSession() as http:
            session_id = await _create_session(http, base)
        paths = [
            "/api/face/search",
            f"/api/face/sessions/{session_id}/search",
            f"/api/face/sessions/{session_id}/forget",
            f"/api/face/sessions/{session_id}/images",
        ]
        answers = await asyncio.gather(*(_stalled_ignored_part(port, path) for path in paths))
        for path, answer in zip(paths, answers, strict=True):
            assert answer.startswith(b"HTTP/1.1 408"), (path, answer[:200])
            assert b'"request_timeout"' in answer
    finally:
        await runner.cleanup()


async def test_a_stalled_json_body_is_answered_408(settings, engine) -> None:
    """JSON bodies (sessions, keys, merge, split: http/parsing.read_json) keep the same pace as forms."""
    settings = replace(settings, body_idle_timeout_s=1.0)
    runner, base = await _listen(settings, engine)
    port = int(base.rsplit(":", 1)[1])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /api/face/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"name": "sl'
        )
        await writer.drain()
        try:
            answer = await _answer(reader, 10)
        except TimeoutError:
            answer = b""
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"request_timeout"' in answer
    finally:
        await runner.cleanup()
