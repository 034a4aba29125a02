"""The listening side of a process: aiohttp's runner with limits against slow and greedy clients.

- keepalive_timeout_s: aiohttp closes a connection whose handler waits for a request longer than this:
  an idle keep-alive connection, and equally one that sent part of a request header and stalls (aiohttp
  arms this timer from the moment a connection opens), so it is the header timeout too.
- max_connections: connections past this many in one process are closed at once, before any byte is
  read, so a crowd of idle or trickling clients cannot exhaust file descriptors; those within keep working.
- Request bodies have their own minimum rate (http/uploads.py).

This is web.run_app with those hooks: run_app offers no way to reach the server it makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from ..config import Settings

log = logging.getLogger(__name__)
_LOG_EVERY = 1000


class ProtocolLog(logging.LoggerAdapter):
    """aiohttp's server logger (aiohttp.server), with a request its parser refused (a URL or header line over
    8 KiB, bad framing) as one DEBUG line rather than an ERROR traceback: the client's mistake, answered 400
    and access-logged like any answer."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            # the class only: the message quotes the refused bytes, which may be a header's value
            self.debug("%s: %s, answered %d", str(msg) % args, type(exc_info).__name__, exc_info.code)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


class ConnectionCap:
    """Closes connections of an aiohttp Server past `limit` as soon as they are made."""

    def __init__(self, server: web.Server, limit: int) -> None:
        self.server = server
        self.limit = limit
        self.refused = 0
        self._made = server.connection_made
        server.connection_made = self.connection_made  # type: ignore[method-assign]

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self._made(handler, transport)
        if len(self.server.connections) > self.limit:
            if self.refused % _LOG_EVERY == 0:
                log.warning("%d connections open: closing new ones (%d so far)", self.limit, self.refused + 1)
            self.refused += 1
            # after the handler has started its task (it expects its server until connection_lost), which
            # connection_lost then ends; the server forgets the connection there
            asyncio.get_running_loop().call_soon(transport.abort)


async def start(
    app: web.Application,
    settings: Settings,
    *,
    reuse_port: bool = False,
    handle_signals: bool = True,
    access_log: Mapping[str, Any] | None = None,
) -> web.AppRunner:
    """Open the app's services and listen on settings.host:port with the limits above. With handle_signals,
    SIGINT and SIGTERM raise GracefulExit out of the loop. access_log: aiohttp's access_log* arguments."""
    runner = web.AppRunner(
        app,
        keepalive_timeout=settings.keepalive_timeout_s,
        handle_signals=handle_signals,
        logger=ProtocolLog(logging.getLogger("aiohttp.server")),
        **(access_log or {"access_log": None}),
    )
    await runner.setup()
    try:
        assert runner.server is not None
        ConnectionCap(runner.server, settings.max_connections)
        site = web.TCPSite(
            runner,
            settings.host,
            settings.port,
            reuse_port=reuse_port or None,
            backlog=settings.listen_backlog,
        )
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def run(
    app: web.Application,
    settings: Settings,
    *,
    reuse_port: bool,
    loop: asyncio.AbstractEventLoop,
    announce: Callable[[str], Any] | None = print,
    access_log: Mapping[str, Any] | None = None,
) -> bool:
    """Serve until SIGINT or SIGTERM, then shut down gracefully (the app's cleanup closes the services).
    True when SIGINT stopped it (Ctrl-C: the command exits 130), False for SIGTERM (a service manager's stop)."""
    interrupted = False

    def on_interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        raise web.GracefulExit()

    async def main() -> None:
        runner = await start(app, settings, reuse_port=reuse_port, access_log=access_log)
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows' loop
            loop.add_signal_handler(signal.SIGINT, on_interrupt)  # in place of aiohttp's, which says no which
        try:
            if announce is not None:
                announce(f"======== Running on http://{settings.host}:{settings.port} ========")
            await asyncio.Future()  # until a signal raises GracefulExit out of the loop
        finally:
            await runner.cleanup()

    asyncio.set_event_loop(loop)
    task = loop.create_task(main())
    try:
        loop.run_until_complete(task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        task.cancel()
        loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    return interrupted
