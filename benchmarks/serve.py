"""Image serving, faceserve against nginx on the same stored file: req/s, p99 and errors for 200s and 304s.

Install the tools this script drives (Debian packages), once:

    apt-get install -y nginx wrk

Run:

    python benchmarks/serve.py [--workers 1] [--seconds 10] [--turns 2] [--nginx-workers auto]
                               [--image-store file|postgres]

It makes a ~100 KB JPEG from a shipped photo, starts `faceserve serve` on a free loopback port with a
temporary storage folder (embedded Postgres under it), uploads the JPEG, and starts nginx (its own config
and prefix: sendfile, open_file_cache, etag, the same Cache-Control) on the stored file. Then wrk hits each
server in turn (faceserve, nginx, faceserve, nginx, ...) with a plain GET (200) and a revalidation with the
server's own ETag in If-None-Match (304). Both servers share the machine's cores with wrk, so the ratio to
nginx is the number to read. Only 127.0.0.1 is ever a target.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import insightface
import numpy as np
from smoke import add_flag, shrink

ROOT = Path(__file__).resolve().parents[1]
SOURCE_PHOTO = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
TARGET_BYTES = 100_000
CACHE_CONTROL = "public, max-age=31536000, immutable"
CASES = ("200", "304")
SERVERS = ("faceserve", "baseline", "nginx")

NGINX_CONF = """\
{user}
worker_processes {workers};
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=1000 inactive=60s;
    open_file_cache_valid 60s;
    etag on;
    # aiohttp never closes a busy keep-alive connection; nginx does after 1000 requests by default
    keepalive_requests 1000000;
    types {{ image/jpeg jpg jpeg; }}
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /face_sessions/ {{ add_header Cache-Control "{cache_control}"; }}
    }}
}}
"""


@dataclass(frozen=True)
class Target:
    server: str
    url: str
    etag: str
    # the server's process (faceserve: its workers are counted too); None: not measured (nginx)
    pid: int | None = None


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p99_ms: float
    errors: int
    requests: int = 0
    # server CPU time per request: unlike req/s, barely moved by other work sharing the cores
    cpu_us: float | None = None


def require_tools() -> None:
    missing = [tool for tool in ("nginx", "wrk") if find_tool(tool) is None]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: run `apt-get install -y nginx wrk`")


def find_tool(name: str) -> str | None:
    # /usr/sbin (nginx) is not on every user's PATH
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_jpeg(target_bytes: int = TARGET_BYTES) -> bytes:
    """Re-encode the shipped photo at the quality (and, if needed, scale) that lands nearest target_bytes."""
    image = cv2.imread(str(SOURCE_PHOTO))
    if image is None:
        raise RuntimeError(f"cannot read {SOURCE_PHOTO}")
    for _ in range(4):
        best = min(
            (encode(image, q) for q in range(30, 100, 2)), key=lambda data: abs(len(data) - target_bytes)
        )
        if abs(len(best) - target_bytes) <= target_bytes // 20:
            return best
        scale = (target_bytes / len(best)) ** 0.5
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return best


def encode(image: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


def faceserve_command() -> list[str]:
    script = Path(sys.executable).parent / "faceserve"
    return [str(script)] if script.exists() else [sys.executable, "-m", "faceserve"]


def supports_workers_flag() -> bool:
    help_text = subprocess.run(
        [*faceserve_command(), "serve", "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    ).stdout
    return "--workers" in help_text


@contextmanager
def running_faceserve(
    storage: Path,
    port: int,
    workers: int,
    image_store: str,
    extra_env: dict[str, str] | None = None,
    log_level: str = "WARNING",
    source: Path | None = None,
) -> Iterator[str]:
    """source: another checkout's src/ folder to run instead of the installed faceserve (--baseline-src)."""
    command = [*faceserve_command(), "--log-level", log_level, "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--storage", str(storage), "--models-dir", str(ROOT / "models")]
    if supports_workers_flag():
        command += ["--workers", str(workers)]
    elif workers != 1:
        print(f"faceserve serve has no --workers flag: running one process, not {workers}", file=sys.stderr)
    # no DATABASE_URL: faceserve starts its own embedded Postgres under storage/pgdata
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "FACESERVE_DATABASE_URL")}
    env["FACESERVE_IMAGE_STORE"] = image_store
    # nginx serves the file unsigned: so does faceserve here (signature checks are one HMAC per request)
    env["FACESERVE_PUBLIC_IMAGES"] = "true"
    # one address (wrk's) sends every request: per-client budgets would measure the limiter, not serving
    # (ratelimit.py turns them back on through extra_env)
    env["FACESERVE_RATE_LIMITS"] = "false"
    env.update(extra_env or {})
    if source is not None:
        env["PYTHONPATH"] = str(source)
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sys.stderr)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/healthz", process, timeout_s=300)
        _SERVER_PIDS[base] = process.pid
        yield base
    finally:
        stop(process, signal.SIGTERM, timeout_s=60)


