"""Close-up selfies found and matched, the detector's one pass against vision/detection.py's close-up pass.

    python benchmarks/closeups.py [--models-dir models] [--fills 0.5 0.7 0.9 1.1 1.2] [--min-side 36] [--probe-size 480]

Probes: every face of at least --min-side px in t1.jpg, players.jpg and yaoming.jpg, framed as a phone's
1080x1440 portrait selfie in which the face's width is `fill` of the frame's (tests/selfies.py), JPEG q90.
Gallery: every face of t1.jpg, players.jpg, gdp.jpg and yaoming.jpg, as a session holds them; Yao Ming's
faces in yaoming.jpg and players.jpg (#13) are one person, every other face its own.

Per fill, for each way of detecting: found (a face detected), right (the nearest gallery face is the
person's, within the default match threshold), photos (share of the person's photos within the threshold:
for Yao both), false (other people's photos within the threshold) and the detection's median ms.

Then faces found in frames that show none (the photos' faceless parts, framed alike), and a probe's p50
(decode, detection, alignment of the largest face: what a search does before the recogniser) for a probe
that needs one pass and for close-ups that need two, the two ways interleaved: wall clock, and this
process's CPU time (steadier where other processes share the cores).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from reference import analyze, find_largest
from smoke import add_flag, shrink
from threshold import PHOTOS, YAO_IN_PLAYERS

from faceserve.config import Settings
from faceserve.vision import detection
from faceserve.vision.engine import FaceEngine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from selfies import closeup, jpeg  # tests/selfies.py

Detect = Callable[[FaceEngine, np.ndarray], tuple[np.ndarray, np.ndarray]]
WAYS: dict[str, Detect] = {
    "one pass": lambda engine, pixels: engine.detect(pixels),
    "close-up pass": lambda engine, pixels: detection.find_faces(engine, pixels, selfie=True),
}


def label(photo: str, box: np.ndarray) -> str:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    if photo == "yaoming" or (abs(cx - YAO_IN_PLAYERS[0]) < 30 and abs(cy - YAO_IN_PLAYERS[1]) < 30):
        return "yao"
    return f"{photo}:{int(cx)},{int(cy)}"


@dataclass(frozen=True)
class Gallery:
    vectors: np.ndarray  # (n, dim) embeddings of every face of the shipped photos
    labels: np.ndarray  # (n,) the person of each
    photos: list[str]  # the photo of each


def shipped_faces(engine: FaceEngine, min_side: int) -> tuple[Gallery, list[tuple[np.ndarray, np.ndarray, str]]]:
    """The gallery, and the probe faces (source pixels, box, person) of at least min_side px."""
    labels, photos, vectors = [], [], []
    probes = []
    for photo, path in PHOTOS.items():
        pixels = cv2.imread(str(path))
        assert pixels is not None, path
        for face in analyze(engine, pixels):
            labels.append(label(photo, face.box))
            photos.append(photo)
            vectors.append(face.embedding)
            if photo != "gdp" and min(face.box[2] - face.box[0], face.box[3] - face.box[1]) >= min_side:
                probes.append((pixels, face.box, label(photo, face.box)))
    return Gallery(np.stack(vectors), np.array(labels), photos), probes


def one_pass_largest(engine: FaceEngine, pixels: np.ndarray) -> object:
    """reference.find_largest as it was: the detector's one pass."""
    boxes, landmarks = engine.detect(pixels)
    if not len(boxes):
        return None
    i = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
    return engine.align(pixels, landmarks[i : i + 1])


