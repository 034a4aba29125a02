"""Signed image URLs by default: keys the service makes and keeps in Postgres, every returned url signed,
only the exact signed spelling verifies, rotation and retirement, and the public-images opt-out."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from faceserve.app import create_app
from faceserve.cli import main as cli_main
from faceserve.core import signing
from faceserve.http import access
from faceserve.http.appkeys import SERVICES, URLS


@pytest.fixture
def public_images() -> bool:
    return False


def _path_qs(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def _fetch(client, target: str, **kwargs) -> tuple[int, bytes]:
    """Without the client's API key: a signed URL must be enough on its own. The target is sent verbatim."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(URL(f"http://{client.server.host}:{client.server.port}{target}", encoded=True), **kwargs) as response,
    ):
        return response.status, await response.read()


@pytest.fixture
async def uploaded(client, photos):
    response = await client.post("/api/face/sessions", json={"name": "event"})
    session_id = (await response.json())["data"]["id"]
    form = aiohttp.FormData()
    form.add_field("file", photos["players"].read_bytes(), filename="players.jpg", content_type="image/jpeg")
    response = await client.post(f"/api/face/sessions/{session_id}/images", data=form)
    [image] = (await response.json())["data"]["images"]
    return session_id, image


def _is_signed(url: str) -> bool:
    return list(parse_qs(urlsplit(url).query)) == ["exp", "kid", "sig"]


async def test_every_returned_url_is_signed_and_works_without_a_key(client, uploaded, photos):
    session_id, image = uploaded
    players = photos["players"].read_bytes()
    assert _is_signed(image["url"])
    assert await _fetch(client, _path_qs(image["url"])) == (200, players)

    listing = (await (await client.get(f"/api/face/sessions/{session_id}/images")).json())["data"]["images"]
    resolved = (await (await client.get(f"/api/face/resolve?path={image['identity']}")).json())["data"]
    form = aiohttp.FormData()
    form.add_field("session_id", str(session_id))
    form.add_field("image", photos["yaoming"].read_bytes(), filename="me.jpg", content_type="image/jpeg")
    matches = (await (await client.post("/api/face/search", data=form)).json())["data"]["matches"]
    assert matches and matches[0]["image_id"] == image["image_id"]
    for url in (listing[0]["url"], resolved["url"], matches[0]["url"]):
        assert _is_signed(url)
        assert await _fetch(client, _path_qs(url)) == (200, players)

    # the face crop of the match, and a resized copy, through the same signatures
    assert _is_signed(matches[0]["face_url"])
    status, crop = await _fetch(client, _path_qs(matches[0]["face_url"]))
    assert status == 200 and crop[:2] == b"\xff\xd8"
    assert (await _fetch(client, _path_qs(matches[0]["face_url"]) + "&w=64"))[0] == 200
    # a crop takes w alone: h or fit would be cache keys for the very same crop
    for extra in ("&h=64", "&fit=cover", "&w=64&w=128"):
        assert (await _fetch(client, _path_qs(matches[0]["face_url"]) + extra))[0] == 403, extra
    status, thumb = await _fetch(client, _path_qs(image["url"]) + "&w=320")
    assert status == 200 and thumb[:2] == b"\xff\xd8" and len(thumb) < len(players)

    # a legacy URL (with a key: images are private) redirects to a signed URL, cached by nobody
    response = await client.get(f"/storage/face_sessions/{image['identity']}", allow_redirects=False)
    assert response.status == 301 and _is_signed(response.headers["Location"])
    assert response.headers["Cache-Control"] == "private, no-store"
    assert await _fetch(client, _path_qs(response.headers["Location"])) == (200, players)


async def test_unsigned_altered_and_expired_urls_get_403_json(client, uploaded):
    _, image = uploaded
    path = f"/api/face/image/{image['image_id']}"
    signed = _path_qs(image["url"])
    keys = client.server.app[URLS].keys
    expired = f"{path}?{signing.sign(keys, path, int(time.time()) - 1)}"
    other_image = f"/api/face/image/{image['image_id'] + 1}?{urlsplit(image['url']).query}"
    for target in (path, signed[:-1] + ("1" if signed.endswith("0") else "0"), expired, other_image,
                   f"/api/face/face/1?{urlsplit(image['url']).query}"):
        async with aiohttp.ClientSession() as session, session.get(client.make_url(target)) as response:
            assert response.status == 403, target
            assert response.headers["Cache-Control"] == "no-store"
            assert (await response.json())["error"]["code"] in ("bad_signature", "signature_expired")


