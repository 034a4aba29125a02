"""/docs in Chromium: the contract's Markdown shows as text with code spans (no stray backticks), and
"Try it" sends a call with the key given on the page, as a person checking the API would."""

from __future__ import annotations

import re

import pytest
from chromium import CHROMIUM, DESKTOP, PHONE, admin_key, open_page, screenshot

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed at /usr/bin/chromium (.ci/run installs it)",
)


@pytest.fixture
def public_images() -> bool:
    return False


async def test_docs_render_markdown_and_try_a_call_with_a_key(client, browser, settings):
    from playwright.async_api import expect

    page, problems = await open_page(browser, str(client.make_url("/docs")), DESKTOP)
    description = page.locator("#description")
    await expect(description.locator("code").first).to_be_visible()
    assert "`" not in await description.inner_text()
    assert "`" not in await page.locator("#operations").inner_text()

    create = page.locator("details#createSession")
    await create.locator("summary").click()
    await create.locator("textarea").fill('{"name": "from the docs"}')
    await create.locator("button", has_text="Send").click()
    await expect(create.locator(".answer")).to_contain_text("401")  # no key yet: refused, and said so

    await page.fill("#key", admin_key(settings))
    await page.click("#key-form button")
    await create.locator("button", has_text="Send").click()
    answer = create.locator(".answer")
    await expect(answer).to_contain_text(re.compile(r"POST /api/face/sessions\n201 Created"))
    await expect(answer).to_contain_text('"name": "from the docs"')
    show = page.locator("details#showSession")
    await show.locator("summary").click()
    session_id = re.search(r'"id": (\d+)', await answer.inner_text())[1]
    await show.locator("input[name=session_id]").fill(session_id)
    await show.locator("button", has_text="Send").click()
    await expect(show.locator(".answer")).to_contain_text(f"GET /api/face/sessions/{session_id}\n200 OK")
    await screenshot(page, "docs-try-desktop", full_page=False)
    await page.set_viewport_size(PHONE)
    await screenshot(page, "docs-try-phone", full_page=False)
    assert problems.seen == []
    assert problems.answers == [(401, "/api/face/sessions")]
