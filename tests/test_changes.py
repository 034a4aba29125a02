"""A change to a session (core/changes.py) reaches this process only once its transaction commits, and a
change that fails leaves nothing behind: not its rows, not its tombstones, not an upload's bytes or intent."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from helpers import create_session, original_exists, stored_originals, upload

from faceserve import db, layout
from faceserve.core import changes, ingest


class _Refused(Exception):
    pass


async def _delete_in_a_change(services, image_id: int, fail: bool) -> None:
    async with changes.session_change(services) as change:
        found = await db.get_image(change.conn, image_id)
        await change.lock_people(found.face_session_id)
        persons = await db.persons_of_image(change.conn, image_id)
        image, face_ids = await db.delete_image_row(change.conn, image_id)
        await change.image_deleted(image)
        await change.faces_removed(face_ids, persons)
        if fail:
            raise _Refused


async def _indexed(services, session_id: int, probe: np.ndarray) -> set[int]:
    _, ids = await services.indexes.search(session_id, probe, 10)
    return {int(i) for i in ids.ravel() if i >= 0}


async def test_a_delete_reaches_this_process_only_once_committed(client, services, photos: dict[str, Path]):
    session_id = await create_session(client)
    image = (await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes())))[0]
    face_ids, vectors = await db.session_embeddings(services.pool, session_id, services.engine.embedding_dim)
    assert len(face_ids)
    assert (await client.get(f"/api/face/image/{image['image_id']}")).status == 200  # now in the served cache
    assert services.served.get(image["image_id"]) is not None
    file_path = layout.file_path(session_id, image["identity"].split("/")[-1])

    with pytest.raises(_Refused):
        await _delete_in_a_change(services, image["image_id"], fail=True)
    assert await db.get_image(services.pool, image["image_id"]) is not None
    assert await original_exists(services, file_path)
    assert set(face_ids.tolist()) <= await _indexed(services, session_id, vectors)
    assert services.served.get(image["image_id"]) is not None
    assert await services.pool.fetchval("SELECT count(*) FROM deleted_images") == 0

    await _delete_in_a_change(services, image["image_id"], fail=False)
    assert await db.get_image(services.pool, image["image_id"]) is None
    assert not await original_exists(services, file_path)
    assert not set(face_ids.tolist()) & await _indexed(services, session_id, vectors)
    assert services.served.get(image["image_id"]) is None
    assert await services.pool.fetchval("SELECT bool_and(files_removed) FROM deleted_images") is True


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_an_upload_whose_transaction_fails_takes_its_bytes_and_intent_back(
    client, services, photos: dict[str, Path]
):
    session_id = await create_session(client)
    data = photos["gdp"].read_bytes()
    pending = await services.storage.receive(session_id, _chunks(data), services.settings.max_upload_bytes)
    file_path = layout.file_path(session_id, "gdp.jpg")
    with pytest.raises(_Refused):
        async with changes.session_change(services, session_id, file_intents=[file_path]) as change:
            image = await db.insert_image(
                change.conn,
                session_id=session_id,
                file_path=file_path,
                stored_name="gdp.jpg",
                original_name="gdp.jpg",
                content_type="image/jpeg",
                byte_size=len(data),
                sha256=hashlib.sha256(data).digest(),
                width=1,
                height=1,
                bytes_in=services.stores.configured.kind,
            )
            change.bytes_saved(await services.stores.configured.save(change.conn, pending, image))
            assert await original_exists(services, file_path)
            raise _Refused
    assert not await original_exists(services, file_path)
    assert await services.pool.fetchval("SELECT count(*) FROM pending_uploads") == 0
    assert await db.list_images(services.pool, session_id, 0, 10) == []
    await services.storage.discard(pending.path)


async def _post(client, session_id: int, *files: tuple[str, bytes]):
    form = aiohttp.FormData()
    for name, data in files:
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
    return await client.post(f"/api/face/sessions/{session_id}/images", data=form)


async def test_a_request_whose_last_photo_fails_records_none_and_deletes_nothing(client, services, photos):
    """One request's photos commit together: when one fails in Postgres, the others were never committed,
    so nothing is deleted (no tombstone that would keep `faceserve import` from taking those bytes in)."""
    session_id = await create_session(client)
    async with services.pool.acquire() as conn:
        await conn.execute(
            "CREATE FUNCTION refuse_b() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN IF NEW.original_name = 'b.jpg' THEN RAISE EXCEPTION 'refused (simulated)'; END IF; "
            "RETURN NEW; END $$"
        )
        await conn.execute(
            "CREATE TRIGGER refuse_b BEFORE INSERT ON face_session_images FOR EACH ROW EXECUTE FUNCTION refuse_b()"
        )
    response = await _post(client, session_id, ("a.jpg", photos["t1"].read_bytes()), ("b.jpg", photos["gdp"].read_bytes()))
    assert response.status == 500
    assert await db.list_images(services.pool, session_id, 0, 10) == []
    assert await services.pool.fetchval("SELECT count(*) FROM faces") == 0
    assert await services.pool.fetchval("SELECT count(*) FROM deleted_images") == 0
    assert await services.pool.fetchval("SELECT count(*) FROM pending_uploads") == 0
    assert not any(p.startswith(f"face_sessions/{session_id}/") for p in await stored_originals(services))
    async with services.pool.acquire() as conn:
        await conn.execute("DROP TRIGGER refuse_b ON face_session_images")
    assert len(await upload(client, session_id, ("a.jpg", photos["t1"].read_bytes()))) == 1


@pytest.mark.parametrize("image_store", ["file", "postgres"])
async def test_requests_holding_the_same_photos_in_opposite_orders_both_succeed(client, services, photos):
    """A request's photos commit together; one that holds photos another is recording waits for it (the bytes'
    locks, taken in one order), never both for each other (a deadlock Postgres ends with an error for one)."""
    session_id = await create_session(client)
    async with services.pool.acquire() as conn:  # each insert slow: the two requests' transactions overlap
        await conn.execute(
            "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(0.3); RETURN NEW; END $$"
        )
        await conn.execute(
            "CREATE TRIGGER slow_insert BEFORE INSERT ON face_session_images FOR EACH ROW EXECUTE FUNCTION slow_insert()"
        )

    async def analyzed(name: str) -> ingest.Analyzed:
        data = photos[name].read_bytes()
        pending = await services.storage.receive(session_id, _chunks(data), services.settings.max_upload_bytes)
        return await ingest.analyze_image(services, session_id, pending, f"{name}.jpg")

    first = [await analyzed("t1"), await analyzed("gdp")]
    second = [await analyzed("gdp"), await analyzed("t1")]
    a, b = await asyncio.gather(
        ingest.record_images(services, session_id, first), ingest.record_images(services, session_id, second)
    )
    assert [i.image.id for i in a] == [i.image.id for i in b][::-1]
    assert sorted(i.created for i in a + b) == [False, False, True, True]
