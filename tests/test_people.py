"""People of a session on real photos and the real service: clustering, listing and paging, a person's
photos, new photos joining at once, an organiser's merge and split surviving re-clustering, deletes."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from helpers import create_session, upload
from yarl import URL

from faceserve import db
from faceserve.app import create_app
from faceserve.config import Settings
from faceserve.core import people
from faceserve.db import binary_copy
from faceserve.http.appkeys import SERVICES


def _jpeg(pixels) -> bytes:
    return cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def mirrored(path: Path) -> bytes:
    """Another photo of the same people: the picture flipped left to right."""
    return _jpeg(cv2.flip(cv2.imread(str(path)), 1))


def rescaled(path: Path, factor: float) -> bytes:
    pixels = cv2.imread(str(path))
    return _jpeg(cv2.resize(pixels, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA))


async def list_all(client: TestClient, session_id: int, limit: int = 100) -> list[dict]:
    found, after = [], ""
    while True:
        response = await client.get(f"/api/face/sessions/{session_id}/people", params={"limit": limit, "after": after})
        body = await response.json()
        assert response.status == 200, body
        found += body["data"]["people"]
        if body["data"]["next_after"] is None:
            return found
        after = body["data"]["next_after"]


async def images_of(client: TestClient, session_id: int, person_id: int, limit: int = 100) -> list[dict]:
    found, after = [], 0
    while True:
        response = await client.get(
            f"/api/face/sessions/{session_id}/people/{person_id}/images", params={"limit": limit, "after": after}
        )
        body = await response.json()
        assert response.status == 200, body
        found += body["data"]["images"]
        if body["data"]["next_after"] is None:
            return found
        after = body["data"]["next_after"]


async def recluster(client: TestClient, session_id: int) -> people.ClusteringReport:
    services = client.server.app[SERVICES]
    # a re-clustering the uploads started in the background holds the session's lock until it ends
    await services.jobs.wait(("people", session_id))
    report = await people.recluster(services, session_id)
    assert report is not None
    return report


async def person_with_image(client: TestClient, session_id: int, image_id: int) -> dict | None:
    for person in await list_all(client, session_id):
        if image_id in {i["image_id"] for i in await images_of(client, session_id, person["person_id"])}:
            return person
    return None


@pytest.fixture
async def event(client: TestClient, photos: dict[str, Path]) -> dict:
    """Yao Ming in two photos (players.jpg, yaoming.jpg), the six people of t1.jpg in it and its mirror."""
    session_id = await create_session(client)
    images = await upload(
        client,
        session_id,
        ("players.jpg", photos["players"].read_bytes()),
        ("yaoming.jpg", photos["yaoming"].read_bytes()),
        ("t1.jpg", photos["t1"].read_bytes()),
        ("t1-mirror.jpg", mirrored(photos["t1"])),
    )
    ids = {image["original_name"]: image["image_id"] for image in images}
    await recluster(client, session_id)
    return {"session_id": session_id, **ids}


async def test_clustering_finds_the_people_in_several_photos(client: TestClient, event: dict) -> None:
    session_id = event["session_id"]
    found = await list_all(client, session_id)
    # Yao Ming and the six people of t1.jpg; everyone else in players.jpg is in one photo only
    assert len(found) == 7
    assert all(p["image_count"] == 2 and p["face_count"] == 2 for p in found)
    photo_sets = []
    for person in found:
        images = await images_of(client, session_id, person["person_id"])
        photo_sets.append(frozenset(i["image_id"] for i in images))
        for image in images:
            assert image["url"].endswith(f"/api/face/image/{image['image_id']}")
            assert image["identity"].startswith(f"{session_id}/db/")
            assert len(image["box"]) == 4
            # the crop of this person's face in that photo, served (and signed) as the cover is
            assert URL(image["face_url"]).path == f"/api/face/face/{image['face_id']}"
            crop = await client.get(URL(image["face_url"]).path_qs)
            assert crop.status == 200 and crop.content_type == "image/jpeg"
    assert photo_sets.count(frozenset({event["players.jpg"], event["yaoming.jpg"]})) == 1
    assert photo_sets.count(frozenset({event["t1.jpg"], event["t1-mirror.jpg"]})) == 6
    # the cover is one of the person's faces, served as a crop
    yao = await person_with_image(client, session_id, event["yaoming.jpg"])
    assert yao is not None
    cover = await client.get(URL(yao["cover_url"]).path_qs)
    assert cover.status == 200 and cover.content_type == "image/jpeg"
    # yaoming.jpg's face (105 px, frontal) is clearer than the 40 px one in the team photo
    yao_faces = {i["image_id"]: i["face_id"] for i in await images_of(client, session_id, yao["person_id"])}
    assert yao["cover_face_id"] == yao_faces[event["yaoming.jpg"]]


async def test_people_pages_follow_one_another(client: TestClient, event: dict) -> None:
    session_id = event["session_id"]
    whole = await list_all(client, session_id)
    paged = await list_all(client, session_id, limit=3)
    assert [p["person_id"] for p in paged] == [p["person_id"] for p in whole]
    yao = await person_with_image(client, session_id, event["yaoming.jpg"])
    assert yao is not None
    one_by_one = await images_of(client, session_id, yao["person_id"], limit=1)
    assert [i["image_id"] for i in one_by_one] == sorted([event["players.jpg"], event["yaoming.jpg"]])
    bad = await client.get(f"/api/face/sessions/{session_id}/people", params={"after": "x"})
    assert bad.status == 400


async def test_a_new_photo_joins_its_person_at_once(client: TestClient, event: dict, photos: dict[str, Path]) -> None:
    session_id = event["session_id"]
    (image,) = await upload(client, session_id, ("yao-again.jpg", rescaled(photos["yaoming"], 0.8)))
    yao = await person_with_image(client, session_id, image["image_id"])
    assert yao is not None and yao["image_count"] == 3
    ids = {i["image_id"] for i in await images_of(client, session_id, yao["person_id"])}
    assert ids == {event["players.jpg"], event["yaoming.jpg"], image["image_id"]}
    # most photos first
    assert (await list_all(client, session_id))[0]["person_id"] == yao["person_id"]


async def test_a_face_below_the_floor_joins_no_one(
    client: TestClient, event: dict, photos: dict[str, Path], settings: Settings
) -> None:
    session_id = event["session_id"]
    # yaoming.jpg's face is 105 px: at a quarter it is below PEOPLE_MIN_FACE_SIZE (still indexed, >= 20 px)
    small = rescaled(photos["yaoming"], 0.28)
    (image,) = await upload(client, session_id, ("yao-tiny.jpg", small))
    assert image["faces"] == 1
    assert await person_with_image(client, session_id, image["image_id"]) is None
    await recluster(client, session_id)
    assert await person_with_image(client, session_id, image["image_id"]) is None


async def test_merge_and_split_survive_reclustering(client: TestClient, event: dict) -> None:
    session_id = event["session_id"]
    base = f"/api/face/sessions/{session_id}/people"
    yao = await person_with_image(client, session_id, event["yaoming.jpg"])
    assert yao is not None
    yao_images = await images_of(client, session_id, yao["person_id"])
    team_face = next(i["face_id"] for i in yao_images if i["image_id"] == event["players.jpg"])

    # the organiser says the team photo's face is someone else
    response = await client.post(f"{base}/{yao['person_id']}/split", json={"face_ids": [team_face]})
    body = await response.json()
    assert response.status == 201, body
    split_off = body["data"]["new_person"]["person_id"]
    assert body["data"]["person"]["face_count"] == 1 and body["data"]["new_person"]["face_count"] == 1

    # and that two of t1's people are one
    t1_people = [p for p in await list_all(client, session_id) if p["person_id"] not in (yao["person_id"], split_off)]
    first, second = t1_people[0]["person_id"], t1_people[1]["person_id"]
    response = await client.post(f"{base}/{first}/merge", json={"other": second})
    body = await response.json()
    assert response.status == 200, body
    assert body["data"]["person"]["face_count"] == 4 and body["data"]["person"]["image_count"] == 2
    gone = await client.get(f"{base}/{second}/images")
    assert gone.status == 404 and (await gone.json())["error"]["code"] == "person_not_found"

    before = {p["person_id"]: p for p in await list_all(client, session_id)}
    await recluster(client, session_id)
    after = {p["person_id"]: p for p in await list_all(client, session_id)}
    assert after == before
    assert [i["face_id"] for i in await images_of(client, session_id, split_off)] == [team_face]
    assert len(await images_of(client, session_id, first)) == 2


async def test_merge_and_split_refuse_bad_requests(client: TestClient, event: dict) -> None:
    session_id = event["session_id"]
    base = f"/api/face/sessions/{session_id}/people"
    person = (await list_all(client, session_id))[0]["person_id"]
    faces = [i["face_id"] for i in await images_of(client, session_id, person)]
    for path, body, status in [
        (f"{base}/{person}/merge", {"other": person}, 400),
        (f"{base}/{person}/merge", {"other": "7"}, 400),
        (f"{base}/{person}/merge", {"other": 999_999}, 404),
        (f"{base}/999999/merge", {"other": person}, 404),
        (f"{base}/{person}/split", {"face_ids": []}, 400),
        (f"{base}/{person}/split", {"face_ids": faces}, 400),  # nothing would be left
        (f"{base}/{person}/split", {"face_ids": [999_999]}, 400),
        (f"{base}/{person}/split", [1], 400),
    ]:
        response = await client.post(path, json=body)
        assert response.status == status, (path, body, await response.text())
    not_json = await client.post(f"{base}/{person}/merge", data=b"{nope")
    assert not_json.status == 400
    other_session = await create_session(client, "other")
    elsewhere = await client.get(f"/api/face/sessions/{other_session}/people/{person}/images")
    assert elsewhere.status == 404
    missing = await client.get("/api/face/sessions/999999/people")
    assert missing.status == 404
    # nothing changed
    assert sorted(i["face_id"] for i in await images_of(client, session_id, person)) == sorted(faces)


async def test_deleting_photos_updates_people_at_once(client: TestClient, event: dict) -> None:
    session_id = event["session_id"]
    yao = await person_with_image(client, session_id, event["yaoming.jpg"])
    assert yao is not None
    assert (await client.delete(f"/api/face/image/{event['yaoming.jpg']}")).status == 200
    left = {p["person_id"]: p for p in await list_all(client, session_id)}
    assert left[yao["person_id"]]["image_count"] == 1 and left[yao["person_id"]]["face_count"] == 1
    assert [i["image_id"] for i in await images_of(client, session_id, yao["person_id"])] == [event["players.jpg"]]
    assert (await client.delete(f"/api/face/image/{event['players.jpg']}")).status == 200
    # emptied: gone
    assert yao["person_id"] not in {p["person_id"] for p in await list_all(client, session_id)}
    gone = await client.get(f"/api/face/sessions/{session_id}/people/{yao['person_id']}/images")
    assert gone.status == 404


async def test_cli_reclusters_with_progress(client: TestClient, event: dict, settings: Settings) -> None:
    session_id = event["session_id"]
    yao = await person_with_image(client, session_id, event["yaoming.jpg"])
    assert yao is not None
    env = {**os.environ, "DATABASE_URL": settings.database_url or ""}
    command = [sys.executable, "-m", "faceserve", "people", "--session", str(session_id), "--recluster",
               "--storage", str(settings.storage), "--models-dir", str(settings.models_dir)]
    done = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "neighbours..." in done.stderr and "merging..." in done.stderr
    assert "clustered 31 faces" in done.stdout  # 18 in players.jpg, 1 in yaoming.jpg, 6 in each t1
    assert "7 people" in done.stdout
    # the same people, the same ids: the clustering kept them
    assert f"person {yao['person_id']}: 2 photos, 2 faces" in done.stdout
    missing = await asyncio.to_thread(
        subprocess.run, [*command[:5], "999999", *command[6:]], env=env, capture_output=True, text=True, timeout=300
    )
    assert missing.returncode == 1 and "999999 does not exist" in missing.stderr


async def test_enough_new_faces_recluster_in_the_background(
    settings: Settings, engine, aiohttp_client, photos: dict[str, Path]
) -> None:
    app = create_app(dataclasses.replace(settings, people_recluster_min_changes=6), engine)
    client = await aiohttp_client(app)
    services = app[SERVICES]
    session_id = await create_session(client)
    await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes()))
    await services.jobs.wait(("people", session_id))
    assert await list_all(client, session_id) == []  # six people, each in one photo: nobody yet
    # the mirror's faces find no person to join; the six changed faces start a clustering that pairs them
    await upload(client, session_id, ("t1-mirror.jpg", mirrored(photos["t1"])))
    await services.jobs.wait(("people", session_id))
    found = await list_all(client, session_id)
    assert len(found) == 6 and all(p["image_count"] == 2 for p in found)


async def test_one_clustering_of_a_session_at_a_time(client: TestClient, event: dict) -> None:
    services = client.server.app[SERVICES]
    session_id = event["session_id"]
    async with services.pool.acquire() as elsewhere:  # another worker or node, clustering this session
        assert await db.try_lock_clustering(elsewhere, session_id)
        assert await people.recluster(services, session_id) is None
        await db.unlock_clustering(elsewhere, session_id)
    assert await people.recluster(services, session_id) is not None


async def test_a_big_sessions_graph_comes_from_cells_of_its_own(
    settings: Settings, engine, aiohttp_client, photos: dict[str, Path]
) -> None:
    # a session at or past APPROXIMATE_MIN_FACES builds its graph apart from the served index (clustering.py)
    app = create_app(dataclasses.replace(settings, approximate_min_faces=10), engine)
    client = await aiohttp_client(app)
    session_id = await create_session(client)
    await upload(
        client,
        session_id,
        ("players.jpg", photos["players"].read_bytes()),
        ("yaoming.jpg", photos["yaoming"].read_bytes()),
        ("t1.jpg", photos["t1"].read_bytes()),
        ("t1-mirror.jpg", mirrored(photos["t1"])),
    )
    stages: list[str] = []
    await app[SERVICES].jobs.wait(("people", session_id))  # one the uploads started holds the lock
    report = await people.recluster(app[SERVICES], session_id, lambda stage, done, total: stages.append(stage))
    assert report is not None and report.faces == 31 and report.people == 7
    assert "neighbours" in stages and "merging" in stages
    found = await list_all(client, session_id)
    assert len(found) == 7 and all(p["image_count"] == 2 for p in found)


async def test_a_reclustering_reads_the_faces_in_one_pass_as_they_are(client: TestClient, event: dict) -> None:
    services = client.server.app[SERVICES]
    session_id = event["session_id"]
    base = f"/api/face/sessions/{session_id}/people"
    first, second = [p["person_id"] for p in await list_all(client, session_id)][:2]
    assert (await client.post(f"{base}/{first}/merge", json={"other": second})).status == 200
    dim = services.models.engine.embedding_dim
    async with services.pool.acquire() as conn:
        facts = await db.session_face_facts(conn, session_id, dim)
        assignments = await db.session_assignments(conn, session_id)
        # the binary COPY's arrays hold what the rows hold, row for row
        rows = await conn.fetch(
            "SELECT id, image_id, box, landmarks, det_score FROM faces WHERE face_session_id = $1 ORDER BY id",
            session_id,
        )
        placements = await conn.fetch(
            "SELECT face_id, person_id, organiser_placed FROM face_people WHERE face_session_id = $1 ORDER BY face_id",
            session_id,
        )
        # a NULL, or arrays of other lengths (even ones that add up), break the fixed layout: refused, never
        # misread
        with pytest.raises(RuntimeError, match="layout"):
            await db.copy_records(
                conn, [("box", ">f4", 4)], "SELECT * FROM (VALUES (ARRAY[1, 2, 3]::real[]), (ARRAY[1, 2, 3, 4, 5]))"
            )
        with pytest.raises(RuntimeError, match="length"):
            await db.copy_records(conn, [("id", ">i8", 0), ("x", ">i8", 0)], "SELECT 1::bigint, NULL::bigint")
    assert len(rows) == 31
    assert facts.ids.tolist() == [r["id"] for r in rows]
    assert facts.image_ids.tolist() == [r["image_id"] for r in rows]
    assert facts.boxes.tolist() == [list(r["box"]) for r in rows]
    assert facts.landmarks.tolist() == [list(r["landmarks"]) for r in rows]
    assert facts.det_scores.tolist() == [r["det_score"] for r in rows]
    assert assignments.face_ids.tolist() == [r["face_id"] for r in placements]
    assert assignments.person_ids.tolist() == [r["person_id"] for r in placements]
    assert assignments.organiser_placed.tolist() == [r["organiser_placed"] for r in placements]
    assert 0 < int(assignments.organiser_placed.sum()) < len(placements)

    # and a re-clustering from them gives the same people: same ids, same faces
    async def people_and_faces() -> dict[int, list[int]]:
        return {
            p["person_id"]: sorted(await db.person_face_ids(services.pool, p["person_id"]))
            for p in await list_all(client, session_id)
        }

    before = await people_and_faces()
    report = await recluster(client, session_id)
    assert report.faces == 31 and report.people == 6
    assert await people_and_faces() == before


async def test_a_sessions_embeddings_stream_in_pieces_of_any_size(
    client: TestClient, event: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """session_embeddings parses COPY bytes as they arrive: records cut anywhere by the pieces, and by the
    batches gathered for the parsing thread, come out whole."""
    services = client.server.app[SERVICES]
    session_id, dim = event["session_id"], services.models.engine.embedding_dim
    columns = [("id", ">i8", 0), ("embedding", f"({dim},)<f4", 0)]
    query = "SELECT id, embedding FROM faces WHERE face_session_id = $1 AND embedding_dim = $2 ORDER BY id"
    async with services.pool.acquire() as conn:
        ids, vectors = await db.session_embeddings(conn, session_id, dim)
        # a count given by the caller only sizes the arrays: too small, they grow; too big, they are cut
        for expected in (0, 1, 31, 100):
            assert [a.tobytes() for a in await db.session_embeddings(conn, session_id, dim, expected)] == [
                ids.tobytes(),
                vectors.tobytes(),
            ], expected
        rows = await conn.fetch(query, session_id, dim)
        whole = io.BytesIO()
        await conn.copy_from_query(query, session_id, dim, output=whole, format="binary")
    assert ids.tolist() == [r["id"] for r in rows] and len(ids) == 31
    assert vectors.tobytes() == b"".join(r["embedding"] for r in rows)
    data = whole.getvalue()
    # a record is 2,070 bytes: batches of 3,000 cut them too
    for drain in (3_000, binary_copy.DRAIN_BYTES):
        monkeypatch.setattr(binary_copy, "DRAIN_BYTES", drain)
        for piece in (1, 7, 1000, 4099, len(data)):
            got_ids: list[int] = []
            got_vectors: list[bytes] = []

            def keep(records, got_ids=got_ids, got_vectors=got_vectors) -> None:
                got_ids.extend(records["id"].tolist())
                got_vectors.append(records["embedding"].astype("<f4").tobytes())

            stream = binary_copy._RecordStream(columns, keep)
            for start in range(0, len(data), piece):
                await stream.write(data[start : start + piece])
            await stream.finish()
            assert got_ids == ids.tolist() and b"".join(got_vectors) == vectors.tobytes(), (drain, piece)
    # a COPY cut short is an error, never a shorter session
    short = binary_copy._RecordStream(columns, lambda records: None)
    await short.write(data[:-100])
    with pytest.raises(RuntimeError, match="end"):
        await short.finish()
    # and so is one whose trailer is missing, or that is no binary COPY: the stream and the whole-buffer
    # parser check alike
    for parse in (_parse_streamed, _parse_whole):
        with pytest.raises(RuntimeError, match="end"):
            await parse(data[:-2], columns)
        with pytest.raises(RuntimeError, match="end"):
            await parse(data + data[-2:], columns)
        with pytest.raises(RuntimeError, match="not a binary COPY"):
            await parse(b"PGCOPY\n\xff\r\n\x01" + data[11:], columns)
        assert (await parse(data, columns)).tolist() == ids.tolist()


async def _parse_streamed(data: bytes, columns: list) -> np.ndarray:
    got: list[np.ndarray] = []
    stream = binary_copy._RecordStream(columns, lambda records: got.append(records["id"].copy()))
    await stream.write(data)
    await stream.finish()
    return np.concatenate(got)


async def _parse_whole(data: bytes, columns: list) -> np.ndarray:
    return binary_copy.parse_records(io.BytesIO(data), columns)["id"]


async def test_a_sessions_embeddings_are_parsed_off_the_event_loop(
    client: TestClient, event: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copying a big session's COPY bytes into its arrays and checking them (2 GB for a million faces) runs
    on a worker thread, batch by batch while the COPY streams, never on the event loop's."""
    services = client.server.app[SERVICES]
    session_id, dim = event["session_id"], services.models.engine.embedding_dim
    loop_thread = threading.current_thread()
    parsed_on: list[tuple[threading.Thread, int]] = []
    feed = binary_copy._RecordParser.feed

    def recording_feed(parser, pieces: list[bytes]) -> None:
        parsed_on.append((threading.current_thread(), sum(len(p) for p in pieces)))
        feed(parser, pieces)

    monkeypatch.setattr(binary_copy._RecordParser, "feed", recording_feed)
    # 31 faces are 64 KB of COPY: batches of 8 KB stand for a million faces' batches of 32 MB
    monkeypatch.setattr(binary_copy, "DRAIN_BYTES", 8 * 2**10)
    async with services.pool.acquire() as conn:
        ids, vectors = await db.session_embeddings(conn, session_id, dim)
        stored = await conn.fetch(
            "SELECT id, embedding FROM faces WHERE face_session_id = $1 ORDER BY id", session_id
        )
    assert ids.tolist() == [r["id"] for r in stored] and len(ids) == 31
    assert vectors.tobytes() == b"".join(r["embedding"] for r in stored)
    # every byte went through the parser, in batches while the COPY streamed and one at its end, none of them
    # on the loop's thread
    assert sum(size for _, size in parsed_on) == 19 + 31 * (2 + 4 + 8 + 4 + 4 * dim) + 2
    assert len(parsed_on) >= 2
    assert all(thread is not loop_thread for thread, _ in parsed_on)


