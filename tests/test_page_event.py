"""Running an event from the page, in Debian's Chromium through Playwright on the real service: rename it, page
through its photos and delete some, make a guest link that expires, draw its QR code, revoke it, delete the
event; and the first start's one-time setup link signing an organiser's browser in.

Set FACESERVE_SCREENSHOTS=/some/dir to keep what the browser showed (phone and desktop, light and dark).
"""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote

import aiohttp
import cv2
import numpy as np
import pytest
from chromium import CHROMIUM, DESKTOP, PHONE, SLOW_MS, api_headers, open_page, page_url, screenshot
from PIL import Image

from faceserve.core import setup_links
from faceserve.http.appkeys import SERVICES

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed at /usr/bin/chromium (.ci/run installs it)",
)

PHOTOS_PAGE = 48  # eventphotos.js


@pytest.fixture
def public_images() -> bool:
    return False  # the service's default: signed URLs, keys on


def _blank_photos(count: int) -> list[tuple[str, bytes]]:
    """Small photos without faces, each different bytes (the same bytes twice are one photo)."""
    photos = []
    for index in range(count):
        out = io.BytesIO()
        Image.new("RGB", (48, 36), (index * 5 % 256, 90, 200 - index)).save(out, "PNG")
        photos.append((f"wall_{index:02d}.png", out.getvalue()))
    return photos


async def _upload(client, headers, session_id: int, files: list[tuple[str, bytes]]) -> None:
    form = aiohttp.FormData()
    for name, data in files:
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
    response = await client.post(f"/api/face/sessions/{session_id}/images", data=form, headers=headers)
    assert response.status == 201, await response.text()


def _decode_qr(png: bytes) -> str:
    pixels = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    text, _, _ = cv2.QRCodeDetector().detectAndDecode(pixels)
    return text


