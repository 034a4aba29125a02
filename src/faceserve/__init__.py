"""faceserve: find a person in a large photo collection by their face, and serve those photos fast."""

import os

# FAISS's OpenMP threads otherwise spin after each search and steal the cores ONNX Runtime needs next
# (measured: search latency over bare inference fell from +40 % to +15 % on 2 cores; benchmarks/spine.py).
# Must be set before libgomp loads, i.e. before anything imports faiss.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
