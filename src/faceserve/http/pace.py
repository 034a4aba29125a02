"""A minimum pace for request bodies, so a client trickling bytes cannot hold a connection, a file and
(before the fix of issue 10) an upload slot for as long as it likes.

Every read of a multipart body (http/uploads.py) goes through the request's BodyPace: a read that waits
longer than body_idle_timeout_s fails, and after body_grace_s a body that has averaged less than
body_min_bytes_per_s fails. Both answer 408 `request_timeout` and store nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import TypeVar

from ..config import Settings
from ..errors import RequestTimeout

T = TypeVar("T")


class BodyPace:
    def __init__(self, idle_timeout_s: float, min_bytes_per_s: int, grace_s: float) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.min_bytes_per_s = min_bytes_per_s
        self.grace_s = grace_s
        self.started = time.monotonic()
        self.received = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> BodyPace:
        return cls(settings.body_idle_timeout_s, settings.body_min_bytes_per_s, settings.body_grace_s)

    async def read(self, reading: Awaitable[T]) -> T:
        """Await one read of the body (a chunk, or the next part's headers) within the idle timeout."""
        try:
            return await asyncio.wait_for(reading, self.idle_timeout_s)
        except TimeoutError:
            raise RequestTimeout(f"no body bytes arrived for {self.idle_timeout_s:g} s") from None

    def count(self, size: int) -> None:
        self.received += size
        elapsed = time.monotonic() - self.started
        if elapsed > self.grace_s and self.received < self.min_bytes_per_s * elapsed:
            raise RequestTimeout(
                f"the body arrives too slowly ({self.received / elapsed:.0f} bytes/s; at least "
                f"{self.min_bytes_per_s} bytes/s after the first {self.grace_s:g} s)"
            )


# the pace of the request being read in this task: set by uploads.parts, used by every read after it
current: ContextVar[BodyPace | None] = ContextVar("body_pace", default=None)
