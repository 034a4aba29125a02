"""What the installed runtime offers: conflicting CPU/GPU builds that share one module."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata

# Packages that install the same Python module: having both means whichever was installed last won,
# file by file, and uninstalling one breaks the other.
_SAME_MODULE = [
    ("onnxruntime", "onnxruntime-gpu"),
    ("faiss-cpu", "faiss-gpu-cu12"),
    ("faiss-cpu", "faiss-gpu"),
]


def installed_distributions() -> set[str]:
    return {(d.metadata["Name"] or "").lower() for d in metadata.distributions()}


def conflicting_builds(installed: Iterable[str] | None = None) -> list[str]:
    names = installed_distributions() if installed is None else {n.lower() for n in installed}
    return [
        f"both {cpu} and {gpu} are installed and write the same module; for a GPU install run "
        f"`pip uninstall -y {cpu} {gpu} && pip install --no-deps {gpu}` (see README)"
        for cpu, gpu in _SAME_MODULE
        if cpu in names and gpu in names
    ]
