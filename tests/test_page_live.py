"""Live results on the guest's page, in Debian's Chromium (tests/chromium.py) against the real service: after a
search the guest turns on "Show me new photos as they arrive"; a photo of them uploaded on the organiser's
side slides into the results marked "new"; with the connection cut and back (a phone asleep, a node lost)
the page resumes with Last-Event-ID and shows what came meanwhile, once; Stop ends the live search. The live
search is made from the last search's live_token (no selfie sent again), for the face the guest picked."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import numpy as np
import pytest
from chromium import CHROMIUM, PHONE, SLOW_MS, api_headers, open_page, page_url
from helpers import create_session, wait_until

from faceserve.core import live_tokens
from faceserve.http.access import ACCESS
from faceserve.http.appkeys import SERVICES

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed at /usr/bin/chromium (.ci/run installs it)",
)


async def _upload(client, settings, session_id: int, path) -> int:
    form = aiohttp.FormData()
    form.add_field("file", path.read_bytes(), filename=path.name, content_type="image/jpeg")
    response = await client.post(f"/api/face/sessions/{session_id}/images", data=form, headers=api_headers(settings))
    assert response.status == 201
    return (await response.json())["data"]["images"][0]["image_id"]


def _search_answers(page) -> list[dict]:
    """The data of every search answer the page gets, in order."""
    answers: list[dict] = []

    async def read(response) -> None:
        if response.request.method == "POST" and response.url.endswith("/search") and response.ok:
            answers.append((await response.json())["data"])

    page.on("response", read)
    return answers


def _live_request_bodies(page) -> list[bytes]:
    bodies: list[bytes] = []
    page.on(
        "request",
        lambda r: r.method == "POST" and r.url.endswith("/live") and bodies.append(r.post_data_buffer or b""),
    )
    return bodies


def _assert_made_from_the_token(live_bodies: list[bytes], search_answers: list[dict]) -> None:
    token = search_answers[-1]["live_token"]
    assert token and len(live_bodies) == 1, (live_bodies, search_answers)
    body = live_bodies[0]
    assert b'name="probe_token"' in body and token.encode() in body
    assert b'name="image"' not in body and b"\xff\xd8" not in body  # no selfie part, no JPEG bytes


async def test_new_photos_of_the_guest_arrive_on_the_page_and_resume_after_a_cut(client, browser, photos, settings):
    from playwright.async_api import expect

    session_id = await create_session(client, "Wedding")
    await _upload(client, settings, session_id, photos["t1"])
    guest, problems = await open_page(browser, page_url(client, settings, session=session_id), PHONE)
    stream_requests: list[dict[str, str]] = []
    guest.on("request", lambda r: "/events" in r.url and stream_requests.append(r.headers))
    search_answers = _search_answers(guest)
    live_bodies = _live_request_bodies(guest)

    await guest.set_input_files("#selfie", photos["yaoming"])
    await expect(guest.locator("#search-status")).to_have_text(re.compile("No photos of you here yet"), timeout=SLOW_MS)
    await expect(guest.locator("#live")).to_be_visible()
    await guest.check("#live-toggle")
    await expect(guest.locator("#live-status")).to_have_text("Watching for new photos of you…", timeout=SLOW_MS)
    await wait_until(lambda: len(stream_requests) > 0, SLOW_MS / 1000, "the stream's request")
    # the live search came from the search's live_token: the selfie was not sent again
    _assert_made_from_the_token(live_bodies, search_answers)

    players = await _upload(client, settings, session_id, photos["players"])
    new = guest.locator("#matches li.new")
    await expect(new).to_have_count(1, timeout=SLOW_MS)
    await expect(new).to_have_attribute("data-image-id", str(players))
    await expect(new.locator(".new-mark")).to_have_text("New")
    await expect(guest.locator("#live-status")).to_have_text(re.compile("1 new photo since you asked"))

    # the connection cut (a phone asleep, a node lost): a photo arrives meanwhile, and the page catches up
    first_requests = len(stream_requests)
    await guest.context.set_offline(True)
    for connection in list(client.server.runner.server.connections):
        connection.transport.abort()  # the open stream too, as a node that dies or a network that changes
    await expect(guest.locator("#live-status")).to_have_text("Reconnecting…", timeout=SLOW_MS)
    yao = await _upload(client, settings, session_id, photos["yaoming"])
    await guest.context.set_offline(False)
    await expect(guest.locator(f'#matches li.new[data-image-id="{yao}"]')).to_have_count(1, timeout=SLOW_MS)
    await expect(new).to_have_count(2)  # players.jpg not shown twice
    resumed = stream_requests[first_requests:]
    assert resumed and all(r.get("last-event-id") for r in resumed), resumed
    assert all("key=" not in r.get("referer", "") for r in resumed)
    assert "authorization" in resumed[-1] or not api_headers(settings)

    # Stop: the live search is gone from the service
    await guest.click("#live-stop")
    await expect(guest.locator("#live-status")).to_have_text("Stopped.")
    pool = client.server.app[SERVICES].pool
    for _ in range(500):
        if await pool.fetchval("SELECT count(*) FROM live_searches WHERE face_session_id = $1", session_id) == 0:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the live search was not deleted")
    # aborted streams are the only failed requests; nothing broke on the page
    assert [p for p in problems.seen if "/events" not in p] == []


async def test_live_results_follow_the_face_the_guest_picked(client, browser, photos, settings):
    """A selfie of several faces: the guest taps another face, and the live search is of that face (the
    last search's token), not of the largest."""
    from playwright.async_api import expect

    app = client.server.app
    session_id = await create_session(client, "Reunion")
    await _upload(client, settings, session_id, photos["t1"])
    guest, problems = await open_page(browser, page_url(client, settings, session=session_id), PHONE)
    search_answers = _search_answers(guest)
    live_bodies = _live_request_bodies(guest)

    await guest.set_input_files("#selfie", photos["t1"])
    picked = guest.locator("#probe-faces button", has_text="Face 2")
    await expect(picked).to_have_attribute("aria-pressed", "false", timeout=SLOW_MS)
    await picked.click()
    await expect(picked).to_have_attribute("aria-pressed", "true", timeout=SLOW_MS)
    await expect(guest.locator("#live")).to_be_visible()
    await guest.check("#live-toggle")
    await expect(guest.locator("#live-status")).to_have_text("Watching for new photos of you…", timeout=SLOW_MS)
    assert [answer["used"] for answer in search_answers] == [[0], [1]]
    _assert_made_from_the_token(live_bodies, search_answers)

    keys, dim = app[ACCESS].signing, app[SERVICES].models.engine.embedding_dim
    models = app[SERVICES].settings.model_pack
    largest, second = (
        live_tokens.unseal(keys, a["live_token"], session_id, dim, time.time(), models) for a in search_answers
    )
    kept = await app[SERVICES].pool.fetchval("SELECT embedding FROM live_searches WHERE face_session_id = $1", session_id)
    assert np.array_equal(np.frombuffer(kept, dtype="<f4"), second)
    assert float(np.dot(largest, second)) < 0.5  # another person's face
    assert problems.seen == []
