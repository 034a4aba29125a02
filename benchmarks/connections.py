"""1,000 concurrent connections on the image endpoint: errors and p99, as issue 10 measured them.

Needs wrk (`apt-get install -y wrk`). Run:

    python benchmarks/connections.py [--connections 1000] [--workers 2] [--seconds 10] [--turns 2]
                                     [--event-loops asyncio uvloop] [--wrk-timeout 10]

Starts `faceserve serve --workers N` on a loopback port with a temporary storage folder (embedded Postgres),
uploads a ~100 KB JPEG, then runs wrk with that many connections against GET /api/face/image/{id}: a plain
GET (200) and a revalidation (304), once per event loop (FACESERVE_EVENT_LOOP), each on a fresh server whose
cache is cold (the first 1,000 requests all miss it). Prints one row per run: requests/s, p50, p99, the
slowest answer, and every kind of error wrk counts (connect, read, write, timeout: no answer within
--wrk-timeout, 10 s rather than wrk's 2 s so that slow answers count in the percentiles instead of being left
out of them; non-2xx/3xx). wrk shares the machine's cores with the server. Only 127.0.0.1 is a target.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import admin_headers, checked_target, free_port, make_jpeg, running_faceserve, upload
from smoke import add_flag, shrink

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def wrk(url: str, connections: int, seconds: int, etag: str | None, timeout_s: int) -> dict[str, float]:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", f"--timeout={timeout_s}s", "--latency"]
    if etag is not None:
        command += ["-H", f"If-None-Match: {etag}"]
    out = subprocess.run(
        command + [url], capture_output=True, text=True, timeout=seconds + 60, check=True
    ).stdout

    def latency(percent: str) -> float:
        found = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.MULTILINE)
        assert found, out
        return float(found.group(1)) * _UNITS_MS[found.group(2)]

    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    connect, read, write, timeout = (int(n) for n in sockets.groups()) if sockets else (0, 0, 0, 0)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps, out
    slowest = re.search(r"^\s*Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s|m)", out, re.MULTILINE)
    assert slowest, out
    return {
        "rps": float(rps.group(1)),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "max_ms": float(slowest.group(1)) * _UNITS_MS[slowest.group(2)],
        "connect": connect,
        "read": read,
        "write": write,
        "timeout": timeout,
        "non_2xx_3xx": int(non_2xx.group(1)) if non_2xx else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--event-loops", nargs="+", default=["asyncio", "uvloop"], choices=["asyncio", "uvloop"])
    parser.add_argument("--wrk-timeout", type=int, default=10)
    add_flag(parser)
    args = parser.parse_args()
    # one server start per loop and turn: uvloop, the one not every other run starts
    shrink(args, connections=16, workers=1, seconds=1, turns=1, event_loops=["uvloop"])
    photo = make_jpeg()
    print(
        f"wrk -t2 -c{args.connections} -d{args.seconds}s --timeout={args.wrk_timeout}s on GET /api/face/image/{{id}} "
        f"({len(photo):,} bytes), faceserve --workers {args.workers}"
    )
    print("| loop | case | req/s | p50 ms | p99 ms | slowest ms | connect | read | write | timeout | non-2xx/3xx |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for _ in range(args.turns):
        for loop in args.event_loops:
            with (
                tempfile.TemporaryDirectory(prefix="faceserve-connections-") as folder,
                running_faceserve(
                    Path(folder) / "storage", free_port(), args.workers, "file",
                    extra_env={"FACESERVE_EVENT_LOOP": loop},
                ) as base,
            ):
                image = upload(base, "bench.jpg", photo, admin_headers(Path(folder) / "storage"))
                target = checked_target("faceserve", f"{base}/api/face/image/{image['image_id']}", photo)
                for case, etag in (("200", None), ("304", target.etag)):
                    r = wrk(target.url, args.connections, args.seconds, etag, args.wrk_timeout)
                    print(
                        f"| {loop} | {case} | {r['rps']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                        f"{r['max_ms']:,.0f} | {r['connect']:.0f} | {r['read']:.0f} | {r['write']:.0f} | "
                        f"{r['timeout']:.0f} | {r['non_2xx_3xx']:.0f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
