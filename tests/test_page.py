"""The web page at /, in a real browser: Debian's Chromium, headless, driven by Playwright against the app
served on a real port with the real models and database.

An organiser creates an event and uploads the shipped photos and a text file through the page (the text
file's error shows on its own row); the guest link opens in a fresh browser profile, a selfie of Yao Ming
is searched, and players.jpg is what the page shows, as a lazily loaded ?w= thumbnail.

Set FACESERVE_SCREENSHOTS=/some/dir to save what the browser showed at each width (kept out of the repo).
"""

from __future__ import annotations

import base64
import re
from urllib.parse import unquote

import pytest
from chromium import (
    CHROMIUM,
    DESKTOP,
    PHONE,
    SLOW_MS,
    admin_key,
    api_headers,
    open_page,
    page_url,
    screenshot,
)

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed at /usr/bin/chromium (.ci/run installs it)",
)


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
async def test_an_organiser_uploads_and_a_guest_finds_their_photos(
    client, browser, photos, tmp_path, viewport, settings
):
    from playwright.async_api import expect

    width = "phone" if viewport == PHONE else "desktop"
    base = str(client.make_url("/"))
    organiser, organiser_problems = await open_page(browser, page_url(client, settings), viewport)

    await organiser.fill("#session-name", "Basketball night")
    await organiser.click("#create-form button[type=submit]")
    await expect(organiser.locator("#manage-title")).to_have_text("Basketball night")
    session_id = int(re.fullmatch(r"#manage=(\d+)", await organiser.evaluate("location.hash"))[1])

    not_a_photo = tmp_path / "notes.txt"
    not_a_photo.write_text("the seating plan, not a photo\n")
    await organiser.set_input_files(
        "#pick-files", [photos["players"], photos["gdp"], photos["t1"], not_a_photo]
    )
    rows = organiser.locator("#uploads li")
    await expect(rows.and_(organiser.locator(".done, .failed"))).to_have_count(4, timeout=SLOW_MS)
    await expect(organiser.locator('#uploads li[data-name="notes.txt"]')).to_have_class(
        re.compile(r"\bfailed\b")
    )
    # the service's own 415 message, on that file's row only
    await expect(organiser.locator('#uploads li[data-name="notes.txt"] .state')).to_contain_text("not")
    for name, faces in (("players.jpg", r"\d+ faces"), ("gdp.jpg", r"\d+ faces?"), ("t1.jpg", r"6 faces")):
        row = organiser.locator(f'#uploads li[data-name="{name}"]')
        await expect(row).to_have_class(re.compile(r"\bdone\b"))
        await expect(row.locator(".state")).to_have_text(re.compile(faces))
    await expect(organiser.locator("#upload-summary")).to_have_text("3 of 4 uploaded · 1 failed")
    await expect(organiser.locator("#manage-counts")).to_have_text(re.compile(r"^3 photos, \d+ faces$"))
    await screenshot(organiser, f"organiser-{width}")

    await organiser.click("#copy-link")
    await expect(organiser.locator("#guest-link")).to_be_visible()
    guest_link = await organiser.input_value("#guest-link")
    if admin_key(settings) is None:
        assert guest_link == f"{base}#session={session_id}"  # a service without keys: the event id is enough
    else:
        # a new key that can only search this event, never the organiser's own
        guest_key = unquote(
            re.fullmatch(rf"{re.escape(base)}#session={session_id}&key=([^&]+)", guest_link)[1]
        )
        assert guest_key != admin_key(settings)
        refused = await client.post(
            "/api/face/sessions", json={"name": "x"}, headers={"Authorization": f"Bearer {guest_key}"}
        )
        assert refused.status == 403
    await screenshot(organiser, f"organiser-link-{width}")

    guest, guest_problems = await open_page(browser, guest_link, viewport)
    await expect(guest.locator("#guest-title")).to_have_text("Find your photos of Basketball night")
    await screenshot(guest, f"guest-start-{width}")
    await guest.set_input_files("#selfie", photos["yaoming"])
    await expect(guest.locator("#search-status")).to_have_text(
        re.compile("You are in 1 photo"), timeout=SLOW_MS
    )

    listed = await client.get(f"/api/face/sessions/{session_id}/images", headers=api_headers(settings))
    by_name = {i["original_name"]: i for i in (await listed.json())["data"]["images"]}
    match = guest.locator("#matches li")
    await expect(match).to_have_count(1)
    await expect(match).to_have_attribute("data-image-id", str(by_name["players.jpg"]["image_id"]))
    thumbnail = match.locator("img")
    await expect(thumbnail).to_have_attribute("loading", "lazy")
    await thumbnail.scroll_into_view_if_needed()
    # the file the browser picked from srcset is a resized copy: the service rendered it, it decoded
    await expect(thumbnail).to_have_js_property("complete", True, timeout=SLOW_MS)
    # naturalWidth is scaled by the srcset density: fetch the file the browser chose and decode it
    shown = await thumbnail.evaluate(
        "async img => [img.currentSrc, (await createImageBitmap(await (await fetch(img.currentSrc)).blob())).width]"
    )
    width_asked = re.search(r"[?&]w=(\d+)$", shown[0])
    assert width_asked and int(width_asked[1]) in (320, 640), shown
    assert shown[1] == int(width_asked[1]), shown
    original = by_name["players.jpg"]["url"]
    await expect(match.locator("a", has_text="Open")).to_have_attribute("href", original)
    await expect(match.locator("a", has_text="Download")).to_have_attribute("href", original)
    await screenshot(guest, f"guest-found-{width}")

    assert organiser_problems.seen == []
    assert organiser_problems.answers == [(415, f"/api/face/sessions/{session_id}/images")]  # notes.txt
    assert guest_problems.seen == []
    assert guest_problems.answers == []


