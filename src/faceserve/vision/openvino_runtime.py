"""The pack's ONNX files on OpenVINO's CPU plugin, behind the part of ONNX Runtime's session API that
InsightFace's SCRFD and ArcFaceONNX call (get_inputs, get_outputs, run): same files, no conversion step.

On a CPU with AVX-512 BF16 or AMX, bf16 runs the recogniser's batch of 32 in about 0.4-0.5x ONNX Runtime's
time (benchmarks/engines.py, RESULTS.md). A compiled model is safe to share between threads, one infer
request is not: each thread that runs a model gets its own request.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEVICE = "CPU"
PRECISIONS = ("f32", "bf16")


def installed() -> bool:
    """Whether the openvino package is importable here (it has wheels for x86-64 and arm64 only)."""
    return importlib.util.find_spec("openvino") is not None


@functools.cache
def _core() -> Any:
    import openvino

    return openvino.Core()


def supported_precisions() -> tuple[str, ...]:
    """f32 always; bf16 where the CPU computes it natively (AVX-512 BF16 or AMX), else it is only emulated."""
    capabilities = _core().get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")
    return PRECISIONS if "BF16" in capabilities else ("f32",)


def choose_precision(precision: str, supported: tuple[str, ...]) -> str:
    """'auto': bf16 where the CPU computes it natively, else f32; a precision the CPU lacks is refused."""
    if precision == "auto":
        return "bf16" if "bf16" in supported else "f32"
    if precision not in supported:
        raise ValueError(f"precision {precision} is not native on this CPU (it offers {', '.join(supported)})")
    return precision


@dataclass(frozen=True)
class Port:
    """A model input or output as ONNX Runtime describes it: dynamic dimensions are None."""

    name: str
    shape: list[int | None]
    type: str = "tensor(float)"


def _port(node: Any) -> Port:
    return Port(node.get_any_name(), [d.get_length() if d.is_static else None for d in node.get_partial_shape()])


class OpenVINOSession:
    """One ONNX file compiled for the CPU at one precision and thread count; compiled at its first run, so the
    detector's dynamic graph, which only lends its metadata to the fixed-size copies, is never compiled."""

    def __init__(self, path: Path, *, precision: str, threads: int, input_shape: list[int] | None = None) -> None:
        self.path = path
        self.precision = precision
        self.threads = threads
        self._model = _core().read_model(str(path))
        if input_shape is not None:
            self._model.reshape({self._model.input(0).get_any_name(): input_shape})
        self._inputs = [_port(node) for node in self._model.inputs]
        self._outputs = [_port(node) for node in self._model.outputs]
        self._compiled: Any = None
        self._compile_lock = threading.Lock()
        self._requests = threading.local()

    def get_inputs(self) -> list[Port]:
        return self._inputs

    def get_outputs(self) -> list[Port]:
        return self._outputs

    def get_providers(self) -> list[str]:
        """SCRFD's size-specific sessions must report their reference's providers."""
        return [f"OpenVINO {DEVICE} {self.precision}"]

    def _compile(self) -> Any:
        with self._compile_lock:
            if self._compiled is None:
                # LATENCY: one stream using every thread given, like ONNX Runtime's intra-op pool
                config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY"}
                if self.threads:
                    config["INFERENCE_NUM_THREADS"] = self.threads
                self._compiled = _core().compile_model(self._model, DEVICE, config)
        return self._compiled

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = (self._compiled or self._compile()).create_infer_request()
        # the run is synchronous, so the caller's arrays can be read in place; outputs come back as copies
        results = request.infer(feed, share_inputs=True)
        return [results[name] for name in output_names or [port.name for port in self._outputs]]

    def compiled_precision(self) -> str:
        """What the CPU plugin actually computes in ('f32', 'bf16'), as opposed to what was asked."""
        return str((self._compiled or self._compile()).get_property("INFERENCE_PRECISION_HINT").get_type_name())

    def with_input_shape(self, input_shape: list[int]) -> OpenVINOSession:
        return OpenVINOSession(self.path, precision=self.precision, threads=self.threads, input_shape=input_shape)


def session_factory(precision: str, threads: int) -> Callable[[str], OpenVINOSession]:
    """Sessions of the given precision and threads, from a model file's path (as engine.py builds ORT's)."""

    def session(path: str) -> OpenVINOSession:
        return OpenVINOSession(Path(path), precision=precision, threads=threads)

    return session


def scrfd_session_for_size(_model_file: str, input_size: tuple[int, int], reference: OpenVINOSession) -> OpenVINOSession:
    """SCRFD's resolution_session_factory (called with the file, the size, the reference session): a copy of
    the detector fixed to one (width, height), as ONNX Runtime's are, so each size is compiled once (at
    warm-up for the configured one)."""
    width, height = input_size
    return reference.with_input_shape([1, 3, int(height), int(width)])


class NearestRows:
    """A fixed matrix of unit rows, compiled in as a constant, against a few queries at a time: for each row,
    the query most similar to it and that similarity (f32, exact). OpenVINO packs the constant's weights once,
    so a photo's faces against 10,000 live probes take about half of numpy's time on the same threads
    (benchmarks/live.py). Compiling takes tens of ms: made once per set of rows, off the event loop."""

    def __init__(self, rows: np.ndarray) -> None:
        import openvino.opset13 as ops

        # the constant reads the caller's array in place (kept here as long as the compiled model): the plugin
        # keeps its own packed copy, ~2.1 KB more per 512-value row (RSS at 10,000 rows)
        self._rows = np.ascontiguousarray(rows, dtype=np.float32)
        queries = ops.parameter([-1, rows.shape[1]], np.float32)
        similarities = ops.matmul(queries, ops.constant(self._rows, shared_memory=True), False, True)
        best = ops.topk(similarities, ops.constant(np.int64(1)), 0, "max", "none")
        model = _openvino().Model([best.output(0), best.output(1)], [queries])
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        self._compiled = _core().compile_model(model, DEVICE, config)
        self._requests = threading.local()

    def __call__(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(for each row: the index of its most similar query, that similarity)."""
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self._compiled.create_infer_request()
        results = request.infer({0: np.ascontiguousarray(queries, dtype=np.float32)}, share_inputs=True)
        return results[1][0].astype(np.int64), results[0][0]


def _openvino() -> Any:
    import openvino

    return openvino
