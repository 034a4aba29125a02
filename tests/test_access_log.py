"""One access-log line per request: JSON fields (method, route template, status, bytes, ms, request id),
the path without its query (signed URLs carry signatures there), and no header or body content."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from dataclasses import replace

import aiohttp
from helpers import free_port

from faceserve.app import create_app
from faceserve.core.api_keys import PREFIX_LENGTH
from faceserve.http import access_log, listener
from faceserve.http.access_log import LOGGER, AccessLogger
from faceserve.logs import JsonFormatter


async def _server(app, aiohttp_server, log_format: str):
    """The app with the access logger `faceserve serve` gives it (server.py passes the same to run_app)."""
    return await aiohttp_server(app, access_log_class=AccessLogger, access_log=LOGGER, access_log_format=log_format)


async def test_json_access_line_per_request(settings, engine, aiohttp_server, aiohttp_client, caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER.name)  # before connecting: aiohttp asks once per connection
    client = await aiohttp_client(await _server(create_app(settings, engine), aiohttp_server, "json"))
    secret = "s3cr3t-signature-value"
    response = await client.get(
        f"/api/face/image/77?exp=1&kid=a&sig={secret}",
        headers={"X-Request-ID": "req-42", "Authorization": f"Bearer {secret}"},
    )
    assert response.status in (403, 404)
    await client.get("/api/face/sessions")
    await asyncio.sleep(0.2)  # the line is written once the response is sent, after the client has it
    records = [r for r in caplog.records if r.name == LOGGER.name]
    assert len(records) == 2
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["method"] == "GET"
    assert line["route"] == "/api/face/image/{image_id}"
    assert line["path"] == "/api/face/image/77"
    assert line["status"] == response.status
    body = await response.read()
    assert len(body) < line["bytes"] < len(body) + 1024  # bytes sent: the body and the header block
    assert line["request_id"] == "req-42"
    assert isinstance(line["ms"], float) and line["ms"] >= 0
    assert line["logger"] == "faceserve.access" and line["level"] == "INFO"
    assert secret not in JsonFormatter().format(records[0])
    authorised = json.loads(JsonFormatter().format(records[1]))
    assert authorised["route"] == "/api/face/sessions"
    # the admin key's public prefix names who asked; the key itself never appears
    admin_key = (settings.storage / "admin-key").read_text().strip()
    assert authorised["key_prefix"] == admin_key[:PREFIX_LENGTH]
    assert admin_key not in JsonFormatter().format(records[1])
    assert "key_prefix" not in line  # the image request presented no valid key


async def test_text_access_line(settings, engine, aiohttp_server, aiohttp_client, caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER.name)
    client = await aiohttp_client(await _server(create_app(settings, engine), aiohttp_server, "text"))
    await client.get("/api/face/sessions?limit=5", headers={"X-Request-ID": "t-1"})
    await asyncio.sleep(0.2)
    [record] = [r for r in caplog.records if r.name == LOGGER.name]
    message = record.getMessage()
    admin_key = (settings.storage / "admin-key").read_text().strip()
    assert '"GET /api/face/sessions" 200' in message and message.endswith(f" t-1 key={admin_key[:PREFIX_LENGTH]}")
    assert re.search(r'" 200 \d+ bytes [\d.]+ms t-1 key=', message), message  # a size, not a second status
    assert "limit" not in message


async def test_refused_request_lines_are_one_access_line_and_no_traceback(settings, engine, caplog) -> None:
    """A URL or header line past aiohttp's 8 KiB: one access line with its 400, no ERROR from aiohttp."""
    settings = replace(settings, host="127.0.0.1", port=free_port())
    caplog.set_level(logging.INFO)
    runner = await listener.start(
        create_app(settings, engine), settings, handle_signals=False,
        access_log={"access_log": LOGGER, "access_log_class": AccessLogger, "access_log_format": "json"},
    )
    try:
        for request in (
            b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 10_000 + b"\r\n\r\n",
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", settings.port)
            writer.write(request)
            answer = await asyncio.wait_for(reader.read(65536), 10)
            writer.close()
            assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), answer[:100]
        await asyncio.sleep(0.2)
    finally:
        await runner.cleanup()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    access = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == LOGGER.name]
    assert [(line["status"], line["route"]) for line in access] == [(400, "unmatched")] * 2


async def test_head_answers_carry_the_request_id(client, photos) -> None:
    response = await client.post("/api/face/sessions", json={"name": "head"})
    session_id = (await response.json())["data"]["id"]
    form = aiohttp.FormData()
    form.add_field("file", photos["yaoming"].read_bytes(), filename="y.jpg", content_type="image/jpeg")
    response = await client.post(f"/api/face/sessions/{session_id}/images", data=form)
    image_id = (await response.json())["data"]["images"][0]["image_id"]
    for method in ("HEAD", "GET"):
        response = await client.request(method, f"/api/face/image/{image_id}", headers={"X-Request-ID": "h-1"})
        assert response.status == 200
        assert response.headers["X-Request-ID"] == "h-1", method
    response = await client.head(f"/api/face/image/{image_id}?w=64")
    assert response.status == 200 and response.headers["X-Request-ID"]


class _CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_lines_reach_a_stream_handler_in_batches(settings, engine, aiohttp_server, aiohttp_client) -> None:
    """A console handler gets many lines in one write (one write a line was most of a 304's cost), all of
    them, whole and formatted by its own formatter; a line waits at most FLUSH_AFTER_S."""
    stream = _CountingStream()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    LOGGER.addHandler(handler)
    level = LOGGER.level
    LOGGER.setLevel(logging.INFO)
    try:
        client = await aiohttp_client(await _server(create_app(settings, engine), aiohttp_server, "text"))
        ids = [f"batch-{n}" for n in range(40)]
        answers = await asyncio.gather(*(client.get("/healthz", headers={"X-Request-ID": i}) for i in ids))
        assert {a.status for a in answers} == {200}
        await asyncio.sleep(access_log.FLUSH_AFTER_S + 0.3)
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(level)
    lines = stream.getvalue().splitlines()
    assert sorted(line.rsplit(" ", 1)[-1] for line in lines) == sorted(ids)
    assert all(re.fullmatch(r'INFO faceserve\.access: \S+ "GET /healthz" 200 \d+ bytes [\d.]+ms batch-\d+', l) for l in lines)
    assert stream.writes < len(lines) / 4, stream.writes
