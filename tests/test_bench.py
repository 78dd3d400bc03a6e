"""The benchmark scripts run (on a small size) and report what they claim to."""

from __future__ import annotations

import json
import sys

from conftest import ROOT


def test_prepare_bench_reports_speed_and_memory(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bench_prepare
    finally:
        sys.path.pop(0)
    out = tmp_path / "prepare.json"
    results = bench_prepare.main(["--rows", "3000", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == results
    assert results["rows"] == 3000 and results["prepare_rows_per_second"] > 0
    # streaming keeps one copy of the data, plus fingerprints and split lists: well under two copies
    assert 1.0 <= results["prepare_peak_vs_one_copy"] < 2.0
    assert results["read_naive_peak_vs_streamed"] > 1.0
