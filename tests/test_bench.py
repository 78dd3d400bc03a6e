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


def test_train_bench_compares_the_stage_with_both_baselines(tmp_path, cache_env):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bench_train
    finally:
        sys.path.pop(0)
    results = bench_train.main(["--steps", "3", "--repeats", "1", "--out", str(tmp_path / "train.json")])
    tps = results["tokens_per_second"]
    assert set(tps) == {"naive_padded_1024", "trl_dynamic_padding", "stage_defaults", "stage_group_by_length",
                        "stage_padding_free", "stage_packing"}
    assert all(v > 0 for v in tps.values())
    # padding every row to 1024 tokens wastes nearly all the compute on these short rows
    assert tps["naive_padded_1024"] < tps["trl_dynamic_padding"]
    assert results["train_speedup_vs_naive"] == round(tps["stage_defaults"] / tps["naive_padded_1024"], 2)


def test_eval_bench_compares_batched_generation_and_concurrent_judging(tmp_path, cache_env):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bench_eval
    finally:
        sys.path.pop(0)
    results = bench_eval.main(["--repeats", "1", "--prompts", "8", "--judgments", "9", "--latency", "0.05",
                               "--out", str(tmp_path / "eval.json")])
    assert results["generation"]["batched_seconds"] > 0 and results["judge"]["serial_seconds"] > 0
    # 9 calls of 50 ms: serial takes at least 0.45 s; 8 workers need two rounds after the first call
    assert results["judge"]["serial_seconds"] >= 0.45
    # The ratio itself is make bench's to report: on a loaded machine it can dip below 1 (seen: 0.7 with CI
    # and two other jobs running), so the suite only checks that it was measured.
    assert results["judge_speedup_concurrency8_vs_serial"] > 0


def test_pipeline_bench_measures_the_per_task_overhead(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bench_pipeline
    finally:
        sys.path.pop(0)
    results = bench_pipeline.main(["--tasks", "2", "--repeats", "1", "--out", str(tmp_path / "p.json")])
    assert results["tasks"] == 2 and 0 < results["per_task_overhead_seconds"] < 30


def test_gpu_bench_says_it_needs_cuda_and_knows_the_peaks(capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bench_gpu
    finally:
        sys.path.pop(0)
    assert bench_gpu.peak_flops("NVIDIA H200") == 989e12 and bench_gpu.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert bench_gpu.peak_flops("a mystery GPU") is None
    assert bench_gpu.main(["--out", "/dev/null"]) == {}  # this machine has no CUDA
    assert "needs a CUDA GPU" in capsys.readouterr().err
