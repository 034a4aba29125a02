"""The recogniser batcher: concurrent callers share runs and each gets exactly its own embeddings."""

from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import create_session, search, upload

from faceserve import db
from faceserve.config import Settings
from faceserve.http.appkeys import SERVICES
from faceserve.vision.batcher import RecogniserBatcher
from faceserve.vision.engine import FaceEngine

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from reference import analyze  # benchmarks/reference.py


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
    recogniser = RecogniserBatcher(engine, executor, max_rows=64, window_ms=0)
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
    recogniser = RecogniserBatcher(engine, executor, max_rows=8, window_ms=0)
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


async def test_stored_embeddings_of_concurrent_uploads_match_one_at_a_time_analysis(client, engine, photos):
    """Images uploaded together (their faces embedded in shared runs) store exactly the embeddings that
    analysing each image alone gives."""
    names = ("t1", "gdp", "players", "yaoming")
    session_id = await create_session(client)
    await asyncio.gather(*(upload(client, session_id, (f"{n}.jpg", photos[n].read_bytes())) for n in names))
    services = client.server.app[SERVICES]
    _, stored = await db.session_embeddings(services.pool, session_id, engine.embedding_dim)
    alone = np.concatenate([[f.embedding for f in analyze(engine, cv2.imread(str(photos[n])))] for n in names])
    assert len(stored) == len(alone)
    # each face's own embedding, not a neighbour's: the best match of every expected row is itself
    similarity = alone @ stored.T
    np.testing.assert_allclose(similarity.max(axis=1), 1.0, atol=1e-4)
    assert len(set(similarity.argmax(axis=1).tolist())) == len(alone)


async def test_an_error_in_a_run_reaches_every_caller_and_leaves_nothing_pending(engine, crops_by_photo):
    executor = ThreadPoolExecutor(max_workers=1)
    recogniser = RecogniserBatcher(engine, executor, max_rows=64, window_ms=0)
    executor.shutdown()  # every run now fails, as a broken model run would
    callers = (recogniser.embed(crops_by_photo[n]) for n in ("t1", "gdp", "yaoming"))
    results = await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), 30)
    assert all(isinstance(r, RuntimeError) for r in results), results
    assert recogniser.waiting == 0
    with pytest.raises(RuntimeError):  # the next caller gets an answer too, not a hang
        await asyncio.wait_for(recogniser.embed(crops_by_photo["gdp"]), 30)
    await recogniser.close()


async def test_close_lets_waiting_callers_finish(engine, crops_by_photo):
    executor = ThreadPoolExecutor(max_workers=1)
    recogniser = RecogniserBatcher(engine, executor, max_rows=8, window_ms=0)
    try:
        callers = [asyncio.ensure_future(recogniser.embed(crops_by_photo[n])) for n in ("t1", "gdp", "yaoming")]
        await asyncio.sleep(0)
        await recogniser.close()
        assert [len(c.result()) for c in callers] == [len(crops_by_photo[n]) for n in ("t1", "gdp", "yaoming")]
        assert recogniser.waiting == 0
    finally:
        executor.shutdown(wait=True)


async def test_a_shutdown_cut_short_leaves_nobody_waiting(engine, crops_by_photo):
    executor = ThreadPoolExecutor(max_workers=1)
    recogniser = RecogniserBatcher(engine, executor, max_rows=6, window_ms=0)
    try:
        callers = [asyncio.ensure_future(recogniser.embed(crops_by_photo["t1"])) for _ in range(3)]
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(recogniser.close())
        await asyncio.sleep(0)
        closing.cancel()  # e.g. a shutdown timeout: the runner is cancelled with it
        await asyncio.gather(closing, return_exceptions=True)
        results = await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), 30)
        assert any(isinstance(r, RuntimeError) for r in results), results
        assert recogniser.waiting == 0
    finally:
        executor.shutdown(wait=True)


@pytest.fixture
async def windowed(engine: FaceEngine):
    """A window far longer than any test: if it waited for nobody, the guards below would time out."""
    executor = ThreadPoolExecutor(max_workers=2)
    recogniser = RecogniserBatcher(engine, executor, max_rows=64, window_ms=60_000)
    yield recogniser
    await recogniser.close()
    executor.shutdown(wait=True)


