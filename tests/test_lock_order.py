"""Deletes racing uploads in one session whose people are being placed: one lock order (the session's
people lock, then rows) for every writer, so no transaction waits in a cycle (DeadlockDetectedError was
answered as 500 to 5 of 30 deletes with 3 uploaders and 1 deleter)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from helpers import create_session, search, upload

from faceserve.core import people
from faceserve.http.appkeys import SERVICES

_UPLOADERS = 3
_UPLOADS_EACH = 4


def marked(path: Path, n: int, mirror: bool = False) -> bytes:
    """The photo (or its mirror) a little larger each time, with a corner mark of its own: new bytes, the
    same people, each face clearer than before, so it becomes its person's cover (a people row to update
    when it joins, and when its photo is deleted)."""
    pixels = cv2.imread(str(path))
    pixels = cv2.resize(pixels, None, fx=1 + 0.04 * n, fy=1 + 0.04 * n, interpolation=cv2.INTER_CUBIC)
    if mirror:
        pixels = cv2.flip(pixels, 1)
    pixels[:6, :6] = np.array([n * 37 % 256, n * 91 % 256, n * 13 % 256], dtype=np.uint8)
    return cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


async def test_deletes_and_uploads_of_people_never_deadlock(client: TestClient, photos: dict[str, Path]) -> None:
    services = client.server.app[SERVICES]
    session_id = await create_session(client)
    # six people, and an index loaded, so each new photo's faces join them at once (the people lock, rows)
    await upload(client, session_id, ("t1.jpg", marked(photos["t1"], 0)), ("m.jpg", marked(photos["t1"], 0, True)))
    await services.jobs.wait(("people", session_id))
    await people.recluster(services, session_id)
    assert (await search(client, session_id, photos["yaoming"].read_bytes()))[0] == 200
    uploaded: asyncio.Queue[int] = asyncio.Queue()
    answers: list[tuple[str, int, str]] = []

    async def uploader(which: int) -> None:
        for n in range(_UPLOADS_EACH):
            form = aiohttp.FormData()
            data = marked(photos["t1"], 1 + which * _UPLOADS_EACH + n, mirror=n % 2 == 1)
            form.add_field("file", data, filename=f"{which}-{n}.jpg", content_type="image/jpeg")
            response = await client.post(f"/api/face/sessions/{session_id}/images", data=form)
            answers.append(("upload", response.status, await response.text()))
            if response.status == 201:
                for image in (await response.json())["data"]["images"]:
                    uploaded.put_nowait(image["image_id"])

    async def deleter(expected: int) -> None:
        for _ in range(expected):
            image_id = await asyncio.wait_for(uploaded.get(), 120)
            response = await client.delete(f"/api/face/image/{image_id}")
            answers.append(("delete", response.status, await response.text()))

    await asyncio.gather(*(uploader(i) for i in range(_UPLOADERS)), deleter(_UPLOADERS * _UPLOADS_EACH))
    problems = [a for a in answers if a[1] not in (200, 201)]
    assert problems == [], problems
    assert len(answers) == 2 * _UPLOADERS * _UPLOADS_EACH


async def waiting_on_locks(services) -> int:
    """Backends of this database waiting for a lock (a row's or an advisory one)."""
    return await services.pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )


async def until_waiting(services, count: int) -> None:
    for _ in range(600):
        if await waiting_on_locks(services) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never {count} backends waiting on locks")


async def test_a_delete_and_a_joining_face_take_the_locks_in_one_order(
    client: TestClient, photos: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The interleaving that deadlocked, made to happen: a delete whose photo holds a person's cover and an
    upload whose face joins that person meet at the person's row."""
    services = client.server.app[SERVICES]
    session_id = await create_session(client)
    await upload(client, session_id, ("t1.jpg", marked(photos["t1"], 0)), ("m.jpg", marked(photos["t1"], 0, True)))
    await services.jobs.wait(("people", session_id))
    await people.recluster(services, session_id)
    assert (await search(client, session_id, photos["yaoming"].read_bytes()))[0] == 200  # faces join at once
    person_id, image_id = (
        await services.pool.fetchrow(
            "SELECT p.id, f.image_id FROM people p JOIN faces f ON f.id = p.cover_face_id "
            "WHERE p.face_session_id = $1 ORDER BY p.id LIMIT 1",
            session_id,
        )
    ).values()
    async with services.pool.acquire() as blocker:
        # another writer holds the person's row a moment: the delete queues for it first, then the upload
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT 1 FROM people WHERE id = $1 FOR UPDATE", person_id)
        deleting = asyncio.ensure_future(client.delete(f"/api/face/image/{image_id}"))
        await until_waiting(services, 1)
        uploading = asyncio.ensure_future(upload_status(client, session_id, marked(photos["t1"], 5)))
        await until_waiting(services, 2)
        await transaction.rollback()
    deleted, uploaded = await asyncio.wait_for(asyncio.gather(deleting, uploading), 60)
    assert (deleted.status, uploaded) == (200, 201), await deleted.text()
    # and the new photo's faces joined their people (a deadlock's victim may be that placement instead)
    failures = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert failures == []
    joined = await services.pool.fetchval(
        "SELECT count(*) FROM face_people fp JOIN face_session_images i ON i.id = fp.image_id "
        "WHERE i.face_session_id = $1 AND i.original_name = 'joining.jpg'",
        session_id,
    )
    assert joined == 6


async def upload_status(client: TestClient, session_id: int, data: bytes) -> int:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="joining.jpg", content_type="image/jpeg")
    response = await client.post(f"/api/face/sessions/{session_id}/images", data=form)
    return response.status


def test_no_two_advisory_locks_share_an_id() -> None:
    """Every lock id in db/locks.py is its own: two branches once gave the live searches' lock and the new
    bytes' lock the same number, so uploads of a photo and the making of a live search took turns for nothing
    (and a session id could collide with a hash of bytes)."""
    from faceserve.db import locks

    ids = {name: value for name, value in vars(locks).items() if name.isupper() and isinstance(value, int)}
    assert len(ids) >= 8
    assert len(set(ids.values())) == len(ids), ids
