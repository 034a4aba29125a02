"""Image serving against nginx on the same file: req/s and p99 for 200s and 304 revalidations, turn by turn.

    apt-get install -y nginx wrk        # the tools this script drives (Debian packages)
    python benchmarks/serve.py [--workers 1] [--seconds 10] [--rounds 2]

Starts an embedded Postgres and `faceserve serve` in a temporary folder, uploads t1.jpg (~126 KB), starts
nginx (its own config: sendfile, open_file_cache, etag, the same Cache-Control) on the stored file, then
runs wrk at 64 connections against each in turn: faceserve, nginx, faceserve, nginx... Both share the
machine's cores with wrk, so the ratio is the number to read.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import insightface

from faceserve import db

ROOT = Path(__file__).parents[1]
PHOTO = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
NGINX_CONF = """
worker_processes auto;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=10000 inactive=60s;
    etag on;
    types {{ image/jpeg jpg; }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        root {root};
        location / {{ add_header Cache-Control "public, max-age=31536000, immutable"; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer")


def request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    return urllib.request.urlopen(req, timeout=10)


def upload(base: str) -> tuple[int, str]:
    with request(f"{base}/api/face/sessions", "POST", b'{"name": "serve"}', {"Content-Type": "application/json"}) as r:
        session_id = int(re.search(rb'"id": (\d+)', r.read()).group(1))
    boundary = "servebench"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t1.jpg"\r\n\r\n'.encode()
        + PHOTO.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    with request(f"{base}/api/face/sessions/{session_id}/images", "POST", body, headers) as r:
        text = r.read().decode()
    image_id = int(re.search(r'"image_id": (\d+)', text).group(1))
    identity = re.search(r'"identity": "([^"]+)"', text).group(1)
    return image_id, identity


def wrk(url: str, seconds: int, etag: str | None) -> dict:
    command = ["wrk", "-t2", "-c64", f"-d{seconds}s", "--latency", url]
    if etag:
        command += ["-H", f"If-None-Match: {etag}"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p99_ms": float(p99.group(1)) * scale,
        "errors": (int(errors.group(1)) if errors else 0) + (sum(map(int, socket_errors.groups())) if socket_errors else 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="faceserve-serve-"))
    with db.embedded_postgres_blocking(folder / "pgdata") as dsn:
        port, nginx_port = free_port(), free_port()
        command = [sys.executable, "-m", "faceserve", "--log-level", "WARNING", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--storage", str(folder), "--models-dir", str(ROOT / "models")]
        command += ["--workers", str(args.workers)]
        service = subprocess.Popen(command, env={**os.environ, "DATABASE_URL": dsn})
        (folder / "nginx.conf").write_text(NGINX_CONF.format(folder=folder, port=nginx_port, root=folder))
        nginx = subprocess.Popen(["nginx", "-p", str(folder), "-c", str(folder / "nginx.conf")])
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(f"{base}/healthz")
            image_id, identity = upload(base)
            ours = f"{base}/api/face/image/{image_id}"
            theirs = f"http://127.0.0.1:{nginx_port}/face_sessions/{identity}"
            wait_for(theirs)
            with request(ours) as r:
                our_tag = r.headers["ETag"]
                assert r.read() == PHOTO.read_bytes()
            with request(theirs) as r:
                their_tag = r.headers["ETag"]
                assert r.read() == PHOTO.read_bytes()
            results: dict[tuple[str, str], list[dict]] = {}
            for _ in range(args.rounds):
                for case in ("200", "304"):
                    for server, url, tag in (("faceserve", ours, our_tag), ("nginx", theirs, their_tag)):
                        result = wrk(url, args.seconds, tag if case == "304" else None)
                        results.setdefault((case, server), []).append(result)
        finally:
            service.terminate()
            nginx.terminate()
            service.wait(30)
            nginx.wait(30)

    print(
        f"t1.jpg ({PHOTO.stat().st_size:,} bytes); wrk -t2 -c64 -d{args.seconds}s, {args.rounds} turns each, "
        f"medians; faceserve --workers {args.workers}; {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}\n"
    )
    print("| case | server | req/s | p99 ms | errors | ratio to nginx |")
    print("|---|---|---|---|---|---|")
    for case in ("200", "304"):
        nginx_rps = statistics.median(r["rps"] for r in results[(case, "nginx")])
        for server in ("faceserve", "nginx"):
            runs = results[(case, server)]
            rps = statistics.median(r["rps"] for r in runs)
            p99 = statistics.median(r["p99_ms"] for r in runs)
            errors = sum(r["errors"] for r in runs)
            print(f"| {case} | {server} | {rps:,.0f} | {p99:.1f} | {errors} | {rps / nginx_rps:.2f} |")


if __name__ == "__main__":
    main()