async def test_a_selfie_without_a_face_says_so(client, browser, photos, tmp_path, settings):
    from playwright.async_api import expect

    response = await client.post(
        "/api/face/sessions", json={"name": "empty hall"}, headers=api_headers(settings)
    )
    session_id = (await response.json())["data"]["id"]
    blank = tmp_path / "wall.png"
    from PIL import Image

    Image.new("RGB", (400, 300), (200, 180, 160)).save(blank)
    guest, problems = await open_page(browser, page_url(client, settings, session=session_id), PHONE)
    await guest.set_input_files("#selfie", blank)
    await expect(guest.locator("#search-status")).to_have_text(re.compile("No face found"), timeout=SLOW_MS)
    await expect(guest.locator("#matches li")).to_have_count(0)
    assert problems.seen == []
    assert problems.answers == [(422, "/api/face/search")]


async def test_a_selfie_with_two_faces_offers_each_and_both(client, browser, photos, engine, tmp_path, settings):
    import aiohttp
    import cv2
    from playwright.async_api import expect
    from selfies import jpeg, side_by_side, two_faces

    headers = api_headers(settings)
    response = await client.post("/api/face/sessions", json={"name": "wedding"}, headers=headers)
    session_id = (await response.json())["data"]["id"]
    players, t1 = cv2.imread(str(photos["players"])), cv2.imread(str(photos["t1"]))
    for name, data in (("players.jpg", photos["players"].read_bytes()), ("both.jpg", jpeg(side_by_side(players, t1)))):
        form = aiohttp.FormData()
        form.add_field("file", data, filename=name)
        assert (await client.post(f"/api/face/sessions/{session_id}/images", data=form, headers=headers)).status == 201
    selfie = tmp_path / "us.jpg"
    selfie.write_bytes(jpeg(two_faces(engine, cv2.imread(str(photos["yaoming"])), t1)))
    guest, problems = await open_page(browser, page_url(client, settings, session=session_id), PHONE)
    await guest.set_input_files("#selfie", selfie)
    await expect(guest.locator("#search-status")).to_have_text(re.compile("You are in 2 photos"), timeout=SLOW_MS)
    choices = guest.locator("#probe-faces button")
    await expect(choices).to_have_text(["Face 1", "Face 2", "Photos with all of us"])
    await expect(choices.nth(0)).to_have_attribute("aria-pressed", "true")
    await choices.nth(2).click()
    await expect(guest.locator("#search-status")).to_have_text("You are together in 1 photo.", timeout=SLOW_MS)
    await expect(guest.locator("#matches li")).to_have_count(1)
    await guest.locator("#probe-faces button").nth(1).click()  # the partner: only in both.jpg
    await expect(guest.locator("#search-status")).to_have_text(re.compile("You are in 1 photo"), timeout=SLOW_MS)
    await expect(guest.locator("#probe-faces button").nth(1)).to_have_attribute("aria-pressed", "true")
    assert problems.seen == [] and problems.answers == []


