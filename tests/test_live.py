"""Live results on the real service: a live search from a selfie, its stream of new photos (resumed with
Last-Event-ID), its end; guest keys in their own session only; a deleted photo or a forgotten person is
never pushed; streams end at shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import aiohttp
import pytest
from helpers import create_session, upload
from sse import open_stream

from faceserve.app import create_app
from faceserve.config import Settings
from faceserve.core import api_keys
from faceserve.http.appkeys import SERVICES

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, live_heartbeat_s=0.3)


async def _create(client, session_id: int, selfie: bytes, headers: dict | None = None) -> tuple[int, dict]:
    form = aiohttp.FormData()
    form.add_field("image", selfie, filename="selfie.jpg", content_type="image/jpeg")
    response = await client.post(f"/api/face/sessions/{session_id}/live", data=form, headers=headers or {})
    return response.status, await response.json()


def _events_url(client, session_id: int, live_id: int) -> str:
    return str(client.make_url(f"/api/face/sessions/{session_id}/live/{live_id}/events"))


def _admin(client) -> dict[str, str]:
    return {"Authorization": client.session.headers["Authorization"]}


async def test_a_stream_sends_each_new_photo_of_the_guest_once_and_resumes(client, photos):
    session_id = await create_session(client)
    await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes()))
    status, body = await _create(client, session_id, photos["yaoming"].read_bytes())
    assert status == 201, body
    live_id, expires_at = body["data"]["live_id"], body["data"]["expires_at"]
    assert body["data"]["matches"] == []  # no photo of him yet
    assert expires_at.endswith("+00:00")

    async with aiohttp.ClientSession() as http:
        stream = await open_stream(http, _events_url(client, session_id, live_id), _admin(client))
        assert (await stream.next()).comment == "heartbeat"  # nothing yet: a comment every live_heartbeat_s
        players = (await upload(client, session_id, ("players.jpg", photos["players"].read_bytes())))[0]
        first = await stream.next_match()
        assert first.event == "match"
        assert first.data["image_id"] == players["image_id"]
        assert first.data["identity"] == players["identity"]
        assert first.data["url"] == players["url"]
        assert first.data["distance"] < 0.6
        # the same bytes again record nothing; another photo of him is the next event
        await upload(client, session_id, ("again.jpg", photos["players"].read_bytes()))
        await upload(client, session_id, ("gdp.jpg", photos["gdp"].read_bytes()))  # no one of his
        second_image = (await upload(client, session_id, ("yao.jpg", photos["yaoming"].read_bytes())))[0]
        second = await stream.next_match()
        assert second.data["image_id"] == second_image["image_id"]
        assert int(second.id) > int(first.id)
        stream.response.close()

        # a reconnect with Last-Event-ID gets what came after it, nothing before
        resumed = await open_stream(http, _events_url(client, session_id, live_id), _admin(client), first.id)
        again = await resumed.next_match()
        assert (again.id, again.data["image_id"]) == (second.id, second_image["image_id"])
        assert (await resumed.next()).comment == "heartbeat"
        # without it, every match from the start
        fresh = await open_stream(http, _events_url(client, session_id, live_id), _admin(client))
        assert [(await fresh.next_match()).id, (await fresh.next_match()).id] == [first.id, second.id]

        # a new live search answers the photos so far at once
        status, body = await _create(client, session_id, photos["yaoming"].read_bytes())
        assert status == 201
        assert {m["image_id"] for m in body["data"]["matches"]} == {players["image_id"], second_image["image_id"]}

        # deleted: its streams end, and it is unknown from then on
        response = await client.delete(f"/api/face/sessions/{session_id}/live/{live_id}")
        assert response.status == 204
        assert (await resumed.next_match()).event == "end"
        assert (await fresh.next_match()).event == "end"
        response = await client.delete(f"/api/face/sessions/{session_id}/live/{live_id}")
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "live_search_not_found"
        async with http.get(_events_url(client, session_id, live_id), headers=_admin(client)) as gone:
            assert gone.status == 404
            assert (await gone.json())["error"]["code"] == "live_search_not_found"


async def test_bad_requests_and_unknown_ids(client, photos):
    session_id = await create_session(client)
    status, body = await _create(client, session_id, b"not an image")
    assert status == 415, body
    status, body = await _create(client, 987654, photos["yaoming"].read_bytes())
    assert status == 404 and body["error"]["code"] == "session_not_found"
    status, body = await _create(client, session_id, photos["yaoming"].read_bytes())
    live_id = body["data"]["live_id"]
    async with aiohttp.ClientSession() as http:
        headers = _admin(client) | {"Last-Event-ID": "x1"}
        async with http.get(_events_url(client, session_id, live_id), headers=headers) as response:
            assert response.status == 400
        other = await create_session(client, "other")
        async with http.get(_events_url(client, other, live_id), headers=_admin(client)) as response:
            assert response.status == 404  # a live search is found in its own session only


async def test_guest_keys_use_live_results_in_their_own_session_only(client, photos, services):
    mine = await create_session(client, "mine")
    theirs = await create_session(client, "theirs")
    guest, _ = await api_keys.create(services.pool, ["search"], session_ids=[mine])
    as_guest = {"Authorization": f"Bearer {guest}"}
    status, body = await _create(client, theirs, photos["yaoming"].read_bytes(), as_guest)
    assert status == 403, body
    status, body = await _create(client, mine, photos["yaoming"].read_bytes(), as_guest)
    assert status == 201, body
    my_live = body["data"]["live_id"]
    status, body = await _create(client, theirs, photos["yaoming"].read_bytes())
    their_live = body["data"]["live_id"]
    # the prefix of the key that made it is kept, never the key
    prefix = await services.pool.fetchval("SELECT created_by FROM live_searches WHERE id = $1", my_live)
    assert prefix and guest.startswith(prefix) and prefix != guest
    async with aiohttp.ClientSession() as http:
        async with http.get(_events_url(client, theirs, their_live), headers=as_guest) as response:
            assert response.status == 403
        # their live id under the guest's own session: not found there
        async with http.get(_events_url(client, mine, their_live), headers=as_guest) as response:
            assert response.status == 404
        url = str(client.make_url(f"/api/face/sessions/{theirs}/live/{their_live}"))
        async with http.delete(url, headers=as_guest) as response:
            assert response.status == 403
        url = str(client.make_url(f"/api/face/sessions/{mine}/live/{their_live}"))
        async with http.delete(url, headers=as_guest) as response:
            assert response.status == 404
        stream = await open_stream(http, _events_url(client, mine, my_live), as_guest)
        await upload(client, mine, ("players.jpg", photos["players"].read_bytes()))
        assert (await stream.next_match()).event == "match"
        url = str(client.make_url(f"/api/face/sessions/{mine}/live/{my_live}"))
        async with http.delete(url, headers=as_guest) as response:
            assert response.status == 204
    assert await services.pool.fetchval("SELECT count(*) FROM live_searches WHERE id = $1", their_live) == 1


async def test_a_deleted_photo_is_never_pushed(client, photos, services):
    session_id = await create_session(client)
    _, body = await _create(client, session_id, photos["yaoming"].read_bytes())
    live_id = body["data"]["live_id"]
    players = (await upload(client, session_id, ("players.jpg", photos["players"].read_bytes())))[0]
    assert await services.pool.fetchval("SELECT count(*) FROM live_matches WHERE live_search_id = $1", live_id) == 1
    response = await client.delete(f"/api/face/image/{players['image_id']}")
    assert response.status == 200
    # its match went with it: a stream that starts (or resumes) now sends nothing of it
    assert await services.pool.fetchval("SELECT count(*) FROM live_matches WHERE live_search_id = $1", live_id) == 0
    async with aiohttp.ClientSession() as http:
        stream = await open_stream(http, _events_url(client, session_id, live_id), _admin(client))
        assert (await stream.next()).comment == "heartbeat"
        assert (await stream.next()).comment == "heartbeat"


async def test_forget_and_session_delete_erase_live_probes(client, photos, services):
    session_id = await create_session(client)
    await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes()))
    _, his = await _create(client, session_id, photos["yaoming"].read_bytes())
    his_live = his["data"]["live_id"]
    # someone else's live search, from a face of t1.jpg
    _, other = await _create(client, session_id, photos["t1"].read_bytes())
    other_live = other["data"]["live_id"]
    async with aiohttp.ClientSession() as http:
        stream = await open_stream(http, _events_url(client, session_id, his_live), _admin(client))
        form = aiohttp.FormData()
        form.add_field("image", photos["yaoming"].read_bytes(), filename="selfie.jpg", content_type="image/jpeg")
        response = await client.post(f"/api/face/sessions/{session_id}/forget", data=form)
        assert response.status == 200
        assert (await stream.next_match()).event == "end"
    ids = await services.pool.fetch("SELECT id FROM live_searches WHERE face_session_id = $1", session_id)
    assert [r["id"] for r in ids] == [other_live]
    # a photo of him uploaded after the forget reaches no one
    await upload(client, session_id, ("players.jpg", photos["players"].read_bytes()))
    assert await services.pool.fetchval("SELECT count(*) FROM live_matches") == 0

    response = await client.delete(f"/api/face/sessions/{session_id}")
    assert response.status == 200
    assert await services.pool.fetchval("SELECT count(*) FROM live_searches") == 0


async def test_an_expired_live_search_matches_nothing_and_is_swept(client, photos, services):
    session_id = await create_session(client)
    _, body = await _create(client, session_id, photos["yaoming"].read_bytes())
    live_id = body["data"]["live_id"]
    await services.pool.execute("UPDATE live_searches SET expires_at = now() - interval '1 second'")
    await upload(client, session_id, ("players.jpg", photos["players"].read_bytes()))
    assert await services.pool.fetchval("SELECT count(*) FROM live_matches") == 0
    response = await client.get(f"/api/face/sessions/{session_id}/live/{live_id}/events")
    assert response.status == 404
    from faceserve.core import privacy

    # kept a few minutes past its expiry (an upload that read it while it counted may still be recording),
    # then swept
    await privacy.delete_expired(services)
    assert await services.pool.fetchval("SELECT count(*) FROM live_searches") == 1
    await services.pool.execute("UPDATE live_searches SET expires_at = now() - interval '6 minutes'")
    await privacy.delete_expired(services)
    assert await services.pool.fetchval("SELECT count(*) FROM live_searches") == 0


async def test_a_live_search_made_elsewhere_counts_from_its_commit(client, photos, services):
    """The probes cached for a session are reloaded once Postgres holds another set (another node made or
    ended one): each upload compares with what is there now."""
    session_id = await create_session(client)
    await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes()))  # caches the session's (no) probes
    _, body = await _create(client, session_id, photos["yaoming"].read_bytes())
    await upload(client, session_id, ("players.jpg", photos["players"].read_bytes()))
    rows = await services.pool.fetch("SELECT live_search_id FROM live_matches")
    assert [r["live_search_id"] for r in rows] == [body["data"]["live_id"]]


async def test_streams_end_at_shutdown_without_holding_it(settings, engine, aiohttp_server, photos):
    app = create_app(settings, engine)
    server = await aiohttp_server(app)
    key = (settings.storage / "admin-key").read_text().strip()
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(server.make_url("/api/face/sessions"), json={"name": "p"}, headers=headers) as r:
            session_id = (await r.json())["data"]["id"]
        form = aiohttp.FormData()
        form.add_field("image", photos["yaoming"].read_bytes(), filename="s.jpg", content_type="image/jpeg")
        async with http.post(server.make_url(f"/api/face/sessions/{session_id}/live"), data=form, headers=headers) as r:
            live_id = (await r.json())["data"]["live_id"]
        url = str(server.make_url(f"/api/face/sessions/{session_id}/live/{live_id}/events"))
        streams = [await open_stream(http, url, headers) for _ in range(3)]
        assert app[SERVICES].live.open_streams() == 3
        start = time.monotonic()
        await server.close()
        assert time.monotonic() - start < 5
        for stream in streams:
            with pytest.raises((EOFError, aiohttp.ClientPayloadError)):
                while True:
                    await stream.next(2)


async def test_streams_catch_up_after_the_listening_connection_came_back(
    settings, engine, aiohttp_client, photos, database_url
):
    """A notification sent while the listener was away is lost; after its reconnect every stream re-reads
    (heartbeats far apart here, so only the catch-up can bring the match)."""
    from helpers import terminate_listeners

    client = await aiohttp_client(create_app(dataclasses.replace(settings, live_heartbeat_s=120), engine))
    session_id = await create_session(client)
    _, body = await _create(client, session_id, photos["yaoming"].read_bytes())
    live_id = body["data"]["live_id"]
    async with aiohttp.ClientSession() as http:
        stream = await open_stream(http, _events_url(client, session_id, live_id), _admin(client))
        assert await terminate_listeners(database_url) >= 1
        # a match recorded while no one listened (as on another node, its notification lost)
        image = (await upload(client, session_id, ("players.jpg", photos["players"].read_bytes())))[0]
        event = await stream.next_match(timeout_s=15)
        assert event.data["image_id"] == image["image_id"]


async def test_a_stream_ends_when_its_live_search_expires(client, photos, services):
    session_id = await create_session(client)
    _, body = await _create(client, session_id, photos["yaoming"].read_bytes())
    live_id = body["data"]["live_id"]
    await services.pool.execute("UPDATE live_searches SET expires_at = now() + interval '1 second'")
    async with aiohttp.ClientSession() as http:
        stream = await open_stream(http, _events_url(client, session_id, live_id), _admin(client))
        start = time.monotonic()
        assert (await stream.next_match(timeout_s=10)).event == "end"
        assert time.monotonic() - start < 5


async def test_a_photo_recorded_but_not_yet_in_the_index_reaches_a_new_live_search(
    client, photos, services, settings, engine, aiohttp_client
):
    """A photo another node committed just before the live search was made, not yet in this process's index
    (its NOTIFY not applied yet): compared exactly at the making, and sent on the stream."""
    from helpers import search

    other_node = await aiohttp_client(create_app(settings, engine))
    session_id = await create_session(client)
    await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes()))
    assert (await search(client, session_id, photos["yaoming"].read_bytes()))[0] == 200  # index loaded here
    await services.sync.follower.close()  # this process stops applying the others' index changes
    players = (await upload(other_node, session_id, ("players.jpg", photos["players"].read_bytes())))[0]
    status, body = await _create(client, session_id, photos["yaoming"].read_bytes())
    assert status == 201
    assert body["data"]["matches"] == []  # the index here does not know the photo
    async with aiohttp.ClientSession() as http:
        stream = await open_stream(http, _events_url(client, session_id, body["data"]["live_id"]), _admin(client))
        assert (await stream.next_match()).data["image_id"] == players["image_id"]


async def test_an_expired_session_with_an_expired_live_search_is_swept_in_one_round(client, photos, services):
    """The sweep's own delete of the session reaches the live searches it swept: those are committed first
    (else the delete waits on the sweep's open transaction, which waits on the delete)."""
    from faceserve.core import privacy

    session_id = await create_session(client)
    await _create(client, session_id, photos["yaoming"].read_bytes())
    await services.pool.execute("UPDATE live_searches SET expires_at = now() - interval '10 minutes'")
    await services.pool.execute("UPDATE face_sessions SET expires_at = now() - interval '1 second' WHERE id = $1", session_id)
    assert await asyncio.wait_for(privacy.delete_expired(services), 60) == [session_id]
    assert await services.pool.fetchval("SELECT count(*) FROM live_searches") == 0