async def test_an_organiser_runs_an_event_from_the_page(client, browser, photos, settings):
    from playwright.async_api import expect

    headers = api_headers(settings)
    for name in ("rehearsal", "ceremony", "dinner", "after party"):  # more events than a phone's width
        assert (await client.post("/api/face/sessions", json={"name": name}, headers=headers)).status == 201
    response = await client.post("/api/face/sessions", json={"name": "session 3"}, headers=headers)
    session_id = (await response.json())["data"]["id"]
    await _upload(client, headers, session_id, [("players.jpg", photos["players"].read_bytes())])
    await _upload(client, headers, session_id, _blank_photos(PHOTOS_PAGE))  # two pages of photos in all

    page, problems = await open_page(browser, page_url(client, settings, manage=session_id), PHONE)
    await expect(page.locator("#manage-title")).to_have_text("session 3")
    # the events row scrolls sideways on a phone, and shows it: a fade over its cut edge
    row = page.locator("#sessions")
    assert await row.evaluate("r => r.scrollWidth > r.clientWidth")
    assert "linear-gradient" in await row.evaluate("r => getComputedStyle(r).maskImage || getComputedStyle(r).webkitMaskImage")

    # rename: the title, the events row and the service agree
    await page.click("#rename-event")
    await page.fill("#rename-input", "Summer party")
    await page.click("#rename-form button[type=submit]")
    await expect(page.locator("#manage-title")).to_have_text("Summer party")
    await expect(page.locator(f'#sessions button[data-id="{session_id}"] .name')).to_have_text("Summer party")
    shown = await (await client.get(f"/api/face/sessions/{session_id}", headers=headers)).json()
    assert shown["data"]["name"] == "Summer party"

    # the photos: a first page of thumbnails by ?w=, then the rest
    tiles = page.locator("#photo-grid li")
    await expect(tiles).to_have_count(PHOTOS_PAGE)
    assert re.search(r"[?&]w=\d+$", await tiles.first.locator("img").get_attribute("src"))
    await page.click("#photos-more")
    await expect(tiles).to_have_count(PHOTOS_PAGE + 1)
    await expect(page.locator("#photos-more")).to_be_hidden()

    # select two and delete them
    first_ids = [await tiles.nth(i).get_attribute("data-image-id") for i in range(2)]
    for i in range(2):
        await tiles.nth(i).locator("input[type=checkbox]").check()
    await expect(page.locator("#photos-selected")).to_have_text("2 photos selected")
    await screenshot(page, "event-photos-selected-phone")
    await page.click("#photos-delete")
    await expect(page.locator("#confirm-title")).to_have_text("Delete 2 photos?")
    await page.click("#confirm-ok")
    await expect(tiles).to_have_count(PHOTOS_PAGE - 1)
    await expect(page.locator("#manage-counts")).to_have_text(re.compile(r"^47 photos, "))
    for image_id in first_ids:
        assert await page.locator(f'#photo-grid li[data-image-id="{image_id}"]').count() == 0
    listed = await client.get(f"/api/face/sessions/{session_id}/images?limit=100", headers=headers)
    assert {str(i["image_id"]) for i in (await listed.json())["data"]["images"]}.isdisjoint(first_ids)

    # a guest link for 7 days: listed with its end, drawn as a QR code that scans back to the link
    await page.select_option("#link-days", "7")
    await page.click("#copy-link")
    await expect(page.locator("#guest-link")).to_be_visible()
    link = await page.input_value("#guest-link")
    guest_key = unquote(re.search(r"&key=([^&]+)$", link)[1])
    links = page.locator("#guest-links li.link-item")
    await expect(links).to_have_count(1)
    keys = await (await client.get(f"/api/face/keys?session={session_id}", headers=headers)).json()
    (made,) = keys["data"]["keys"]
    assert guest_key.startswith(made["prefix"])
    left = datetime.fromisoformat(made["expires_at"]) - datetime.now(UTC)
    assert timedelta(days=6, hours=23) < left <= timedelta(days=7)
    expires_on = await page.evaluate(
        "iso => new Date(iso).toLocaleDateString(undefined, {day: 'numeric', month: 'short', year: 'numeric'})",
        made["expires_at"],
    )
    await expect(links.first).to_contain_text(f"works until {expires_on}")
    await page.click("#show-qr")
    qr = page.locator("#qr-image")
    await expect(qr).to_be_visible()
    await expect(qr).to_have_js_property("complete", True)
    assert _decode_qr(await qr.screenshot()) == link
    await screenshot(page, "event-guest-link-phone")
    # printed for the venue: the event's name and its code, nothing else
    await page.emulate_media(media="print")
    await expect(qr).to_be_visible()
    await expect(page.locator("#manage-title")).to_be_visible()
    for other in ("#photo-grid", "#guest-links", "#copy-link", "#drop", ".bar", "#sessions"):
        await expect(page.locator(other)).to_be_hidden()
    await screenshot(page, "event-qr-print-phone")
    await page.emulate_media(media="screen")
    await page.set_viewport_size(DESKTOP)
    await screenshot(page, "event-guest-link-desktop")

    # the guest's link works until it is revoked
    async with aiohttp.ClientSession() as anonymous:
        bearer = {"Authorization": f"Bearer {guest_key}"}
        async with anonymous.get(client.make_url(f"/api/face/sessions/{session_id}"), headers=bearer) as answer:
            assert answer.status == 200
        await links.first.locator("button", has_text="Revoke").click()
        await expect(page.locator("#confirm-title")).to_have_text("Revoke this guest link?")
        await page.click("#confirm-ok")
        await expect(page.locator("#guest-links")).to_have_text("No guest links work now.")
        await expect(page.locator("#guest-link")).to_be_hidden()
        async with anonymous.get(client.make_url(f"/api/face/sessions/{session_id}"), headers=bearer) as answer:
            assert answer.status == 401

    # delete the event
    await page.click("#delete-event")
    await expect(page.locator("#confirm-title")).to_have_text("Delete “Summer party”?")
    await page.click("#confirm-ok")
    await expect(page.locator("#manage")).to_be_hidden()
    await expect(page.locator(f'#sessions button[data-id="{session_id}"]')).to_have_count(0)
    assert (await client.get(f"/api/face/sessions/{session_id}", headers=headers)).status == 404
    await screenshot(page, "event-deleted-desktop")
    assert problems.seen == [] and problems.answers == []


