"""The loaded models and what runs them: the inference threads for blocking work (decode, detection,
embedding) and the recogniser batcher that embeds the faces of concurrent callers in shared runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import Gauge

from ..vision.batcher import RecogniserBatcher
from ..vision.engine import FaceEngine

T = TypeVar("T")

INFERENCE_QUEUE = Gauge(
    "faceserve_inference_queue_depth",
    "Work waiting for an inference thread, and callers waiting for a recogniser run",
    ["queue"],
    multiprocess_mode="livesum",
)


@dataclass(kw_only=True)
class Models:
    engine: FaceEngine
    inference: ThreadPoolExecutor
    # embeds the aligned faces of concurrent uploads and searches in shared recogniser runs
    recogniser: RecogniserBatcher

    def inference_waiting(self) -> int:
        """Blocking jobs queued for the inference threads (ThreadPoolExecutor keeps no public count)."""
        return self.inference._work_queue.qsize()

    async def infer(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work (decode, detection, embedding) on the inference threads."""
        return await asyncio.get_running_loop().run_in_executor(self.inference, fn, *args)

    def sample(self) -> None:
        """Its gauges, as of now (http/observability.py samples every metrics_sample_s)."""
        INFERENCE_QUEUE.labels("inference_threads").set(self.inference_waiting())
        INFERENCE_QUEUE.labels("recogniser").set(self.recogniser.waiting)