@contextmanager
def running_nginx(prefix: Path, port: int, root: Path, workers: str) -> Iterator[str]:
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    # as root, nginx workers would drop to `nobody`, who cannot enter the 0700 temporary folder
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(
        NGINX_CONF.format(
            user=user, workers=workers, prefix=prefix, port=port, root=root, cache_control=CACHE_CONTROL
        )
    )
    nginx = find_tool("nginx")
    assert nginx is not None
    process = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(conf)], stdout=sys.stderr)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base + "/", process, timeout_s=30)
        yield base
    finally:
        stop(process, signal.SIGQUIT, timeout_s=30)  # SIGQUIT: nginx's graceful shutdown


def wait_until_up(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answered, if only with 404
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def stop(process: subprocess.Popen, sig: signal.Signals, timeout_s: float) -> None:
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def admin_headers(storage: Path) -> dict[str, str]:
    """The key the first start wrote (README, Security model)."""
    return {"Authorization": f"Bearer {(storage / 'admin-key').read_text().strip()}"}


def post_json(url: str, payload: dict, headers: dict[str, str]) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json", **headers}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def upload(base: str, name: str, data: bytes, headers: dict[str, str]) -> dict:
    """Create a session and upload one file; returns its entry of data.images."""
    session_id = post_json(f"{base}/api/face/sessions", {"name": "serve-bench"}, headers)["data"]["id"]
    boundary = "faceserve-bench-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{base}/api/face/sessions/{session_id}/images",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}", **headers},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)["data"]["images"][0]


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("GET", parts.path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def checked_target(server: str, url: str, expected: bytes, base: str | None = None) -> Target:
    """Check what wrk will measure: the file with our caching header, and a 304 for the server's own ETag."""
    status, headers, body = fetch(url)
    if status != 200 or body != expected or headers.get("Cache-Control") != CACHE_CONTROL:
        raise RuntimeError(
            f"{server}: {status}, {len(body)} bytes, Cache-Control {headers.get('Cache-Control')}"
        )
    etag = headers["ETag"]
    status, _, body = fetch(url, {"If-None-Match": etag})
    if status != 304 or body:
        raise RuntimeError(f"{server}: revalidation gave {status} with {len(body)} bytes")
    return Target(server, url, etag, _SERVER_PIDS.get(base) if base else None)


_LATENCY_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


_SERVER_PIDS: dict[str, int] = {}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (the workers), embedded Postgres excepted."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            if "postgres" in process.name():
                continue
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def parse_wrk(output: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
    if rps is None or p99 is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    non_2xx_3xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = int(non_2xx_3xx.group(1)) if non_2xx_3xx else 0
    errors += sum(int(n) for n in sockets.groups()) if sockets else 0
    requests = re.search(r"(\d+) requests in", output)
    return WrkResult(
        float(rps.group(1)),
        float(p99.group(1)) * _LATENCY_UNITS_MS[p99.group(2)],
        errors,
        int(requests.group(1)) if requests else 0,
    )


def run_wrk(target: Target, case: str, seconds: int, connections: int) -> WrkResult:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if case == "304":
        command += ["-H", f"If-None-Match: {target.etag}"]
    cpu_before = cpu_seconds(target.pid) if target.pid is not None else 0.0
    done = subprocess.run(
        command + [target.url], capture_output=True, text=True, timeout=seconds + 60, check=True
    )
    result = parse_wrk(done.stdout)
    if target.pid is None or not result.requests:
        return result
    cpu_us = 1e6 * (cpu_seconds(target.pid) - cpu_before) / result.requests
    return WrkResult(result.rps, result.p99_ms, result.errors, result.requests, cpu_us)


def measure(
    targets: list[Target], turns: int, seconds: int, connections: int
) -> dict[tuple[str, str], list[WrkResult]]:
    results: dict[tuple[str, str], list[WrkResult]] = {}
    for turn in range(turns):
        for case in CASES:
            for target in targets:
                result = run_wrk(target, case, seconds, connections)
                results.setdefault((case, target.server), []).append(result)
                print(f"turn {turn + 1}/{turns} {case} {target.server}: {result}", file=sys.stderr)
    return results


def table(results: dict[tuple[str, str], list[WrkResult]], workers: int, image_store: str) -> str:
    lines = [
        "| case | server | req/s | p99 | errors | ratio to nginx | server CPU per request |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in CASES:
        nginx_rps = statistics.median(r.rps for r in results[(case, "nginx")])
        for server in SERVERS:
            if (case, server) not in results:
                continue
            runs = results[(case, server)]
            rps = statistics.median(r.rps for r in runs)
            p99 = statistics.median(r.p99_ms for r in runs)
            errors = sum(r.errors for r in runs)
            label = f"faceserve --workers {workers}, {image_store} store" if server == "faceserve" else server
            if server == "baseline":
                label = f"baseline (--baseline-src) --workers {workers}, {image_store} store"
            cpu = [r.cpu_us for r in runs if r.cpu_us is not None]
            cpu_text = f"{statistics.median(cpu):.1f} us" if cpu else "-"
            lines.append(
                f"| {case} | {label} | {rps:,.0f} | {p99:.2f} ms | {errors} | {rps / nginx_rps:.2f} | {cpu_text} |"
            )
    for case in CASES:
        if (case, "baseline") in results:
            ours = statistics.median(r.rps for r in results[(case, "faceserve")])
            theirs = statistics.median(r.rps for r in results[(case, "baseline")])
            ours_cpu = statistics.median(r.cpu_us or 0.0 for r in results[(case, "faceserve")])
            theirs_cpu = statistics.median(r.cpu_us or 0.0 for r in results[(case, "baseline")])
            lines.append(
                f"\n{case}: faceserve / baseline req/s = {ours / theirs:.3f}; "
                f"CPU per request = {ours_cpu / theirs_cpu:.3f}"
            )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=1, help="faceserve serve --workers (default 1)")
    parser.add_argument("--nginx-workers", default="auto", help="nginx worker_processes (default auto)")
    parser.add_argument("--seconds", type=int, default=10, help="length of one wrk run (default 10)")
    parser.add_argument(
        "--turns", "--rounds", type=int, default=2, help="wrk runs per server and case (default 2)"
    )
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument(
        "--image-store",
        choices=("file", "postgres"),
        default="file",
        help="FACESERVE_IMAGE_STORE for faceserve (default file); nginx always serves a file",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="faceserve --log-level (default WARNING: no access log; INFO writes one line per request)",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="another checkout's src/ folder (say, main's): run it too, alternated with the others, to "
        "measure what a change costs under the same load (`git archive <commit> | tar -x -C DIR`)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    add_flag(parser)
    args = parser.parse_args()
    shrink(args, seconds=1, turns=1, connections=4)
    if args.turns < 1 or args.seconds < 1 or args.connections < 2:
        parser.error("--turns and --seconds must be at least 1, --connections at least 2")
    return args


def main() -> None:
    args = parse_args()
    require_tools()
    folder = Path(tempfile.mkdtemp(prefix="faceserve-serve-"))
    try:
        photo = make_jpeg()
        storage = folder / "storage"
        with ExitStack() as servers:
            base = servers.enter_context(
                running_faceserve(
                    storage, free_port(), args.workers, args.image_store, log_level=args.log_level
                )
            )
            image = upload(base, "bench.jpg", photo, admin_headers(storage))
            baseline = None
            if args.baseline_src is not None:
                baseline = servers.enter_context(
                    running_faceserve(
                        folder / "baseline-storage", free_port(), args.workers, args.image_store,
                        log_level=args.log_level, source=args.baseline_src.resolve(),
                    )
                )
                baseline_key = folder / "baseline-storage" / "admin-key"  # none before access control
                baseline_image = upload(
                    baseline, "bench.jpg", photo, admin_headers(folder / "baseline-storage") if baseline_key.exists() else {}
                )
            nginx_root = storage
            if not (storage / "face_sessions" / image["identity"]).exists():
                # the bytes are in Postgres: nginx gets the same bytes as a file of its own
                nginx_root = folder / "www"
                copy = nginx_root / "face_sessions" / image["identity"]
                copy.parent.mkdir(parents=True)
                copy.write_bytes(photo)
            with running_nginx(folder / "nginx", free_port(), nginx_root, args.nginx_workers) as nginx_base:
                targets = [
                    checked_target("faceserve", f"{base}/api/face/image/{image['image_id']}", photo, base),
                    checked_target("nginx", f"{nginx_base}/face_sessions/{image['identity']}", photo),
                ]
                if baseline is not None:
                    url = f"{baseline}/api/face/image/{baseline_image['image_id']}"
                    targets.insert(1, checked_target("baseline", url, photo, baseline))
                results = measure(targets, args.turns, args.seconds, args.connections)
    finally:
        if args.keep:
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print(
        f"{len(photo):,}-byte JPEG; wrk -t2 -c{args.connections} -d{args.seconds}s --latency, "
        f"{args.turns} turns each, alternated; medians of req/s and p99, errors summed; "
        f"nginx worker_processes {args.nginx_workers}; {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}\n"
    )
    print(table(results, args.workers, args.image_store))


if __name__ == "__main__":
    main()
