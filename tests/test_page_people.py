"""The people of an event on the web page, in Debian's Chromium against the real service: the shipped photos
uploaded, their faces grouped, then a guest without a selfie browses the people (most photographed first,
"More people" by the API's cursor) and opens Yao Ming's photos; an organiser takes a wrongly grouped face out
of him (its crop in the dialog, which Esc does not close while the service is answering), merges two people by
keyboard and sees a refused merge explained by the service's own message; the API reflects each change. A key
that may not list people shows no people.

Every face of a clear size is a person here (PEOPLE_MIN_FACES=1): four photos then make more people than
one page of the grid holds. Set FACESERVE_SCREENSHOTS=/some/dir to keep what the browser showed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re

import pytest
from chromium import (
    CHROMIUM,
    DESKTOP,
    PHONE,
    SLOW_MS,
    admin_key,
    open_page,
    page_url,
    screenshot,
)
from helpers import create_session, upload

from faceserve.app import create_app
from faceserve.core import people
from faceserve.http.appkeys import SERVICES

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed at /usr/bin/chromium (.ci/run installs it)",
)

SHIPPED = ("players", "gdp", "t1", "yaoming")


@pytest.fixture
async def event(settings, engine, aiohttp_client, photos):
    """The four shipped photos in one session, grouped into people; players.jpg and yaoming.jpg show Yao Ming."""
    app = create_app(dataclasses.replace(settings, people_min_faces=1), engine)
    client = await aiohttp_client(app)
    session_id = await create_session(client, "Basketball night")
    images = await upload(client, session_id, *((f"{name}.jpg", photos[name].read_bytes()) for name in SHIPPED))
    ids = {image["original_name"]: image["image_id"] for image in images}
    services = app[SERVICES]
    await services.jobs.wait(("people", session_id))  # one the uploads started holds the session's lock
    assert await people.recluster(services, session_id) is not None
    return {"client": client, "settings": client.server.app[SERVICES].settings, "session_id": session_id, **ids}


async def listed(client, session_id: int) -> list[dict]:
    """Every person of the session as the API lists them, page after page."""
    found, after = [], ""
    while True:
        response = await client.get(f"/api/face/sessions/{session_id}/people", params={"limit": 7, "after": after})
        body = (await response.json())["data"]
        found += body["people"]
        if body["next_after"] is None:
            return found
        after = body["next_after"]


async def photos_of(client, session_id: int, person_id: int) -> tuple[int, list[dict]]:
    response = await client.get(f"/api/face/sessions/{session_id}/people/{person_id}/images")
    body = await response.json()
    return response.status, body["data"]["images"] if response.status == 200 else []


async def person_of_face(client, session_id: int, face_id: int) -> int | None:
    for person in await listed(client, session_id):
        if face_id in {p["face_id"] for p in (await photos_of(client, session_id, person["person_id"]))[1]}:
            return person["person_id"]
    return None


async def guest_link(client, settings, session_id: int, scopes: list[str], sessions: list[int]) -> str:
    """What an organiser sends a guest: the page with a key of these scopes bound to these sessions."""
    if admin_key(settings) is None:
        return page_url(client, settings, session=session_id)
    response = await client.post(
        "/api/face/keys", json={"name": "guest", "scopes": scopes, "sessions": sessions}
    )
    assert response.status == 201, await response.text()
    key = (await response.json())["data"]["key"]
    return str(client.make_url("/")) + f"#session={session_id}&key={key}"


async def shown_ids(section) -> list[int]:
    return [int(i) for i in await section.locator(".person").evaluate_all("items => items.map(i => i.dataset.personId)")]


async def test_a_guest_without_a_selfie_browses_the_people_and_opens_one(event, browser):
    from playwright.async_api import expect

    client, settings, session_id = event["client"], event["settings"], event["session_id"]
    everyone = await listed(client, session_id)
    yao = everyone[0]
    assert yao["image_count"] == 2 and all(p["image_count"] == 1 for p in everyone[1:])
    _, yao_photos = await photos_of(client, session_id, yao["person_id"])
    assert {p["image_id"] for p in yao_photos} == {event["players.jpg"], event["yaoming.jpg"]}

    link = await guest_link(client, settings, session_id, ["search"], [session_id])
    guest, problems = await open_page(browser, link, PHONE)
    section = guest.locator("#guest-people")
    await expect(section).to_be_visible()
    cards = section.locator(".person")
    await expect(cards.first).to_be_visible()
    # one page first, in the API's order; more than a page of people here, so "More people" brings the rest
    first_page = await shown_ids(section)
    assert 0 < len(first_page) < len(everyone), (len(first_page), len(everyone))
    assert first_page == [p["person_id"] for p in everyone[: len(first_page)]]
    await expect(cards.first.locator(".count")).to_have_text("2 photos")
    covers = cards.locator("img.cover")
    await covers.first.scroll_into_view_if_needed()
    await expect(covers.first).to_have_js_property("complete", True, timeout=SLOW_MS)
    assert await covers.first.evaluate("img => img.naturalWidth") > 0  # the signed face crop was served
    await screenshot(guest, "people-guest-grid-phone")
    await section.get_by_role("button", name="More people").click()
    await expect(cards).to_have_count(len(everyone))
    assert await shown_ids(section) == [p["person_id"] for p in everyone]
    await expect(section.get_by_role("button", name="More people")).to_be_hidden()
    await guest.set_viewport_size(DESKTOP)
    await screenshot(guest, "people-guest-grid-desktop")
    await guest.set_viewport_size(PHONE)

    # the most photographed person is Yao Ming: his two photos, as the search shows photos
    await cards.first.locator(".person-open").click()
    view = section.locator(".person-view")
    await expect(view).to_be_visible()
    await expect(view.locator(".person-title")).to_have_text("In 2 photos")
    await expect(view.locator(".person-title")).to_be_focused()
    photo_cards = view.locator("li.match")
    await expect(photo_cards).to_have_count(2)
    for photo in yao_photos:
        card = view.locator(f'li.match[data-image-id="{photo["image_id"]}"]')
        await expect(card.locator("a", has_text="Open")).to_have_attribute("href", photo["url"])
        await expect(card.locator("a", has_text="Download")).to_have_attribute("href", photo["url"])
        await expect(card.locator("img")).to_have_attribute("loading", "lazy")
    await expect(view.get_by_role("button", name="Not this person")).to_have_count(0)  # guests correct nothing
    await expect(photo_cards.first.locator("img")).to_have_js_property("complete", True, timeout=SLOW_MS)
    await screenshot(guest, "people-guest-person-phone")
    await guest.set_viewport_size(DESKTOP)
    await screenshot(guest, "people-guest-person-desktop")
    await guest.set_viewport_size(PHONE)

    # back to the grid: the button, and the phone's own back (one history entry, the link unchanged)
    await view.get_by_role("button", name="All people").click()
    await expect(section.locator(".people-grid-view")).to_be_visible()
    await expect(cards.first.locator(".person-open")).to_be_focused()
    await cards.first.locator(".person-open").press("Enter")  # the keyboard opens a person too
    await expect(view).to_be_visible()
    await guest.go_back()
    await expect(section.locator(".people-grid-view")).to_be_visible()
    assert await guest.evaluate("location.href") == link

    assert problems.seen == []
    assert problems.answers == []


async def test_a_key_that_may_not_list_people_shows_none(event, browser):
    from playwright.async_api import expect

    client, settings, session_id = event["client"], event["settings"], event["session_id"]
    if admin_key(settings) is None:
        pytest.skip("the service runs without keys: everyone may list people")
    elsewhere = await create_session(client, "another night")
    # a search key of another event: the people routes answer 403 for this one, and the page shows none
    link = await guest_link(client, settings, session_id, ["search"], [elsewhere])
    guest, problems = await open_page(browser, link, PHONE)
    await expect(guest.locator("#selfie-button")).to_be_visible()
    await guest.wait_for_load_state("networkidle")
    await expect(guest.locator("#guest-people")).to_be_hidden()
    assert (403, f"/api/face/sessions/{session_id}/people") in problems.answers
    assert problems.seen == []


async def test_an_organiser_takes_a_face_out_and_merges_two_people(event, browser):
    from playwright.async_api import expect

    client, settings, session_id = event["client"], event["settings"], event["session_id"]
    yao = (await listed(client, session_id))[0]
    _, yao_photos = await photos_of(client, session_id, yao["person_id"])
    team_face = next(p["face_id"] for p in yao_photos if p["image_id"] == event["players.jpg"])

    organiser, problems = await open_page(browser, page_url(client, settings, manage=session_id), PHONE)
    section = organiser.locator("#manage-people")
    await expect(section.locator(".person").first).to_be_visible()
    assert (await shown_ids(section))[0] == yao["person_id"]
    await screenshot(organiser, "people-organiser-grid-phone")

    # Yao Ming's face in the team photo is (says the organiser) someone else: take it out
    await section.locator(f'.person[data-person-id="{yao["person_id"]}"] .person-open').click()
    view = section.locator(".person-view")
    await expect(view.locator("li.match")).to_have_count(2)
    await expect(view.locator("li.match img").first).to_have_js_property("complete", True, timeout=SLOW_MS)
    await screenshot(organiser, "people-organiser-person-phone", full_page=False)
    await view.locator(f'li.match[data-image-id="{event["players.jpg"]}"]').get_by_role(
        "button", name="Not this person"
    ).click()
    dialog = organiser.locator("#confirm")
    await expect(dialog).to_be_visible()
    await expect(dialog.locator("#confirm-title")).to_have_text("Take this face out?")
    await expect(dialog.locator("#confirm-cancel")).to_be_focused()  # the safe choice first
    # the face is the service's crop of it (a few KB), not the whole photo cut down in the page
    face = dialog.get_by_role("img", name="The face to take out")
    await expect(face).to_have_attribute("src", re.compile(rf"/api/face/face/{team_face}\?"))
    await expect(face).to_have_js_property("complete", True, timeout=SLOW_MS)
    assert await face.evaluate("img => img.naturalWidth") > 0
    await screenshot(organiser, "people-organiser-split-dialog-phone", full_page=False)
    # the service answers slowly: Esc and Cancel leave the dialog open until it has, then the outcome shows
    answer = asyncio.Event()

    async def slow_split(route) -> None:
        await answer.wait()
        await route.continue_()

    await organiser.route(f"**/people/{yao['person_id']}/split", slow_split)
    await dialog.get_by_role("button", name="Take out").click()
    await expect(dialog.get_by_role("button", name="Cancel")).to_be_disabled()
    for _ in range(2):  # Chromium closes on a second Esc even when the first's cancel was prevented
        await organiser.keyboard.press("Escape")
    await expect(dialog).to_be_visible()
    answer.set()
    await expect(dialog).to_be_hidden()
    await organiser.unroute(f"**/people/{yao['person_id']}/split")
    await expect(view.locator(".people-status")).to_have_text(re.compile("Taken out"))
    await expect(view.locator(".person-title")).to_be_focused()  # its card's button went with the face
    await expect(view.locator("li.match")).to_have_count(1)
    await expect(view.locator("li.match")).to_have_attribute("data-image-id", str(event["yaoming.jpg"]))
    await expect(view.get_by_role("button", name="Not this person")).to_have_count(0)  # his last face stays
    _, left = await photos_of(client, session_id, yao["person_id"])
    assert [p["image_id"] for p in left] == [event["yaoming.jpg"]]
    split_off = await person_of_face(client, session_id, team_face)
    assert split_off is not None and split_off != yao["person_id"]

    # back on the grid, by keyboard: select him and the face taken out, merge them again
    await view.get_by_role("button", name="All people", exact=True).press("Enter")  # the arrow is not read
    grid = section.locator(".people-grid-view")
    await expect(grid).to_be_visible()
    # the new person (one photo, the newest id) is listed last, past the first page
    await grid.get_by_role("button", name="More people").click()
    await expect(section.locator(f'.person[data-person-id="{split_off}"]')).to_be_visible()
    for person_id in (yao["person_id"], split_off):
        await section.locator(f'.person[data-person-id="{person_id}"] input[type=checkbox]').press("Space")
    merge_bar = section.locator(".merge-bar")
    await expect(merge_bar.get_by_role("status")).to_have_text("2 people selected")
    # two at a time: every other person's box is off
    await expect(section.locator(".person:not(.selected) input[type=checkbox]:enabled")).to_have_count(0)
    await organiser.set_viewport_size(DESKTOP)
    await screenshot(organiser, "people-organiser-selected-desktop")
    await organiser.set_viewport_size(PHONE)
    await screenshot(organiser, "people-organiser-selected-phone")
    await section.locator(".person").nth(3).scroll_into_view_if_needed()
    await expect(merge_bar).to_be_in_viewport()  # in reach while the grid scrolls
    await screenshot(organiser, "people-organiser-selected-screen-phone", full_page=False)
    await merge_bar.get_by_role("button", name="Merge").press("Enter")
    await expect(dialog.locator("#confirm-title")).to_have_text("Merge these two people?")
    await expect(dialog.locator(".pair img")).to_have_count(2)
    await organiser.keyboard.press("Tab")  # Cancel -> Merge
    await expect(dialog.locator("#confirm-ok")).to_be_focused()
    await organiser.keyboard.press("Enter")
    await expect(dialog).to_be_hidden()
    await expect(grid.locator(".people-status")).to_have_text("Merged: one person in 2 photos.")
    # the merge bar went with the selection: focus is on the person both became
    await expect(section.locator(f'.person[data-person-id="{yao["person_id"]}"] .person-open')).to_be_focused()
    # the API agrees: one person in both photos again, the other gone
    status, merged = await photos_of(client, session_id, yao["person_id"])
    assert status == 200
    assert {p["image_id"] for p in merged} == {event["players.jpg"], event["yaoming.jpg"]}
    assert (await photos_of(client, session_id, split_off))[0] == 404
    assert (await shown_ids(section))[0] == yao["person_id"]
    assert split_off not in await shown_ids(section)
    await expect(section.locator(".person").first.locator(".count")).to_have_text("2 photos")

    # another organiser merges two people while this page still shows both: the service's refusal is shown
    first, second = (await listed(client, session_id))[1:3]
    for person in (first, second):
        await section.locator(f'.person[data-person-id="{person["person_id"]}"] .pick').click()
    await merge_bar.get_by_role("button", name="Merge").click()
    await expect(dialog).to_be_visible()
    response = await client.post(
        f"/api/face/sessions/{session_id}/people/{first['person_id']}/merge", json={"other": second["person_id"]}
    )
    assert response.status == 200
    await dialog.get_by_role("button", name="Merge").click()
    await expect(dialog.locator("#confirm-error")).to_have_text(
        f"person {second['person_id']} does not exist in session {session_id}"
    )
    await screenshot(organiser, "people-organiser-refused-phone", full_page=False)
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(dialog).to_be_hidden()
    # and the grid is as the service has it now
    await expect(section.locator(f'.person[data-person-id="{second["person_id"]}"]')).to_have_count(0)
    await expect(section.locator(f'.person[data-person-id="{first["person_id"]}"]')).to_have_count(1)

    assert problems.seen == []
    path = f"/api/face/sessions/{session_id}/people/{first['person_id']}/merge"
    assert problems.answers == [(404, path)]
