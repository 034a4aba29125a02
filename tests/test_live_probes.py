"""The live probes an upload compares its faces with: cached per session and checked against the session's
live version (one row), compiled into a fixed product when there are many, and never matched once deleted."""

from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace

import aiohttp
import cv2
import numpy as np
import pytest
from helpers import create_session, upload
from sse import open_stream
from test_lock_order import until_waiting

from faceserve import db
from faceserve.app import create_app
from faceserve.core import live_hub
from faceserve.http.appkeys import SERVICES
from faceserve.vision import openvino_runtime

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


async def _create(client, session_id: int, selfie: bytes) -> int:
    form = aiohttp.FormData()
    form.add_field("image", selfie, filename="selfie.jpg", content_type="image/jpeg")
    response = await client.post(f"/api/face/sessions/{session_id}/live", data=form)
    body = await response.json()
    assert response.status == 201, body
    return body["data"]["live_id"]


async def _faces_of(services, image_id: int) -> tuple[list[int], list[SimpleNamespace]]:
    rows = await services.pool.fetch("SELECT id, embedding FROM faces WHERE image_id = $1 ORDER BY id", image_id)
    return [r["id"] for r in rows], [SimpleNamespace(embedding=np.frombuffer(r["embedding"], "<f4")) for r in rows]


async def _random_probes(services, session_id: int, count: int) -> None:
    dim = services.models.engine.embedding_dim
    vectors = np.random.default_rng(count).standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    await services.pool.executemany(
        "INSERT INTO live_searches (face_session_id, embedding, embedding_dim, expires_at) "
        "VALUES ($1, $2, $3, now() + interval '1 hour')",
        [(session_id, v.astype("<f4").tobytes(), dim) for v in vectors],
    )


async def test_the_live_version_changes_with_every_live_search_made_or_removed(client, photos, services):
    session_id = await create_session(client)
    other = await create_session(client)

    async def version(session: int) -> int:
        return (await db.live_probe_version(services.pool, session))[0]

    assert await version(session_id) == 0
    live_id = await _create(client, session_id, photos["yaoming"].read_bytes())
    made = await version(session_id)
    assert made > 0
    assert await version(other) == 0  # another session's is its own
    await _random_probes(services, session_id, 3)  # one statement, made elsewhere (as another node would)
    assert await version(session_id) > made
    before = await version(session_id)
    response = await client.delete(f"/api/face/sessions/{session_id}/live/{live_id}")
    assert response.status == 204
    assert await version(session_id) > before
    before = await version(session_id)
    await services.pool.execute("UPDATE live_searches SET expires_at = now() - interval '1 hour'")
    await db.delete_expired_live_searches(services.pool)  # the sweep
    assert await version(session_id) > before
    assert await version(10**9) == 0  # no such session

    # a session deleted with its live searches, its id used again (an import, a restore): never an old number
    await _create(client, other, photos["yaoming"].read_bytes())
    seen = await version(other)
    response = await client.delete(f"/api/face/sessions/{other}")
    assert response.status == 200
    assert await version(other) > seen  # its live searches went in the cascade
    seen = await version(other)
    async with services.pool.acquire() as conn:
        await db.create_session(conn, "again", session_id=other)
    await _create(client, other, photos["yaoming"].read_bytes())
    assert await version(other) > seen
    # the sweep removes the versions of sessions gone
    await client.delete(f"/api/face/sessions/{other}")
    await db.delete_expired_live_searches(services.pool)
    assert await services.pool.fetchval("SELECT count(*) FROM live_versions WHERE face_session_id = $1", other) == 0


async def test_an_upload_reads_the_probes_again_only_when_they_changed(client, photos, services, monkeypatch):
    session_id = await create_session(client)
    await _create(client, session_id, photos["yaoming"].read_bytes())
    loads = []
    real = db.live_probes

    async def counted(*args, **kwargs):
        loads.append(args[1])
        return await real(*args, **kwargs)

    monkeypatch.setattr(db, "live_probes", counted)
    await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes()))
    await upload(client, session_id, ("gdp.jpg", photos["gdp"].read_bytes()))
    assert loads == [session_id]  # the second upload used the cached copy
    await _random_probes(services, session_id, 1)
    await upload(client, session_id, ("players.jpg", photos["players"].read_bytes()))
    assert loads == [session_id, session_id]
    assert await services.pool.fetchval("SELECT count(*) FROM live_matches") == 1  # Yao in players.jpg