async def test_a_window_waits_for_callers_still_detecting_and_they_share_the_run(windowed, engine, crops_by_photo):
    detected = asyncio.Event()

    async def late_caller() -> np.ndarray:
        with windowed.coming():  # stands for its decode and detection
            await detected.wait()
        return await windowed.embed(crops_by_photo["yaoming"])

    late = asyncio.ensure_future(late_caller())
    first = asyncio.ensure_future(windowed.embed(crops_by_photo["gdp"]))
    for _ in range(5):  # the run has started by now; without the window it would hold only the first
        await asyncio.sleep(0)
    assert not first.done()
    detected.set()
    first_rows, late_rows = await asyncio.wait_for(asyncio.gather(first, late), 30)
    assert windowed.runs == 1
    np.testing.assert_allclose(first_rows, engine.embed_crops(crops_by_photo["gdp"]), atol=1e-4)
    np.testing.assert_allclose(late_rows, engine.embed_crops(crops_by_photo["yaoming"]), atol=1e-4)


async def test_a_window_waits_for_nobody_when_nothing_is_coming(windowed, crops_by_photo):
    assert len(await asyncio.wait_for(windowed.embed(crops_by_photo["gdp"]), 30)) == len(crops_by_photo["gdp"])


async def test_a_window_stops_waiting_when_the_run_is_full_or_the_caller_coming_fails(engine, crops_by_photo):
    executor = ThreadPoolExecutor(max_workers=1)
    recogniser = RecogniserBatcher(engine, executor, max_rows=6, window_ms=60_000)
    try:
        never = asyncio.Event()

        async def stays_coming() -> None:
            with recogniser.coming():
                await never.wait()

        holder = asyncio.ensure_future(stays_coming())
        await asyncio.sleep(0)
        # t1's 6 faces fill a run: it does not wait for the caller still coming
        assert len(await asyncio.wait_for(recogniser.embed(crops_by_photo["t1"]), 30)) == 6

        waiting = asyncio.ensure_future(recogniser.embed(crops_by_photo["gdp"]))
        await asyncio.sleep(0)
        holder.cancel()  # its detection failed (or its client left): the run stops waiting for it
        assert len(await asyncio.wait_for(waiting, 30)) == len(crops_by_photo["gdp"])
    finally:
        await recogniser.close()
        executor.shutdown(wait=True)


def test_fixed_rows_make_every_recogniser_run_one_shape_and_embed_as_unpadded_runs_do(engine, models_dir, photos):
    """On CUDA every recogniser run has the same rows (a new shape costs ONNX Runtime's CUDA convolutions
    seconds of re-planning): fewer faces are padded with blank crops, more are split, whatever chunk the caller
    asks for; the blank rows change nothing and come back to nobody."""
    fixed = FaceEngine.from_settings(Settings(models_dir=models_dir))
    fixed.recogniser_rows = 4
    shapes: list[tuple[int, ...]] = []
    session = fixed._recogniser.session
    run = session.run

    def recording(output_names, feed, *args):
        shapes.extend(np.shape(value) for value in feed.values())
        return run(output_names, feed, *args)

    fixed._recogniser.session = type("Recording", (), {"run": staticmethod(recording)})()
    pixels = cv2.imread(str(photos["players"]))
    crops = engine.align(pixels, engine.detect(pixels)[1])
    assert len(crops) > 9
    for rows, chunk_rows in ((1, 32), (3, 2), (5, 64), (9, 8)):
        got = fixed.embed_crops(crops[:rows], chunk_rows=chunk_rows)
        assert got.shape == (rows, engine.embedding_dim)
        assert np.allclose(got, engine.embed_crops(crops[:rows]), atol=1e-5), rows
    assert shapes and {shape[0] for shape in shapes} == {4}, shapes
    assert len(shapes) == 1 + 1 + 2 + 3  # ceil(rows / 4) runs each
