"""A notification sent while a process was not listening is lost: after its listening connection comes back,
the process compares each loaded index with Postgres (face count, highest id) and reopens those that differ.
Real Postgres: the listening backends are terminated as a restart or a network cut would."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer
from helpers import authorize, create_session, search, terminate_listeners, upload, wait_until

from faceserve.app import create_app
from faceserve.http.appkeys import SERVICES


async def test_changes_missed_while_not_listening_are_caught_up(settings, engine, photos, database_url):
    async with (
        TestClient(TestServer(create_app(settings, engine))) as first,
        TestClient(TestServer(create_app(settings, engine, sweep_partial_uploads=False))) as second,
    ):
        authorize(first)
        authorize(second)
        changed = await create_session(first, "changed")
        unchanged = await create_session(first, "unchanged")
        await upload(first, changed, ("t1.jpg", photos["t1"].read_bytes()))
        await upload(first, unchanged, ("players.jpg", photos["players"].read_bytes()))
        for session_id in (changed, unchanged):
            status, _ = await search(second, session_id, photos["yaoming"].read_bytes())
            assert status == 200
        indexes = second.server.app[SERVICES].indexes
        assert indexes.is_loaded(changed) and indexes.is_loaded(unchanged)

        # a face gone without a notification reaching anyone: what a node that was away has missed
        pool = first.server.app[SERVICES].pool
        await pool.execute(
            "DELETE FROM faces WHERE id = (SELECT max(id) FROM faces WHERE face_session_id = $1)", changed
        )
        assert indexes.is_loaded(changed)
        assert await terminate_listeners(database_url) >= 2

        await wait_until(
            lambda: not indexes.is_loaded(changed), what="the changed session's index to be dropped"
        )
        assert indexes.is_loaded(unchanged)  # the same (count, max id) as the database: kept
        status, _ = await search(second, changed, photos["yaoming"].read_bytes())
        assert status == 200
        assert len(await indexes.get(changed)) == 5

        # and notifications flow again on the new connection
        [gdp] = await upload(first, changed, ("gdp.jpg", photos["gdp"].read_bytes()))
        index = await indexes.get(changed)
        await wait_until(lambda: len(index) == 5 + gdp["faces"], what="an add after the reconnect")


async def test_catch_up_keeps_indexes_that_match_the_database(client, photos):
    session_id = await create_session(client)
    await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes()))
    services = client.server.app[SERVICES]
    await services.indexes.get(session_id)
    assert await services.sync.follower.catch_up() == 0
    assert services.indexes.is_loaded(session_id)
    await services.pool.execute("DELETE FROM faces WHERE face_session_id = $1", session_id)
    assert await services.sync.follower.catch_up() == 1
    assert not services.indexes.is_loaded(session_id)
