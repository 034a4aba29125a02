"""What one node does to keys and to people's data reaches the other through Postgres, within a second: an API
key revoked through node A is refused by node B, a URL signing key rotated in or retired (as `faceserve
signing` does, on the database) is honoured by B, and a person forgotten through A is gone from B's search.

Two `faceserve serve` nodes with API keys on (tests/fleet.py; no nginx: each request names its node) on one
real Postgres. The nodes' own lifetimes would hide a lost announcement: a key record is cached 5 s
(API_KEY_CACHE_S) and signing keys are reloaded every 60 s (SIGNING_KEY_REFRESH_S), the defaults used here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from fleet import Fleet, fleet_of_its_own
from helpers import create_session_at, upload_at

from faceserve.core import signing, signing_store

PROPAGATION_LIMIT_S = 1.0


@pytest.fixture(scope="module")
def fleet(postgres_uri: str, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet-cross-node")
    with fleet_of_its_own(postgres_uri, models_dir, root, "fleet_keys", FACESERVE_AUTH="on") as fleet:
        fleet.start_node("a")
        fleet.wait_ready("a")  # A makes the bootstrap admin key; B, started after, finds one
        fleet.start_node("b")
        fleet.wait_ready("b")
        yield fleet


@pytest.fixture
async def http(fleet: Fleet) -> AsyncIterator[aiohttp.ClientSession]:
    admin_key = (fleet.storage / "admin-key").read_text().strip()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin_key}"}) as session:
        yield session


@pytest.fixture
async def database(fleet: Fleet) -> AsyncIterator[asyncpg.Pool]:
    """The fleet's database as the CLI (`faceserve keys`, `faceserve signing`) reaches it."""
    async with asyncpg.create_pool(fleet.database_url, min_size=1, max_size=2) as pool:
        yield pool


async def _within_limit(check: Callable[[], Awaitable[bool]], what: str) -> float:
    """Seconds until check() first held; fails past PROPAGATION_LIMIT_S (timed by when each check starts)."""
    start = time.monotonic()
    while True:
        asked = time.monotonic() - start
        if asked > PROPAGATION_LIMIT_S:
            raise AssertionError(f"{what} not seen within {PROPAGATION_LIMIT_S} s")
        if await check():
            return asked
        await asyncio.sleep(0.02)




async def _matches(http: aiohttp.ClientSession, base: str, session_id: int, probe: bytes) -> list[dict]:
    form = aiohttp.FormData()
    form.add_field("image", probe, filename="probe.jpg", content_type="image/jpeg")
    async with http.post(f"{base}/api/face/sessions/{session_id}/search", data=form) as response:
        body = await response.json()
        assert response.status == 200, body
        return body["data"]["matches"]


async def test_a_key_revoked_through_one_node_is_refused_by_the_other(fleet: Fleet, http) -> None:
    a, b = fleet.nodes["a"].url, fleet.nodes["b"].url
    async with http.post(a + "/api/face/keys", json={"scopes": ["search"], "name": "guest"}) as response:
        made = (await response.json())["data"]
    guest = {"Authorization": f"Bearer {made['key']}"}
    async with http.get(b + "/api/face/sessions", headers=guest) as response:
        assert response.status == 200  # B has the key's record cached now

    async with http.delete(f"{a}/api/face/keys/{made['prefix']}") as response:
        assert response.status == 200

    async def b_refuses() -> bool:
        async with http.get(b + "/api/face/sessions", headers=guest) as response:
            return response.status == 401

    print(f"revocation through A refused by B after {await _within_limit(b_refuses, 'the revocation'):.3f} s")


async def test_signing_keys_rotated_in_and_retired_are_honoured_by_the_other_node(
    fleet: Fleet, http, database: asyncpg.Pool, photos
) -> None:
    a, b = fleet.nodes["a"].url, fleet.nodes["b"].url
    session_id = await create_session_at(http, a, "signing")
    players = await upload_at(http, a, session_id, photos["players"])
    old_url = players["url"]
    old_kid = dict(p.split("=") for p in urlsplit(old_url).query.split("&"))["kid"]
    path = urlsplit(old_url).path
    async with http.get(b + path + "?" + urlsplit(old_url).query) as response:
        assert response.status == 200

    # rotated in: B verifies URLs signed by the new key (not yet signing: younger than the activation delay)
    new_kid = await signing_store.rotate(database)
    secret = bytes(await database.fetchval("SELECT secret FROM url_signing_keys WHERE kid = $1", new_kid))
    new_query = signing.sign(signing.SigningKeys(((new_kid, secret),)), path, int(time.time()) + 600)

    async def b_verifies_the_new_key() -> bool:
        async with http.get(b + path + "?" + new_query) as response:
            return response.status == 200

    rotated_s = await _within_limit(b_verifies_the_new_key, "the rotated-in key on B")

    # retired: B refuses what the old key signed
    assert await signing_store.retire(database, old_kid)

    async def b_refuses_the_old_key() -> bool:
        async with http.get(b + path + "?" + urlsplit(old_url).query) as response:
            return response.status == 403

    retired_s = await _within_limit(b_refuses_the_old_key, "the retired key on B")
    print(f"signing key rotated in: verified by B after {rotated_s:.3f} s; retired: refused after {retired_s:.3f} s")


async def test_a_person_forgotten_through_one_node_is_gone_from_the_others_search(fleet: Fleet, http, photos) -> None:
    a, b = fleet.nodes["a"].url, fleet.nodes["b"].url
    selfie = photos["yaoming"].read_bytes()
    session_id = await create_session_at(http, a, "forget")
    players = await upload_at(http, a, session_id, photos["players"])
    # B opens the session's index, so the erasure must reach it from A
    assert [m["image_id"] for m in await _matches(http, b, session_id, selfie)] == [players["image_id"]]

    form = aiohttp.FormData()
    form.add_field("image", selfie, filename="selfie.jpg", content_type="image/jpeg")
    async with http.post(f"{a}/api/face/sessions/{session_id}/forget", data=form) as response:
        body = await response.json()
        assert response.status == 200 and body["data"]["faces_erased"] >= 1, body

    async def b_forgot() -> bool:
        return await _matches(http, b, session_id, selfie) == []

    print(f"forget through A gone from B's search after {await _within_limit(b_forgot, 'the forget'):.3f} s")
    # and the photo stays: only the person's faces were erased
    async with http.get(f"{b}/api/face/sessions/{session_id}/images") as response:
        assert [i["image_id"] for i in (await response.json())["data"]["images"]] == [players["image_id"]]
