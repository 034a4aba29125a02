"""ONNX Runtime on CUDA (onnxruntime-gpu): both models really run on the CUDA provider, and what they find
and embed equals the CPU's. Marked gpu: skipped where onnxruntime offers no CUDA provider (benchmarks/
gpu_run.sh runs them on a GPU machine)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from faceserve.config import Settings
from faceserve.vision.engine import FaceEngine

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        "CUDAExecutionProvider" not in ort.get_available_providers(),
        reason="this onnxruntime offers no CUDA provider (onnxruntime-gpu is not installed)",
    ),
]


@pytest.fixture(scope="module")
def engines(models_dir: Path) -> tuple[FaceEngine, FaceEngine]:
    # the CPU reference is ONNX Runtime's f32 (auto would pick OpenVINO's bf16 where installed)
    cpu = FaceEngine.from_settings(Settings(models_dir=models_dir, device="cpu", engine="onnxruntime"))
    cuda = FaceEngine.from_settings(Settings(models_dir=models_dir, device="cuda"))
    cuda.warm_up()
    return cpu, cuda


def test_both_models_run_on_the_cuda_provider(engines):
    _, cuda = engines
    assert cuda.providers[0] == "CUDAExecutionProvider"
    # a CUDA provider that fails to load falls back to CPU silently: ask the sessions themselves
    for model in (cuda._detector, cuda._recogniser):
        assert model.session.get_providers()[0] == "CUDAExecutionProvider"


def test_cuda_finds_and_embeds_like_the_cpu(engines, photos):
    cpu, cuda = engines
    for name in ("t1", "players", "gdp"):
        pixels = cv2.imread(str(photos[name]))
        cpu_boxes, landmarks = cpu.detect(pixels)
        cuda_boxes, _ = cuda.detect(pixels)
        assert len(cuda_boxes) == len(cpu_boxes) > 0, name
        assert np.allclose(np.sort(cuda_boxes[:, :4], axis=0), np.sort(cpu_boxes[:, :4], axis=0), atol=2.0), name
        crops = cpu.align(pixels, landmarks)  # the same crops for both: the recogniser alone is compared
        for chunk in (1, 5, 32):  # on CUDA each chunk runs padded to 32 rows: the blank rows change nothing
            cosines = np.sum(cpu.embed_crops(crops) * cuda.embed_crops(crops, chunk), axis=1)
            assert cosines.min() >= 1 - 1e-3, (name, chunk, float(cosines.min()))
