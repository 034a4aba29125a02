"""Compile the CuPy index's CUDA kernels (src/faceserve/index/cupy_flat.py) with NVRTC, as CuPy's RawKernel
does on the GPU machine, but here, with no GPU and no driver: a kernel that does not compile is found before a
lease, not in one. Prints NVRTC's log with ptxas's resource report (registers, spills, shared memory).

    python benchmarks/kernel_compile.py [--arch sm_90] [--nvrtc /path/to/libnvrtc.so.13]

Needs only NVRTC's library: `pip install nvidia-cuda-nvrtc` into any venv (it lands in nvidia/cu13/lib); found
there through the interpreter's site-packages, or named by --nvrtc. Exit status 1 when a kernel fails.
"""

from __future__ import annotations

import argparse
import ctypes
import site
import sys
from pathlib import Path

from faceserve.index import cupy_flat

KERNELS = {  # name: (source, entry, options)
    "score_blocks float16": (cupy_flat._SCORE_BLOCKS_SOURCE, "score_blocks", ("-DROW_HALF",)),
    "score_blocks float32": (cupy_flat._SCORE_BLOCKS_SOURCE, "score_blocks", ()),
    "select_top_k": (cupy_flat._SELECT_SOURCE, "select_top_k", cupy_flat.select_options()),
}


def find_nvrtc() -> Path:
    for folder in site.getsitepackages():
        found = sorted(Path(folder).glob("nvidia/cu*/lib/libnvrtc.so*"))
        if found:
            return found[0]
    raise SystemExit("no libnvrtc.so in this interpreter's site-packages: pip install nvidia-cuda-nvrtc, or --nvrtc")


def compile_one(nvrtc: ctypes.CDLL, source: str, name: str, options: tuple[str, ...]) -> tuple[bool, str, int]:
    """(compiled, log, cubin bytes)."""
    program = ctypes.c_void_p()
    status = nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), f"{name}.cu".encode(), 0, None, None)
    if status:
        return False, f"nvrtcCreateProgram: {status}", 0
    encoded = [option.encode() for option in options]
    compiled = nvrtc.nvrtcCompileProgram(program, len(encoded), (ctypes.c_char_p * len(encoded))(*encoded)) == 0
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    cubin = ctypes.c_size_t()
    if compiled:
        nvrtc.nvrtcGetCUBINSize(program, ctypes.byref(cubin))
    nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
    return compiled, log.value.decode(errors="replace").strip(), cubin.value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sm_90", help="sm_90: the H100 and H200")
    parser.add_argument("--nvrtc", type=Path, help="libnvrtc.so to load (default: the nvidia-cuda-nvrtc wheel's)")
    args = parser.parse_args()
    path = args.nvrtc or find_nvrtc()
    nvrtc = ctypes.CDLL(str(path))
    major, minor = ctypes.c_int(), ctypes.c_int()
    nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    print(f"NVRTC {major.value}.{minor.value} ({path}), --gpu-architecture={args.arch}")
    failed = []
    for label, (source, entry, options) in KERNELS.items():
        # what CuPy adds for a RawKernel (C++ with extern "C" entries), plus ptxas's resource report
        full = (f"--gpu-architecture={args.arch}", "-std=c++17", "--ptxas-options=-v", *options)
        compiled, log, cubin = compile_one(nvrtc, source, entry, full)
        print(f"\n{label}: {'compiled' if compiled else 'FAILED'}" + (f", {cubin:,} bytes of cubin" if compiled else ""))
        if log:
            print("  " + log.replace("\n", "\n  "))
        if not compiled:
            failed.append(label)
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
