"""The GPU run's figures as one JSON document (benchmarks/results/gpu.json, issue 23).

Each benchmark step of benchmarks/gpu_run.sh, given `--figures DIR`, records what it measured in DIR/<step>.json
as soon as it is measured (a step cut off at its time limit keeps what it had); at the end of the run

    python benchmarks/gpu_figures.py --figures DIR --device NAME --commit SHA --out FILE

assembles the document from whichever steps ran, every number as measured and null where a step did not run
or did not get that far:

    {"device", "date", "commit",
     "index_1m_fp16": {"p50_ms", "p99_ms", "batch_qps", "bytes_per_face", "recall_at_10"},
     "ingest": {"bare_images_per_s", "upload_ratio", "import_ratio", "decode_bound"},
     "search_1m": {"p50_ms_1", "p50_ms_16", "p50_ms_64"},
     "search_e2e": {"p50_ratio", "throughput_ratio"}}

Ratios are the service's over bare, in the same run: upload (the most clients) and `faceserve import` images/s
over bare ingest images/s (gpu_bench.py ingest: decode + detect + align on threads, the recogniser across
images); search through HTTP over the bare probe in search_e2e.py (p50 at one client, throughput at the most).
decode_bound: CPU JPEG decode alone is under DECODE_BOUND_MARGIN times the whole bare pipeline's images/s, so
decode, not the models, is what ingest waits on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# the document's sections and their numeric fields, in order; ingest.decode_bound is the one bool
SECTIONS: dict[str, tuple[str, ...]] = {
    "index_1m_fp16": ("p50_ms", "p99_ms", "batch_qps", "bytes_per_face", "recall_at_10"),
    "ingest": ("bare_images_per_s", "upload_ratio", "import_ratio", "decode_bound"),
    "search_1m": ("p50_ms_1", "p50_ms_16", "p50_ms_64"),
    "search_e2e": ("p50_ratio", "throughput_ratio"),
}
# the pipeline reaching 1/1.25 = 80 % of what decoding alone allows: decode is the bound
DECODE_BOUND_MARGIN = 1.25


def record(folder: Path | None, step: str, **figures: Any) -> None:
    """Merge figures into folder/<step>.json (nothing without a folder: the benchmark run by hand)."""
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{step}.json"
    held = json.loads(path.read_text()) if path.exists() else {}
    held.update(figures)
    path.write_text(json.dumps(held, indent=1, sort_keys=True))


def _read(folder: Path, step: str) -> dict[str, Any]:
    path = folder / f"{step}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _ratio(numerator: Any, denominator: Any) -> float | None:
    if numerator is None or not denominator:
        return None
    return float(numerator) / float(denominator)


def _at_most_clients(by_clients: dict[str, Any]) -> Any:
    """The figure of the row with the most clients (JSON keys are strings)."""
    return by_clients[max(by_clients, key=int)] if by_clients else None


def assemble(folder: Path, device: str, date: str, commit: str) -> dict[str, Any]:
    index, ingest, search = _read(folder, "index"), _read(folder, "ingest"), _read(folder, "search")
    db_ingest, db_search = _read(folder, "db-ingest"), _read(folder, "db-search")
    bare = ingest.get("bare_images_per_s")
    decode = ingest.get("decode_images_per_s")
    p50_ms = search.get("p50_ms", {})
    e2e_p50 = db_search.get("p50_ratio", {})
    return {
        "device": device,
        "date": date,
        "commit": commit,
        "index_1m_fp16": {name: _number(index.get(name)) for name in SECTIONS["index_1m_fp16"]},
        "ingest": {
            "bare_images_per_s": _number(bare),
            "upload_ratio": _ratio(_at_most_clients(db_ingest.get("upload_images_per_s", {})), bare),
            "import_ratio": _ratio(db_ingest.get("import_images_per_s"), bare),
            "decode_bound": None if bare is None or decode is None else decode < DECODE_BOUND_MARGIN * bare,
        },
        "search_1m": {f"p50_ms_{clients}": _number(p50_ms.get(str(clients))) for clients in (1, 16, 64)},
        "search_e2e": {
            "p50_ratio": _number(e2e_p50.get(str(min(map(int, e2e_p50)))) if e2e_p50 else None),
            "throughput_ratio": _number(_at_most_clients(db_search.get("throughput_ratio", {}))),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figures", type=Path, required=True, help="the folder the steps recorded into")
    parser.add_argument("--device", required=True)
    parser.add_argument("--date", required=True)
    parser.add_argument("--commit", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quiet", action="store_true", help="write the file only")
    args = parser.parse_args()
    document = assemble(args.figures, args.device, args.date, args.commit)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    if not args.quiet:
        print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
