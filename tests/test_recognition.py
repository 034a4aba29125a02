"""The recogniser batcher: concurrent callers share runs and each gets exactly its own embeddings."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from conftest import create_session, search, upload

from faceserve.faces import FaceEngine
from faceserve.http.keys import SERVICES
from faceserve.recognition import RecogniserBatcher


@pytest.fixture(scope="module")
def crops_by_photo(engine: FaceEngine, photos) -> dict[str, np.ndarray]:
    """The aligned faces of each shipped photo, as the detector finds them."""
    found = {}
    for name, path in photos.items():
        pixels = cv2.imread(str(path))
        _, landmarks = engine.detect(pixels)
        found[name] = engine.align(pixels, landmarks)
    return found


@pytest.fixture
async def batcher(engine: FaceEngine):
    executor = ThreadPoolExecutor(max_workers=2)
    recogniser = RecogniserBatcher(engine, executor, max_rows=64)
    yield recogniser
    await recogniser.close()
    executor.shutdown(wait=True)


async def test_concurrent_callers_share_runs_and_get_their_own_rows(batcher, engine, crops_by_photo):
    names = ["t1", "gdp", "yaoming", "t1", "players", "yaoming", "gdp"]
    alone = {name: engine.embed_crops(crops_by_photo[name]) for name in set(names)}
    results = await asyncio.gather(*(batcher.embed(crops_by_photo[name]) for name in names))
    for name, embeddings in zip(names, results):
        assert embeddings.shape == alone[name].shape
        np.testing.assert_allclose(embeddings, alone[name], atol=1e-4)
    # the first caller runs at once, the six that arrived meanwhile share the following run(s)
    assert batcher.runs < len(names)


async def test_a_lone_caller_is_embedded_at_once_and_empty_input_costs_nothing(batcher, engine, crops_by_photo):
    [embedding] = await batcher.embed(crops_by_photo["yaoming"])
    np.testing.assert_allclose(np.linalg.norm(embedding), 1.0, atol=1e-5)
    assert batcher.runs == 1
    assert (await batcher.embed(crops_by_photo["yaoming"][:0])).shape == (0, engine.embedding_dim)
    assert batcher.runs == 1


async def test_batches_stop_at_max_rows(engine, crops_by_photo):
    executor = ThreadPoolExecutor(max_workers=1)
    recogniser = RecogniserBatcher(engine, executor, max_rows=8)
    try:
        faces = crops_by_photo["t1"]  # 6 faces: two such callers never share a run of 8
        results = await asyncio.gather(*(recogniser.embed(faces) for _ in range(4)))
        assert recogniser.runs == 4
        for embeddings in results:
            np.testing.assert_allclose(embeddings, results[0], atol=1e-4)
    finally:
        await recogniser.close()
        executor.shutdown(wait=True)


async def test_a_malformed_caller_is_refused_alone(batcher, crops_by_photo):
    good = asyncio.ensure_future(batcher.embed(crops_by_photo["gdp"]))
    with pytest.raises(ValueError, match="crops must be"):
        await batcher.embed(np.zeros((2, 50, 50, 3), dtype=np.uint8))
    assert len(await good) == len(crops_by_photo["gdp"])


async def test_a_caller_that_goes_away_does_not_break_the_batch(batcher, crops_by_photo):
    first = asyncio.ensure_future(batcher.embed(crops_by_photo["t1"]))
    leaving = asyncio.ensure_future(batcher.embed(crops_by_photo["players"]))
    staying = asyncio.ensure_future(batcher.embed(crops_by_photo["gdp"]))
    await asyncio.sleep(0)
    leaving.cancel()
    assert len(await first) == len(crops_by_photo["t1"])
    assert len(await staying) == len(crops_by_photo["gdp"])
    assert leaving.cancelled()


async def test_concurrent_uploads_and_searches_through_the_service(client, photos, crops_by_photo):
    """End to end: images uploaded together and searches sent together are embedded in shared runs and
    still find what they should."""
    session_id = await create_session(client)
    images = await asyncio.gather(
        *(upload(client, session_id, (f"{name}.jpg", photos[name].read_bytes())) for name in ("t1", "gdp", "players"))
    )
    assert [image["faces"] for [image] in images] == [len(crops_by_photo[n]) for n in ("t1", "gdp", "players")]
    recogniser = client.server.app[SERVICES].recogniser
    runs_before = recogniser.runs
    answers = await asyncio.gather(*(search(client, session_id, photos["yaoming"].read_bytes()) for _ in range(6)))
    players_id = images[2][0]["image_id"]
    for status, body in answers:
        assert status == 200
        assert body["data"]["matches"][0]["image_id"] == players_id  # Yao Ming is #13 in players.jpg
    assert recogniser.runs - runs_before <= 6