def faceless_frames(pixels: np.ndarray, boxes: np.ndarray, count: int) -> list[np.ndarray]:
    """3:4 windows of a third of the photo's width clear of every face (with a face's margin), as frames."""
    height, width = pixels.shape[:2]
    w = width // 3
    h = w * 4 // 3
    frames = []
    for y in range(0, height - h + 1, max(1, h // 3)):
        for x in range(0, width - w + 1, max(1, w // 3)):
            clear = all(
                x + w < b[0] - (b[2] - b[0]) or x > b[2] + (b[2] - b[0])
                or y + h < b[1] - (b[3] - b[1]) or y > b[3] + (b[3] - b[1])
                for b in boxes
            )
            if clear and len(frames) < count:
                frames.append(cv2.resize(pixels[y : y + h, x : x + w], (1080, 1440), interpolation=cv2.INTER_CUBIC))
    return frames


def interleaved_p50_ms(runs: list[Callable[[], object]], repeat: int) -> list[tuple[float, float]]:
    """Median ms of each run, wall clock and this process's CPU time (every thread's: the models' too), the runs
    taken in turn (a busy machine slows them alike), in reverse order every other round (the one after another
    may find caches warm). On cores other processes want, wall time stretches with their load; CPU time less."""
    times: list[list[tuple[float, float]]] = [[] for _ in runs]
    for round_number in range(repeat):
        order = list(zip(runs, times))
        for run, spent in order[::-1] if round_number % 2 else order:
            start, cpu = time.perf_counter(), time.process_time()
            run()
            spent.append((1000 * (time.perf_counter() - start), 1000 * (time.process_time() - cpu)))
    return [(statistics.median(w for w, _ in spent), statistics.median(c for _, c in spent)) for spent in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path(__file__).parents[1] / "models")
    parser.add_argument("--fills", type=float, nargs="+", default=[0.5, 0.7, 0.9, 1.1, 1.2])
    parser.add_argument("--min-side", type=int, default=36)
    parser.add_argument("--repeat", type=int, default=60, help="probe timings: runs of each way")
    parser.add_argument("--probe-size", type=int, default=Settings.probe_detector_size, help="PROBE_DETECTOR_SIZE")
    add_flag(parser)
    args = parser.parse_args()
    shrink(args, fills=[0.9], repeat=2)
    settings = Settings(models_dir=args.models_dir, probe_detector_size=args.probe_size)
    engine = FaceEngine.from_settings(settings)
    engine.warm_up()
    threshold = settings.match_threshold

    gallery, probes = shipped_faces(engine, args.min_side)
    vectors, labels, gallery_photos = gallery.vectors, gallery.labels, gallery.photos
    faceless: list[np.ndarray] = []
    for path in PHOTOS.values():
        pixels = cv2.imread(str(path))
        faceless += faceless_frames(pixels, engine.detect(pixels)[0], 10)
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


    print(f"\n{len(faceless)} frames without a face: faces found by one pass "
          f"{sum(len(engine.detect(f)[0]) for f in faceless)}, "
          f"with the close-up pass {sum(len(detection.find_faces(engine, f)[0]) for f in faceless)}")

    yao = cv2.imread(str(PHOTOS["yaoming"]))
    yao_box = engine.detect(yao)[0][0]
    timed = {
        "yaoming.jpg (287x233, one pass)": jpeg(yao),
        "fill 0.5 selfie (one pass)": jpeg(closeup(yao, yao_box, 0.5)),
        "fill 0.9 selfie (two passes)": jpeg(closeup(yao, yao_box, 0.9)),
        "fill 1.2 selfie (two passes)": jpeg(closeup(yao, yao_box, 1.2)),
    }
    print(f"\nprobe p50 ms (decode + detect + align), {args.repeat} runs of each way, taken in turn; wall and CPU:\n")
    print("| probe | one pass (before) | close-up pass (after) | after / before | CPU before | CPU after "
          "| CPU after / before | found before / after |")
    print("|---|---|---|---|---|---|---|---|")
    for name, data in timed.items():
        def decode(data: bytes = data) -> np.ndarray:
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            assert pixels is not None
            return pixels

        (before, cpu_before), (after, cpu_after) = interleaved_p50_ms(
            [lambda: one_pass_largest(engine, decode()), lambda: find_largest(engine, decode())], args.repeat
        )
        found = (one_pass_largest(engine, decode()) is not None, find_largest(engine, decode()) is not None)
        print(f"| {name} | {before:.1f} | {after:.1f} | {after / before:.2f} | {cpu_before:.1f} | {cpu_after:.1f} "
              f"| {cpu_after / cpu_before:.2f} | {'yes' if found[0] else 'no'} / {'yes' if found[1] else 'no'} |")


if __name__ == "__main__":
    main()