async def test_a_setup_link_signs_a_browser_in_once(client, browser):
    from playwright.async_api import expect

    home = str(client.make_url("/"))
    # no key: one sentence says what a key is and where an organiser's comes from
    page, problems = await open_page(browser, home, PHONE)
    await expect(page.locator("#notice")).to_contain_text("the password this service gives out")
    await expect(page.locator("#notice")).to_contain_text("setup link")
    await screenshot(page, "setup-no-key-phone")
    assert problems.answers == [(401, "/api/face/sessions")]

    token = await setup_links.create_token(client.server.app[SERVICES].pool, ttl_h=24)
    page, problems = await open_page(browser, f"{home}#setup={token}", DESKTOP)
    await expect(page.locator("#signed-in")).to_be_visible()
    await expect(page.locator("#key-summary")).to_have_text("Key in use")
    await expect(page.locator("#sessions")).to_contain_text("No events yet")
    assert await page.evaluate("location.hash") == ""  # the spent token left the address bar
    await screenshot(page, "setup-signed-in-desktop")
    # kept in this browser: another tab is signed in too
    other_tab = await page.context.new_page()
    await other_tab.goto(home)
    await expect(other_tab.locator("#sessions")).to_contain_text("No events yet")
    await page.fill("#session-name", "First event")
    await page.click("#create-form button[type=submit]")
    await expect(page.locator("#manage-title")).to_have_text("First event")
    assert problems.seen == [] and problems.answers == []

    # the same link again, in another browser: spent
    again, problems = await open_page(browser, f"{home}#setup={token}", PHONE)
    await expect(again.locator("#notice")).to_contain_text("did not sign you in", timeout=SLOW_MS)
    await expect(again.locator("#signed-in")).to_be_hidden()
    assert problems.answers == [(403, "/api/face/setup")]


async def test_an_opened_photo_outlines_the_face_that_matched(client, browser, photos, settings):
    from playwright.async_api import expect

    headers = api_headers(settings)
    response = await client.post("/api/face/sessions", json={"name": "team photo"}, headers=headers)
    session_id = (await response.json())["data"]["id"]
    await _upload(client, headers, session_id, [("players.jpg", photos["players"].read_bytes())])
    guest, problems = await open_page(browser, page_url(client, settings, session=session_id), DESKTOP)
    async with guest.expect_response(lambda r: r.url.endswith("/api/face/search")) as answer:
        await guest.set_input_files("#selfie", photos["yaoming"])
    (match,) = (await (await answer.value).json())["data"]["matches"]
    await expect(guest.locator("#search-status")).to_have_text(re.compile("You are in 1 photo"), timeout=SLOW_MS)

    await guest.click("#matches li a.photo")
    image, outline = guest.locator("#viewer-image"), guest.locator("#viewer-box")
    await expect(guest.locator("#viewer")).to_be_visible()
    await expect(outline).to_be_visible()
    shown = await image.bounding_box()
    drawn = await outline.bounding_box()
    natural = await image.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    x1, y1, x2, y2 = match["box"]
    scale = shown["width"] / natural[0]
    # the outline (3 px border outside the face's pixels' box) sits on the face within a few pixels
    assert abs(drawn["x"] - (shown["x"] + x1 * scale)) < 4, (drawn, shown, match["box"])
    assert abs(drawn["y"] - (shown["y"] + y1 * (shown["height"] / natural[1]))) < 4
    assert abs(drawn["width"] - (x2 - x1) * scale) < 4
    assert abs(drawn["height"] - (y2 - y1) * (shown["height"] / natural[1])) < 4
    await screenshot(guest, "guest-photo-opened-desktop", full_page=False)
    await guest.click("#viewer-close")
    await expect(guest.locator("#viewer")).to_be_hidden()
    assert problems.seen == [] and problems.answers == []
