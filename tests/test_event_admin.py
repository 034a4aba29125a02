"""Running an event through the API as the page does: rename, guest links that expire and are listed per event
and revoked, their QR codes, and the one-time setup link that signs an organiser's browser in."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from helpers import create_session

from faceserve.app import create_app
from faceserve.cli import main as cli_main
from faceserve.core import api_keys, setup_links
from faceserve.http.appkeys import SERVICES


@pytest.fixture
def public_images() -> bool:
    return False


@pytest.fixture
def anon(client):
    """Requests without the test client's admin key: (method, path, headers=None, **kw) -> (status, body)."""

    async def request(method: str, path: str, headers: dict | None = None, **kwargs):
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, client.make_url(path), headers=headers, **kwargs) as response,
        ):
            return response.status, await response.read()

    return request


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _guest_key(client, session_id: int, **extra) -> dict:
    response = await client.post("/api/face/keys", json={"scopes": ["search"], "sessions": [session_id], **extra})
    assert response.status == 201, await response.text()
    return (await response.json())["data"]


async def test_an_event_is_renamed_and_a_guest_key_may_not_rename_it(client, anon):
    session_id = await create_session(client, "session 3")
    response = await client.patch(f"/api/face/sessions/{session_id}", json={"name": "  Wedding of A & B "})
    assert response.status == 200
    assert (await response.json())["data"]["name"] == "Wedding of A & B"
    shown = await (await client.get(f"/api/face/sessions/{session_id}")).json()
    assert shown["data"]["name"] == "Wedding of A & B"
    for bad in ({"name": ""}, {"name": "   "}, {"name": "x" * 201}, {"name": "a\u0000b"}, {"other": 1}, []):
        response = await client.patch(f"/api/face/sessions/{session_id}", json=bad)
        assert response.status == 400, bad
    assert (await client.patch("/api/face/sessions/999999", json={"name": "x"})).status == 404
    guest = await _guest_key(client, session_id)
    status, _ = await anon("PATCH", f"/api/face/sessions/{session_id}", _bearer(guest["key"]), json={"name": "x"})
    assert status == 403


async def test_guest_links_expire_are_listed_by_event_and_revoked(client, anon):
    party, other = await create_session(client, "party"), await create_session(client, "other")
    link = await _guest_key(client, party, name="guest link: party", expires_in_days=30)
    expires = datetime.fromisoformat(link["expires_at"])
    assert timedelta(days=29, hours=23) < expires - datetime.now(UTC) <= timedelta(days=30)
    await _guest_key(client, other)
    listed = (await (await client.get(f"/api/face/keys?session={party}")).json())["data"]["keys"]
    assert [k["prefix"] for k in listed] == [link["prefix"]]  # not the other event's, not the admin's
    for bad in ("abc", "0", "-1"):
        assert (await client.get(f"/api/face/keys?session={bad}")).status == 400
    for bad in ({"expires_in_days": 0}, {"expires_in_days": "30"}, {"expires_in_days": 30, "expires_in": "2d"}):
        response = await client.post("/api/face/keys", json={"scopes": ["search"], **bad})
        assert response.status == 400, bad

    status, _ = await anon("GET", f"/api/face/sessions/{party}", _bearer(link["key"]))
    assert status == 200
    assert (await client.delete(f"/api/face/keys/{link['prefix']}")).status == 200
    status, _ = await anon("GET", f"/api/face/sessions/{party}", _bearer(link["key"]))
    assert status == 401
    listed = (await (await client.get(f"/api/face/keys?session={party}")).json())["data"]["keys"]
    assert listed[0]["revoked_at"]


async def test_deleting_an_event_revokes_its_guest_links_and_no_other_key(client, anon):
    party, other = await create_session(client, "party"), await create_session(client, "other")
    guest = await _guest_key(client, party)
    both = (await (await client.post("/api/face/keys", json={"scopes": ["search"], "sessions": [party, other]})).json())
    assert (await client.delete(f"/api/face/sessions/{party}")).status == 200
    status, _ = await anon("GET", "/api/face/sessions", _bearer(guest["key"]))
    assert status == 401
    status, _ = await anon("GET", f"/api/face/sessions/{other}", _bearer(both["data"]["key"]))
    assert status == 200  # a key of several events keeps the ones left
    keys = {k["prefix"]: k for k in (await (await client.get("/api/face/keys")).json())["data"]["keys"]}
    assert keys[guest["prefix"]]["revoked_at"] and not keys[both["data"]["prefix"]]["revoked_at"]