async def test_a_blurred_selfie_asks_to_hold_the_phone_still(client, browser, photos, engine, tmp_path, settings):
    import cv2
    from playwright.async_api import expect
    from selfies import closeup

    response = await client.post("/api/face/sessions", json={"name": "gala"}, headers=api_headers(settings))
    session_id = (await response.json())["data"]["id"]
    pixels = cv2.imread(str(photos["yaoming"]))
    shaken = tmp_path / "shaken.jpg"
    # a hand shaking sideways: each pixel the mean of 61 in its row
    cv2.imwrite(str(shaken), cv2.blur(closeup(pixels, engine.detect(pixels)[0][0], 0.5), (61, 1)))
    guest, problems = await open_page(browser, page_url(client, settings, session=session_id), PHONE)
    await guest.set_input_files("#selfie", shaken)
    await expect(guest.locator("#search-status")).to_have_text(
        re.compile("Hold the phone still"), timeout=SLOW_MS
    )
    assert problems.answers == [(422, "/api/face/search")]


async def test_a_key_in_a_link_goes_out_as_a_bearer_header_and_never_in_a_url(client, browser):
    from playwright.async_api import expect

    async def visit(fragment: str):
        page = await (await browser.new_context(viewport=PHONE)).new_page()  # a fresh profile each
        sent: list[tuple[str, str | None]] = []
        page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
        await page.goto(str(client.make_url(f"/#{fragment}")))
        assert await page.evaluate("sessionStorage.getItem('faceserve.key')") == "fs_test_secret"
        # an answer came back: the list, event 5 missing, or (with access control on) a refused made-up key
        return page, sent

    # an organiser's link: the key leaves the address bar (not copied along, not in a screenshot)
    organiser, sent = await visit("key=fs_test_secret")
    await expect(organiser.locator("#organiser")).to_be_visible()
    assert await organiser.evaluate("location.hash") == ""
    await organiser.wait_for_load_state("networkidle")
    assert [header for url, header in sent if url.endswith("/api/face/sessions")] == ["Bearer fs_test_secret"]

    # a guest link stays whole, so a guest can bookmark it and come back for the later photos
    guest, sent = await visit("session=5&key=fs_test_secret")
    await expect(guest.locator("#guest")).to_be_visible()
    assert await guest.evaluate("location.hash") == "#session=5&key=fs_test_secret"
    notice = guest.locator("#notice")
    await expect(notice).to_contain_text(re.compile("does not exist|was refused"))
    if "does not exist" in await notice.inner_text():
        await expect(guest.locator("#selfie-button")).to_be_hidden()  # nothing to search
    api_calls = [header for url, header in sent if "/api/face/" in url]
    assert api_calls and all(header == "Bearer fs_test_secret" for header in api_calls)
    # fragments are not sent: the key never travels in a URL the server sees
    assert not any("fs_test_secret" in url for url, _ in sent)
    await guest.click("#key-summary")
    await expect(guest.locator("#key-summary")).to_have_text("Key in use")
    await screenshot(guest, "guest-key-panel-phone")


async def test_thumbnail_urls_keep_the_signed_query_as_it_came(client, browser, settings):
    page, _ = await open_page(browser, str(client.make_url("/")), PHONE)
    module = await page.evaluate("document.querySelector('script[type=module]').src")
    api_module = module.rsplit("/", 1)[0] + "/api.js"
    results = await page.evaluate(
        """async (src) => {
            const { withWidth, pickWidth, derivativeSizes } = await import(src);
            return {
                plain: withWidth("http://h/api/face/image/7", 320),
                signed: withWidth("http://h/api/face/image/7?exp=1700000400&kid=k1&sig=ab%2Fcd", 320),
                trailing: withWidth("http://h/api/face/image/7?", 640),
                fragment: withWidth("http://h/api/face/image/7?exp=1#x", 320),
                sizes: derivativeSizes(),
                wanted: pickWidth(derivativeSizes(), 300),
                beyond: pickWidth(derivativeSizes(), 100000),
            };
        }""",
        api_module,
    )
    assert results["plain"] == "http://h/api/face/image/7?w=320"
    assert results["signed"] == "http://h/api/face/image/7?exp=1700000400&kid=k1&sig=ab%2Fcd&w=320"
    assert results["trailing"] == "http://h/api/face/image/7?w=640"
    assert results["fragment"] == "http://h/api/face/image/7?exp=1&w=320#x"
    assert results["sizes"] == sorted(settings.derivative_sizes)
    assert results["wanted"] == 320
    assert results["beyond"] == max(results["sizes"])


