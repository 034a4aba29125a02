"""benchmarks/results/gpu.json (issue 23) from the figures the GPU run's steps record: exactly the issue's
fields, numbers as recorded (ratios computed in the same run), null for what a step did not reach."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import gpu_figures
from gpu_figures import assemble, record

FIELDS = {
    "device": str,
    "date": str,
    "commit": str,
    "index_1m_fp16": {"p50_ms": float, "p99_ms": float, "batch_qps": float, "bytes_per_face": float,
                      "recall_at_10": float},
    "ingest": {"bare_images_per_s": float, "upload_ratio": float, "import_ratio": float, "decode_bound": bool},
    "search_1m": {"p50_ms_1": float, "p50_ms_16": float, "p50_ms_64": float},
    "search_e2e": {"p50_ratio": float, "throughput_ratio": float},
}


def _check_shape(document: dict, allow_null: bool) -> None:
    assert list(document) == list(FIELDS)
    for key, kind in FIELDS.items():
        if isinstance(kind, dict):
            assert list(document[key]) == list(kind), key
            for name, value_kind in kind.items():
                value = document[key][name]
                assert (allow_null and value is None) or type(value) is value_kind, (key, name, value)
        else:
            assert type(document[key]) is kind


def _record_a_whole_run(folder: Path) -> None:
    """What each step of gpu_run.sh records, in the keys its benchmark writes (gpu_bench.py, ingest.py,
    search_e2e.py): db-search through search_e2e's own function, from its rows."""
    record(folder, "ingest", bare_images_per_s=400.0)
    record(folder, "ingest", decode_images_per_s=1300.0)  # merged, as the rows come
    record(folder, "search", p50_ms={"1": 12.5})
    record(folder, "search", p50_ms={"1": 12.5, "16": 30.0, "64": 80.0})
    record(folder, "db-ingest", upload_images_per_s={"1": 100, "16": 360.0})
    record(folder, "db-ingest", import_images_per_s=320.0)
    import search_e2e

    # (clients, latencies s, timings, bare ms, bare probes/s): 1 client at 13 ms vs 10 ms bare; 32 clients
    search_e2e.record_ratios(folder, [(1, [0.013] * 9, [], 10.0, 100.0), (32, [0.064] * 64, [], 10.0, 1000.0)])
    record(folder, "index", p50_ms=0.6, p99_ms=0.9, batch_qps=80320, bytes_per_face=1024, recall_at_10=1.0)


def test_a_whole_run_gives_exactly_the_issues_fields_with_the_ratios_of_the_same_run(tmp_path: Path):
    _record_a_whole_run(tmp_path)
    document = assemble(tmp_path, "NVIDIA H100 80GB HBM3", "2026-12-07T10:00:00Z", "abc1234")
    _check_shape(document, allow_null=False)
    assert document["index_1m_fp16"] == {"p50_ms": 0.6, "p99_ms": 0.9, "batch_qps": 80320.0,
                                         "bytes_per_face": 1024.0, "recall_at_10": 1.0}
    ingest = document["ingest"]
    assert ingest["bare_images_per_s"] == 400.0
    assert ingest["upload_ratio"] == pytest.approx(0.9)  # the most clients (16) over bare
    assert ingest["import_ratio"] == pytest.approx(0.8)
    assert ingest["decode_bound"] is False  # decode alone 3.25x the pipeline
    assert document["search_1m"] == {"p50_ms_1": 12.5, "p50_ms_16": 30.0, "p50_ms_64": 80.0}
    assert document["search_e2e"]["p50_ratio"] == pytest.approx(1.3)  # one client
    assert document["search_e2e"]["throughput_ratio"] == pytest.approx(32 / 0.064 / 1000)  # the most clients


def test_decode_bound_when_decoding_alone_is_barely_faster_than_the_pipeline(tmp_path: Path):
    record(tmp_path, "ingest", bare_images_per_s=400.0, decode_images_per_s=450.0)
    assert assemble(tmp_path, "d", "t", "c")["ingest"]["decode_bound"] is True


def test_steps_that_did_not_run_are_null_and_a_cut_off_step_keeps_what_it_had(tmp_path: Path):
    empty = assemble(tmp_path, "cpu (dry run)", "2026-12-07T10:00:00Z", "unknown")
    _check_shape(empty, allow_null=True)
    assert all(value is None for key in FIELDS if isinstance(FIELDS[key], dict) for value in empty[key].values())
    record(tmp_path, "ingest", bare_images_per_s=400.0)  # cut off before the decode row
    record(tmp_path, "search", p50_ms={"1": 12.5, "2": 20.0})  # the dry run's clients: 1 and 2
    partial = assemble(tmp_path, "d", "t", "c")
    _check_shape(partial, allow_null=True)
    assert partial["ingest"] == {"bare_images_per_s": 400.0, "upload_ratio": None, "import_ratio": None,
                                 "decode_bound": None}
    assert partial["search_1m"] == {"p50_ms_1": 12.5, "p50_ms_16": None, "p50_ms_64": None}


def test_the_command_gpu_run_calls_writes_the_document(tmp_path: Path):
    _record_a_whole_run(tmp_path / "figures")
    out = tmp_path / "out" / "benchmarks" / "results" / "gpu.json"
    subprocess.run(
        [sys.executable, gpu_figures.__file__, "--figures", str(tmp_path / "figures"), "--device", "NVIDIA H200",
         "--date", "2026-12-07T10:00:00Z", "--commit", "abc1234", "--out", str(out)],
        check=True, capture_output=True,
    )
    document = json.loads(out.read_text())
    _check_shape(document, allow_null=False)
    assert (document["device"], document["commit"]) == ("NVIDIA H200", "abc1234")
