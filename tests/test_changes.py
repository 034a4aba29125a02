"""A change to a session (core/changes.py) reaches this process only once its transaction commits, and a
change that fails leaves nothing behind: not its rows, not its tombstones, not an upload's bytes or intent."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from helpers import create_session, original_exists, upload

from faceserve import db, layout
from faceserve.core import changes


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
        async with changes.session_change(services, session_id, file_intent=file_path) as change:
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
