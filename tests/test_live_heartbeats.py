"""Heartbeats of live results streams: a comment line at most every LIVE_HEARTBEAT_S, and streams opened
together do not send theirs together (a burst would hold the event loop for all of them at once)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import aiohttp
import pytest
from helpers import create_session
from sse import open_stream

from faceserve.config import Settings

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

_EVERY_S = 2.0
_STREAMS = 16


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, live_heartbeat_s=_EVERY_S)


async def test_streams_opened_together_spread_their_heartbeats(client, photos):
    session_id = await create_session(client)
    form = aiohttp.FormData()
    form.add_field("image", photos["yaoming"].read_bytes(), filename="selfie.jpg", content_type="image/jpeg")
    response = await client.post(f"/api/face/sessions/{session_id}/live", data=form)
    live_id = (await response.json())["data"]["live_id"]
    url = str(client.make_url(f"/api/face/sessions/{session_id}/live/{live_id}/events"))
    headers = {"Authorization": client.session.headers["Authorization"]}
    async with aiohttp.ClientSession() as http:
        streams = await asyncio.gather(*(open_stream(http, url, headers) for _ in range(_STREAMS)))
        opened = time.monotonic()

        async def two_heartbeats(stream) -> tuple[float, float]:
            first = await stream.next(timeout_s=_EVERY_S + 2)
            at_first = time.monotonic() - opened
            second = await stream.next(timeout_s=_EVERY_S + 2)
            assert first.comment == second.comment == "heartbeat"
            return at_first, time.monotonic() - opened - at_first

        beats = await asyncio.gather(*(two_heartbeats(stream) for stream in streams))
        for stream in streams:
            stream.response.close()
    firsts = sorted(first for first, _ in beats)
    assert firsts[-1] <= _EVERY_S + 0.5  # never longer apart than LIVE_HEARTBEAT_S
    assert firsts[-1] - firsts[0] >= 0.2 * _EVERY_S, firsts  # spread (16 draws within 0.4 s: a chance of ~1e-5)
    assert all(abs(gap - _EVERY_S) < 0.5 for _, gap in beats)  # then every LIVE_HEARTBEAT_S
