"""Live results across a fleet on loopback (tests/fleet.py: two `faceserve serve` nodes on one Postgres, nginx
from deploy/nginx.conf in front): a stream on node B hears of a photo uploaded through node A, and a stream
through nginx whose node dies is resumed with Last-Event-ID on the other node without missing an event."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from fleet import Fleet, fleet_of_its_own
from helpers import create_session_at, upload_at
from sse import open_stream

PROPAGATION_LIMIT_S = 1.0


@pytest.fixture(scope="module")
def fleet(postgres_uri: str, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with fleet_of_its_own(postgres_uri, models_dir, tmp_path_factory.mktemp("fleet-live"), "fleet_live") as fleet:
        fleet.start_behind_nginx("a", "b")
        yield fleet


async def _live_search(http: aiohttp.ClientSession, base: str, session_id: int, selfie: bytes) -> int:
    form = aiohttp.FormData()
    form.add_field("image", selfie, filename="selfie.jpg", content_type="image/jpeg")
    async with http.post(f"{base}/api/face/sessions/{session_id}/live", data=form) as response:
        body = await response.json()
        assert response.status == 201, body
        return body["data"]["live_id"]


async def _open_streams(http: aiohttp.ClientSession, base: str) -> int:
    async with http.get(f"{base}/metrics") as response:
        text = await response.text()
    found = re.search(r"^faceserve_live_streams(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


async def test_a_stream_on_one_node_hears_of_an_upload_through_the_other(fleet: Fleet, photos) -> None:
    a, b = fleet.nodes["a"].url, fleet.nodes["b"].url
    async with aiohttp.ClientSession() as http:
        session_id = await create_session_at(http, a)
        live_id = await _live_search(http, a, session_id, photos["yaoming"].read_bytes())
        stream = await open_stream(http, f"{b}/api/face/sessions/{session_id}/live/{live_id}/events", {})
        start = time.monotonic()
        image = await upload_at(http, a, session_id, photos["players"])
        event = await stream.next_match()
        assert time.monotonic() - start < PROPAGATION_LIMIT_S + 10  # the upload's own analysis included
        assert event.event == "match" and event.data["image_id"] == image["image_id"]
        stream.response.close()


async def test_a_stream_through_nginx_resumes_on_the_other_node_when_its_node_dies(fleet: Fleet, photos) -> None:
    async with aiohttp.ClientSession() as http:
        session_id = await create_session_at(http, fleet.url)
        live_id = await _live_search(http, fleet.url, session_id, photos["yaoming"].read_bytes())
        url = f"{fleet.url}/api/face/sessions/{session_id}/live/{live_id}/events"
        # streams closed by a client are noticed at their next write: count what is open already
        before = {name: await _open_streams(http, fleet.nodes[name].url) for name in ("a", "b")}
        stream = await open_stream(http, url, {})
        first_image = await upload_at(http, fleet.url, session_id, photos["players"])
        first = await stream.next_match()
        assert first.data["image_id"] == first_image["image_id"]
        # the node holding the stream dies (kill -9: no goodbye)
        after = {name: await _open_streams(http, fleet.nodes[name].url) for name in ("a", "b")}
        [holder] = [name for name in ("a", "b") if after[name] == before[name] + 1]
        survivor = "b" if holder == "a" else "a"
        fleet.kill(holder)
        with pytest.raises((EOFError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            while True:
                await stream.next(10)
        # a photo uploaded while the guest is away, through the node left
        missed = await upload_at(http, fleet.nodes[survivor].url, session_id, photos["yaoming"])
        # the page reconnects with the last id it saw: nginx sends it on to the other node, and nothing is missed
        resumed = await open_stream(http, url, {}, first.id)
        event = await resumed.next_match()
        assert event.data["image_id"] == missed["image_id"]
        assert int(event.id) > int(first.id)
        resumed.response.close()
