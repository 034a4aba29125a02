"""One recogniser run for the faces of every caller waiting at that moment (uploads, imports, searches).

Detection and alignment stay per image on the inference threads; the aligned crops of concurrent callers
are embedded together. Batching is by demand, as index/registry.py batches searches: the first caller starts a run
at once; callers arriving while it runs wait and go together in the next run, up to `max_rows` faces. A
lone request waits for nothing, and under load the recogniser sees full batches (on 2 CPU cores a face
costs ~8 ms alone and ~6.4 ms in batches of 4+; on a GPU the gap is far larger).

`window_ms` (0 by default) adds a wait that adapts: a run about to start waits, at most that long, only while
callers that announced themselves with `coming()` are still decoding and detecting and the run is not full.
Nothing coming (a lone request), no wait. It is for a GPU, where detection is quick and a run of one image's
faces costs almost what a run of many does; on CPU detection takes tens of ms, so the wait rarely catches
anyone and only adds latency (benchmarks/RESULTS.md, Ingest).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from prometheus_client import Histogram

from .engine import FaceEngine

RECOGNISER_BATCH = Histogram(
    "faceserve_recogniser_batch_faces",
    "Faces embedded in one recogniser run",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


@dataclass
class _Waiting:
    crops: np.ndarray
    answer: asyncio.Future[np.ndarray]


class RecogniserBatcher:
    def __init__(self, engine: FaceEngine, executor: Executor, max_rows: int, window_ms: float) -> None:
        self._engine = engine
        self._executor = executor
        self._max_rows = max(1, max_rows)
        self._window_s = max(0.0, window_ms) / 1000
        self._waiting: list[_Waiting] = []
        self._runner: asyncio.Task[None] | None = None
        # callers inside coming(): their faces are on the way; a run with a window may wait for them
        self._coming = 0
        self._arrival = asyncio.Event()
        self.runs = 0  # recogniser runs so far (batches), for tests and logs

    @property
    def waiting(self) -> int:
        """Callers whose faces wait for a run (not counting the run under way)."""
        return len(self._waiting)

    @contextmanager
    def coming(self) -> Iterator[None]:
        """Wrap a caller's decode and detection: a run with a window waits for its faces, not for nobody.
        Call embed() right after leaving it, with no await in between, so the run never sees a gap."""
        self._coming += 1
        try:
            yield
        finally:
            self._coming -= 1
            self._arrival.set()

    async def embed(self, crops: np.ndarray) -> np.ndarray:
        """(n, S, S, 3) aligned crops -> (n, dim) L2-normalised embeddings, in the caller's order."""
        expected = (self._engine.crop_size, self._engine.crop_size, 3)
        if crops.ndim != 4 or crops.shape[1:] != expected:
            # refused here, so a malformed caller can never fail the batch it would have joined
            raise ValueError(f"crops must be (n, {expected[0]}, {expected[1]}, 3), not {crops.shape}")
        if not len(crops):
            return np.empty((0, self._engine.embedding_dim), dtype=np.float32)
        answer: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(crops, answer))
        self._arrival.set()
        if self._runner is None:
            self._runner = asyncio.create_task(self._run_while_waiting())
        # a caller that goes away (client hang-up) cancels only its own future: a run under way still
        # embeds its rows (they are dropped), one not yet started skips them; the others are unaffected
        return await answer

    def _rows_waiting(self) -> int:
        return sum(len(w.crops) for w in self._waiting if not w.answer.done())

    async def _wait_for_coming(self) -> None:
        """The adaptive window: wait while announced callers are still detecting and the run is not full."""
        if self._window_s <= 0:
            return
        deadline = asyncio.get_running_loop().time() + self._window_s
        while self._coming and self._rows_waiting() < self._max_rows:
            self._arrival.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._arrival.wait()
            except TimeoutError:
                return

    def _next_batch(self) -> list[_Waiting]:
        batch: list[_Waiting] = []
        rows = 0
        while self._waiting and (not batch or rows + len(self._waiting[0].crops) <= self._max_rows):
            waiting = self._waiting.pop(0)
            if waiting.answer.done():  # cancelled before its turn: skip its rows
                continue
            batch.append(waiting)
            rows += len(waiting.crops)
        return batch

    async def _run_while_waiting(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[_Waiting] = []
        try:
            while True:
                await self._wait_for_coming()
                if not (batch := self._next_batch()):
                    break
                crops = batch[0].crops if len(batch) == 1 else np.concatenate([w.crops for w in batch])
                RECOGNISER_BATCH.observe(len(crops))
                try:
                    # one recogniser run for the batch (more only for a lone caller with over max_rows faces)
                    embeddings = await loop.run_in_executor(
                        self._executor, self._engine.embed_crops, crops, self._max_rows
                    )
                except Exception as exc:  # noqa: BLE001 - it belongs to the callers, who re-raise it
                    _fail(batch, exc)
                    continue
                finally:
                    self.runs += 1
                start = 0
                for waiting in batch:
                    end = start + len(waiting.crops)
                    if not waiting.answer.done():
                        waiting.answer.set_result(embeddings[start:end])
                    start = end
        except BaseException:
            # cancelled (the loop is closing): nobody may be left waiting forever
            _fail([*batch, *self._waiting], RuntimeError("the recogniser stopped"))
            self._waiting.clear()
            raise
        finally:
            self._runner = None

    async def close(self) -> None:
        """Let the runs of those already waiting finish (requests end before cleanup, so normally none are)."""
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)
        _fail(self._waiting, RuntimeError("the service is shutting down"))
        self._waiting.clear()


def _fail(waiting: list[_Waiting], exc: BaseException) -> None:
    for caller in waiting:
        if not caller.answer.done():
            caller.answer.set_exception(exc)
