"""A fleet on loopback, as README "A fleet behind nginx" deploys it: one real Postgres, two `faceserve serve`
nodes (subprocesses) on it with one shared storage folder, and nginx from deploy/nginx.conf in front.

Every effect one node has on another travels through Postgres: nothing here lets nodes talk to each other.
Needs the nginx binary (`apt-get install -y nginx`; .ci/run installs it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from fleet import ACCEL_PREFIX, Fleet, fleet_of_its_own
from helpers import create_session_at, upload_at

PROPAGATION_LIMIT_S = 1.0
# headers whose values must be the same whoever sends the body (Date and Server are the sender's own)
SERVED_HEADERS = (
    "ETag",
    "Cache-Control",
    "Content-Type",
    "Last-Modified",
    "Accept-Ranges",
    "Content-Range",
    "Content-Length",
    "X-Content-Type-Options",
    "Vary",
)


@pytest.fixture(scope="module")
def fleet(postgres_uri: str, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with fleet_of_its_own(postgres_uri, models_dir, tmp_path_factory.mktemp("fleet"), "fleet") as fleet:
        fleet.start_behind_nginx("a", "b")
        yield fleet




async def _search(
    http: aiohttp.ClientSession, base: str, session_id: int, probe: bytes, by_path: bool = True
) -> tuple[int, list[dict]]:
    form = aiohttp.FormData()
    if not by_path:
        form.add_field("session_id", str(session_id))
    form.add_field("image", probe, filename="probe.jpg", content_type="image/jpeg")
    url = f"{base}/api/face/sessions/{session_id}/search" if by_path else f"{base}/api/face/search"
    async with http.post(url, data=form) as response:
        body = await response.json()
        return response.status, body["data"]["matches"] if response.status == 200 else body


async def _sessions_loaded(http: aiohttp.ClientSession, base: str) -> int:
    async with http.get(base + "/healthz") as response:
        return (await response.json())["data"]["sessions_loaded"]


async def _wait_for(check, what: str, limit_s: float = PROPAGATION_LIMIT_S) -> None:
    """Fails unless a check started within limit_s is true. Timed by when each check starts: what is
    measured is the change reaching the node, not how long a search takes on a busy machine."""
    start = time.monotonic()
    while True:
        asked = time.monotonic()
        if asked - start > limit_s:
            raise AssertionError(f"{what} not seen within {limit_s} s")
        if await check():
            return


async def test_an_add_and_a_delete_reach_the_other_node_within_a_second(fleet: Fleet, photos) -> None:
    a, b = fleet.nodes["a"].url, fleet.nodes["b"].url
    probe = photos["yaoming"].read_bytes()
    async with aiohttp.ClientSession() as http:
        session_id = await create_session_at(http, a)
        await upload_at(http, a, session_id, photos["t1"])
        # B opens the session's index now, so the next upload reaches it as a notification, not a rebuild
        assert await _search(http, b, session_id, probe) == (200, [])

        players = await upload_at(http, a, session_id, photos["players"])

        async def b_finds_it() -> bool:
            status, matches = await _search(http, b, session_id, probe)
            return status == 200 and [m["image_id"] for m in matches] == [players["image_id"]]

        await _wait_for(b_finds_it, "the upload through A in B's search")

        async with http.delete(f"{b}/api/face/image/{players['image_id']}") as response:
            assert response.status == 200

        async def a_lost_it() -> bool:
            status, matches = await _search(http, a, session_id, probe)
            async with http.get(f"{a}/api/face/image/{players['image_id']}") as image:
                return status == 200 and matches == [] and image.status == 404

        await _wait_for(a_lost_it, "the delete through B in A's answers")


def _served(status: int, headers, body: bytes) -> dict:
    return {"status": status, "body": body, **{h: headers.get(h) for h in SERVED_HEADERS}}


async def _fetch(http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str]) -> dict:
    async with http.request(method, url, headers=headers) as response:
        return _served(response.status, response.headers, await response.read())


def _rfc_cases(etag: str, last_modified: str, size: int) -> list[tuple[str, dict[str, str]]]:
    """The requests of tests/test_serving.py: plain, HEAD, 304, 412, 206, 416, If-Range."""
    return [
        ("GET", {}),
        ("HEAD", {}),
        ("GET", {"If-None-Match": etag}),
        ("GET", {"If-None-Match": f"W/{etag}"}),
        ("GET", {"If-None-Match": f'"other", {etag}'}),
        ("GET", {"If-None-Match": "*"}),
        ("GET", {"If-None-Match": '"something-else"'}),
        ("GET", {"If-Modified-Since": last_modified}),
        ("GET", {"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}),
        ("GET", {"If-Match": '"nope"'}),
        ("GET", {"If-Match": etag}),
        ("GET", {"Range": "bytes=10-19"}),
        ("GET", {"Range": "bytes=-100"}),
        ("GET", {"Range": f"bytes={size - 5}-"}),
        ("GET", {"Range": f"bytes={size}-"}),
        ("GET", {"Range": "items=0-5"}),
        ("GET", {"Range": "bytes=0-9", "If-Range": '"stale"'}),
        ("GET", {"Range": "bytes=0-9", "If-Range": etag}),
        ("GET", {"Range": "bytes=0-9", "If-None-Match": '"something-else"'}),
    ]


async def test_images_through_nginx_are_served_as_directly(fleet: Fleet, photos) -> None:
    """Originals, resized copies and face crops: the same status, bytes and headers straight from a node,
    through the file tier (the node hands the body to nginx with X-Accel-Redirect) and through the cache."""
    node = fleet.nodes["a"].url
    async with (
        aiohttp.ClientSession() as http,
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(fleet.files_socket))) as files,
    ):
        session_id = await create_session_at(http, fleet.url)
        image = await upload_at(http, fleet.url, session_id, photos["t1"])
        status, matches = await _search(http, fleet.url, session_id, photos["t1"].read_bytes())
        assert status == 200 and matches
        paths = [
            f"/api/face/image/{image['image_id']}",
            f"/api/face/image/{image['image_id']}?w=320",
            f"/api/face/face/{matches[0]['face_id']}",
        ]
        for path in paths:
            # asked as the file tier asks, a node answers with no body and where nginx finds the file
            async with http.get(node + path, headers={"X-Sendfile-Type": "X-Accel-Redirect"}) as response:
                assert response.status == 200
                assert response.headers["X-Accel-Redirect"].startswith(ACCEL_PREFIX)
                assert await response.read() == b""
            direct = await _fetch(http, "GET", node + path, {})
            assert direct["status"] == 200 and len(direct["body"]) > 100
            cases = _rfc_cases(direct["ETag"], direct["Last-Modified"], len(direct["body"]))
            for method, headers in cases:
                expected = await _fetch(http, method, node + path, headers)
                accel = await _fetch(files, method, "http://localhost" + path, headers)
                assert accel == expected, (path, method, headers)
                for _ in range(2):  # a miss that fills the cache, then a hit
                    cached = await _fetch(http, method, fleet.url + path, headers)
                    if expected["status"] in (206, 304):
                        # nginx's cache leaves Accept-Ranges out of its 206 and 304 (optional there: RFC
                        # 9110 14.3, 15.4.5); everything else is the node's
                        assert cached == {**expected, "Accept-Ranges": None}, (path, method, headers)
                    elif expected["status"] == 200:
                        assert cached == expected, (path, method, headers)
                    else:  # nginx's own 412 and 416 pages: the status and the range they refuse
                        assert (cached["status"], cached["Content-Range"]) == (
                            expected["status"],
                            expected["Content-Range"],
                        ), (path, method, headers)


async def test_session_routes_keep_each_session_on_one_node(fleet: Fleet, photos) -> None:
    """hash $session consistent: every search of a session lands on one node, which alone loads its index."""
    nodes = [fleet.nodes["a"].url, fleet.nodes["b"].url]
    probe = photos["yaoming"].read_bytes()
    async with aiohttp.ClientSession() as http:
        sessions = [await create_session_at(http, fleet.url, f"event {i}") for i in range(6)]
        for session_id in sessions:
            await upload_at(http, fleet.url, session_id, photos["yaoming"])
        before = [await _sessions_loaded(http, n) for n in nodes]
        for _ in range(3):
            for session_id in sessions:
                status, matches = await _search(http, fleet.url, session_id, probe)
                assert status == 200 and len(matches) == 1
        after = [await _sessions_loaded(http, n) for n in nodes]
    assert sum(after) - sum(before) == len(sessions)  # each loaded once, by one node


async def test_a_node_started_later_catches_up_from_postgres(fleet: Fleet, photos) -> None:
    probe = photos["yaoming"].read_bytes()
    async with aiohttp.ClientSession() as http:
        session_id = await create_session_at(http, fleet.url, "before c")
        players = await upload_at(http, fleet.url, session_id, photos["players"])
        gone = await upload_at(http, fleet.url, session_id, photos["yaoming"])
        async with http.delete(f"{fleet.url}/api/face/image/{gone['image_id']}") as response:
            assert response.status == 200
        fleet.start_node("c")
        try:
            await asyncio.to_thread(fleet.wait_ready, "c")
            c = fleet.nodes["c"].url
            status, matches = await _search(http, c, session_id, probe)
            assert status == 200 and [m["image_id"] for m in matches] == [players["image_id"]]
            # and it follows changes from here on, as the others do
            again = await upload_at(http, fleet.nodes["a"].url, session_id, photos["yaoming"])

            async def c_finds_it() -> bool:
                status, matches = await _search(http, c, session_id, probe)
                return status == 200 and again["image_id"] in [m["image_id"] for m in matches]

            await _wait_for(c_finds_it, "an upload through A in the late node's search")
        finally:
            fleet.stop_node("c")


async def test_a_node_killed_under_search_load_costs_no_client_an_error(fleet: Fleet, photos) -> None:
    """kill -9 the node that owns a session while clients search it through nginx: nginx sends the requests
    that failed on it to the other node, which opens the session from Postgres; no client sees an error."""
    probe = photos["yaoming"].read_bytes()
    async with aiohttp.ClientSession() as http:
        session_id = await create_session_at(http, fleet.url, "killed")
        players = await upload_at(http, fleet.url, session_id, photos["players"])
        loaded = {name: await _sessions_loaded(http, node.url) for name, node in fleet.nodes.items()}
        assert (await _search(http, fleet.url, session_id, probe))[0] == 200
        now = {name: await _sessions_loaded(http, node.url) for name, node in fleet.nodes.items()}
        [owner] = [name for name in now if now[name] > loaded[name]]

        answers: list[tuple[int, list]] = []
        stop = asyncio.Event()

        async def client(by_path: bool) -> None:
            while not stop.is_set():
                answers.append(await _search(http, fleet.url, session_id, probe, by_path=by_path))

        clients = [asyncio.create_task(client(by_path=i % 4 != 0)) for i in range(8)]
        await asyncio.sleep(1.0)
        before_kill = len(answers)
        killed_port = fleet.nodes[owner].port
        await asyncio.to_thread(fleet.kill, owner)
        try:
            await asyncio.sleep(3.0)
            stop.set()
            await asyncio.gather(*clients)
        finally:
            # the fleet as the next tests expect it: the killed node back on its port (nginx's upstream)
            await asyncio.to_thread(fleet.start_node, owner, killed_port)
            await asyncio.to_thread(fleet.wait_ready, owner)

    assert before_kill > 0 and len(answers) > before_kill + 8  # searches went on after the kill
    wrong = [a for a in answers if a[0] != 200 or [m["image_id"] for m in a[1]] != [players["image_id"]]]
    assert wrong == [], (wrong[:3], fleet.nginx_error_log()[-3000:])
    # the dead node was tried and failed over from, not merely avoided
    assert f"127.0.0.1:{killed_port}" in fleet.nginx_error_log()


# test hook: a deferred trigger makes every commit of an image row take this advisory lock (shared), so while
# the test holds it an upload waits at its COMMIT, after its file was renamed into place: the last moment of
# an upload in flight, when its file is on the shared storage and its row not yet visible to anyone
_PAUSE_KEY = 727_272
_PAUSE_AT_COMMIT = f"""
CREATE OR REPLACE FUNCTION test_pause_image_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared({_PAUSE_KEY});
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER test_pause_image_commit AFTER INSERT ON face_session_images
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_pause_image_commit();
"""
_NO_PAUSE = (
    "DROP TRIGGER IF EXISTS test_pause_image_commit ON face_session_images; "
    "DROP FUNCTION IF EXISTS test_pause_image_commit();"
)


async def _commits_waiting(conn: asyncpg.Connection) -> int:
    return await conn.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND objsubid = 1 "
        "AND NOT granted",
        _PAUSE_KEY,
    )


async def _until(check, what: str, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {limit_s} s")
        await asyncio.sleep(0.05)


def _photo_files(fleet: Fleet, session_id: int) -> set[str]:
    folder = fleet.storage / "face_sessions" / str(session_id) / "db"
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")} if folder.exists() else set()


async def test_a_node_starting_spares_uploads_in_flight_and_sweeps_only_what_a_killed_node_left(
    fleet: Fleet, photos
) -> None:
    """Node C starts (and sweeps) while an upload through A waits at its commit with its file in place: the
    file survives and the upload completes, file and row. Then an upload through C is caught at the same
    moment and C is killed -9: its intent is abandoned, and the next start (C again) removes its file."""
    a = fleet.nodes["a"].url
    db_name = urlsplit(fleet.database_url).path.lstrip("/")
    test_conn = await asyncpg.connect(fleet.database_url)
    upload: asyncio.Task | None = None
    try:
        await test_conn.execute(_PAUSE_AT_COMMIT)
        # nodes started from here on see a client killed -9 while their backend waits (at the pause) at once
        await test_conn.execute(f'ALTER DATABASE "{db_name}" SET client_connection_check_interval = 100')
        async with aiohttp.ClientSession() as http:
            session_id = await create_session_at(http, a, "sweeps")

            await test_conn.execute("SELECT pg_advisory_lock($1)", _PAUSE_KEY)
            upload = asyncio.create_task(upload_at(http, a, session_id, photos["gdp"]))
            await _until(lambda: _commits_waiting(test_conn), "A's upload at its commit", 60)
            (in_flight,) = _photo_files(fleet, session_id)

            fleet.start_node("c")

            async def c_ready() -> bool:
                assert in_flight in _photo_files(fleet, session_id), "C's start removed A's upload in flight"
                if fleet.nodes["c"].process.poll() is not None:
                    raise AssertionError(f"node c exited:\n{fleet.nodes['c'].log_tail()}")
                try:
                    async with http.get(fleet.nodes["c"].url + "/healthz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await _until(c_ready, "node c ready", 240)
            assert in_flight in _photo_files(fleet, session_id)
            await test_conn.execute("SELECT pg_advisory_unlock($1)", _PAUSE_KEY)
            done = await upload
            assert done["identity"] == f"{session_id}/db/{in_flight}"
            assert (fleet.storage / "face_sessions" / done["identity"]).read_bytes() == photos[
                "gdp"
            ].read_bytes()
            async with http.get(f"{fleet.url}/api/face/image/{done['image_id']}") as response:
                assert response.status == 200
                assert await response.read() == photos["gdp"].read_bytes()
            assert (
                await test_conn.fetchval(
                    "SELECT count(*) FROM pending_uploads WHERE file_path LIKE $1",
                    f"face_sessions/{session_id}/%",
                )
                == 0
            )

            # an upload through C caught at its commit, then C killed: nothing will ever commit it
            await test_conn.execute("SELECT pg_advisory_lock($1)", _PAUSE_KEY)
            upload = asyncio.create_task(upload_at(http, fleet.nodes["c"].url, session_id, photos["t1"]))
            await _until(lambda: _commits_waiting(test_conn), "C's upload at its commit", 60)
            (abandoned,) = _photo_files(fleet, session_id) - {in_flight}
            await asyncio.to_thread(fleet.kill, "c")
            with pytest.raises(aiohttp.ClientError):
                await upload
            upload = None

            async def rolled_back() -> bool:
                return await _commits_waiting(test_conn) == 0

            await _until(rolled_back, "the killed node's transaction rolled back", 10)
            await test_conn.execute("SELECT pg_advisory_unlock($1)", _PAUSE_KEY)
            abandoned_path = f"face_sessions/{session_id}/db/{abandoned}"
            assert (
                await test_conn.fetchval(
                    "SELECT count(*) FROM pending_uploads WHERE file_path = $1", abandoned_path
                )
                == 1
            )
            assert abandoned in _photo_files(fleet, session_id)  # the file with no row a kill -9 leaves

            fleet.start_node("c")  # the next start sweeps it
            await asyncio.to_thread(fleet.wait_ready, "c")
            assert _photo_files(fleet, session_id) == {in_flight}
            rows = await test_conn.fetch(
                "SELECT file_path FROM face_session_images WHERE face_session_id = $1", session_id
            )
            assert [r["file_path"] for r in rows] == [f"face_sessions/{session_id}/db/{in_flight}"]
            assert (
                await test_conn.fetchval(
                    "SELECT count(*) FROM pending_uploads WHERE file_path LIKE $1",
                    f"face_sessions/{session_id}/%",
                )
                == 0
            )
    finally:
        await test_conn.execute("SELECT pg_advisory_unlock_all()")
        if upload is not None:
            await asyncio.gather(upload, return_exceptions=True)
        if "c" in fleet.nodes:
            fleet.stop_node("c")
        await test_conn.execute(_NO_PAUSE)
        await test_conn.execute(f'ALTER DATABASE "{db_name}" RESET client_connection_check_interval')
        await test_conn.close()
