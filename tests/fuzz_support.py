"""Helpers of the hostile-input tests: example counts, raw multipart bodies, what is stored, the error envelope.

FACESERVE_FUZZ_EXAMPLES sets how many cases every property test generates (each has a bounded default so CI
stays fast): FACESERVE_FUZZ_EXAMPLES=2000 python -m pytest tests/test_input_properties.py tests/test_api_fuzz.py
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from PIL import Image

from faceserve.layout import SessionLayout

FUZZ_EXAMPLES_ENV = "FACESERVE_FUZZ_EXAMPLES"


def fuzz_settings(default_examples: int) -> settings:
    """Hypothesis settings: default_examples cases unless FACESERVE_FUZZ_EXAMPLES says otherwise; no example
    database on disk; no deadline (the app's examples touch Postgres and files); the app fixture is shared by
    the examples of one test on purpose (one real service, many requests)."""
    examples = int(os.environ.get(FUZZ_EXAMPLES_ENV) or default_examples)
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def small_png(seed: int = 0) -> bytes:
    """A small faceless PNG, different for each seed (so uploads do not dedupe)."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def multipart(
    parts: list[tuple[bytes, bytes]], boundary: bytes = b"fuzz-boundary", closed: bool = True
) -> bytes:
    """A multipart/form-data body from (Content-Disposition parameters, payload) pairs, written byte by byte
    as any client could, e.g. (b'name="file"; filename="a.jpg"', data)."""
    body = b""
    for disposition, payload in parts:
        body += b"--" + boundary + b"\r\nContent-Disposition: form-data; " + disposition + b"\r\n"
        body += b"Content-Type: application/octet-stream\r\n\r\n" + payload + b"\r\n"
    return body + (b"--" + boundary + b"--\r\n" if closed else b"")


MULTIPART = "multipart/form-data; boundary=fuzz-boundary"


async def stored_state(services, storage: Path) -> tuple[int, int, int, list[str]]:
    """(sessions, images, faces, files of the sessions): what an error must leave unchanged."""
    row = await services.pool.fetchrow(
        "SELECT (SELECT count(*) FROM face_sessions) AS s, (SELECT count(*) FROM face_session_images) AS i, "
        "(SELECT count(*) FROM faces) AS f"
    )
    sessions = SessionLayout(storage).sessions_root
    files = (
        sorted(str(p.relative_to(storage)) for p in sessions.rglob("*") if p.is_file())
        if sessions.exists()
        else []
    )
    return row["s"], row["i"], row["f"], files


async def assert_answer(response) -> dict | None:
    """Never a 5xx; every error is the JSON envelope. Returns the JSON body (None for a body that is not JSON,
    which only successes may have: image bytes, redirects, 304)."""
    assert response.status < 500, (response.status, await response.text())
    if response.status >= 400:
        assert response.content_type == "application/json", (response.status, await response.text())
        body = await response.json()
        assert body["success"] is False and set(body) == {"success", "error"}, body
        assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str), body
        return body
    if response.content_type == "application/json":
        return await response.json()
    return None


async def raw_request(client, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (a request line, header fields, a body) and read the answer: what a client
    library would refuse to send is what a hostile client sends."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    # the client's own key (the admin key the test clients carry), so the answer is about the request
    authorization = client.session.headers.get("Authorization")
    credentials = f"Authorization: {authorization}\r\n".encode() if authorization else b""
    try:
        writer.write(head + credentials + b"Host: fuzz\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    fields, _, payload = data.partition(b"\r\n\r\n")
    lines = fields.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return int(lines[0].split()[1]), headers, payload


def check_raw_answer(
    status: int, headers: dict[str, str], payload: bytes, method: str = "GET"
) -> dict | None:
    """assert_answer for raw_request's answers."""
    assert status < 500, (status, payload[:300])
    is_json = headers.get("content-type", "").startswith("application/json")
    if status >= 400:
        assert is_json, (status, headers, payload[:300])
        if method == "HEAD":
            return None
        body = json.loads(payload)
        assert body["success"] is False and set(body) == {"success", "error"}, body
        assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str), body
        return body
    return json.loads(payload) if is_json and method != "HEAD" else None
