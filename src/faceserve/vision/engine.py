"""InsightFace detector (SCRFD) and recogniser (ArcFace) on ONNX Runtime or OpenVINO: image in, faces with
embeddings out.

Every method here blocks; callers run them in the inference thread pool. ONNX Runtime sessions are safe to
run from several threads at once, and so are OpenVINO's (openvino_runtime.py).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from ..config import Settings
from . import openvino_runtime
from .packs import ModelPack, locate_pack

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.scrfd import SCRFD
    from insightface.utils import face_align

log = logging.getLogger(__name__)

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
# Wish list in order of preference, with the options that matter for each.
_PROVIDER_OPTIONS: dict[str, dict[str, str]] = {
    _CUDA: {"device_id": "0", "cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested"},
    _CPU: {},
}
_RECOGNISER_CHUNK = 32
# On CUDA every recogniser run has exactly this many rows (fewer faces are padded with blank crops, more are
# split). ONNX Runtime's CUDA Conv keeps the cuDNN execution plans of the last input shape only: a run of any
# other shape rebuilds the plans of all 49 convolutions, 0.6-3 s on an H200, so batches of varying sizes
# (concurrent searches, uploads with different face counts) paid that on nearly every run: 16 searching
# callers waited 1.4 s for an embedding that took 2.9 ms alone, and ingest embedded 43 faces/s. At one shape a
# run of 32 takes 2.5-2.7 ms against 1.0-2.4 ms for one face (benchmarks/gpu_recogniser.py; RESULTS.md, GPU).
_CUDA_RECOGNISER_ROWS = 32


def choose_providers(device: str, available: list[str] | None = None) -> list[str]:
    """'auto': CUDA when this onnxruntime build offers it, else CPU. 'cuda' insists; 'cpu' never uses a GPU."""
    available = ort.get_available_providers() if available is None else available
    if device == "cpu":
        return [_CPU]
    if device == "cuda" and _CUDA not in available:
        raise RuntimeError(
            f"device=cuda but onnxruntime offers only {available}; install onnxruntime-gpu (see README)"
        )
    if device not in ("auto", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    return [p for p in (_CUDA, _CPU) if p in available]


def choose_engine(engine: str, providers: list[str], openvino_installed: bool | None = None) -> str:
    """'auto': ONNX Runtime when it runs on CUDA, else OpenVINO where installed (faster on CPUs, RESULTS.md),
    else ONNX Runtime. 'openvino' insists on it, and it never uses a GPU here."""
    installed = openvino_runtime.installed() if openvino_installed is None else openvino_installed
    if engine == "openvino":
        if not installed:
            raise RuntimeError("engine=openvino but the openvino package is not installed (pip install openvino)")
        if _CUDA in providers:
            raise RuntimeError("engine=openvino runs on the CPU only: set device=cpu, or engine=auto for CUDA")
        return "openvino"
    if engine not in ("auto", "onnxruntime"):
        raise ValueError(f"engine must be auto, onnxruntime or openvino, not {engine!r}")
    return "openvino" if engine == "auto" and installed and _CUDA not in providers else "onnxruntime"


def _load_cuda_libraries() -> None:
    """onnxruntime-gpu finds CUDA and cuDNN installed as pip packages (nvidia-*) only when they are loaded
    first; preload_dlls does that (onnxruntime >= 1.21), a no-op where the system provides them."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception as exc:  # noqa: BLE001 - the session creation that follows reports what is missing
            log.warning("onnxruntime could not preload the CUDA libraries: %s", exc)


def _ort_session_factory(
    providers: list[str], intra_op_threads: int, device_id: int
) -> Callable[[str], ort.InferenceSession]:
    if _CUDA in providers:
        _load_cuda_libraries()
        # onnxruntime >= 1.31 warns on every CUDA session that no plugin device is registered
        ort.set_default_logger_severity(3)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the recogniser's declared batch of 1 makes ORT warn on every batch
    # idle ORT threads otherwise spin after each run and steal the cores the index search and the
    # event loop need next (measured with benchmarks/search_e2e.py)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    provider_options = [
        {**_PROVIDER_OPTIONS[p], "device_id": str(device_id)} if p == _CUDA else _PROVIDER_OPTIONS[p]
        for p in providers
    ]

    def session(path: str) -> ort.InferenceSession:
        return ort.InferenceSession(path, sess_options=options, providers=providers, provider_options=provider_options)

    return session


