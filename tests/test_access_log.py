"""One access-log line per request: JSON fields (method, route template, status, bytes, ms, request id),
the path without its query (signed URLs carry signatures there), and no header or body content."""

from __future__ import annotations

import asyncio
import json
import logging
import re

from faceserve.app import create_app
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
    assert json.loads(JsonFormatter().format(records[1]))["route"] == "/api/face/sessions"


async def test_text_access_line(settings, engine, aiohttp_server, aiohttp_client, caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER.name)
    client = await aiohttp_client(await _server(create_app(settings, engine), aiohttp_server, "text"))
    await client.get("/api/face/sessions?limit=5", headers={"X-Request-ID": "t-1"})
    await asyncio.sleep(0.2)
    [record] = [r for r in caplog.records if r.name == LOGGER.name]
    message = record.getMessage()
    assert '"GET /api/face/sessions" 200' in message and message.endswith(" t-1")
    assert re.search(r'" 200 \d+ bytes [\d.]+ms t-1$', message), message  # a size, not a second status
    assert "limit" not in message
