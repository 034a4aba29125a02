"""Saved index copies (face_sessions/{id}/index/) kept in step with the database: no file keeps the
embedding of a face that forget or a delete erased, and changes reach the copy within a bounded lag, so a
restart loads instead of rebuilding. Checked by reading the files themselves."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from helpers import create_session, search, upload

from faceserve import db
from faceserve.app import create_app
from faceserve.config import Settings
from faceserve.http.appkeys import SERVICES

_SETTLE_S = 0.3


@pytest.fixture
async def client(settings: Settings, engine, aiohttp_client):
    quick = dataclasses.replace(settings, index_save_settle_s=_SETTLE_S, index_save_max_lag_s=1.0)
    return await aiohttp_client(create_app(quick, engine))


def saved_files(storage: Path, session_id: int) -> list[Path]:
    folder = storage / "face_sessions" / str(session_id) / "index"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def files_holding(storage: Path, embeddings: np.ndarray) -> dict[int, list[str]]:
    """Which of these embeddings (by row) a saved index file of any session holds byte for byte, and where."""
    wanted = [np.asarray(e, dtype="<f4").tobytes() for e in embeddings]
    found: dict[int, list[str]] = {}
    for path in sorted((storage / "face_sessions").glob("*/index/*")):
        data = path.read_bytes()
        for row, embedding in enumerate(wanted):
            if embedding in data:
                found.setdefault(row, []).append(str(path.relative_to(storage)))
    return found


async def embeddings_of(services, session_id: int) -> dict[int, np.ndarray]:
    ids, vectors = await db.session_embeddings(services.pool, session_id, services.models.engine.embedding_dim)
    return dict(zip(ids.tolist(), vectors))


async def forget(client, session_id: int, selfie: bytes) -> dict:
    form = aiohttp.FormData()
    form.add_field("image", selfie, filename="me.jpg", content_type="image/jpeg")
    response = await client.post(f"/api/face/sessions/{session_id}/forget", data=form)
    body = await response.json()
    assert response.status == 200, body
    return body["data"]


async def until_current(services, session_id: int, timeout_s: float = 10.0) -> float:
    """Seconds until the saved copy holds exactly the database's faces (what a restart would load)."""
    started = time.monotonic()
    store = services.indexes._store
    while True:
        count, max_id = await db.session_face_stats(services.pool, session_id, services.models.engine.embedding_dim)
        if await asyncio.to_thread(store.load, session_id, count, max_id) is not None:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout_s, f"saved index of session {session_id} never caught up"
        await asyncio.sleep(0.05)


async def test_forget_leaves_no_erased_embedding_in_any_saved_index(client, photos, settings) -> None:
    services = client.server.app[SERVICES]
    selfie = photos["yaoming"].read_bytes()
    # loaded here and saved: Yao Ming among others; loaded, saved, then only he (the index ends empty);
    # saved but not loaded here (as another worker, or a start that has not opened it yet, would leave it)
    served, alone, unloaded = [await create_session(client) for _ in range(3)]
    await upload(client, served, ("players.jpg", photos["players"].read_bytes()), ("t1.jpg", photos["t1"].read_bytes()))
    await upload(client, alone, ("yaoming.jpg", selfie))
    await upload(client, unloaded, ("players.jpg", photos["players"].read_bytes()))
    for session_id in (served, alone, unloaded):
        assert (await search(client, session_id, selfie))[0] == 200  # opens the index: built and saved
        assert saved_files(settings.storage, session_id)
    # a drop (another worker's change too big to name) takes the saved copy: it may lack that change
    kept_aside = {path.name: path.read_bytes() for path in saved_files(settings.storage, unloaded)}
    await services.indexes.drop(unloaded)
    assert saved_files(settings.storage, unloaded) == []
    for name, data in kept_aside.items():  # the copy an earlier run or another worker left, not loaded here
        (settings.storage / "face_sessions" / str(unloaded) / "index" / name).write_bytes(data)
    before = {s: await embeddings_of(services, s) for s in (served, alone, unloaded)}
    everyone = np.stack([vector for faces in before.values() for vector in faces.values()])
    assert len(files_holding(settings.storage, everyone)) == len(everyone)  # the files do hold embeddings

    for session_id in (served, alone, unloaded):
        assert (await forget(client, session_id, selfie))["faces_erased"] >= 1
    after = {s: await embeddings_of(services, s) for s in before}
    erased = np.stack([vector for s in before for face_id, vector in before[s].items() if face_id not in after[s]])
    assert len(erased) >= 3
    # at once, loaded or not: no file holds an erased face
    assert files_holding(settings.storage, erased) == {}
    assert saved_files(settings.storage, alone) == [] and saved_files(settings.storage, unloaded) == []
    # and the copy of the index still served is written again without them, so a restart loads it
    assert await until_current(services, served) < 5
    assert files_holding(settings.storage, erased) == {}
    kept = np.stack(list((await embeddings_of(services, served)).values()))
    assert len(files_holding(settings.storage, kept)) == len(kept)
    await asyncio.sleep(3 * _SETTLE_S)  # an empty index is never saved again
    assert saved_files(settings.storage, alone) == []


async def test_saved_indexes_follow_uploads_and_deletes_without_a_shutdown(client, photos, settings) -> None:
    services = client.server.app[SERVICES]
    session_id = await create_session(client)
    await upload(client, session_id, ("players.jpg", photos["players"].read_bytes()))
    assert (await search(client, session_id, photos["yaoming"].read_bytes()))[0] == 200
    await until_current(services, session_id)
    # an upload reaches the saved copy once changes settle: a crash now would lose nothing of it
    [t1] = await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes()))
    assert await until_current(services, session_id) < 5
    # an image delete takes its faces out of every file at once
    faces_of_t1 = await services.pool.fetch("SELECT embedding FROM faces WHERE image_id = $1", t1["image_id"])
    deleted = np.stack([np.frombuffer(row["embedding"], dtype="<f4") for row in faces_of_t1])
    assert len(files_holding(settings.storage, deleted)) == len(deleted)
    assert (await client.delete(f"/api/face/image/{t1['image_id']}")).status == 200
    assert files_holding(settings.storage, deleted) == {}
    assert await until_current(services, session_id) < 5
    # a session delete takes its whole folder
    assert (await client.delete(f"/api/face/sessions/{session_id}")).status == 200
    assert saved_files(settings.storage, session_id) == []