@dataclass(frozen=True)
class DetectedFace:
    box: np.ndarray  # (4,) x1, y1, x2, y2 in pixels
    landmarks: np.ndarray  # (5, 2)
    det_score: float
    embedding: np.ndarray  # (dim,) float32, L2-normalised
    # vision/quality.py's verdict on an upload's face (ok, too_small, blurred, turned); None where not measured
    quality: str | None = None


class FaceEngine:
    def __init__(
        self,
        pack: ModelPack,
        *,
        device: str,
        detector_input_size: int,
        detection_threshold: float,
        min_face_size: int,
        intra_op_threads: int,
        device_id: int,
        engine: str,
        precision: str,
        detector_precision: str,
        probe_detector_size: int | None = None,
    ) -> None:
        self.pack = pack
        self.providers = choose_providers(device)
        self.engine = choose_engine(engine, self.providers)
        detector_for_size = None  # SCRFD's own: an ONNX Runtime session per input size
        if self.engine == "openvino":
            supported = openvino_runtime.supported_precisions()
            # what each model computes in: {"detector": "f32", "recogniser": "bf16"}
            self.precision = {
                "detector": openvino_runtime.choose_precision(detector_precision, supported),
                "recogniser": openvino_runtime.choose_precision(precision, supported),
            }
            detector_session = openvino_runtime.session_factory(self.precision["detector"], intra_op_threads)
            recogniser_session = openvino_runtime.session_factory(self.precision["recogniser"], intra_op_threads)
            detector_for_size = openvino_runtime.scrfd_session_for_size
            self.providers = [openvino_runtime.DEVICE]
        else:
            if "bf16" in (precision, detector_precision):
                raise ValueError("precision bf16 needs engine=openvino; ONNX Runtime runs these models in f32")
            self.precision = {"detector": "f32", "recogniser": "f32"}
            detector_session = recogniser_session = _ort_session_factory(self.providers, intra_op_threads, device_id)

        self._detector = SCRFD(
            model_file=str(pack.detector),
            session=detector_session(str(pack.detector)),
            resolution_session_factory=detector_for_size,
        )
        self._detector.prepare(0, det_thresh=detection_threshold)
        self._input_size = (detector_input_size, detector_input_size)
        # a probe's first pass (vision/detection.py): its own input shape, at most the detector's
        self._probe_size = min(probe_detector_size or detector_input_size, detector_input_size)
        self._recogniser = ArcFaceONNX(
            model_file=str(pack.recogniser), session=recogniser_session(str(pack.recogniser))
        )
        self._crop_size = int(self._recogniser.input_size[0])
        self.embedding_dim = int(self._recogniser.output_shape[-1])
        self.min_face_size = min_face_size
        # rows of every recogniser run on CUDA (see _CUDA_RECOGNISER_ROWS); None on the CPU, where a run has
        # as many rows as faces and padding would only add work
        self.recogniser_rows: int | None = _CUDA_RECOGNISER_ROWS if _CUDA in self.providers else None
        log.info("models %s: %s, embeddings of %d", pack.name, self.runs_on, self.embedding_dim)

    @classmethod
    def from_settings(cls, settings: Settings) -> FaceEngine:
        """The configured pack (laid out from the installed wheel when missing), not yet warmed up."""
        return cls(
            locate_pack(settings.models_dir, settings.model_pack),
            device=settings.device,
            detector_input_size=settings.detector_input_size,
            detection_threshold=settings.detection_threshold,
            min_face_size=settings.min_face_size,
            intra_op_threads=settings.model_threads,
            device_id=settings.cuda_device_id,
            engine=settings.engine,
            precision=settings.precision,
            detector_precision=settings.detector_precision,
            probe_detector_size=settings.probe_detector_size,
        )

    @property
    def runs_on(self) -> str:
        """For people: 'openvino on CPU, detector f32, recogniser bf16'."""
        precision = ", ".join(f"{model} {value}" for model, value in self.precision.items())
        return f"{self.engine} on {', '.join(self.providers)}, {precision}"

    @property
    def crop_size(self) -> int:
        """Side of the aligned square crops the recogniser takes."""
        return self._crop_size

    def warm_up(self) -> None:
        """First runs allocate and pick kernels (on CUDA, ~1-3 s a model): do it at start, not on the first
        user's request. Each model then sees fixed input shapes only: the detector's input size (and the
        probes' first pass's, where smaller), and on CUDA the recogniser's fixed rows."""
        for side in sorted({self._input_size[0], self._probe_size}):
            self._detector.detect(np.zeros((side, side, 3), dtype=np.uint8), input_size=(side, side))
        self.embed_crops(np.zeros((1, self._crop_size, self._crop_size, 3), dtype=np.uint8))

    @property
    def detector_input_size(self) -> int:
        """Side of the square the detector sees every image letterboxed into."""
        return self._input_size[0]

    @property
    def probe_detector_size(self) -> int:
        """Side of the square a probe's first pass sees (vision/detection.py); at most detector_input_size."""
        return self._probe_size

    def detect(
        self, image_bgr: np.ndarray, scale: float = 1.0, input_size: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Boxes with scores (n, 5) and landmarks (n, 5, 2); `scale`: the image's pixels per photo pixel, for an
        image made from the photo (vision/detection.py), so min_face_size stays in the photo's pixels.
        `input_size`: the detector's input side, detector_input_size by default (probe_detector_size for a
        probe's first pass: no other, so that every shape is warmed up)."""
        side = self._input_size if input_size is None else (input_size, input_size)
        if side not in (self._input_size, (self._probe_size, self._probe_size)):
            raise ValueError(f"the detector runs at {self._input_size[0]} or {self._probe_size} only, not {input_size}")
        boxes, landmarks = self._detector.detect(image_bgr, input_size=side)
        if landmarks is None:
            raise RuntimeError(f"detector {self.pack.detector.name} gives no landmarks; a *_bnkps model is needed")
        if self.min_face_size and len(boxes):
            sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
            keep = sides >= self.min_face_size * scale
            boxes, landmarks = boxes[keep], landmarks[keep]
        return boxes, landmarks

    def align(self, image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """(n, 5, 2) landmarks -> (n, S, S, 3) ArcFace-aligned crops."""
        crops = np.empty((len(landmarks), self._crop_size, self._crop_size, 3), dtype=np.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            for i, points in enumerate(landmarks):
                crops[i] = face_align.norm_crop(image_bgr, landmark=points, image_size=self._crop_size)
        return crops

    def embed_crops(self, crops: np.ndarray, chunk_rows: int = _RECOGNISER_CHUNK) -> np.ndarray:
        """Aligned crops -> L2-normalised float32 embeddings, one recogniser run per chunk of chunk_rows (on
        CUDA: of recogniser_rows, each padded to exactly that many)."""
        out = np.empty((len(crops), self.embedding_dim), dtype=np.float32)
        fixed = self.recogniser_rows
        step = chunk_rows if fixed is None else fixed
        for start in range(0, len(crops), step):
            chunk = list(crops[start : start + step])
            rows = len(chunk)
            if fixed is not None:  # blank crops up to the one shape the session has plans for; rows dropped
                chunk += [np.zeros_like(chunk[0])] * (fixed - rows)
            out[start : start + rows] = self._recogniser.get_feat(chunk)[:rows]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.maximum(norms, 1e-12, out=norms)
        return out / norms


def detected_faces(
    boxes: np.ndarray, landmarks: np.ndarray, embeddings: np.ndarray, qualities: Sequence[str] | None = None
) -> list[DetectedFace]:
    """Detector output (n, 5) boxes with scores and (n, 5, 2) landmarks, with their embeddings (and quality
    verdicts, where measured), as faces."""
    return [
        DetectedFace(
            box=boxes[i, :4].astype(np.float32),
            landmarks=landmarks[i].astype(np.float32),
            det_score=float(boxes[i, 4]),
            embedding=embeddings[i],
            quality=None if qualities is None else qualities[i],
        )
        for i in range(len(boxes))
    ]
