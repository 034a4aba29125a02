"""FACESERVE_ACCEL_REDIRECT: which answers a node hands to nginx (X-Accel-Redirect, no body) and which it
still sends itself. The answers through a real nginx are compared with direct ones in tests/test_fleet.py."""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest
from helpers import IMAGE_STORES, create_session, upload

from faceserve.app import create_app
from faceserve.core import signing
from faceserve.http.appkeys import SERVICES, URLS

PREFIX = "/_faceserve_files/"
ASKED = {"X-Sendfile-Type": "X-Accel-Redirect"}


@pytest.fixture(params=IMAGE_STORES)
def image_store(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def accel_client(settings, engine, aiohttp_client):
    return await aiohttp_client(create_app(replace(settings, accel_redirect=PREFIX), engine))


async def test_what_is_handed_to_nginx_and_what_is_not(accel_client, photos, image_store):
    client = accel_client
    data = photos["t1"].read_bytes()
    [image] = await upload(client, await create_session(client), ("t1.jpg", data))
    url = f"/api/face/image/{image['image_id']}"
    direct = await client.get(url)
    etag = direct.headers["ETag"]
    assert await direct.read() == data  # not asked: the bytes, as without the setting
    assert "X-Accel-Redirect" not in direct.headers

    handed = await client.get(url, headers=ASKED)
    if image_store in ("postgres", "s3"):  # no file for nginx to send: the node streams the bytes
        assert "X-Accel-Redirect" not in handed.headers and await handed.read() == data
        return
    assert handed.status == 200 and await handed.read() == b""
    assert handed.headers["X-Accel-Redirect"] == PREFIX + image["identity"]
    for name in ("ETag", "Cache-Control", "Last-Modified", "Content-Type", "Accept-Ranges"):
        assert handed.headers[name] == direct.headers[name], name
    for extra in (
        {"Range": "bytes=10-19"},
        {"If-None-Match": '"other"'},
        {"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"},
    ):
        response = await client.get(url, headers={**ASKED, **extra})
        assert "X-Accel-Redirect" in response.headers, extra

    # answered by the node: no body at all, or requests nginx would judge by its own validators or rules
    for method, extra, status in (
        ("GET", {"If-None-Match": etag}, 304),
        ("GET", {"If-Match": '"nope"'}, 412),
        ("GET", {"If-Match": etag}, 200),
        ("GET", {"Range": "bytes=0-9", "If-Range": etag}, 206),
        ("GET", {"Range": f"bytes={len(data)}-"}, 416),
        ("GET", {"Range": "bytes=9-3"}, 200),
        ("GET", {"If-Unmodified-Since": direct.headers["Last-Modified"]}, 200),
        ("HEAD", {}, 200),
    ):
        response = await client.request(method, url, headers={**ASKED, **extra})
        assert response.status == status, extra
        assert "X-Accel-Redirect" not in response.headers, extra
    assert await (await client.get(url, headers={**ASKED, "If-Match": etag})).read() == data


async def test_resized_copies_and_crops_are_handed_off_too(accel_client, photos, image_store):
    client = accel_client
    session_id = await create_session(client)
    [image] = await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes()))
    pool = client.server.app[SERVICES].pool
    face_id = await pool.fetchval("SELECT min(id) FROM faces WHERE image_id = $1", image["image_id"])
    for path in (f"/api/face/image/{image['image_id']}?w=320", f"/api/face/face/{face_id}"):
        direct = await client.get(path)
        handed = await client.get(path, headers=ASKED)
        if image_store == "s3":  # an object's derivatives are objects: the S3 hand-off's (test_fleet_s3.py)
            assert "X-Accel-Redirect" not in handed.headers and await handed.read() == await direct.read()
            continue
        assert handed.headers["X-Accel-Redirect"].startswith(f"{PREFIX}{session_id}/derived/"), path
        assert await handed.read() == b""
        for name in ("ETag", "Content-Type", "Vary", "Cache-Control"):
            assert handed.headers[name] == direct.headers[name], (path, name)


@pytest.mark.parametrize("image_store", ["file"])  # bytes in Postgres are never handed off
async def test_a_file_seen_present_a_moment_ago_is_handed_off_without_opening_it(accel_client, photos, monkeypatch):
    """A cold request's hand-off costs the node no open() while the file was seen within SERVED_RECHECK_S
    (as answers without a body already did); after that the node looks again and a vanished file is a 404."""
    client = accel_client
    [image] = await upload(client, await create_session(client), ("t1.jpg", photos["t1"].read_bytes()))
    url = f"/api/face/image/{image['image_id']}"
    first = await client.get(url, headers=ASKED)  # the first look opens the file
    assert first.status == 200 and "X-Accel-Redirect" in first.headers
    services = client.server.app[SERVICES]
    path = services.storage.layout.sessions_root / image["identity"]
    opened: list[str] = []
    real_open = os.open

    def counting_open(name, *args, **kwargs):
        if str(name) == str(path):
            opened.append(str(name))
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    for _ in range(3):
        again = await client.get(url, headers=ASKED)
        for name in ("X-Accel-Redirect", "ETag", "Cache-Control", "Last-Modified", "Content-Type"):
            assert again.headers[name] == first.headers[name], name
    assert opened == []

    services.served.get(image["image_id"]).present_until = float("-inf")  # the window has passed
    path.unlink()  # gone behind the service's back
    gone = await client.get(url, headers=ASKED)
    assert gone.status == 404 and (await gone.json())["error"]["code"] == "image_not_found"
    assert opened == [str(path)]


@pytest.mark.parametrize("image_store", ["file"])
async def test_a_signed_hand_off_is_cached_no_longer_than_its_own_signature(settings, engine, aiohttp_client, photos):
    """The hand-off's headers are made once per image, but each signed URL's Cache-Control is its own."""
    client = await aiohttp_client(create_app(replace(settings, accel_redirect=PREFIX, public_images=False), engine))
    [image] = await upload(client, await create_session(client), ("t1.jpg", photos["t1"].read_bytes()))
    path = f"/api/face/image/{image['image_id']}"
    keys = client.server.app[URLS].keys
    for expires_in in (3600, 600, 7200):
        target = f"{path}?{signing.sign(keys, path, int(time.time()) + expires_in)}"
        handed = await client.get(target, headers=ASKED)
        assert handed.status == 200 and handed.headers["X-Accel-Redirect"] == PREFIX + image["identity"]
        max_age = int(handed.headers["Cache-Control"].removeprefix("public, max-age="))
        assert expires_in - 5 <= max_age <= expires_in, handed.headers["Cache-Control"]


def test_the_prefix_must_be_a_location_path():
    from faceserve.config import Settings, SettingsError

    with pytest.raises(SettingsError, match="FACESERVE_ACCEL_REDIRECT"):
        Settings(accel_redirect="_faceserve_files")
