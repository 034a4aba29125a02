"""One id parser for the guard and the handlers: every spelling of a number in a path is that number.

A key bound to session 1 once reached session 2 as /api/face/sessions/0000000000000000002 (the guard skipped
ids of 19 characters, the handlers read them). Here every route with an id is asked with many spellings of the
same ids, by a key bound to another session and by the admin, and must answer as for the canonical form.
"""

from __future__ import annotations

import re
from urllib.parse import quote

import aiohttp
import pytest
from helpers import create_session, upload
from hypothesis import given
from hypothesis import strategies as st

from faceserve import inputs
from faceserve.core import api_keys, people
from faceserve.http import routes
from faceserve.http.appkeys import SERVICES

# '0' .. '9' in a few other scripts: Arabic-Indic, Devanagari, fullwidth
_SCRIPTS = ("0123456789", "٠١٢٣٤٥٦٧٨٩", "०१२३४५६७८९", "０１２３４５６７８９")


def _in_script(number: int, script: str) -> str:
    return "".join(script[int(d)] for d in str(number))


def spellings(number: int) -> list[str]:
    """Ways a client can write the same id: what the guard and the handlers must read alike."""
    return [
        str(number).zfill(19),
        str(number).zfill(20),
        "0" * 40 + str(number),
        "+" + str(number),
        " " + str(number) + " ",
        "+" + str(number).zfill(25),
        *(_in_script(number, script) for script in _SCRIPTS[1:]),
        "٠٠" + _in_script(number, _SCRIPTS[1]),
    ]


@given(
    number=st.integers(min_value=0, max_value=inputs.MAX_ID),
    zeros=st.integers(min_value=0, max_value=40),
    script=st.sampled_from(_SCRIPTS),
    plus=st.booleans(),
    space=st.sampled_from(["", " ", "\t", "\u00a0"]),
)
def test_every_spelling_of_a_number_is_that_number(number, zeros, script, plus, space):
    text = space + ("+" if plus else "") + script[0] * zeros + _in_script(number, script) + space
    assert inputs.parse_id(text) == number


@pytest.mark.parametrize(
    "text", ["", "+", "-1", "+-1", "1_0", "1e3", "0x1f", "abc", "1.0", "²", "9223372036854775808", "9" * 40, "1 2"]
)
def test_what_is_no_id(text):
    assert inputs.parse_id(text) is None


@pytest.fixture
def public_images() -> bool:
    return False


def _concrete(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: quote(ids[m.group(1)], safe="+"), path)


async def _answer(http: aiohttp.ClientSession, url: str, method: str, headers: dict) -> tuple[int, str | None, list]:
    """(status, error code, the ids listed in a 200's data) — what must not depend on an id's spelling."""
    async with http.request(method, url, headers=headers, json={}, allow_redirects=False) as response:
        body = await response.read()
        code = None
        listed: list = []
        if response.content_type == "application/json" and body:
            parsed = await response.json()
            code = parsed.get("error", {}).get("code") if isinstance(parsed, dict) else None
            data = parsed.get("data") if isinstance(parsed, dict) else None
            if isinstance(data, dict):
                listed = sorted(str(v) for k, v in data.items() if k in ("id", "image_id", "person_id"))
                for items in data.values():
                    if isinstance(items, list):
                        listed += sorted(str(i.get("image_id") or i.get("person_id")) for i in items if isinstance(i, dict))
        return response.status, code, listed


async def test_every_route_with_an_id_answers_alike_for_every_spelling(client, photos):
    services = client.server.app[SERVICES]
    pool = services.pool
    mine = await create_session(client, "mine")
    theirs = await create_session(client, "theirs")
    await upload(client, mine, ("gdp.jpg", photos["gdp"].read_bytes()))
    # Yao Ming in both: a person of two photos
    await upload(client, theirs, ("players.jpg", photos["players"].read_bytes()))
    image = (await upload(client, theirs, ("yaoming.jpg", photos["yaoming"].read_bytes())))[0]
    face_id = await pool.fetchval("SELECT id FROM faces WHERE image_id = $1 LIMIT 1", image["image_id"])
    await services.jobs.wait(("people", theirs))
    await people.recluster(services, theirs)
    person_id = await pool.fetchval("SELECT person_id FROM face_people WHERE face_id = $1", face_id)
    name = image["identity"].split("/")[-1]
    bound_key, _ = await api_keys.create(pool, ["search", "write"], session_ids=[mine])
    admin = dict(client.session.headers)
    bound = {"Authorization": f"Bearer {bound_key}"}
    # a live search that has expired: its stream answers 404 at once (a live one would stay open)
    live_id = await pool.fetchval(
        "INSERT INTO live_searches (face_session_id, embedding, embedding_dim, expires_at) "
        "VALUES ($1, $2, 1, now()) RETURNING id",
        theirs,
        bytes(4),
    )
    canonical = {
        "session_id": theirs, "image_id": image["image_id"], "face_id": face_id, "person_id": person_id,
        "live_id": live_id,
    }

    with_ids = [(r.method, r.path) for r in routes.ROUTES if re.search(r"\{\w+_id\}", r.path)]
    assert len(with_ids) >= 14, with_ids
    assert person_id is not None
    checked = 0
    async with aiohttp.ClientSession() as http:
        for method, path in with_ids:
            # the bound key on every route (its answer for another session is 403 before anything changes);
            # the admin only where nothing changes
            callers = [bound, admin] if method == "GET" else [bound]
            for headers in callers:
                ids = {k: str(v) for k, v in canonical.items()} | {"name": name, "prefix": "fsk_abcdefgh"}
                expected = await _answer(http, str(client.make_url(_concrete(path, ids))), method, headers)
                if headers is bound:
                    assert expected[0] == 403, (method, path, expected)
                for param in re.findall(r"\{(\w+_id)\}", path):
                    for spelled in spellings(canonical[param]):
                        url = str(client.make_url(_concrete(path, ids | {param: spelled})))
                        got = await _answer(http, url, method, headers)
                        assert got == expected, (method, path, param, spelled, got, expected)
                        checked += 1
    assert checked > 200
    # nothing of the other session was touched by the bound key's deletes, uploads, forgets, merges and splits
    assert await pool.fetchval("SELECT count(*) FROM face_session_images WHERE face_session_id = $1", theirs) == 2
    assert await pool.fetchval("SELECT count(*) FROM face_sessions WHERE id = $1", theirs) == 1


async def test_the_largest_ids_are_unknown_not_errors(client):
    """Every route with an id answers the largest bigint as an unknown id (a 4xx), never a 500: a lock keyed by
    a session id once took it as a 32-bit number (DELETE of session 9223372036854775806 was a 500)."""
    with_ids = [r for r in routes.ROUTES if re.search(r"\{\w+_id\}", r.path)]
    for largest in (inputs.MAX_ID, inputs.MAX_ID - 1, 2**31, 2**32 + 7):
        ids = {"session_id": largest, "image_id": largest, "face_id": largest, "person_id": largest, "live_id": largest}
        for route in with_ids:
            url = _concrete(route.path, {k: str(v) for k, v in ids.items()} | {"name": "x.jpg", "prefix": "fsk_x"})
            response = await client.request(route.method, url, json={})
            assert 400 <= response.status < 500, (route.method, url, response.status, await response.text())
