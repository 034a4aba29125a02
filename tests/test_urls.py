"""Image URLs behind a CDN and signed URLs with key rotation."""

from __future__ import annotations

import time
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import pytest
from helpers import create_session, search, upload

from faceserve.app import create_app
from faceserve.core import signing

KEY_NEW = "k2:" + "n" * 32
KEY_OLD = "k1:" + "o" * 32


@pytest.fixture
async def cdn_client(settings, engine, aiohttp_client):
    configured = replace(settings, cdn_base_url="https://cdn.example.com/", cdn_origin_secret="pull-secret")
    return await aiohttp_client(create_app(configured, engine))


@pytest.fixture
async def signed_client(settings, engine, aiohttp_client):
    configured = replace(settings, signing_keys=f"{KEY_NEW},{KEY_OLD}", signed_url_ttl=3600)
    return await aiohttp_client(create_app(configured, engine))


async def test_cdn_urls_and_origin_redirect(cdn_client, photos):
    session_id = await create_session(cdn_client)
    [image] = await upload(cdn_client, session_id, ("yao.jpg", photos["yaoming"].read_bytes()))
    path = f"/api/face/image/{image['image_id']}"
    assert image["url"] == "https://cdn.example.com" + path
    _, body = await search(cdn_client, session_id, photos["yaoming"].read_bytes())
    assert body["data"]["matches"][0]["url"] == image["url"]

    response = await cdn_client.get(path, allow_redirects=False)
    assert response.status == 308
    assert response.headers["Location"] == image["url"]
    assert response.headers["Cache-Control"].startswith("public, max-age=")
    response = await cdn_client.get(path, headers={"X-Origin-Pull": "pull-secret"})
    assert response.status == 200 and await response.read() == photos["yaoming"].read_bytes()
    response = await cdn_client.get(path, headers={"X-Origin-Pull": "wrong"}, allow_redirects=False)
    assert response.status == 308


async def test_without_cdn_nothing_changes(client, photos):
    session_id = await create_session(client)
    [image] = await upload(client, session_id, ("yao.jpg", photos["yaoming"].read_bytes()))
    assert urlsplit(image["url"]).netloc == f"{client.server.host}:{client.server.port}"
    assert urlsplit(image["url"]).query == ""


async def test_urls_and_redirects_never_follow_the_host_header(client, photos):
    """Without PUBLIC_BASE_URL the base is the address the connection reached, whatever Host says."""
    session_id = await create_session(client)
    [image] = await upload(client, session_id, ("yao.jpg", photos["yaoming"].read_bytes()))
    ours = f"{client.server.host}:{client.server.port}"
    evil = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
    listing = await (await client.get(f"/api/face/sessions/{session_id}/images", headers=evil)).json()
    assert urlsplit(listing["data"]["images"][0]["url"]).netloc == ours
    response = await client.get(f"/storage/face_sessions/{image['identity']}", headers=evil, allow_redirects=False)
    assert response.status == 301
    assert urlsplit(response.headers["Location"]).netloc == ours


def _path_qs(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def test_signed_urls(signed_client, photos):
    session_id = await create_session(signed_client)
    [image] = await upload(signed_client, session_id, ("yao.jpg", photos["yaoming"].read_bytes()))
    query = parse_qs(urlsplit(image["url"]).query)
    assert query["kid"] == ["k2"]  # the first key signs
    expires = int(query["exp"][0])
    assert time.time() + 3600 <= expires <= time.time() + 3600 + 600

    response = await signed_client.get(_path_qs(image["url"]))
    assert response.status == 200
    max_age = int(response.headers["Cache-Control"].split("max-age=")[1].split(",")[0])
    assert 3600 - 5 <= max_age <= expires - time.time() + 1  # never outlives the signature

    path = f"/api/face/image/{image['image_id']}"
    signed = _path_qs(image["url"])
    tampered = signed[:-1] + ("1" if signed.endswith("0") else "0")
    for bad in (path, tampered, f"{path}?exp={expires}&kid=k9&sig=00"):
        response = await signed_client.get(bad)
        assert response.status == 403, bad
        body = await response.json()
        assert body["error"]["code"] == "bad_signature"
        assert response.headers["Cache-Control"] == "no-store"
    # the signature covers the path: another image's id with this signature is refused
    response = await signed_client.get(f"/api/face/image/{image['image_id'] + 1}?{urlsplit(image['url']).query}")
    assert response.status == 403


async def test_rotated_and_expired_keys(signed_client, photos):
    session_id = await create_session(signed_client)
    [image] = await upload(signed_client, session_id, ("yao.jpg", photos["yaoming"].read_bytes()))
    path = f"/api/face/image/{image['image_id']}"
    old = signing.SigningKeys.parse(KEY_OLD)
    response = await signed_client.get(f"{path}?{signing.sign(old, path, int(time.time()) + 60)}")
    assert response.status == 200  # URLs signed with the previous key still work
    assert "max-age=" in response.headers["Cache-Control"]
    assert int(response.headers["Cache-Control"].split("max-age=")[1].split(",")[0]) <= 60
    response = await signed_client.get(f"{path}?{signing.sign(old, path, int(time.time()) - 1)}")
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "signature_expired"
    retired = signing.SigningKeys.parse("k0:" + "r" * 32)
    response = await signed_client.get(f"{path}?{signing.sign(retired, path, int(time.time()) + 60)}")
    assert response.status == 403


def test_signing_keys_and_expiry():
    with pytest.raises(ValueError):
        signing.SigningKeys.parse("nokey")
    with pytest.raises(ValueError):
        signing.SigningKeys.parse("k:short")
    assert signing.expiry(1200, 3600, 600) == 4800
    assert signing.expiry(1201, 3600, 600) == 5400
