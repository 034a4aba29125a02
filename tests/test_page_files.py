"""How / and /static/ are served: the page revalidated on each load, its files under a release folder cached
for a year, an old release's folder a 404, and JavaScript under a type browsers run as a module."""

from __future__ import annotations

import json
import re
from dataclasses import replace

from aiohttp.test_utils import TestClient

from faceserve.config import Settings
from faceserve.http import page


async def _static_base(client: TestClient) -> str:
    html = await (await client.get("/")).text()
    found = re.search(r'src="(/static/[0-9a-f]{12})/app\.js"', html)
    assert found, html
    return found[1]


async def test_the_page_is_revalidated_and_needs_no_key(client, settings):
    response = await client.get("/")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["Referrer-Policy"] == "no-referrer"
    html = await response.text()
    # the widths the service renders reach the page, so it never asks for a ?w= that is a 400
    assert f'content="{json.dumps(list(settings.derivative_sizes))}"' in html
    again = await client.get("/", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status == 304
    assert await again.read() == b""
    head = await client.head("/")
    assert head.status == 200 and head.headers["ETag"] == response.headers["ETag"]


async def test_the_files_of_this_release_are_immutable(client):
    base = await _static_base(client)
    types = {
        "app.js": "text/javascript; charset=utf-8",
        "api.js": "text/javascript; charset=utf-8",
        "guest.js": "text/javascript; charset=utf-8",
        "organiser.js": "text/javascript; charset=utf-8",
        "ui.js": "text/javascript; charset=utf-8",
        "cards.js": "text/javascript; charset=utf-8",
        "dialog.js": "text/javascript; charset=utf-8",
        "people.js": "text/javascript; charset=utf-8",
        "app.css": "text/css; charset=utf-8",
        "icon.svg": "image/svg+xml",
    }
    for name, content_type in types.items():
        response = await client.get(f"{base}/{name}")
        assert response.status == 200, name
        assert response.headers["Content-Type"] == content_type
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert await response.read() == (page.STATIC_DIR / name).read_bytes()
        revalidated = await client.get(f"{base}/{name}", headers={"If-None-Match": response.headers["ETag"]})
        assert revalidated.status == 304


async def test_other_releases_and_unknown_files_are_404_json(client):
    base = await _static_base(client)
    for path in (
        "/static/000000000000/app.js",
        f"{base}/nope.js",
        f"{base}/index.html",
        f"{base}/..%2Fapp.py",
    ):
        response = await client.get(path)
        assert response.status == 404, path
        assert (await response.json())["success"] is False
        assert response.headers["Cache-Control"] == "no-store"


def test_the_release_folder_changes_with_any_file(tmp_path, settings: Settings):
    for name in ("index.html", "app.js"):
        (tmp_path / name).write_bytes((page.STATIC_DIR / name).read_bytes())
    first = page.load(settings, tmp_path)
    (tmp_path / "app.js").write_bytes(b"// changed\n" + (tmp_path / "app.js").read_bytes())
    second = page.load(settings, tmp_path)
    assert first.version != second.version
    assert f"/static/{second.version}/app.js".encode() in second.index.body


def test_a_cdn_for_images_is_allowed_by_the_page_policy(settings: Settings):
    policy = page.load(replace(settings, cdn_base_url="https://cdn.example.com/photos")).headers
    assert "img-src 'self' blob: https://cdn.example.com;" in policy["Content-Security-Policy"]
