"""The recogniser alone on ONNX Runtime, batch by batch: why do batches of faces crawl on CUDA?

    python benchmarks/gpu_recogniser.py [--batches 1 2 4 8 16 32 64] [--repeat 5]
    python benchmarks/gpu_recogniser.py --engine [--batches 1 5 32 45 64] [--repeat 5]

The 2026-11-27 GPU run 3 (RESULTS.md) measured 2.9 ms for one face but 43 faces/s for batches of 64 and
1.4 s embeds with 16 callers. This times session.run of the buffalo_s recogniser (w600k_mbf.onnx) on random
input per batch shape: the first run of a shape and the median of the next `repeat`, per ONNX Runtime
configuration, so the cause shows as the one variant that is fast. Prints one table; nothing else runs.

--engine: the check the GPU run starts with (gpu_run.sh, step `recogniser`): the service's own FaceEngine,
warmed up as at start, embedding batches of each size; on CUDA every run has the engine's one shape
(recogniser_rows), so no size may cost a first run much over its median (the re-planning RESULTS.md found).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from smoke import add_flag, shrink

from faceserve.config import Settings
from faceserve.vision import packs
from faceserve.vision.engine import FaceEngine

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
SERVICE = {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested"}


def with_batch_output(source: Path, folder: Path) -> Path:
    """The model with its output's declared batch (1) made symbolic like its input's."""
    model = onnx.load(str(source))
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    path = folder / "w600k_mbf_batch.onnx"
    onnx.save(model, str(path))
    return path


def session(model: Path, cuda_options: dict[str, str] | None, tuned: bool, no_cpu_fallback: bool = False,
            basic: bool = False):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if tuned:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if basic:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    providers = [CUDA, CPU] if CUDA in ort.get_available_providers() else [CPU]
    if no_cpu_fallback:  # every node on CUDA or the session fails, naming the node
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        providers = providers[:1]
    provider_options = [cuda_options or {} if p == CUDA else {} for p in providers]
    return ort.InferenceSession(str(model), sess_options=options, providers=providers, provider_options=provider_options)


def time_batches(made, batches: list[int], repeat: int, use_binding: bool) -> list[tuple[float, float]]:
    """(first run ms, median of the next runs ms) per batch shape."""
    name = made.get_inputs()[0].name
    rows = []
    for batch in batches:
        feed = np.random.default_rng(batch).standard_normal((batch, 3, 112, 112)).astype(np.float32)

        def once(feed: np.ndarray = feed) -> float:
            start = time.perf_counter()
            if use_binding:
                binding = made.io_binding()
                binding.bind_cpu_input(name, feed)
                binding.bind_output(made.get_outputs()[0].name)
                made.run_with_iobinding(binding)
                binding.copy_outputs_to_cpu()
            else:
                made.run(None, {name: feed})
            return 1000 * (time.perf_counter() - start)

        first = once()
        rows.append((first, float(np.median([once() for _ in range(repeat)]))))
    return rows


def engine_check(models_dir: Path, batches: list[int], repeat: int) -> None:
    """The service's engine after its warm-up: first run / median ms per batch size, in one table row each."""
    engine = FaceEngine.from_settings(Settings(models_dir=models_dir))
    start = time.perf_counter()
    engine.warm_up()
    warm_s = time.perf_counter() - start
    print(f"onnxruntime {ort.__version__} ({ort.get_device()}); engine on {engine.providers}; warm-up "
          f"{warm_s:.1f} s; recogniser runs of {engine.recogniser_rows or 'as many as there are'} rows; "
          f"{time.strftime('%Y-%m-%d')}\n")
    print("| faces | first run ms | median ms | ms a face | first / median |")
    print("|---|---|---|---|---|")
    size = engine.crop_size
    for batch in batches:
        crops = np.random.default_rng(batch).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)

        def once(crops: np.ndarray = crops) -> float:
            start = time.perf_counter()
            engine.embed_crops(crops)
            return 1000 * (time.perf_counter() - start)

        first = once()
        median = float(np.median([once() for _ in range(repeat)]))
        print(f"| {batch} | {first:.1f} | {median:.2f} | {median / batch:.3f} | {first / median:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--models-dir", type=Path, default=Path(tempfile.mkdtemp(prefix="faceserve-models-")))
    parser.add_argument("--engine", action="store_true", help="the service's FaceEngine, not raw sessions")
    add_flag(parser)
    args = parser.parse_args()
    shrink(args, batches=[1, 2], repeat=1)  # on a machine without CUDA every variant runs on the CPU
    if args.engine:
        engine_check(args.models_dir, args.batches, args.repeat)
        return
    source = packs.locate_pack(args.models_dir, "buffalo_s").recogniser
    batched = with_batch_output(source, args.models_dir)
    variants: list[tuple[str, Path, dict[str, str] | None, bool, bool, bool | str]] = [
        ("service options (HEURISTIC, kSameAsRequested, no spinning)", source, SERVICE, True, False, False),
        ("ORT defaults (EXHAUSTIVE, kNextPowerOfTwo)", source, None, False, False, False),
        ("service options, output batch made symbolic", batched, SERVICE, True, False, False),
        ("service options, DEFAULT algo search", source, {**SERVICE, "cudnn_conv_algo_search": "DEFAULT"}, True,
         False, False),
        ("service options, IO binding", source, SERVICE, True, True, False),
        ("service options, CUDA only (CPU fallback disabled)", source, SERVICE, True, False, True),
        ("service options, basic graph optimisations", source, SERVICE, True, False, "basic"),
    ]
    print(f"onnxruntime {ort.__version__} ({ort.get_device()}), providers {ort.get_available_providers()}; "
          f"{source.name}; first run / median of {args.repeat} runs, ms; {time.strftime('%Y-%m-%d')}\n")
    print("| variant | " + " | ".join(f"batch {b}" for b in args.batches) + " | ms a face at the largest |")
    print("|---|" + "---|" * len(args.batches) + "---|")
    for label, model, cuda_options, tuned, binding, strict in variants:
        try:
            made = session(model, cuda_options, tuned, strict is True, strict == "basic")
            rows = time_batches(made, args.batches, args.repeat, binding)
        except Exception as exc:  # noqa: BLE001 - a variant that cannot run says why in its row
            print(f"| {label} | failed: {str(exc).splitlines()[0][:200]} |", flush=True)
            continue
        cells = " | ".join(f"{first:.1f} / {median:.2f}" for first, median in rows)
        print(f"| {label} ({made.get_providers()[0]}) | {cells} | {rows[-1][1] / args.batches[-1]:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