async def test_a_live_search_removed_elsewhere_is_not_matched(client, photos, services):
    session_id = await create_session(client)
    live_id = await _create(client, session_id, photos["yaoming"].read_bytes())
    await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes()))  # caches it
    await services.pool.execute("DELETE FROM live_searches WHERE id = $1", live_id)  # as another node would
    await upload(client, session_id, ("players.jpg", photos["players"].read_bytes()))
    assert await services.pool.fetchval("SELECT count(*) FROM live_matches") == 0


async def test_deleting_a_live_search_waits_for_an_upload_that_read_it(client, photos, services):
    """An upload that compared its faces with a live search records its match before that live search can go
    (else the match's row would name a live search deleted meanwhile and fail the upload)."""
    session_id = await create_session(client)
    live_id = await _create(client, session_id, photos["yaoming"].read_bytes())
    players = (await upload(client, session_id, ("players.jpg", photos["players"].read_bytes())))[0]
    await services.pool.execute("DELETE FROM live_matches")
    face_ids, faces = await _faces_of(services, players["image_id"])
    async with services.pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()  # an upload in flight: it has read the session's live searches
        await services.live.match_new_faces(conn, session_id, players["image_id"], face_ids[:1], faces[:1])
        deleting = asyncio.ensure_future(client.delete(f"/api/face/sessions/{session_id}/live/{live_id}"))
        await until_waiting(services, 1)
        await asyncio.sleep(0.3)
        assert not deleting.done()
        matched = await services.live.match_new_faces(conn, session_id, players["image_id"], face_ids, faces)
        assert matched == [live_id]
        await transaction.commit()
    response = await asyncio.wait_for(deleting, 30)
    assert response.status == 204
    assert await services.pool.fetchval("SELECT count(*) FROM live_matches") == 0  # went with it


def test_compiled_probes_give_numpys_answer() -> None:
    if not openvino_runtime.installed():
        pytest.skip("OpenVINO has no wheel for this platform")
    rng = np.random.default_rng(7)
    probes = rng.standard_normal((3000, 512)).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    faces = rng.standard_normal((5, 512)).astype(np.float32)
    faces /= np.linalg.norm(faces, axis=1, keepdims=True)
    # a few probes near a face, at distances on both sides of the threshold
    for row, (face, mix) in enumerate([(0, 0.9), (1, 0.5), (2, 0.36), (3, 0.37), (4, 0.2)]):
        near = mix * faces[face] + (1 - mix) * probes[row]
        probes[row] = near / np.linalg.norm(near)
    compiled = openvino_runtime.NearestRows(probes)
    for count in (1, 5):
        expected = live_hub.nearest_within(probes, faces[:count], 0.5)
        cached = live_hub._Probes(1, np.arange(len(probes)), probes, np.zeros(len(probes)), compiled)
        got = cached.nearest_within(faces[:count], 0.5)
        assert len(expected[0]) >= 1
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_allclose(got[2], expected[2], atol=1e-5)


async def test_a_session_with_many_probes_matches_through_its_compiled_copy(client, photos, services):
    """Enough probes that an upload's product starts on a thread before Postgres confirms its set: the
    compiled copy once ready, and a set changed meanwhile compared again."""
    if not openvino_runtime.installed():
        pytest.skip("OpenVINO has no wheel for this platform")
    assert 7_000 * 16 >= live_hub._THREAD_FROM  # players.jpg's faces (16-18 found): the early product
    session_id = await create_session(client)
    live_id = await _create(client, session_id, photos["yaoming"].read_bytes())
    await _random_probes(services, session_id, 7_000)
    await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes()))  # loads them, compiles meanwhile
    await services.jobs.wait(("live probes", session_id))
    assert services.live._probes[session_id].compiled is not None
    players = (await upload(client, session_id, ("players.jpg", photos["players"].read_bytes())))[0]
    rows = await services.pool.fetch("SELECT live_search_id, image_id FROM live_matches")
    assert [(r["live_search_id"], r["image_id"]) for r in rows] == [(live_id, players["image_id"])]
    # another live search: the early product ran on the set without it, so it is compared again (numpy's
    # product until the new set is compiled), and both get the photo
    second = await _create(client, session_id, photos["yaoming"].read_bytes())
    mirrored = cv2.imencode(".jpg", cv2.flip(cv2.imread(str(photos["players"])), 1))[1].tobytes()
    again = (await upload(client, session_id, ("mirrored.jpg", mirrored)))[0]
    await services.jobs.wait(("live probes", session_id))
    assert services.live._probes[session_id].compiled is not None
    rows = await services.pool.fetch("SELECT live_search_id FROM live_matches WHERE image_id = $1", again["image_id"])
    assert sorted(r["live_search_id"] for r in rows) == [live_id, second]


