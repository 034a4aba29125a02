"""Rate limits: how accurate (a client at 3x its budget gets ~1/3 through) and how cheap (image req/s with
limits on against off), on the real service.

Needs wrk (`apt-get install -y wrk`) for the overhead part. Run:

    python benchmarks/ratelimit.py [--workers 1 2] [--quota 20/1] [--seconds 10] [--turns 2] [--wrk-seconds 5]

Accuracy: for each --workers value, `faceserve serve` starts with FACESERVE_RATE_LIMIT_READ=<quota>; a
client first spends the burst (1 s as fast as it can, not counted), then asks for an image at 3x the
quota's rate for --seconds, a new connection per request (so SO_REUSEPORT spreads it over the workers, as
separate clients are spread), and counts 200s and 429s. Overhead: two servers at once, one with
FACESERVE_RATE_LIMITS=false and one with limits on and a budget too big to bite, hit in turn by wrk with a
plain GET of the image (200). Only 127.0.0.1 is ever a target.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from serve import (  # the serving benchmark's helpers: start, upload, wrk
    admin_headers,
    checked_target,
    fetch,
    free_port,
    make_jpeg,
    require_tools,
    run_wrk,
    running_faceserve,
    upload,
)
from smoke import add_flag, shrink

from faceserve.config import Settings
from faceserve.core.token_buckets import Quota
from faceserve.http import ratelimit as http_ratelimit
from faceserve.http import routing


def paced(url: str, rate: float, seconds: float) -> tuple[int, int, int]:
    """Requests at `rate` per second for `seconds`; returns (sent, 200s, 429s)."""
    sent = ok = limited = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        due = start + sent / rate
        if due > time.monotonic():
            time.sleep(due - time.monotonic())
        status, _, _ = fetch(url)
        sent += 1
        ok += status == 200
        limited += status == 429
    return sent, ok, limited


def accuracy(folder: Path, workers: int, quota: Quota, seconds: float) -> tuple[int, int, int, float]:
    storage = folder / f"accuracy-{workers}"
    env = {"FACESERVE_RATE_LIMITS": "true", "FACESERVE_RATE_LIMIT_READ": f"{quota.requests}/{quota.window_s}"}
    with running_faceserve(storage, free_port(), workers, "file", env) as base:
        image = upload(base, "bench.jpg", make_jpeg(), admin_headers(storage))
        url = f"{base}{urllib.parse.urlsplit(image['url']).path}"
        paced(url, 1000.0, 1.0)  # spend the burst (and any refill meanwhile)
        sent, ok, limited = paced(url, 3 * quota.requests / quota.window_s, seconds)
    return sent, ok, limited, ok / sent


def overhead(folder: Path, turns: int, seconds: int, connections: int) -> dict[str, list[float]]:
    photo = make_jpeg()
    settings = {
        "limits off": {"FACESERVE_RATE_LIMITS": "false"},
        "limits on": {"FACESERVE_RATE_LIMITS": "true", "FACESERVE_RATE_LIMIT_READ": "1000000000/1"},
    }
    results: dict[str, list[float]] = {name: [] for name in settings}
    storages = {name: folder / name.replace(" ", "-") for name in settings}
    with (
        running_faceserve(storages["limits off"], free_port(), 1, "file", settings["limits off"]) as off,
        running_faceserve(storages["limits on"], free_port(), 1, "file", settings["limits on"]) as on,
    ):
        targets = {}
        for name, base in (("limits off", off), ("limits on", on)):
            image = upload(base, "bench.jpg", photo, admin_headers(storages[name]))
            targets[name] = checked_target(name, f"{base}/api/face/image/{image['image_id']}", photo)
        for turn in range(turns):
            for name, target in targets.items():
                result = run_wrk(target, "200", seconds, connections)
                results[name].append(result.rps)
                print(f"turn {turn + 1}/{turns} {name}: {result}", file=sys.stderr)
    return results


async def middleware_cost(calls: int = 50_000) -> tuple[float, float]:
    """Microseconds per call of a trivial handler, bare and behind the limit middleware (with the headers
    added as on_response_prepare adds them): the limiter's own cost, free of the machine's noise that
    whole-request runs on a shared machine carry."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=b"x")

    app = web.Application()
    # declared as http/routes.py declares the image route: the limiter reads the budget from the declaration
    image_route = routing.Route(
        "GET", "/api/face/image/{image_id}", handler, routing.SIGNED, routing.READ, "getImage", "headImage"
    )
    routing.register(app, (image_route,))
    limiter = http_ratelimit.Limiter.from_settings(Settings(rate_limit_read="1000000000/1"))
    http_ratelimit.install(app, limiter)
    match = await app.router.resolve(make_mocked_request("GET", "/api/face/image/1", app=app))
    match.add_app(app)
    match.freeze()
    request = make_mocked_request("GET", "/api/face/image/1", app=app, match_info=match)
    limited = http_ratelimit.middleware(limiter)

    async def bare() -> None:
        await handler(request)

    async def behind() -> None:
        response = await limited(request, handler)
        await http_ratelimit._add_fields(request, response)

    best = {}
    for name, call in (("bare", bare), ("limited", behind)):
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(calls):
                await call()
            best[name] = min(best.get(name, 1e9), (time.perf_counter() - start) / calls * 1e6)
    return best["bare"], best["limited"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quota", default="20/1", help="the read budget for the accuracy runs (default 20/1)")
    parser.add_argument("--seconds", type=float, default=10, help="length of a paced accuracy run")
    parser.add_argument("--turns", type=int, default=2, help="wrk runs per server (default 2)")
    parser.add_argument("--wrk-seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--middleware-calls", type=int, default=50_000, help="calls per timing of the limiter alone")
    add_flag(parser)
    args = parser.parse_args()
    shrink(args, workers=[1], seconds=1.0, turns=1, wrk_seconds=1, connections=4, middleware_calls=2000)
    quota = Quota.parse(args.quota)
    if not args.skip_overhead:
        require_tools()
    folder = Path(tempfile.mkdtemp(prefix="faceserve-ratelimit-"))
    try:
        rows = [(w, *accuracy(folder, w, quota, args.seconds)) for w in args.workers]
        results = {} if args.skip_overhead else overhead(folder, args.turns, args.wrk_seconds, args.connections)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"read budget {args.quota}, client at 3x for {args.seconds:g} s after spending the burst, a new "
          f"connection per request; {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}\n")
    print("| workers | sent | 200 | 429 | share through | target 1/3, off by |")
    print("|---|---|---|---|---|---|")
    for workers, sent, ok, limited, share in rows:
        print(f"| {workers} | {sent} | {ok} | {limited} | {share:.3f} | {100 * (share * 3 - 1):+.1f} % |")
    bare, limited = asyncio.run(middleware_cost(args.middleware_calls))
    print(f"\nlimit middleware alone: {limited - bare:.1f} us per request ({bare:.1f} us bare handler, "
          f"{limited:.1f} us behind the limiter; best of 5 x {args.middleware_calls:,} calls)")
    if results:
        off, on = statistics.median(results["limits off"]), statistics.median(results["limits on"])
        print(f"\nimage endpoint, wrk -t2 -c{args.connections} -d{args.wrk_seconds}s, {args.turns} turns, "
              "alternated, medians\n")
        print("| limits | req/s | ratio to off |\n|---|---|---|")
        print(f"| off | {off:,.0f} | 1.00 |\n| on (budget too big to bite) | {on:,.0f} | {on / off:.2f} |")


if __name__ == "__main__":
    main()
