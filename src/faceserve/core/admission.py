"""How much work this process takes on at once: uploads and searches past their limits get 503 busy, and
resized copies and face crops wait for a render slot (http/downloads.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from ..config import Settings
from ..errors import Busy

UPLOADS_REJECTED = Counter(
    "faceserve_uploads_rejected_total", "Uploaded images refused with 503 busy because too many were in flight"
)
SEARCHES_REJECTED = Counter(
    "faceserve_searches_rejected_total", "Searches refused with 503 busy because too many were in flight"
)
UPLOADS_IN_FLIGHT = Gauge(
    "faceserve_uploads_in_flight", "Images being received or analysed", multiprocess_mode="livesum"
)


class AdmissionGate:
    """Counts work in flight (images or searches) and refuses past a limit, so a flood gets 503 instead of
    memory."""

    def __init__(self, limit: int, retry_after_s: int, what: str, rejected: Counter) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self._what = what
        self._rejected = rejected

    @contextmanager
    def admit(self) -> Iterator[None]:
        if self.in_flight >= self.limit:
            self._rejected.inc()
            raise Busy(f"{self.in_flight} {self._what} are being processed; try again shortly", self.retry_after_s)
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1


@dataclass(kw_only=True)
class Admission:
    # uploads being analysed at once (their files received); past it an upload gets 503 busy
    uploads: AdmissionGate
    # searches being decoded, detected and matched at once; past it a search gets 503 busy
    searches: AdmissionGate
    # resized copies and face crops rendered at once (http/downloads.py)
    renders: asyncio.Semaphore

    @classmethod
    def from_settings(cls, settings: Settings) -> Admission:
        return cls(
            uploads=AdmissionGate(settings.max_pending_images, settings.retry_after_s, "images", UPLOADS_REJECTED),
            searches=AdmissionGate(
                settings.max_pending_searches, settings.retry_after_s, "searches", SEARCHES_REJECTED
            ),
            renders=asyncio.Semaphore(settings.max_concurrent_renders),
        )

    def sample(self) -> None:
        """Its gauge, as of now (http/observability.py samples every metrics_sample_s)."""
        UPLOADS_IN_FLIGHT.set(self.uploads.in_flight)
