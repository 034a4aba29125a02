"""The probe quality limits' evidence: degraded copies of the shipped photos' faces, measured and matched.

    python benchmarks/quality.py [--models-dir models] [--min-side 36] [--only smaller|blurred|turned|fill]
                              [--probe-size 480]

Probes: every face of at least --min-side px of t1.jpg, players.jpg and yaoming.jpg framed as a 1080x1440
selfie (tests/selfies.py), at fill 0.5 unless the degradation changes it:
  * smaller: the face a smaller share of the frame (fill 0.3 down to 0.03: a phone held far away);
  * blurred: Gaussian blur of sigma px, and motion blur (a line of n px: a shaking hand);
  * darker: every pixel times a factor (an evening party), which no limit may refuse;
  * turned: one side of the face, from the nose out, squeezed by a factor (the far side of a turned head).
Sources: "sharp" faces (t1.jpg, yaoming.jpg: about 100 px wide in their photos) and "soft" ones
(players.jpg: about 40 px, so every selfie of them is an enlargement).

Per row: found, the median of each measure (vision/quality.py: eye px, sharpness, turn), right (the nearest
gallery face is the person's within the match threshold) and the median distance to the person's nearest
face. Then the undegraded close-ups at fills 0.5-1.2, which no limit may refuse, and what each limit
(config.py) refuses of each row.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from closeups import Gallery, shipped_faces
from reference import find_largest
from smoke import add_flag, shrink

from faceserve.config import Settings
from faceserve.vision import quality
from faceserve.vision.engine import FaceEngine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from selfies import closeup, jpeg  # tests/selfies.py

SHARP_WIDTH = 80  # a face at least this wide in its photo is a sharp source
Degrade = Callable[[np.ndarray, np.ndarray], np.ndarray]


def motion_blur(length: int) -> Degrade:
    kernel = np.zeros((length, length), dtype=np.float32)
    kernel[length // 2, :] = 1.0 / length
    return lambda pixels, box: cv2.filter2D(closeup(pixels, box, 0.5), -1, kernel)


def gaussian_blur(sigma: float) -> Degrade:
    return lambda pixels, box: cv2.GaussianBlur(closeup(pixels, box, 0.5), (0, 0), sigma)


def turned(squeeze: float) -> Degrade:
    """Left of the face's centre line squeezed towards it by `squeeze` (the frame's centre, x = 540)."""

    def make(pixels: np.ndarray, box: np.ndarray) -> np.ndarray:
        frame = closeup(pixels, box, 0.5)
        height, width = frame.shape[:2]
        centre = width / 2
        x = np.arange(width, dtype=np.float32)
        source_x = np.where(x < centre, centre - (centre - x) / squeeze, x)
        map_x = np.repeat(source_x[None, :], height, axis=0)
        map_y = np.repeat(np.arange(height, dtype=np.float32)[:, None], width, axis=1)
        return cv2.remap(frame, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    return make


def smaller(fill: float) -> Degrade:
    """The fill-0.5 selfie shrunk to show the face at `fill` of a grey frame's width (a neighbour in a group
    photo would take the face's place if the frame were widened instead)."""

    def make(pixels: np.ndarray, box: np.ndarray) -> np.ndarray:
        selfie = closeup(pixels, box, 0.5)
        small = cv2.resize(selfie, None, fx=fill / 0.5, fy=fill / 0.5, interpolation=cv2.INTER_AREA)
        frame = np.full_like(selfie, 128)
        top, left = (frame.shape[0] - small.shape[0]) // 2, (frame.shape[1] - small.shape[1]) // 2
        frame[top : top + small.shape[0], left : left + small.shape[1]] = small
        return frame

    return make


ROWS: list[tuple[str, Degrade]] = [
    *[(f"fill {f}", lambda pixels, box, f=f: closeup(pixels, box, f)) for f in (0.5, 0.7, 0.9, 1.2)],
    *[(f"smaller: fill {f}", smaller(f)) for f in (0.2, 0.1, 0.07, 0.05, 0.04, 0.03, 0.02)],
    *[(f"darker: x{k}", lambda pixels, box, k=k: (closeup(pixels, box, 0.5) * k).astype(np.uint8)) for k in (0.5, 0.25)],
    *[(f"blurred: sigma {s}", gaussian_blur(s)) for s in (2, 4, 6, 8, 12, 16)],
    *[(f"blurred: motion {n}", motion_blur(n)) for n in (10, 20, 40, 60, 90)],
    *[(f"turned: squeeze {k}", turned(k)) for k in (0.8, 0.6, 0.45, 0.3, 0.2)],
]


def evaluate(engine: FaceEngine, gallery: Gallery, frame: np.ndarray, who: str, threshold: float):
    """(measures, right, distance to the person's nearest face), or None when no face is found."""
    found = find_largest(engine, cv2.imdecode(np.frombuffer(jpeg(frame), np.uint8), cv2.IMREAD_COLOR))
    if found is None:
        return None
    _, landmarks, crop = found
    measures = quality.measure(landmarks[0], crop[0])
    distances = 1.0 - gallery.vectors @ engine.embed_crops(crop)[0]
    nearest = int(np.argmin(distances))
    right = gallery.labels[nearest] == who and distances[nearest] <= threshold
    return measures, bool(right), float(distances[gallery.labels == who].min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path(__file__).parents[1] / "models")
    parser.add_argument("--min-side", type=int, default=36)
    parser.add_argument("--only", default="", help="rows whose name starts with this (e.g. 'smaller')")
    parser.add_argument("--probe-size", type=int, default=Settings.probe_detector_size, help="PROBE_DETECTOR_SIZE")
    add_flag(parser)
    args = parser.parse_args()
    shrink(args, only="blurred: sigma 4")
    settings = Settings(models_dir=args.models_dir, probe_detector_size=args.probe_size)
    engine = FaceEngine.from_settings(settings)
    gallery, probes = shipped_faces(engine, args.min_side)
    limits = (settings.probe_min_eye_distance, settings.probe_min_sharpness, settings.probe_max_turn)
    print(f"limits (config.py): eye px >= {limits[0]}, sharpness >= {limits[1]}, turn <= {limits[2]}\n")
    print("| degradation | sources | found | eye px | sharpness | turn | right | distance | refused: small / blurred / turned |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, degrade in ROWS:
        if args.only and not name.startswith(args.only):
            continue
        for sources, wide in (("sharp", True), ("soft", False)):
            chosen = [p for p in probes if (p[1][2] - p[1][0] >= SHARP_WIDTH) == wide]
            results = [evaluate(engine, gallery, degrade(p, b), who, settings.match_threshold) for p, b, who in chosen]
            found = [r for r in results if r is not None]
            if not found:
                print(f"| {name} | {sources} | 0/{len(chosen)} | | | | | | |")
                continue
            eye = [r[0].eye_distance for r in found]
            sharp = [r[0].sharpness for r in found]
            turn = [r[0].turn for r in found]
            refused = (
                sum(e < limits[0] for e in eye),
                sum(s < limits[1] for s in sharp),
                sum(t > limits[2] for t in turn),
            )
            print(
                f"| {name} | {sources} | {len(found)}/{len(chosen)} | {statistics.median(eye):.0f} ({min(eye):.0f}) "
                f"| {statistics.median(sharp):.0f} ({min(sharp):.0f}) | {statistics.median(turn):.2f} ({max(turn):.2f}) "
                f"| {sum(r[1] for r in found)}/{len(found)} | {statistics.median(r[2] for r in found):.3f} "
                f"| {refused[0]} / {refused[1]} / {refused[2]} |"
            )


if __name__ == "__main__":
    main()
