"""The listening connection (db/notifications.py) on a real Postgres: cut off, it comes back by itself, each
subscriber catches up, and a catch-up that fails is tried again rather than ending the reconnecting task
(which would leave the process deaf to every other process after its next lost connection); one that keeps
failing holds up neither the others nor the next reconnect; a connection cut silently (no FIN: the bytes
just stop) is found dead by its liveness check."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg
from helpers import terminate_listeners, wait_until

from faceserve import db

CHANNEL = "faceserve_test_channel"


async def test_a_cut_listener_comes_back_and_retries_a_failed_catch_up(database_url: str) -> None:
    received: list[str] = []
    catch_ups: list[int] = []

    async def resumed() -> None:
        catch_ups.append(len(catch_ups))
        if len(catch_ups) == 1:
            raise RuntimeError("the first catch-up fails")

    listener = db.NotificationListener(database_url)
    await listener.start()
    try:
        await listener.subscribe(db.Subscription(CHANNEL, received.append, resumed))
        sender = await asyncpg.connect(database_url)
        try:
            await sender.execute("SELECT pg_notify($1, 'before')", CHANNEL)
            await wait_until(lambda: received == ["before"], what="a notification")

            assert await terminate_listeners(database_url) == 1
            await wait_until(lambda: len(catch_ups) == 2, what="a catch-up retried after it failed")
            await sender.execute("SELECT pg_notify($1, 'after')", CHANNEL)
            await wait_until(lambda: received == ["before", "after"], what="a notification after the reconnect")
        finally:
            await sender.close()
    finally:
        await listener.close()


async def test_a_catch_up_that_keeps_failing_holds_up_neither_the_others_nor_the_next_reconnect(database_url: str):
    broken_tries: list[int] = []
    healthy_catch_ups: list[int] = []
    received: list[str] = []

    async def broken() -> None:
        broken_tries.append(1)
        raise RuntimeError("this catch-up always fails")

    async def healthy() -> None:
        healthy_catch_ups.append(1)

    listener = db.NotificationListener(database_url)
    await listener.start()
    try:
        await listener.subscribe(db.Subscription(CHANNEL + "_broken", lambda _payload: None, broken))
        await listener.subscribe(db.Subscription(CHANNEL, received.append, healthy))
        sender = await asyncpg.connect(database_url)
        try:
            for cut in (1, 2):  # the second cut comes while the broken catch-up is still being retried
                assert await terminate_listeners(database_url) == 1
                await wait_until(lambda cut=cut: len(healthy_catch_ups) == cut, what=f"catch-up after cut {cut}")
                await wait_until(lambda: len(broken_tries) >= 2, what="the broken catch-up retried")
                await sender.execute("SELECT pg_notify($1, $2)", CHANNEL, f"after cut {cut}")
                await wait_until(lambda cut=cut: received[-1:] == [f"after cut {cut}"], what="a notification")
        finally:
            await sender.close()
    finally:
        await listener.close()


class SilentCut:
    """A TCP relay to Postgres whose open connections can be cut silently: it stops passing bytes but closes
    nothing, as a firewall dropping state or a vanished host does. Connections made later pass as usual."""

    def __init__(self, database_url: str) -> None:
        self._target = urlsplit(database_url)
        socket_dir = parse_qs(self._target.query).get("host", [""])[0]  # the embedded server: a unix socket
        self._socket = str(next(Path(socket_dir).glob(".s.PGSQL.*"))) if socket_dir.startswith("/") else None
        self._cuts: list[asyncio.Event] = []  # one per open connection: set, it passes nothing more
        self._released = asyncio.Event()  # the relay is done: cut connections may close now
        self._relays: set[asyncio.Task] = set()
        self.url = ""

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[SilentCut]:
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        user = self._target.netloc.rsplit("@", 1)[0] + "@" if "@" in self._target.netloc else ""
        self.url = urlunsplit(self._target._replace(netloc=f"{user}127.0.0.1:{port}", query=""))
        try:
            yield self
        finally:
            server.close()
            self._released.set()
            for relay in self._relays:
                relay.cancel()
            await asyncio.gather(*self._relays, return_exceptions=True)

    def cut(self) -> None:
        for cut in self._cuts:
            cut.set()
        self._cuts = []

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._relays.add(asyncio.current_task())  # type: ignore[arg-type]
        if self._socket is not None:
            reader, writer = await asyncio.open_unix_connection(self._socket)
        else:
            reader, writer = await asyncio.open_connection(self._target.hostname, self._target.port or 5432)
        cut = asyncio.Event()
        self._cuts.append(cut)

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while True:
                reading = asyncio.ensure_future(source.read(65536))
                cutting = asyncio.ensure_future(cut.wait())
                await asyncio.wait({reading, cutting}, return_when=asyncio.FIRST_COMPLETED)
                cutting.cancel()
                if cut.is_set():
                    reading.cancel()
                    await self._released.wait()  # cut: both sockets stay open and silent
                    return
                data = reading.result()
                if not data:  # one side closed: so does the relay towards the other
                    sink.close()
                    return
                sink.write(data)
                await sink.drain()

        try:
            await asyncio.gather(pump(client_reader, writer), pump(reader, client_writer))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for each in (writer, client_writer):
                each.close()


async def test_a_connection_cut_silently_is_found_dead_and_listened_again(database_url: str):
    received: list[str] = []
    catch_ups: list[int] = []

    async def resumed() -> None:
        catch_ups.append(1)

    async with SilentCut(database_url).running() as relay:
        listener = db.NotificationListener(relay.url, liveness_check_s=0.3, liveness_timeout_s=0.5)
        await listener.start()
        try:
            await listener.subscribe(db.Subscription(CHANNEL, received.append, resumed))
            sender = await asyncpg.connect(database_url)
            try:
                await sender.execute("SELECT pg_notify($1, 'before')", CHANNEL)
                await wait_until(lambda: received == ["before"], what="a notification")
                relay.cut()
                await sender.execute("SELECT pg_notify($1, 'lost')", CHANNEL)  # sent into the cut: lost
                await wait_until(lambda: catch_ups == [1], what="a reconnect after the silent cut")
                await sender.execute("SELECT pg_notify($1, 'after')", CHANNEL)
                await wait_until(lambda: received == ["before", "after"], what="a notification after it")
            finally:
                await sender.close()
        finally:
            await listener.close()
