"""Time to make a resized JPEG from large and small JPEGs, by the ways a derivative could be decoded.

    python benchmarks/derivatives.py [--runs 11] [--widths 320,1080]

Sources, all from t1.jpg (1280x886): the photo as shipped (1.1 MP); the photo upscaled with OpenCV to
about 12 MP and saved at JPEG quality 90, as the issue asks (smooth: no detail finer than the original's);
and a 4x4 tiling of the photo cut to the same 12 MP, which has real detail at full resolution and so is the
harder case for scaled decoding. Each method goes from the file on disk to the JPEG bytes (quality 82, the
service's default) on one thread; the median of --runs runs is shown. PSNR compares each method's pixels,
before encoding, with a full decode resized by Pillow's LANCZOS; "q82" is what the JPEG encode alone
costs against the same reference, for scale: a method well above it adds nothing visible to the output.

Methods (the reduction is chosen from the source's width, which the service knows from the row):
  (a) pillow full          Image.open, full decode, resize LANCZOS
  (b) pillow draft xM      Image.draft: libjpeg decodes at 1/8, 1/4 or 1/2 scale (DCT scaling), the
                           smallest that keeps at least M times the target width, then LANCZOS
  (b) pillow draft rule    the same with faceserve.media.renditions.draft_factor, the rule render() uses
  (c) cv2 full/reduced xM  cv2.imread IMREAD_COLOR or IMREAD_REDUCED_COLOR_{2,4,8} by the same rule, then
                           cv2.resize INTER_AREA; "cv2 full" shows how far INTER_AREA alone is from LANCZOS
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import insightface
import numpy as np
from PIL import Image
from smoke import add_flag, shrink

from faceserve.media.renditions import draft_factor

T1 = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
QUALITY = 82


def make_sources(folder: Path, large_pixels: int) -> dict[str, Path]:
    pixels = cv2.imread(str(T1))
    height, width = pixels.shape[:2]
    factor = (large_pixels / (width * height)) ** 0.5
    size = (round(width * factor), round(height * factor))
    upscaled = folder / "upscaled.jpg"
    cv2.imwrite(str(upscaled), cv2.resize(pixels, size, interpolation=cv2.INTER_CUBIC), [cv2.IMWRITE_JPEG_QUALITY, 90])
    tiled = folder / "tiled.jpg"
    cv2.imwrite(str(tiled), np.tile(pixels, (4, 4, 1))[: size[1], : size[0]], [cv2.IMWRITE_JPEG_QUALITY, 90])
    mp = f"{large_pixels / 1e6:g} MP"
    return {f"{mp} upscaled": upscaled, f"{mp} tiled": tiled, "1 MP t1.jpg": T1}


def target_size(size: tuple[int, int], width: int) -> tuple[int, int]:
    return width, max(1, round(size[1] * width / size[0]))


def encode_pillow(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=QUALITY)
    return out.getvalue()


def reduction(source_width: int, target_width: int, margin: int) -> int:
    """Largest JPEG DCT scale (8, 4, 2) that still leaves margin x the target width; 1 when none does."""
    return next((f for f in (8, 4, 2) if source_width // f >= target_width * margin), 1)


Method = Callable[[Path, tuple[int, int], tuple[int, int]], tuple[np.ndarray, bytes]]


def pillow(choose: Callable[[tuple[int, int], tuple[int, int]], int] | None) -> Method:
    """choose(source size, output size) -> DCT reduction; None: full decode."""

    def run(path: Path, source: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, bytes]:
        with Image.open(path) as im:
            f = 1 if choose is None else choose(source, size)
            if f > 1:
                # draft picks the largest scale whose result is at least the size asked for
                im.draft("RGB", (source[0] // f, source[1] // f))
            image = im.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        return np.asarray(image), encode_pillow(image)

    return run


def by_margin(margin: int) -> Callable[[tuple[int, int], tuple[int, int]], int]:
    return lambda source, size: reduction(source[0], size[0], margin)


def by_service_rule(source: tuple[int, int], size: tuple[int, int]) -> int:
    return draft_factor(size[0] / source[0])


_REDUCED = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}


def opencv(margin: int | None) -> Method:
    def run(path: Path, source: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, bytes]:
        f = 1 if margin is None else reduction(source[0], size[0], margin)
        pixels = cv2.resize(cv2.imread(str(path), _REDUCED.get(f, cv2.IMREAD_COLOR)), size, interpolation=cv2.INTER_AREA)
        encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])[1].tobytes()
        return np.ascontiguousarray(pixels[:, :, ::-1]), encoded

    return run


METHODS: dict[str, Method] = {
    "(a) pillow full": pillow(None),
    "(b) pillow draft x1": pillow(by_margin(1)),
    "(b) pillow draft x2": pillow(by_margin(2)),
    "(b) pillow draft rule": pillow(by_service_rule),
    "(c) cv2 full": opencv(None),
    "(c) cv2 reduced x1": opencv(1),
    "(c) cv2 reduced x2": opencv(2),
}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def median_ms(runs: int, fn: Callable[..., object], *args: object) -> float:
    fn(*args)  # warm: file in the page cache, code paths loaded
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(*args)
        samples.append(time.perf_counter() - start)
    return 1000 * statistics.median(samples)


def encode_psnr(reference: np.ndarray) -> float:
    decoded = Image.open(io.BytesIO(encode_pillow(Image.fromarray(reference)))).convert("RGB")
    return psnr(np.asarray(decoded), reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--widths", default="320,1080")
    parser.add_argument("--large-megapixels", type=float, default=12.0, help="size of the two large sources")
    add_flag(parser)
    args = parser.parse_args()
    shrink(args, runs=1, widths="320", large_megapixels=3.0)
    cv2.setNumThreads(1)  # the service renders one derivative per thread

    with tempfile.TemporaryDirectory(prefix="faceserve-derivatives-") as tmp:
        sources = make_sources(Path(tmp), round(args.large_megapixels * 1e6))
        for width in (int(w) for w in args.widths.split(",")):
            print(f"\n{width}-px-wide JPEG q{QUALITY}, median of {args.runs} runs, one thread")
            print(f"{'source':<28} {'method':<22} {'ms':>7} {'PSNR dB':>8} {'bytes':>7}")
            for label, path in sources.items():
                with Image.open(path) as im:
                    source_size = im.size
                size = target_size(source_size, width)
                reference, _ = METHODS["(a) pillow full"](path, source_size, size)
                name = f"{label} {source_size[0]}x{source_size[1]}"
                for method, fn in METHODS.items():
                    pixels, encoded = fn(path, source_size, size)
                    ms = median_ms(args.runs, fn, path, source_size, size)
                    print(f"{name:<28} {method:<22} {ms:7.1f} {psnr(pixels, reference):8.1f} {len(encoded):7d}")
                    name = ""
                print(f"{'':<28} {'q82 encode alone':<22} {'':>7} {encode_psnr(reference):8.1f}")

        print("\nencoding a 320-px picture alone (Pillow), median ms and bytes")
        with Image.open(T1) as im:
            small = im.convert("RGB").resize(target_size(im.size, 320), Image.Resampling.LANCZOS)
        for label, options in {
            "JPEG q82": {"format": "JPEG", "quality": QUALITY},
            "JPEG q82 optimize": {"format": "JPEG", "quality": QUALITY, "optimize": True},
            "WebP q82 method 4": {"format": "WEBP", "quality": QUALITY, "method": 4},
        }.items():
            def encode(options: dict = options) -> bytes:
                out = io.BytesIO()
                small.save(out, **options)
                return out.getvalue()

            print(f"  {label:<20} {median_ms(args.runs, encode):6.2f} ms {len(encode()):7d} bytes")


if __name__ == "__main__":
    main()
