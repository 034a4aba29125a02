"""One listening connection per process: Postgres LISTEN/NOTIFY channels, each with what to do on a message
and what to do after the connection was lost and came back.

Nodes never talk to each other: an effect of one on the others (an index change, a revoked API key, a new
or retired URL signing key) is announced with NOTIFY inside the transaction that makes it, and Postgres
delivers it at commit to every process listening. A notification sent while a process was not listening
(Postgres restarted, a network cut) is lost for good, so every subscriber also says how to catch up once
the connection is back: compare with the database, or drop what it caches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from .recovery import is_database_unavailable

log = logging.getLogger(__name__)

_RECONNECT_DELAY_S = 1.0
# A listening connection only reads, so a silent cut (a NAT or firewall dropping it, a host gone without a
# FIN) would go unnoticed for hours: every so often it is asked a trivial query, and one unanswered in time
# counts as lost.
_LIVENESS_CHECK_S = 30.0
_LIVENESS_TIMEOUT_S = 5.0


async def notify(conn: asyncpg.Connection | asyncpg.Pool, channel: str, payload: str) -> None:
    """Announce payload on channel; inside a transaction, Postgres delivers it at commit (never on rollback)."""
    await conn.execute("SELECT pg_notify($1, $2)", channel, payload)


@dataclass(frozen=True)
class Subscription:
    channel: str
    # called on the event loop for each notification on the channel (from any process, this one included)
    received: Callable[[str], None]
    # after a reconnect, once listening again: whatever was announced meanwhile was lost
    resumed: Callable[[], Awaitable[object]]


class NotificationListener:
    """A connection of its own (never one of the pool's: asyncpg's pool may close or reset those), listening
    on every subscribed channel, reconnected by itself for as long as the process runs."""

    def __init__(
        self, dsn: str, liveness_check_s: float = _LIVENESS_CHECK_S, liveness_timeout_s: float = _LIVENESS_TIMEOUT_S
    ) -> None:
        self._dsn = dsn
        self._liveness_check_s = liveness_check_s
        self._liveness_timeout_s = liveness_timeout_s
        self._subscriptions: list[Subscription] = []
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._reconnecting: asyncio.Task | None = None

    async def start(self) -> None:
        await self._listen()
        self._reconnecting = asyncio.create_task(self._reconnect_forever())

    async def close(self) -> None:
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            await asyncio.gather(self._reconnecting, return_exceptions=True)
        if self._conn is not None and not self._conn.is_closed():
            try:
                await self._conn.close(timeout=_LIVENESS_TIMEOUT_S)  # a dead connection never answers
            except Exception:  # noqa: BLE001 - closing anyway
                self._conn.terminate()

    async def subscribe(self, subscription: Subscription) -> None:
        """Listen on one more channel, from now on and after every reconnect."""
        self._subscriptions.append(subscription)
        conn = self._conn
        if conn is not None and not conn.is_closed():
            # if the connection is lost meanwhile, the reconnect listens on every subscription again
            try:
                await conn.add_listener(subscription.channel, self._deliver(subscription))
            except Exception as exc:
                if not is_database_unavailable(exc):
                    raise

    @staticmethod
    def _deliver(subscription: Subscription) -> Callable[[object, int, str, str], None]:
        return lambda _conn, _pid, _channel, payload: subscription.received(payload)

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        # only the connection in use reports its loss: an old one closing late must not start a reconnect
        conn.add_termination_listener(lambda lost: self._lost.set() if lost is self._conn else None)
        try:
            # by index, not over a copy: a subscribe() while this awaits is listened on here too (it could
            # only reach the old connection)
            listened = 0
            while listened < len(self._subscriptions):
                subscription = self._subscriptions[listened]
                await conn.add_listener(subscription.channel, self._deliver(subscription))
                listened += 1
        except BaseException:
            conn.terminate()  # Postgres went away between connect and LISTEN: the next try opens another
            raise
        self._conn = conn
        if conn.is_closed():  # lost before it was the one in use: its termination listener ignored it
            self._lost.set()

    async def _reconnect_forever(self) -> None:
        while True:
            await self._wait_until_lost()
            self._lost.clear()
            log.warning("lost the notification connection; reconnecting")
            await _retry("listening again", self._listen)
            log.info("notifications resumed")
            # listening again first, then catching up: a change from here on arrives as a notification. Each
            # subscriber on its own (one that keeps failing holds up no other), and all of them given up when
            # the connection is lost again: the next reconnect catches up afresh.
            await asyncio.gather(
                *(
                    _retry(f"catching up on {subscription.channel}", subscription.resumed, self._lost)
                    for subscription in list(self._subscriptions)
                )
            )

    async def _wait_until_lost(self) -> None:
        """Until the connection in use is lost, or found dead by a liveness check."""
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), self._liveness_check_s)
                return
            except TimeoutError:
                pass
            conn = self._conn
            if conn is None or self._lost.is_set():
                continue
            try:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), self._liveness_timeout_s)
            except Exception:  # noqa: BLE001 - unanswered, refused or broken: all mean this one is done
                log.warning("the notification connection did not answer within %.0f s", self._liveness_timeout_s)
                self._conn = None  # its termination must not report a loss again once the next one is in use
                conn.terminate()
                self._lost.set()


async def _retry(what: str, step: Callable[[], Awaitable[object]], given_up: asyncio.Event | None = None) -> None:
    """step() until it succeeds, or until given_up is set. Every error is retried: the task that reconnects
    must never end, or this process would stop following the others after its next lost connection."""
    while given_up is None or not given_up.is_set():
        try:
            await step()
            return
        except Exception as exc:
            if not is_database_unavailable(exc):
                log.exception("notifications: %s failed; trying again", what)
            await asyncio.sleep(_RECONNECT_DELAY_S)
