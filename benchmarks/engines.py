"""ONNX Runtime against OpenVINO on the models' own work, paired: every round measures each engine once, in
alternating order, so the drift of shared cores falls on all of them alike.

    python benchmarks/engines.py [--rounds 3] [--repeat 10] [--images 12] [--threads 2] [--clock wall|cpu]
                                [--probe-sizes 640 320] [--smoke]

Rows per engine: the recogniser on a batch of 32 aligned crops, the detector on one 640x640 input, bare
ingest (decode + detect + align + embed every face, one image after another) of ~1.5 MP JPEGs made from
t1/players/gdp (as benchmarks/ingest.py makes them, ~10 faces each), and the probe (decode + detect + embed
the largest face of yaoming.jpg, what a search does before the index). Each cell is the median of --repeat
runs in a round; the table gives the range over rounds, and the ratio to ONNX Runtime's in the same round.
--clock cpu times by this process's CPU time instead of the wall's: with --threads 1 that is the work each
engine does, which other processes on shared cores do not stretch (wall time there moved by 3x in a run).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from ingest import PHOTOS, make_images
from reference import analyze, largest_face
from smoke import add_flag, shrink

from faceserve.config import Settings
from faceserve.media import decoding
from faceserve.vision import openvino_runtime
from faceserve.vision.engine import FaceEngine

ROOT = Path(__file__).parents[1]
# label -> settings; the first is the reference the ratios are taken against
ENGINES: dict[str, dict[str, str]] = {
    "onnxruntime f32": {"engine": "onnxruntime"},
    "openvino f32": {"engine": "openvino", "precision": "f32", "detector_precision": "f32"},
    "openvino default": {"engine": "openvino", "precision": "auto", "detector_precision": "f32"},
    "openvino bf16 both": {"engine": "openvino", "precision": "bf16", "detector_precision": "bf16"},
}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def median_ms(work: Callable[[], object], repeat: int, clock: Callable[[], float]) -> float:
    work()
    times = []
    for _ in range(repeat):
        start = clock()
        work()
        times.append(clock() - start)
    return 1000 * statistics.median(times)


def measure(engine: FaceEngine, crops: np.ndarray, frame: np.ndarray, images: list[bytes], probe: bytes,
            repeat: int, clock: Callable[[], float]) -> dict[str, float]:
    """One round of every row for one engine: milliseconds, except ingest in images/s."""

    def ingest() -> None:
        for data in images:
            analyze(engine, decoding.decode_bgr(data))

    return {
        "recogniser, batch 32 (ms)": median_ms(lambda: engine.embed_crops(crops), repeat, clock),
        "detector, 640x640 (ms)": median_ms(lambda: engine.detect(frame), repeat, clock),
        "ingest, bare (images/s)": len(images) / (median_ms(ingest, max(1, repeat // 5), clock) / 1000),
        "probe p50, decode+detect+embed (ms)": median_ms(
            lambda: largest_face(engine, decoding.decode_bgr(probe)), repeat, clock
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2, help="FACESERVE_MODEL_THREADS of every engine")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--probe-sizes", type=int, nargs="+", default=[Settings.probe_detector_size])
    add_flag(parser)
    args = parser.parse_args()
    shrink(args, rounds=1, repeat=2, images=2)
    engines = {label: settings for label, settings in ENGINES.items() if settings["engine"] == "onnxruntime"}
    if openvino_runtime.installed():
        native = openvino_runtime.supported_precisions()
        engines |= {label: s for label, s in ENGINES.items() if s["engine"] == "openvino" and
                    ("bf16" in native or "bf16" not in s.values())}
    loaded = {}
    for size in args.probe_sizes:
        for label, settings in engines.items():
            engine = FaceEngine.from_settings(Settings(
                models_dir=ROOT / "models", model_threads=args.threads, probe_detector_size=size, **settings))
            engine.warm_up()
            loaded[label if size == args.probe_sizes[0] else f"{label}, probe {size}"] = engine

    reference = next(iter(loaded.values()))
    images = make_images([PHOTOS[name] for name in ("t1", "players", "gdp")], args.images, 1.5)
    pixels = decoding.decode_bgr(images[1])
    landmarks = reference.detect(pixels)[1]
    crops = np.resize(reference.align(pixels, landmarks), (32, reference.crop_size, reference.crop_size, 3))
    frame = np.ascontiguousarray(decoding.decode_bgr(images[0])[:640, :640])
    probe = PHOTOS["yaoming"].read_bytes()
    faces = sum(len(reference.detect(decoding.decode_bgr(data))[0]) for data in images)

    rounds: list[dict[str, dict[str, float]]] = []
    for r in range(args.rounds):
        order = list(loaded) if r % 2 == 0 else list(reversed(loaded))
        rounds.append({label: measure(loaded[label], crops, frame, images, probe, args.repeat, CLOCKS[args.clock]) for label in order})

    print(f"{args.rounds} rounds of {args.repeat} runs, {args.threads} model threads, {args.clock} clock, {len(images)} images of "
          f"~1.5 MP with {faces / len(images):.1f} faces each; {time.strftime('%Y-%m-%d %H:%M')}\n")
    rows = list(rounds[0][next(iter(loaded))])
    print("| engine | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    ref = next(iter(loaded))
    for label, engine in loaded.items():
        cells = []
        for row in rows:
            values = [one[label][row] for one in rounds]
            ratios = [one[label][row] / one[ref][row] for one in rounds]
            cell = f"{min(values):.1f}-{max(values):.1f}"
            if label != ref:
                cell += f" ({min(ratios):.2f}-{max(ratios):.2f}x)"
            cells.append(cell)
        print(f"| {label} ({engine.runs_on}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
