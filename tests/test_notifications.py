"""The listening connection (db/notifications.py) on a real Postgres: cut off, it comes back by itself, each
subscriber catches up, and a catch-up that fails is tried again rather than ending the reconnecting task
(which would leave the process deaf to every other process after its next lost connection)."""

from __future__ import annotations

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