async def test_a_changed_set_is_read_as_its_new_rows_and_what_is_left(client, photos, services, monkeypatch):
    session_id = await create_session(client)
    first = await _create(client, session_id, photos["yaoming"].read_bytes())
    await _random_probes(services, session_id, 5)
    await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes()))  # caches them
    read_after = []
    real = db.live_probes

    async def recorded(conn, session, dim, after=0):
        read_after.append(after)
        return await real(conn, session, dim, after)

    monkeypatch.setattr(db, "live_probes", recorded)

    async def cached_equals_postgres() -> None:
        held = services.live._probes[session_id]
        ids, vectors, expires = await real(services.pool, session_id, services.models.engine.embedding_dim)
        np.testing.assert_array_equal(held.ids, ids)
        np.testing.assert_array_equal(held.vectors, vectors)
        np.testing.assert_array_equal(held.expires, expires)

    top = int(services.live._probes[session_id].ids[-1])
    await _random_probes(services, session_id, 3)
    await services.pool.execute("DELETE FROM live_searches WHERE id = $1", first)
    await upload(client, session_id, ("gdp.jpg", photos["gdp"].read_bytes()))
    assert read_after == [top]  # only the rows made since
    await cached_equals_postgres()

    # a row whose id is below those cached but which the cache never saw (made without the session's lock):
    # everything is read again
    await services.pool.execute(
        "INSERT INTO live_searches (id, face_session_id, embedding, embedding_dim, expires_at) "
        "SELECT $1, face_session_id, embedding, embedding_dim, expires_at FROM live_searches "
        "WHERE face_session_id = $2 ORDER BY id LIMIT 1",
        first,
        session_id,
    )
    await upload(client, session_id, ("players.jpg", photos["players"].read_bytes()))
    assert read_after[1:] == [int(services.live._probes[session_id].ids[-1]), 0]
    await cached_equals_postgres()


async def test_an_upload_matching_more_live_searches_than_one_announcement_names_wakes_them_all(
    client, photos, services
):
    # ids of 18 digits: naming all of them would pass Postgres's 8,000-byte payload (and fail the upload)
    await services.pool.execute("SELECT setval('live_searches_id_seq', 100000000000000000)")
    session_id = await create_session(client)
    first = await _create(client, session_id, photos["yaoming"].read_bytes())
    many = 450
    assert many > db.live._MOST_NAMED and many * 19 > 8000
    await services.pool.execute(  # the same guest live on many phones: every one matches
        "INSERT INTO live_searches (face_session_id, embedding, embedding_dim, expires_at) "
        "SELECT face_session_id, embedding, embedding_dim, expires_at FROM live_searches, generate_series(2, $2) "
        "WHERE id = $1",
        first,
        many,
    )
    url = str(client.make_url(f"/api/face/sessions/{session_id}/live/{first}/events"))
    async with aiohttp.ClientSession() as http:
        stream = await open_stream(http, url, {"Authorization": client.session.headers["Authorization"]})
        players = (await upload(client, session_id, ("players.jpg", photos["players"].read_bytes())))[0]
        event = await stream.next_match()
        assert event.data["image_id"] == players["image_id"]
        stream.response.close()
    assert await services.pool.fetchval("SELECT count(*) FROM live_matches") == many


async def test_a_session_holds_at_most_live_searches_per_session(settings, engine, aiohttp_client, photos):
    client = await aiohttp_client(create_app(dataclasses.replace(settings, live_searches_per_session=2), engine))
    services = client.server.app[SERVICES]
    session_id = await create_session(client)
    first = await _create(client, session_id, photos["yaoming"].read_bytes())
    await _create(client, session_id, photos["yaoming"].read_bytes())
    form = aiohttp.FormData()
    form.add_field("image", photos["yaoming"].read_bytes(), filename="selfie.jpg", content_type="image/jpeg")
    response = await client.post(f"/api/face/sessions/{session_id}/live", data=form)
    assert response.status == 409
    assert (await response.json())["error"]["code"] == "too_many_live_searches"
    other = await create_session(client)  # another session's are its own
    await _create(client, other, photos["yaoming"].read_bytes())
    # an expired one no longer counts
    await services.pool.execute("UPDATE live_searches SET expires_at = now() WHERE id = $1", first)
    await _create(client, session_id, photos["yaoming"].read_bytes())
