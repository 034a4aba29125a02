"""One recogniser run for the faces of every caller waiting at that moment (uploads, imports, searches).

Detection and alignment stay per image on the inference threads; the aligned crops of concurrent callers
are embedded together. Batching is by demand, as index.py batches searches: there is no timer. The first
caller starts a run at once; callers arriving while it runs wait and go together in the next run, up to
`max_rows` faces. A lone request waits for nothing, and under load the recogniser sees full batches
(on 2 CPU cores a face costs 8.0 ms alone and 6.4 ms in batches of 16+; on a GPU the gap is far larger).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from .faces import FaceEngine

log = logging.getLogger(__name__)


@dataclass
class _Waiting:
    crops: np.ndarray
    answer: asyncio.Future[np.ndarray]


class RecogniserBatcher:
    def __init__(self, engine: FaceEngine, executor: Executor, max_rows: int) -> None:
        self._engine = engine
        self._executor = executor
        self._max_rows = max(1, max_rows)
        self._waiting: list[_Waiting] = []
        self._runner: asyncio.Task[None] | None = None
        self.runs = 0  # recogniser runs so far (batches), for tests and logs

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
        if self._runner is None:
            self._runner = asyncio.create_task(self._run_while_waiting())
        # a caller that goes away (client hang-up) leaves its rows in the batch; the others are unaffected
        return await answer

    def _next_batch(self) -> list[_Waiting]:
        batch, rows = [], 0
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
            while batch := self._next_batch():
                crops = batch[0].crops if len(batch) == 1 else np.concatenate([w.crops for w in batch])
                try:
                    embeddings = await loop.run_in_executor(self._executor, self._engine.embed_crops, crops)
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
        """Let the run under way finish; nobody should be waiting by now (requests end before cleanup)."""
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)
        _fail(self._waiting, RuntimeError("the service is shutting down"))
        self._waiting.clear()


def _fail(waiting: list[_Waiting], exc: BaseException) -> None:
    for caller in waiting:
        if not caller.answer.done():
            caller.answer.set_exception(exc)
