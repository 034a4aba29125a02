"""Debian's Chromium driven headless by Playwright, as the page's tests use it: launch arguments, screen
sizes, a watcher of what went wrong in a page, the organiser's key and URLs, screenshots on request."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlencode, urlsplit

CHROMIUM = Path("/usr/bin/chromium")
# Playwright's own browser download does not work here; the system Chromium, without the parts that
# reach the network or need a GPU or a sandbox (CI runs as root in a container)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
# an upload finds faces on 2 CPU cores shared with other work: generous, it only bounds a hang
SLOW_MS = 120_000

class Problems:
    """Console errors, uncaught exceptions, failed requests and error answers of a page: a CSP violation,
    a broken module or a missing file shows here even when the page still looks right."""

    def __init__(self, page) -> None:
        self.seen: list[str] = []
        self.answers: list[tuple[int, str]] = []  # (status, path) of every answer >= 400
        # Chromium logs each error answer as "Failed to load resource"; those are in answers, with their path
        page.on(
            "console",
            lambda m: (
                m.type == "error"
                and not m.text.startswith("Failed to load resource")
                and self.seen.append(f"console: {m.text}")
            ),
        )
        page.on("pageerror", lambda e: self.seen.append(f"exception: {e}"))
        page.on("requestfailed", lambda r: self.seen.append(f"request failed: {r.url} {r.failure}"))
        page.on(
            "response", lambda r: r.status >= 400 and self.answers.append((r.status, urlsplit(r.url).path))
        )


def admin_key(settings) -> str | None:
    """The admin key the service writes at its first start once access control is on (API.md: the file
    <storage>/admin-key); None while it runs without keys, when the page and the API need none."""
    path = settings.storage / "admin-key"
    return path.read_text().strip() if path.exists() else None


def page_url(client, settings, **fragment: object) -> str:
    """The page, with the admin key in the fragment when the service has keys (as an organiser gets it)."""
    key = admin_key(settings)
    params = {**({"key": key} if key else {}), **fragment}
    return str(client.make_url("/")) + (f"#{urlencode(params)}" if params else "")


def api_headers(settings) -> dict[str, str]:
    key = admin_key(settings)
    return {"Authorization": f"Bearer {key}"} if key else {}


async def open_page(browser, url: str, viewport: dict[str, int]):
    context = await browser.new_context(viewport=viewport)  # a fresh profile: no sessionStorage, no cache
    page = await context.new_page()
    problems = Problems(page)
    await page.goto(url)
    return page, problems


async def screenshot(page, name: str, full_page: bool = True) -> None:
    """Light and dark, only when FACESERVE_SCREENSHOTS names a folder; the whole page, or (full_page=False)
    the screen as it is, where what sticks to its edge matters."""
    folder = os.environ.get("FACESERVE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=full_page)
        await page.emulate_media(color_scheme="dark")
        await page.screenshot(path=str(Path(folder) / f"{name}-dark.png"), full_page=full_page)
        await page.emulate_media(color_scheme="light")
