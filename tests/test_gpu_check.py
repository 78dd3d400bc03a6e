"""bench/gpu_check.py (`make gpu-check`) where there is no GPU: the dry run, the JSON and the table it writes,
a part that runs out of time, the wheel check, and the MFU the capacity planner reads back from its file."""

from __future__ import annotations

import json
import sys
import time
import zipfile
from importlib import metadata

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
try:
    import gpu_check
finally:
    sys.path.pop(0)

NO_CUDA = {"cuda": False, "gpu": None, "why": "torch sees no CUDA GPU"}


@pytest.fixture
def no_cuda(monkeypatch):
    """The machine as this one is (no CUDA), also where a GPU is visible."""
    monkeypatch.setattr(gpu_check, "gpu_facts", lambda: dict(NO_CUDA))


def test_the_dry_run_lists_every_part_with_its_budget_and_command_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "gpu-latest.json"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"4 parts within {gpu_check.DEADLINE_S} s" in printed
    for part in gpu_check.PARTS:
        assert f"{part.name:<10} budget {part.budget_s:>4.0f} s" in printed
    for part in ("throughput", "methods", "generation"):
        assert f"bench_gpu.py --part {part} --work WORK --out WORK/{part}.json" in printed
    assert "-m pytest -m gpu" in printed and "tests/test_gpu_paths.py" in printed
    assert all(name in printed for name in gpu_check.gpu_test_names())
    assert not out.exists()


def test_the_arguments_choose_parts_and_budgets_and_refuse_unknown_ones(capsys):
    args = gpu_check.parse_args(["--parts", "generation,tests", "--budget", "tests=30", "--bench-args", "--steps 9"])
    assert [(p.name, p.budget_s) for p in args.selected] == [("tests", 30.0), ("generation", 70)]  # fixed order
    assert args.bench_args == ["--steps", "9"]
    for bad in (["--parts", "tests,speed"], ["--budget", "tests=soon"], ["--deadline", "0"]):
        with pytest.raises(SystemExit):
            gpu_check.parse_args(bad)
    assert "unknown speed" in capsys.readouterr().err