async def test_a_shutdown_during_a_reclustering_returns_promptly(
    client: TestClient, photos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The services stop while a background re-clustering reads the session's faces: the job is cancelled
    and awaited before its connections go back and the pool closes, and nothing waits on a COPY that the
    server had already finished (asyncpg then waits forever for the answer to its cancel request: the CI
    hang of issue 28), and the session's clustering lock is free again."""
    services = client.server.app[SERVICES]
    session_id = await create_session(client)
    await upload(client, session_id, ("yaoming.jpg", photos["yaoming"].read_bytes()))
    await services.jobs.wait(("people", session_id))
    reading, release = asyncio.Event(), asyncio.Event()
    write = binary_copy._RecordStream.write

    async def slow_write(stream, data: bytes) -> None:  # a slow parse of the COPY's last bytes
        await write(stream, data)
        reading.set()
        await release.wait()

    monkeypatch.setattr(binary_copy._RecordStream, "write", slow_write)
    people.schedule_recluster(services, session_id)
    await asyncio.wait_for(reading.wait(), 10)
    try:
        await asyncio.wait_for(services.jobs.close(), 5)
        async with services.pool.acquire() as conn:
            assert await db.try_lock_clustering(conn, session_id)
            await db.unlock_clustering(conn, session_id)
        await asyncio.wait_for(client.close(), 10)
    finally:
        release.set()
