"""What a committed change took away in this process, told to whoever keeps copies of it: the unit of work
(changes.py) publishes after the commit; a cache outside core (http/served.py) subscribes at start-up and
evicts. Other processes are not told here: they notice through the files' absence (http/served.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Removed:
    """The images deleted by one change, and the session it dropped whole (if it did)."""

    image_ids: tuple[int, ...] = ()
    session_dropped: int | None = None


Subscriber = Callable[[Removed], None]


class Removals:
    """The subscribers of this process, called in order and at once (no awaiting: an eviction is a dict pop)."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Until the returned function is called."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    def publish(self, removed: Removed) -> None:
        for subscriber in list(self._subscribers):
            subscriber(removed)
