"""Close-up selfies found and matched, the detector's one pass against vision/detection.py's close-up pass.

    python benchmarks/closeups.py [--models-dir models] [--fills 0.5 0.7 0.9 1.1 1.2] [--min-side 36]

Probes: every face of at least --min-side px in t1.jpg, players.jpg and yaoming.jpg, framed as a phone's
1080x1440 portrait selfie in which the face's width is `fill` of the frame's (tests/selfies.py), JPEG q90.
Gallery: every face of t1.jpg, players.jpg, gdp.jpg and yaoming.jpg, as a session holds them; Yao Ming's
faces in yaoming.jpg and players.jpg (#13) are one person, every other face its own.

Per fill, for each way of detecting: found (a face detected), right (the nearest gallery face is the
person's, within the default match threshold), photos (share of the person's photos within the threshold:
for Yao both), false (other people's photos within the threshold) and the detection's median ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from threshold import PHOTOS, YAO_IN_PLAYERS

from faceserve.config import Settings
from faceserve.vision import detection
from faceserve.vision.engine import FaceEngine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from selfies import closeup, jpeg  # tests/selfies.py

Detect = Callable[[FaceEngine, np.ndarray], tuple[np.ndarray, np.ndarray]]
WAYS: dict[str, Detect] = {
    "one pass": lambda engine, pixels: engine.detect(pixels),
    "close-up pass": detection.find_faces,
}


def label(photo: str, box: np.ndarray) -> str:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    if photo == "yaoming" or (abs(cx - YAO_IN_PLAYERS[0]) < 30 and abs(cy - YAO_IN_PLAYERS[1]) < 30):
        return "yao"
    return f"{photo}:{int(cx)},{int(cy)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path(__file__).parents[1] / "models")
    parser.add_argument("--fills", type=float, nargs="+", default=[0.5, 0.7, 0.9, 1.1, 1.2])
    parser.add_argument("--min-side", type=int, default=36)
    args = parser.parse_args()
    settings = Settings(models_dir=args.models_dir)
    engine = FaceEngine.from_settings(settings)
    engine.warm_up()
    threshold = settings.match_threshold

    gallery_labels, gallery_photos, gallery = [], [], []
    probes = []  # (source pixels, box, label)
    for photo, path in PHOTOS.items():
        pixels = cv2.imread(str(path))
        for face in engine.analyze(pixels):
            gallery_labels.append(label(photo, face.box))
            gallery_photos.append(photo)
            gallery.append(face.embedding)
            if photo != "gdp" and min(face.box[2] - face.box[0], face.box[3] - face.box[1]) >= args.min_side:
                probes.append((pixels, face.box, label(photo, face.box)))
    vectors = np.stack(gallery)
    labels = np.array(gallery_labels)
    print(f"{len(probes)} probe faces per fill, gallery of {len(vectors)} faces, match threshold {threshold}\n")
    print("| fill | way | found | right | photos | false | detect ms p50 |")
    print("|---|---|---|---|---|---|---|")
    for fill in args.fills:
        frames = [(cv2.imdecode(np.frombuffer(jpeg(closeup(p, b, fill)), np.uint8), cv2.IMREAD_COLOR), who)
                  for p, b, who in probes]
        for way, detect in WAYS.items():
            found = right = false = 0
            photos_share: list[float] = []
            times = []
            for frame, who in frames:
                start = time.perf_counter()
                boxes, landmarks = detect(engine, frame)
                times.append(1000 * (time.perf_counter() - start))
                if not len(boxes):
                    photos_share.append(0.0)
                    continue
                found += 1
                i = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
                embedding = engine.embed_crops(engine.align(frame, landmarks[i : i + 1]))[0]
                distances = 1.0 - vectors @ embedding
                nearest = int(np.argmin(distances))
                right += int(labels[nearest] == who and distances[nearest] <= threshold)
                within = distances <= threshold
                own = labels == who
                photos_share.append(len({gallery_photos[j] for j in np.flatnonzero(within & own)})
                                    / len({gallery_photos[j] for j in np.flatnonzero(own)}))
                false += len({gallery_photos[j] for j in np.flatnonzero(within & ~own)})
            n = len(frames)
            print(f"| {fill} | {way} | {100 * found / n:.0f} % | {100 * right / n:.0f} % "
                  f"| {100 * statistics.fmean(photos_share):.0f} % | {false} | {statistics.median(times):.1f} |")


if __name__ == "__main__":
    main()
