"""The whole smoke bake-off through KFP's local runner, with a judge on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import sys

import pytest
from bakeoff_pipelines import run_local
from judge_stub import serve

from bakeoff.report.results import SCHEMA_VERSION
from bakeoff.spec import parse_spec

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    from conftest import ROOT

    from bakeoff.spec import load_spec

    out = tmp_path_factory.mktemp("smoke-run")
    mp = pytest.MonkeyPatch()
    mp.setenv("BAKEOFF_CACHE", str(out / "cache"))
    for var, value in SECRETS.items():  # as the pods get them from Secrets; none may show up anywhere
        mp.setenv(var, value)
    log = open(out / "run.log", "w")
    saved = os.dup(1), os.dup(2)
    try:
        with serve("grade") as judge:
            data = load_spec(ROOT / "experiments" / "smoke.yaml").model_dump(mode="json")
            judge_spec = {"base_url": judge.base_url, "model": "grader", "api_key_env": "JUDGE_API_KEY"}
            data["evaluation"]["judge"] = judge_spec
            spec = parse_spec(data)
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)  # every task's log, subprocesses included
            try:
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    paths = run_local(spec, out / "run")
            finally:
                sys.stdout.flush(), sys.stderr.flush()
                os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            calls = judge.requests
    finally:
        log.close()
        mp.undo()
    return spec, paths, json.loads(paths["results"].read_text()), calls


SECRETS = {"JUDGE_API_KEY": "sk-e2e-judge-7f3a9c", "HF_TOKEN": "hf_e2e_token_51d2",
           "AWS_SECRET_ACCESS_KEY": "e2e-aws-secret-88e1"}


def test_no_secret_value_in_the_logs_the_report_or_any_file_the_run_wrote(smoke_run):
    _, paths, _, _ = smoke_run
    out = paths["html"].parents[1]
    log = (out / "run.log").read_text(errors="replace")
    assert "prepare-data" in log and "finetune" in log  # the tasks' logs were captured
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 20
    for path in files:
        text = path.read_bytes()
        for var, value in SECRETS.items():
            assert value.encode() not in text, f"{var}'s value appears in {path}"


def _cell(results, arm, variant, metric):
    row = next(r for r in results["rows"] if r["arm"] == arm and r["variant"] == variant)
    return row["metrics"][metric]


def test_report_files_written(smoke_run):
    _, paths, _, _ = smoke_run
    assert set(paths) == {"html", "markdown", "results"}
    for path in paths.values():
        assert path.stat().st_size > 0


def test_both_arms_fine_tuned_and_base(smoke_run):
    spec, _, results, _ = smoke_run
    pairs = {(r["arm"], r["variant"]) for r in results["rows"]}
    for arm in ("tiny-llama", "tiny-mixtral"):
        assert {(arm, v) for v in spec.variants} <= pairs
    assert results["schema_version"] == SCHEMA_VERSION == 2
    assert list(results["training"]) == ["tiny-llama", "tiny-mixtral"]


def test_fine_tuned_beats_base_on_exact_match(smoke_run):
    _, _, results, _ = smoke_run
    for arm in ("tiny-llama", "tiny-mixtral"):
        tuned = _cell(results, arm, "fine-tuned", "exact_match")
        base = _cell(results, arm, "base-zero-shot", "exact_match")
        assert tuned["n"] == 100 and tuned["failures"] == 0
        assert tuned["mean"] > base["mean"], (arm, tuned, base)
        assert tuned["ci95"][0] <= tuned["mean"] <= tuned["ci95"][1]
        assert results["health"][arm]["adapter_applied"] is True


def test_judge_scored_every_answer(smoke_run):
    spec, _, results, calls = smoke_run
    # 2 arms x 3 variants x 100 answers; identical answers to the same question share one cached call.
    assert 0 < calls <= 600
    for arm in ("tiny-llama", "tiny-mixtral"):
        tuned = _cell(results, arm, "fine-tuned", "judge")
        base = _cell(results, arm, "base-zero-shot", "judge")
        assert tuned["n"] == 100 and tuned["failures"] == 0
        assert 1 <= base["mean"] < tuned["mean"] <= 10
        assert results["health"][arm]["judge"]["parse_failures"] == 0


def test_loss_history_has_train_and_validation_points(smoke_run):
    _, _, results, _ = smoke_run
    for record in results["training"].values():
        history = record["loss_history"]
        assert len(history["train"]) >= 10 and len(history["validation"]) >= 3
        assert history["validation"][-1]["step"] == record["steps"]
        assert history["train"][-1]["loss"] < history["train"][0]["loss"]
        assert record["seconds"] > 0 and record["train_tokens"] > 0


def test_report_content(smoke_run):
    _, paths, results, _ = smoke_run
    html = paths["html"].read_text()
    for needle in ("tiny-llama", "tiny-mixtral", "fine-tuned", "base-zero-shot", "exact_match", "judge", "<svg"):
        assert needle in html
    tuned = _cell(results, "tiny-mixtral", "fine-tuned", "exact_match")["mean"]
    assert f"{tuned:.3f}" in html
    md = paths["markdown"].read_text()
    assert "| tiny-llama | fine-tuned |" in md and "| tiny-mixtral | base-zero-shot |" in md


def test_summary_leads_costs_and_arm_differences(smoke_run):
    _, _, results, _ = smoke_run
    lead = next(x for x in results["leads"] if x["metric"] == "exact_match")
    assert lead["best_arm"] in ("tiny-llama", "tiny-mixtral") and lead["runner_up"] != lead["best_arm"]
    assert lead["lead"]["n"] == 100 and 0 <= lead["lead"]["p_value"] <= 1
    assert lead["significant"] == (lead["lead"]["p_value"] < 0.05)
    judge = next(x for x in results["comparisons"]
                 if x["arm"] == "tiny-llama" and x["metric"] == "judge" and x["baseline"] == "base-zero-shot")
    assert judge["mean"] > 0 and judge["p_value"] < 0.05  # the tuned arm gains on the grading judge
    assert results["costs"]["tiny-llama"]["judge_gain"] > 0
    assert [d["setting"] for d in results["arm_differences"]] == ["model"]


def test_rebuilding_the_report_from_results_json_gives_the_same_page(smoke_run, tmp_path):
    from bakeoff.cli import main

    _, paths, _, _ = smoke_run
    assert main(["report", str(paths["results"]), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.html").read_bytes() == paths["html"].read_bytes()
    assert (tmp_path / "report.md").read_bytes() == paths["markdown"].read_bytes()