async def test_dropped_files_upload_one_request_each_and_hidden_files_stay_out(
    client, browser, photos, settings
):
    from playwright.async_api import expect

    response = await client.post(
        "/api/face/sessions", json={"name": "dropped"}, headers=api_headers(settings)
    )
    session_id = (await response.json())["data"]["id"]
    organiser, problems = await open_page(browser, page_url(client, settings, manage=session_id), PHONE)
    await expect(organiser.locator("#manage-title")).to_have_text("dropped")
    uploads: list[str] = []
    organiser.on("request", lambda r: r.method == "POST" and "/images" in r.url and uploads.append(r.url))
    # what a desktop drag of a folder delivers: photos plus the file manager's hidden litter
    await organiser.evaluate(
        """([gdp, t1]) => {
            const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes(gdp)], "gdp.jpg", { type: "image/jpeg" }));
            transfer.items.add(new File([bytes(t1)], "t1.jpg", { type: "image/jpeg" }));
            transfer.items.add(new File(["x"], ".DS_Store"));
            const drop = document.getElementById("drop");
            drop.dispatchEvent(new DragEvent("dragover", { dataTransfer: transfer, bubbles: true, cancelable: true }));
            drop.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }""",
        [base64.b64encode(photos[name].read_bytes()).decode() for name in ("gdp", "t1")],
    )
    await expect(organiser.locator("#uploads li.done")).to_have_count(2, timeout=SLOW_MS)
    await expect(organiser.locator("#uploads li")).to_have_count(2)
    assert len(uploads) == 2  # one request per file
    await expect(organiser.locator("#manage-counts")).to_have_text(re.compile(r"^2 photos, "))
    assert problems.seen == [] and problems.answers == []


async def test_a_large_selfie_is_sent_smaller_and_still_finds_the_photo(
    client, browser, photos, tmp_path, settings
):
    import aiohttp
    from PIL import Image
    from playwright.async_api import expect

    headers = api_headers(settings)
    response = await client.post("/api/face/sessions", json={"name": "big selfie"}, headers=headers)
    session_id = (await response.json())["data"]["id"]
    form = aiohttp.FormData()
    form.add_field("file", photos["players"].read_bytes(), filename="players.jpg")
    assert (
        await client.post(f"/api/face/sessions/{session_id}/images", data=form, headers=headers)
    ).status == 201
    # what a phone's camera makes: many pixels, little compression
    selfie = tmp_path / "selfie.jpg"
    with Image.open(photos["yaoming"]) as small:
        small.resize((small.width * 10, small.height * 10), Image.LANCZOS).save(selfie, quality=98)
    searches = []
    guest, problems = await open_page(browser, page_url(client, settings, session=session_id), PHONE)
    guest.on("request", lambda r: r.url.endswith("/api/face/search") and searches.append(r))
    await guest.set_input_files("#selfie", selfie)
    await expect(guest.locator("#search-status")).to_have_text(
        re.compile("You are in 1 photo"), timeout=SLOW_MS
    )
    sent = int((await searches[0].all_headers())["content-length"])
    assert sent < selfie.stat().st_size / 3, (sent, selfie.stat().st_size)
    assert problems.seen == [] and problems.answers == []


async def test_each_file_shows_its_upload_progress_while_the_bytes_go(client, browser, photos, settings):
    from playwright.async_api import expect

    response = await client.post("/api/face/sessions", json={"name": "slow"}, headers=api_headers(settings))
    session_id = (await response.json())["data"]["id"]
    organiser, problems = await open_page(browser, page_url(client, settings, manage=session_id), PHONE)
    await expect(organiser.locator("#manage-title")).to_have_text("slow")
    # a phone on a poor connection: players.jpg (366 KB) takes about 3 s to go up
    cdp = await organiser.context.new_cdp_session(organiser)
    await cdp.send("Network.enable")
    await cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 20, "downloadThroughput": -1, "uploadThroughput": 120_000},
    )
    await organiser.set_input_files("#pick-files", [photos["players"], photos["gdp"]])
    row = organiser.locator('#uploads li[data-name="players.jpg"]')
    await expect(row.locator(".state")).to_have_text(re.compile(r"^uploading [1-9]\d?%$"), timeout=SLOW_MS)
    fraction = float(await row.locator("progress").get_attribute("value"))
    assert 0 < fraction < 1
    await screenshot(organiser, "organiser-uploading-phone")
    await expect(organiser.locator("#uploads li.done")).to_have_count(2, timeout=SLOW_MS)
    assert problems.seen == [] and problems.answers == []
