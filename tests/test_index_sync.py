"""Two service instances on one database (as two workers or two hosts are): a face added or deleted through
one becomes searchable or disappears in the other, through real Postgres LISTEN/NOTIFY."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer
from helpers import authorize, create_session, search, upload, wait_until

from faceserve.app import create_app
from faceserve.http.appkeys import SERVICES


async def test_changes_in_one_instance_reach_the_others_index(settings, engine, photos):
    async with (
        TestClient(TestServer(create_app(settings, engine))) as first,
        TestClient(TestServer(create_app(settings, engine, sweep_partial_uploads=False))) as second,
    ):
        authorize(first), authorize(second)
        session_id = await create_session(first)
        await upload(first, session_id, ("t1.jpg", photos["t1"].read_bytes()))
        # the second instance builds its index now, before the next upload
        status, body = await search(second, session_id, photos["yaoming"].read_bytes())
        assert status == 200 and body["data"]["matches"] == []
        index = await second.server.app[SERVICES].indexes.get(session_id)
        assert len(index) == 6

        [players] = await upload(first, session_id, ("players.jpg", photos["players"].read_bytes()))
        # added to the loaded index, not rebuilt
        await wait_until(lambda: len(index) == 6 + players["faces"], what="the add to reach the other index")
        status, body = await search(second, session_id, photos["yaoming"].read_bytes())
        assert [m["image_id"] for m in body["data"]["matches"]] == [players["image_id"]]

        response = await first.delete(f"/api/face/image/{players['image_id']}")
        assert response.status == 200
        await wait_until(lambda: len(index) == 6, what="the delete to reach the other index")

        response = await first.delete(f"/api/face/sessions/{session_id}")
        assert response.status == 200
        indexes = second.server.app[SERVICES].indexes
        await wait_until(lambda: not indexes.is_loaded(session_id), what="the session drop to reach the other")
