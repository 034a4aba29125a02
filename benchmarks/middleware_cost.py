"""What each middleware costs a request, in microseconds, in-process: the app's handler chain (router,
middlewares, handler) around a trivial handler on the image route, each middleware on or off.

Run:

    python benchmarks/middleware_cost.py [--requests 5000] [--turns 25]

The app is the service's own (faceserve.app.middleware_chain with FACESERVE_AUTH on, public images and rate
limits on with budgets too large to bite; the middlewares placed as create_app places them, app-wide or
around the routes they apply to), every route of http/routes.py registered, the image route's handler
replaced by one that returns an empty 304. Each request is a real aiohttp Request (headers as wrk sends
them, an If-None-Match) handed to Application._handle as the server does, then to the access logger (text
lines to /dev/null through a plain console handler like the service's) when that row has it, and through
on_response_prepare (the rate-limit fields) as prepare() would. No socket, no parser, no write to a client:
this is the part of a request our code adds, not aiohttp's HTTP work.
Rows are alternated turn by turn; each figure is the fastest turn's µs per request (other work on the
cores only ever adds), the median in brackets, and "cost" is the fastest minus the bare row's fastest (no
middleware, no signal, no access log).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import os
import statistics
import sys
import time
import types

from aiohttp import web
from aiohttp.http import HttpVersion11, RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from multidict import CIMultiDict, CIMultiDictProxy
from smoke import add_flag, shrink
from yarl import URL

from faceserve import app as faceserve_app
from faceserve.config import Settings
from faceserve.http import access, access_log, ratelimit, routes, routing
from faceserve.http.appkeys import URLS
from faceserve.http.urls import UrlPolicy

IMAGE_PATH = "/api/face/image/{image_id}"
ETAG = '"0123456789abcdef0123456789abcdef"'


class _Transport:
    """What a request asks its transport for (the peer's address), nothing more."""

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def is_closing(self) -> bool:
        return False


async def _not_modified(_request: web.Request) -> web.StreamResponse:
    return web.Response(status=304, headers={"ETag": ETAG})


def build(settings: Settings, names: set[str]) -> web.Application:
    """The service's middlewares of these names, placed as create_app places them, every route registered."""
    chain = [layer for layer in faceserve_app.middleware_chain(settings) if layer.name in names]
    app = web.Application(middlewares=[layer.middleware for layer in chain if layer.applies is None])
    access.install(app, settings)
    if "prepare signal" in names:
        ratelimit.install(app)
    app[URLS] = UrlPolicy.from_settings(settings)
    table = tuple(
        dataclasses.replace(r, handler=_not_modified) if r.path == IMAGE_PATH else r for r in routes.ROUTES
    )
    routing.register(app, table, [layer for layer in chain if layer.applies is not None])
    app.freeze()
    return app


def message(path: str) -> RawRequestMessage:
    headers = CIMultiDictProxy(CIMultiDict({"Host": "127.0.0.1:8080", "If-None-Match": ETAG}))
    raw = tuple((k.encode(), v.encode()) for k, v in headers.items())
    return RawRequestMessage("GET", path, HttpVersion11, headers, raw, False, None, False, False, URL(path))


async def time_row(app: web.Application, logger: access_log.AccessLogger | None, requests: int) -> float:
    """µs per request through the app's handler chain (and the access logger when given)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    # what a Request reads off its connection's protocol when it is made
    protocol = types.SimpleNamespace(
        transport=_Transport(), writer=None, ssl_context=None, peername=("127.0.0.1", 40000), sockname=("127.0.0.1", 8080)
    )
    raw = message("/api/face/image/1")
    handle = app._handle
    signal = app.on_response_prepare
    gc.collect()
    gc.disable()  # a collection lands on whichever row is running: not a cost of that row
    start = time.perf_counter()
    for _ in range(requests):
        request = web.Request(raw, EMPTY_PAYLOAD, protocol, None, task, loop)  # type: ignore[arg-type]
        response = await handle(request)
        if signal:
            await signal.send(request, response)
        if logger is not None:
            logger.log(request, response, 0.0001)
    elapsed = time.perf_counter() - start
    gc.enable()
    if response.status != 304:
        raise RuntimeError(f"the image route answered {response.status}, not 304")
    return 1e6 * elapsed / requests


def console_to_devnull() -> logging.Handler:
    """The console handler logs.configure makes (a plain StreamHandler, its text format), writing nowhere."""
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 (open for the whole run)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"))
    return handler


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5_000, help="requests per row and turn (default 5000)")
    parser.add_argument("--turns", type=int, default=25, help="turns, rows alternated in each (default 25)")
    add_flag(parser)
    args = parser.parse_args()
    shrink(args, requests=200, turns=1)
    if args.requests < 1 or args.turns < 1:
        parser.error("--requests and --turns must be at least 1")
    return args


async def main() -> None:
    args = parse_args()
    settings = Settings(auth=True, public_images=True, rate_limits=True, rate_limit_read="1000000000/1")
    middlewares = [layer.name for layer in faceserve_app.middleware_chain(settings)]
    parts = [*middlewares, "prepare signal", "access log"]
    access_log.LOGGER.addHandler(console_to_devnull())
    access_log.LOGGER.setLevel(logging.INFO)
    access_log.LOGGER.propagate = False
    rows: dict[str, set[str]] = {"bare": set(), **{f"+ {part}": {part} for part in parts}, "all": set(parts)}
    apps = {label: build(settings, names) for label, names in rows.items()}
    loggers = {
        label: access_log.AccessLogger(access_log.LOGGER, "text") if "access log" in names else None
        for label, names in rows.items()
    }
    figures: dict[str, list[float]] = {label: [] for label in rows}
    for label in rows:  # warm: caches filled, code paths taken once
        await time_row(apps[label], loggers[label], min(args.requests, 1000))
    for turn in range(args.turns):
        order = list(rows) if turn % 2 == 0 else list(reversed(rows))
        for label in order:
            figures[label].append(await time_row(apps[label], loggers[label], args.requests))
        print(f"turn {turn + 1}/{args.turns} done", file=sys.stderr)
    bare = min(figures["bare"])
    print(
        f"{args.requests:,} requests per row and turn, {args.turns} turns alternated; µs per request, the "
        f"fastest turn (median of the turns); Python {sys.version.split()[0]}; {os.cpu_count()} cores; "
        f"{time.strftime('%Y-%m-%d')}\n"
    )
    print("| row | µs per request | cost over bare, µs |")
    print("|---|---|---|")
    for label, values in figures.items():
        fastest = min(values)
        cost = "-" if label == "bare" else f"{fastest - bare:.2f}"
        print(f"| {label} | {fastest:.2f} ({statistics.median(values):.2f}) | {cost} |")


if __name__ == "__main__":
    asyncio.run(main())