async def test_a_qr_code_is_an_svg_for_admins_only(client, anon):
    session_id = await create_session(client, "party")
    guest = await _guest_key(client, session_id)
    text = f"http://localhost:8000/#session={session_id}&key={guest['key']}"
    response = await client.post("/api/face/qr", json={"text": text})
    assert response.status == 200 and response.content_type == "image/svg+xml"
    body = await response.text()
    assert body.startswith("<svg") and "<script" not in body and guest["key"] not in body
    assert response.headers["Cache-Control"] == "no-store"
    status, _ = await anon("POST", "/api/face/qr", _bearer(guest["key"]), json={"text": text})
    assert status == 403
    status, _ = await anon("POST", "/api/face/qr", json={"text": text})
    assert status == 401
    for bad in ({"text": ""}, {"text": "x" * 1001}, {"text": 7}, {"other": "x"}, {"text": "\U0001f600" * 999}):
        assert (await client.post("/api/face/qr", json=bad)).status == 400, str(bad)[:40]


async def test_a_setup_token_signs_in_once_and_only_while_fresh(client, anon):
    pool = client.server.app[SERVICES].pool
    token = await setup_links.create_token(pool, ttl_h=24)
    assert token not in str(await pool.fetch("SELECT * FROM setup_tokens"))  # only its hash is kept
    status, body = await anon("POST", "/api/face/setup", json={"token": token})
    assert status == 201
    key = json.loads(body)["data"]["key"]
    record = await api_keys.find(pool, key)
    assert record is not None and record.scopes == ("admin",)
    status, _ = await anon("GET", "/api/face/keys", _bearer(key))
    assert status == 200
    status, body = await anon("POST", "/api/face/setup", json={"token": token})  # used: dead
    assert status == 403 and b"setup_link_invalid" in body
    expired = await setup_links.create_token(pool, ttl_h=-1)
    status, body = await anon("POST", "/api/face/setup", json={"token": expired})
    assert status == 403 and b"setup_link_invalid" in body
    for bad in ({"token": "fst_short"}, {"token": "fsk_" + "a" * 43}):
        status, _ = await anon("POST", "/api/face/setup", json=bad)
        assert status == 403
    status, _ = await anon("POST", "/api/face/setup", json={"token": 5})
    assert status == 400


async def _exchange(client, token: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(client.make_url("/api/face/setup"), json={"token": token}) as response,
    ):
        return response.status


async def test_the_first_start_prints_a_setup_link_and_the_cli_prints_new_ones(
    settings, engine, aiohttp_client, capsys, monkeypatch, caplog
):
    client = await aiohttp_client(create_app(settings, engine))  # a fresh database: the first start
    printed = capsys.readouterr().out
    link = re.search(r"http://localhost:8000/#setup=(fst_\S+)", printed)
    assert link, printed
    assert link[1] not in caplog.text  # on the console, not in the log
    assert await _exchange(client, link[1]) == 201
    # a second start makes no new link
    await aiohttp_client(create_app(settings, engine))
    assert "#setup=" not in capsys.readouterr().out

    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    argv = ["setup-link", "--storage", str(settings.storage), "--public-base-url", "https://photos.example.com"]
    assert await asyncio.to_thread(cli_main, argv) == 0
    printed = capsys.readouterr().out
    token = re.search(r"^https://photos\.example\.com/#setup=(fst_\S+)$", printed, re.MULTILINE)[1]
    assert await _exchange(client, token) == 201


async def test_json_answers_end_with_a_newline(client):
    for response in (await client.get("/api/face/sessions"), await client.get("/api/face/sessions/999999")):
        assert (await response.read()).endswith(b"}\n")