async def test_only_the_exact_signed_spelling_verifies(client, uploaded):
    _, image = uploaded
    image_id = image["image_id"]
    query = parse_qs(urlsplit(image["url"]).query)
    exp, kid, sig = query["exp"][0], query["kid"][0], query["sig"][0]
    good = f"/api/face/image/{image_id}?exp={exp}&kid={kid}&sig={sig}"
    assert (await _fetch(client, good))[0] == 200

    def with_exp(spelling: str) -> str:
        return f"/api/face/image/{image_id}?exp={spelling}&kid={kid}&sig={sig}"

    forged = [
        with_exp("0" + exp), with_exp("+" + exp), with_exp("%2B" + exp), with_exp("%20" + exp), with_exp(exp + "%20"),
        with_exp(exp[:2] + "_" + exp[2:]), with_exp("%3" + exp[0] + exp[1:]), with_exp(exp + ".0"),
        f"/api/face/image/{image_id}?exp={exp}&kid=%{ord(kid[0]):02X}{kid[1:]}&sig={sig}",
        f"/api/face/image/{image_id}?exp={exp}&kid={kid}%20&sig={sig}",
        f"/api/face/image/{image_id}?exp={exp}&kid={kid}&sig={sig.upper()}",
        f"/api/face/image/{image_id}?exp={exp}&kid={kid}&sig=%{ord(sig[0]):02x}{sig[1:]}",
        f"/api/face/image/0{image_id}?exp={exp}&kid={kid}&sig={sig}",
        f"/api/face/image/%3{str(image_id)[0]}{str(image_id)[1:]}?exp={exp}&kid={kid}&sig={sig}",
        f"/api/face/image/{image_id}?kid={kid}&exp={exp}&sig={sig}",
        f"/api/face/image/{image_id}?exp={exp}&exp={exp}&kid={kid}&sig={sig}",
        f"/api/face/image/{image_id}?exp={exp}&kid={kid}&sig={sig}&exp={int(exp) + 600}",
        f"/api/face/image/{image_id}?exp={exp}&kid={kid}&sig={sig}&w=0320",
        f"/api/face/image/{image_id}?exp={exp}&kid={kid}&sig={sig}&w=%33%32%30",
        f"/api/face/image/{image_id}?exp={exp}&amp;kid={kid}&sig={sig}",
        f"/api/face/image/{image_id}?exp={exp};kid={kid};sig={sig}",
        # unknown or repeated parameters: each would be one more cache key for the same answer
        f"/api/face/image/{image_id}?exp={exp}&kid={kid}&sig={sig}&zz=1",
        f"/api/face/image/{image_id}?exp={exp}&kid={kid}&sig={sig}&w=320&w=640",
        f"/api/face/image/{image_id}?exp={exp}&kid={kid}&sig={sig}&w=320&fit=cover&fit=inside",
    ]
    assert (await _fetch(client, f"{good}&w=320&h=240&fit=cover"))[0] == 200
    for target in forged:
        status, body = await _fetch(client, target)
        assert status == 403, target
        assert b"signature" in body


async def test_workers_share_the_keys_and_rotation_never_meets_an_unknown_kid(
    client, uploaded, settings, engine, monkeypatch, capsys, photos
):
    _, image = uploaded
    players = photos["players"].read_bytes()
    async with TestClient(TestServer(create_app(settings, engine, sweep_partial_uploads=False))) as second:
        # another worker (or node) on the same database verifies this one's URLs
        assert await _fetch(second, _path_qs(image["url"])) == (200, players)
        monkeypatch.setenv("DATABASE_URL", settings.database_url)
        assert await asyncio.to_thread(cli_main, ["signing", "rotate", "--storage", str(settings.storage)]) == 0
        new_kid = capsys.readouterr().out.split()[3].rstrip(";")
        old_kid = parse_qs(urlsplit(image["url"]).query)["kid"][0]
        for app in (client.server.app, second.server.app):
            await access._load_signing_keys(app)  # what the refresh task does every signing_key_refresh_s
            # loaded everywhere, but not signing yet: a node that has not reloaded would not know it
            assert app[URLS].keys.keys[0][0] == old_kid and app[URLS].keys.secret(new_kid) is not None
        pool = client.server.app[SERVICES].pool
        await pool.execute("UPDATE url_signing_keys SET created_at = now() - interval '1 hour' WHERE kid = $1", new_kid)
        await access._load_signing_keys(client.server.app)
        response = await client.get(f"/api/face/resolve?path={image['identity']}")
        fresh_url = (await response.json())["data"]["url"]
        assert parse_qs(urlsplit(fresh_url).query)["kid"] == [new_kid]
        assert await _fetch(second, _path_qs(fresh_url)) == (200, players)
        assert await _fetch(second, _path_qs(image["url"])) == (200, players)  # old URLs until retired

        argv = ["signing", "retire", old_kid, "--storage", str(settings.storage)]
        assert await asyncio.to_thread(cli_main, argv) == 0
        await access._load_signing_keys(second.server.app)
        assert (await _fetch(second, _path_qs(image["url"])))[0] == 403
        assert await _fetch(second, _path_qs(fresh_url)) == (200, players)


async def test_legacy_urls_without_a_key_when_images_are_private(client, uploaded):
    _, image = uploaded
    async with (
        aiohttp.ClientSession() as session,
        session.get(client.make_url(f"/storage/face_sessions/{image['identity']}"), allow_redirects=False) as response,
    ):
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "unauthorized"


async def test_public_images_opt_out(settings, engine, aiohttp_client, photos):
    client = await aiohttp_client(create_app(replace(settings, public_images=True), engine))
    response = await client.post("/api/face/sessions", json={"name": "open"})
    session_id = (await response.json())["data"]["id"]
    form = aiohttp.FormData()
    form.add_field("file", photos["yaoming"].read_bytes(), filename="y.jpg", content_type="image/jpeg")
    [image] = (await (await client.post(f"/api/face/sessions/{session_id}/images", data=form)).json())["data"]["images"]
    assert urlsplit(image["url"]).query == ""
    assert await _fetch(client, urlsplit(image["url"]).path) == (200, photos["yaoming"].read_bytes())
    async with (
        aiohttp.ClientSession() as session,
        session.get(client.make_url(f"/storage/face_sessions/{image['identity']}"), allow_redirects=False) as response,
    ):
        assert response.status == 301 and response.headers["Cache-Control"] == "public, max-age=86400"