def test_without_cuda_it_writes_cuda_false_the_versions_and_the_table_and_exits_0(tmp_path, capsys, no_cuda):
    out = tmp_path / "results" / "gpu-latest.json"
    assert gpu_check.main(["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["cuda"] is False and results["gpu"] is None
    versions = results["versions"]
    assert set(gpu_check.LIBRARIES) | {"bakeoff", "python"} <= set(versions)
    assert versions["torch"] == metadata.version("torch") and versions["trl"] == metadata.version("trl")
    assert str(ROOT / "src" / "bakeoff") in versions["bakeoff"]  # the working tree's code, not an installed copy
    assert all(v == "not installed" or v[0].isdigit() for k, v in versions.items() if k != "bakeoff")
    assert {name: p["status"] for name, p in results["parts"].items()} == dict.fromkeys(gpu_check.PART_NAMES,
                                                                                          "skipped")
    assert set(results["tests"]["outcomes"]) == set(gpu_check.gpu_test_names())
    assert results["tests"]["counts"] == {"skipped": len(gpu_check.gpu_test_names())}
    assert results["throughput"]["defaults"]["mfu"] is None
    table = out.with_suffix(".md").read_text()
    assert table.startswith("# GPU check: no CUDA GPU") and "cuda: false" in table
    assert "| throughput | skipped |" in table and f"versions: torch {versions['torch']}" in table
    assert table.strip() in printed and "CUDA is not available" in printed and "GPU parts are skipped" in printed

    # a file recorded on a GPU is never replaced by a run without one
    out.write_text(json.dumps({"cuda": True, "gpu": "NVIDIA H200"}))
    assert gpu_check.main(["--out", str(out)]) == 0
    assert json.loads(out.read_text())["gpu"] == "NVIDIA H200"
    assert json.loads((out.parent / "gpu-latest.nocuda.json").read_text())["cuda"] is False


def test_a_part_that_runs_out_is_stopped_and_recorded_as_timed_out_with_what_it_wrote(tmp_path, monkeypatch):
    partial = {"defaults": {"tokens_per_second": 1234.5, "mfu": 0.21}}
    sleeper = [sys.executable, "-c", "import json, sys, time; open(sys.argv[1], 'w').write(sys.argv[2]); "
               "time.sleep(120)", str(tmp_path / "throughput.json"), json.dumps(partial)]
    monkeypatch.setattr(gpu_check, "command", lambda part, work, bench_args=(): sleeper)
    parts = [gpu_check.Part("throughput", 1.5, ""), gpu_check.Part("tests", 1, ""), gpu_check.Part("methods", 1, "")]
    started = time.monotonic()
    statuses = gpu_check.run_parts(parts, tmp_path, deadline_at=started + 2.0)
    assert time.monotonic() - started < 10  # the sleeper was stopped, not waited for
    assert statuses["throughput"]["status"] == "timed out" and statuses["throughput"]["allowed_s"] == 1.5
    for name in ("tests", "methods"):  # the deadline left them no time: recorded, not dropped
        assert statuses[name] == {"status": "timed out", "budget_s": 1, "allowed_s": 0.0, "seconds": 0.0,
                                  "note": "not started: the global deadline was reached"}

    results = gpu_check.collect(gpu_check.skeleton({"cuda": True, "gpu": "sim"}, 2.0), statuses, tmp_path)
    assert results["throughput"] == {**partial, "partial": True}
    assert {o["outcome"] for o in results["tests"]["outcomes"].values()} == {"not run (timed out)"}
    path, md = gpu_check.write(results, tmp_path / "gpu-latest.json")
    assert json.loads(path.read_text())["parts"]["throughput"]["status"] == "timed out"
    table = md.read_text()
    assert "| throughput | timed out |" in table and "| methods | timed out |" in table
    assert "| stage defaults | 1234 | 0.210 |" in table


def test_a_timed_out_test_run_keeps_the_outcomes_it_logged(tmp_path):
    names = gpu_check.gpu_test_names()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "tests.log").write_text(f"tests/test_gpu_paths.py::{names[0]} PASSED   [ 12%]\n"
                                                 f"tests/test_gpu_paths.py::{names[1]}[dora] FAILED   [ 25%]\n")
    outcomes = gpu_check.test_outcomes(tmp_path, names, "timed out")
    assert outcomes[names[0]] == {"outcome": "passed"} and outcomes[f"{names[1]}[dora]"] == {"outcome": "failed"}
    assert names[1] not in outcomes  # a parametrized test is reported case by case
    assert {outcomes[n]["outcome"] for n in names[2:]} == {"not run (timed out)"}


def test_the_test_outcomes_come_from_pytests_junit_report(tmp_path):
    names = ["test_a", "test_b", "test_c"]
    (tmp_path / "tests.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_gpu_paths" name="test_a" time="1.5"/>'
        '<testcase classname="tests.test_gpu_paths" name="test_b[ia3]" time="2">'
        '<failure message="assert False">trace</failure></testcase>'
        '<testcase classname="tests.test_gpu_paths" name="test_c" time="0">'
        '<skipped message="could not import \'vllm\'"/></testcase>'
        '</testsuite></testsuites>')
    outcomes = gpu_check.test_outcomes(tmp_path, names, "failed")
    assert outcomes == {"test_a": {"outcome": "passed", "seconds": 1.5},
                        "test_b[ia3]": {"outcome": "failed", "seconds": 2.0, "message": "assert False"},
                        "test_c": {"outcome": "skipped", "seconds": 0.0, "message": "could not import 'vllm'"}}


def test_the_planner_assumes_the_mfu_the_check_measured(tmp_path, no_cuda):
    from bakeoff.capacity.plan import ASSUMED_MFU, assumed_mfu

    results = gpu_check.skeleton({"cuda": True, "gpu": "NVIDIA H200"}, gpu_check.DEADLINE_S)
    results["throughput"] = {"defaults": {"tokens_per_second": 52000.0, "mfu": 0.3875, "peak_memory_gb": 11.2,
                                          "planned_memory_gb": 12.9, "final_train_loss": 6.1},
                             "trl_dynamic_padding": {"tokens_per_second": 33000.0, "mfu": 0.246},
                             "speedup_defaults_vs_trl": 1.576, "seq_len": 1024}
    path, md = gpu_check.write(results, tmp_path / "gpu-latest.json")
    assert json.loads(path.read_text())["throughput"]["defaults"]["mfu"] == 0.3875
    assert assumed_mfu(path) == (0.3875, "measured by make gpu-check (gpu-latest.json)")
    assert "side by side: 1.576x" in md.read_text() and "| stage defaults | 52000 | 0.388 | 11.20 | 12.90 |" in (
        md.read_text())

    # the file a machine without CUDA writes (mfu null) leaves the assumption in place
    assert gpu_check.main(["--out", str(tmp_path / "cpu" / "gpu-latest.json")]) == 0
    assert assumed_mfu(tmp_path / "cpu" / "gpu-latest.json") == (ASSUMED_MFU, "assumed (no GPU benchmark recorded)")


def test_the_wheel_check_names_a_requirement_neither_carried_nor_on_the_gpu_machine(tmp_path):
    def wheel(name: str, *requires: str) -> None:
        meta = "Metadata-Version: 2.1\nName: x\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
        with zipfile.ZipFile(tmp_path / f"{name}-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr(f"{name}-1.0.dist-info/METADATA", meta)

    wheel("trl", "accelerate>=1.10", "datasets>=4.7", "transformers>=4.56", "tomli; python_version < '3.11'",
          "rich; extra == 'cli'", "missing-lib>=2")
    wheel("datasets", "dill<0.4.2", "fsspec[http]<=2026.9.0")
    wheel("dill")
    assert gpu_check.check_wheels(tmp_path) == [
        "trl-1.0-py3-none-any.whl: needs missing-lib>=2 (neither carried nor on the GPU machine)"]
