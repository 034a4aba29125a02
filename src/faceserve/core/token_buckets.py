"""Token buckets: a quota of q requests per w seconds is a bucket of q tokens refilled at q/w per second.

State is per process. With N workers each process enforces q/N (capacity and refill), so a client whose
requests spread over the workers (new connections land on them evenly through SO_REUSEPORT) gets about q;
one that keeps a single connection open meets one worker and gets q/N: stricter, never looser. No
Postgres round trip per request, which the image endpoint could not afford.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class Quota:
    requests: int
    window_s: int

    @classmethod
    def parse(cls, text: str) -> Quota:
        """'30/60' = 30 requests per 60 seconds."""
        match = re.fullmatch(r"\s*([1-9][0-9]*)\s*/\s*([1-9][0-9]*)\s*", text)
        if not match:
            raise ValueError(f"a rate limit looks like 30/60 (requests per seconds), not {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))


class Decision(NamedTuple):  # a tuple: made for every request served
    allowed: bool
    remaining: int  # whole tokens left after this request
    reset_s: int  # seconds until the bucket is full again
    retry_after_s: int  # seconds until one token is there (0 when allowed)


class Buckets:
    """One policy's buckets, by identity (key prefix or client address)."""

    def __init__(self, quota: Quota, share: float = 1.0, max_entries: int = 100_000) -> None:
        self.quota = quota
        self.capacity = max(1.0, quota.requests * share)
        self.rate = self.capacity / quota.window_s
        self._max_entries = max_entries
        self._state: dict[str, tuple[float, float]] = {}  # identity -> (tokens, monotonic time)

    def take(self, identity: str, now: float | None = None) -> Decision:
        now = time.monotonic() if now is None else now
        tokens, last = self._state.get(identity, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if identity not in self._state and len(self._state) >= self._max_entries:
            self._forget_full(now)
        self._state[identity] = (tokens, now)
        return Decision(
            allowed,
            int(tokens),
            math.ceil((self.capacity - tokens) / self.rate),
            0 if allowed else math.ceil((1.0 - tokens) / self.rate),
        )

    def waiting_s(self, identity: str, now: float | None = None) -> int:
        """Seconds until this identity has a token again (0: it has one); takes nothing."""
        state = self._state.get(identity)
        if state is None:
            return 0
        now = time.monotonic() if now is None else now
        tokens = min(self.capacity, state[0] + (now - state[1]) * self.rate)
        return 0 if tokens >= 1.0 else math.ceil((1.0 - tokens) / self.rate)

    def _forget_full(self, now: float) -> None:
        """Buckets that have refilled hold no information: drop them (all of them if none has)."""
        full = [i for i, (t, last) in self._state.items() if t + (now - last) * self.rate >= self.capacity]
        for identity in full or list(self._state):
            del self._state[identity]
