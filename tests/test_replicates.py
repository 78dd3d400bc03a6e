"""Training-seed replicates, the pairwise judge in the pipeline, the ranking and the decision (issue 20).

The spec's runs and their seeds; the report's pooling, ranking and decision on hand-made artifacts (fast);
and experiments/smoke-replicates.yaml end to end through KFP's local runner with a loopback judge, the
pairwise judge on (e2e).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import pytest
import yaml
from conftest import ROOT

from bakeoff.errors import SpecError
from bakeoff.report.results import build_results
from bakeoff.spec import load_spec, parse_spec

REPLICATES = ROOT / "experiments" / "smoke-replicates.yaml"


def spec_data(**training) -> dict:
    data = yaml.safe_load(REPLICATES.read_text())
    data["data"]["sources"] = [{"uri": str(ROOT / "experiments" / "data" / "smoke.jsonl")}]
    data["training"].update(training)
    return data


# --- the spec ---------------------------------------------------------------------------------------------

def test_each_replicate_is_a_run_with_its_own_seed_and_only_the_fine_tuned_variant():
    spec = parse_spec(spec_data(replicates=3))
    assert spec.runs() == ["tiny-llama", "tiny-llama-r2", "tiny-llama-r3", "tiny-mixtral", "tiny-mixtral-r2",
                           "tiny-mixtral-r3"]
    assert spec.for_run("tiny-llama") is spec
    third = spec.for_run("tiny-mixtral-r3")
    arm = third.arm("tiny-mixtral-r3")
    assert third.training_seed(arm) == spec.seed + 2 and third.variants == ["fine-tuned"]
    assert arm.model == "tiny://mixtral" and third.seed == spec.seed  # the splits follow the experiment's seed
    assert spec.run_of("tiny-llama-r2") == (spec.arm("tiny-llama"), 2)
    # a replicate's spec survives the trip through JSON (the Trainer job's pods get it that way)
    again = parse_spec(json.loads(third.to_json()))
    assert again.arm("tiny-mixtral-r3").seed == spec.seed + 2


def test_an_arm_may_have_its_own_replicates_and_seed():
    data = spec_data(replicates=1)
    data["arms"][1].update(replicates=2, seed=7)
    spec = parse_spec(data)
    assert spec.runs() == ["tiny-llama", "tiny-mixtral", "tiny-mixtral-r2"]
    assert spec.for_run("tiny-mixtral-r2").arm("tiny-mixtral-r2").seed == 8


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["arms"].append({"name": "tiny-llama-r2", "model": "tiny://llama"}),
     "training.replicates: replicate 'tiny-llama-r2' would have the name of another arm"),
    (lambda d: d.update(variants=["base-zero-shot"]),
     "training.replicates: replicates retrain the arm, so variants must include fine-tuned"),
    (lambda d: d["training"].update(replicates=0), "training.replicates: Input should be greater than or equal to 1"),
    (lambda d: d["training"].update(replicates=True), "training.replicates: must be a number, not a boolean"),
])
def test_bad_replicate_settings_name_their_key(change, message):
    data = spec_data()
    change(data)
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert any(message in m for m in err.value.messages), err.value.messages


def test_the_pipeline_has_one_task_set_per_run(tmp_path):
    from bakeoff_pipelines import compile_pipeline

    spec = load_spec(REPLICATES)
    doc = yaml.safe_load(compile_pipeline(spec, tmp_path / "p.yaml").read_text().split("\n---")[0])
    loop = next(t for t in doc["root"]["dag"]["tasks"].values() if "parameterIterator" in t)
    assert json.loads(loop["parameterIterator"]["items"]["raw"]) == spec.runs()
    assert "pairwise-judge" in doc["root"]["dag"]["tasks"]


# --- the report, on hand-made artifacts -----------------------------------------------------------------------

PCT = {"p50": 40, "p90": 60, "p99": 70, "max": 80}
STATS = {"rows": {"train": 400, "validation": 50, "test": 4},
         "token_lengths": {"train": {"prompt": PCT, "response": {**PCT, "p50": 8}}}}


def training(run: str, seconds: float = 10.0) -> dict:
    return {"arm": run, "method": "lora", "seconds": seconds, "gpu_hours": 0.0, "cost_usd": 0.0, "device": "cpu",
            "peak_memory_gb": 0.6, "final_validation_loss": 2.0, "hyperparameters": {"precision": "fp32"}}


def evaluation(run: str, fine_tuned: list[float], base: list[float] | None = None) -> tuple[dict, list[dict]]:
    samples = []
    for i, score in enumerate(fine_tuned):
        scores = {"fine-tuned": {"exact_match": score}}
        answers = {"fine-tuned": f"answer {score}"}
        if base is not None:
            scores["base-zero-shot"] = {"exact_match": base[i]}
            answers["base-zero-shot"] = "base"
        samples.append({"arm": run, "id": f"s{i}", "instruction": f"q{i}", "input": "", "reference": "1.0",
                        "answers": answers, "scores": scores})
    metrics = {v: {"exact_match": {"mean": sum(s["scores"][v]["exact_match"] for s in samples) / len(samples),
                                   "ci95": [0, 1], "n": len(samples), "failures": 0}}
               for v in samples[0]["scores"]}
    summary = {"arm": run, "metrics": metrics, "metric_status": {"exact_match": "ok"},
               "health": {"adapter_applied": True}, "comparisons": []}
    return summary, samples


def replicated_results(pairwise=None) -> dict:
    spec = parse_spec(spec_data(replicates=2))
    runs = {"tiny-llama": [1, 1, 1, 0], "tiny-llama-r2": [1, 1, 0, 1],
            "tiny-mixtral": [0, 0, 1, 0], "tiny-mixtral-r2": [0, 1, 0, 0]}
    evaluations = [evaluation(run, scores, base=[0, 0, 0, 0] if "-r" not in run else None)
                   for run, scores in runs.items()]
    return build_results(spec, STATS, [training(run) for run in runs], evaluations, pairwise)


def test_replicates_pool_into_the_fine_tuned_row_with_their_spread():
    results = replicated_results()
    assert results["schema_version"] == 2
    llama = results["replicates"]["tiny-llama"]
    assert [e["seed"] for e in llama["replicates"]] == [42, 43]
    assert [e["metrics"]["exact_match"] for e in llama["replicates"]] == [0.75, 0.75]
    assert llama["metrics"]["exact_match"]["between_replicate_sd"] == 0.0
    assert llama["total"]["seconds"] == 20.0
    mixtral = results["replicates"]["tiny-mixtral"]["metrics"]["exact_match"]
    assert mixtral["mean"] == 0.25 and mixtral["between_replicate_sd"] == 0.0
    row = next(r for r in results["rows"] if r["arm"] == "tiny-llama" and r["variant"] == "fine-tuned")
    assert row["metrics"]["exact_match"]["mean"] == 0.75 and row["metrics"]["exact_match"]["n_replicates"] == 2
    base = next(r for r in results["rows"] if r["arm"] == "tiny-llama" and r["variant"] == "base-zero-shot")
    assert base["metrics"]["exact_match"]["mean"] == 0  # from the first replicate only


def test_the_ranking_gives_each_metric_p_best_summing_to_one_and_a_decision():
    results = replicated_results()
    ranked = [r for r in results["ranking"] if r["metric"] == "exact_match"]
    assert [r["arm"] for r in ranked] == ["tiny-llama", "tiny-mixtral"]
    assert sum(r["p_best"] for r in ranked) == pytest.approx(1.0) and ranked[0]["p_best"] > 0.8
    decision = results["decision"]
    assert decision["metric"] == "exact_match" and decision["best_arm"] == "tiny-llama"
    assert decision["lead"]["mean"] == pytest.approx(0.5) and decision["runner_up"] == "tiny-mixtral"
    assert decision["text"].startswith("tiny-llama is best on exact_match")
    # the summary's lead is the same pooled comparison
    (lead,) = [entry for entry in results["leads"] if entry["metric"] == "exact_match"]
    assert lead["lead"]["mean"] == pytest.approx(0.5)


def test_an_undecided_comparison_says_so_and_how_much_more_data_would_tell():
    spec = parse_spec(spec_data(replicates=1))
    a = [1, 0] * 30
    b = [0, 1] * 14 + [1, 0] * 16
    results = build_results(spec, STATS, [training("tiny-llama"), training("tiny-mixtral")],
                            [evaluation("tiny-llama", a, base=[0] * 60), evaluation("tiny-mixtral", b, base=[0] * 60)])
    decision = results["decision"]
    assert decision["separable"] is False
    assert "cannot separate" in decision["text"]
    assert "test samples" in decision["text"]


def pairwise_doc(verdicts: list[tuple[str, str, str, str, bool]]) -> dict:
    return {"configured": True, "pairs": [["tiny-llama/fine-tuned", "tiny-mixtral/fine-tuned"]],
            "verdicts": [{"a": a, "b": b, "sample": s, "winner": w, "inconsistent": inc}
                         for a, b, s, w, inc in verdicts], "stats": {"calls": 8, "cached": 0}}


def test_pairwise_verdicts_give_win_rates_a_bradley_terry_ranking_and_a_pairwise_decision():
    pair = ("tiny-llama/fine-tuned", "tiny-mixtral/fine-tuned")
    doc = pairwise_doc([(*pair, "s0", "a", False), (*pair, "s1", "a", False), (*pair, "s2", "tie", True),
                        (*pair, "s3", None, False)])
    spec_json = spec_data(replicates=1)
    spec_json["evaluation"]["judge"] = {"base_url": "http://127.0.0.1:9/v1", "model": "j"}
    spec_json["evaluation"]["pairwise"] = {"pairs": "all"}
    spec = parse_spec(spec_json)
    results = build_results(spec, STATS, [training("tiny-llama"), training("tiny-mixtral")],
                            [evaluation("tiny-llama", [1, 1, 0, 0], base=[0] * 4),
                             evaluation("tiny-mixtral", [0, 0, 0, 0], base=[0] * 4)], doc)
    (entry,) = results["pairwise"]
    assert (entry["wins"], entry["losses"], entry["ties"], entry["inconsistent"], entry["failed"], entry["n"]) == \
        (2, 0, 1, 1, 1, 3)
    assert entry["win_rate"] == pytest.approx(2.5 / 3)
    bt = [r for r in results["ranking"] if r["metric"] == "pairwise"]
    assert [r["arm"] for r in bt] == ["tiny-llama", "tiny-mixtral"] and sum(r["p_best"] for r in bt) == \
        pytest.approx(1.0)
    assert results["decision"]["metric"] == "pairwise" and results["decision"]["best_arm"] == "tiny-llama"
    assert results["decision"]["lead"]["win_rate"] == pytest.approx(2.5 / 3)


def test_the_page_shows_the_decision_ranking_chart_replicates_and_pairwise(tmp_path):
    from bakeoff.report.render import render_html, render_markdown

    results = replicated_results()
    page = render_html(results)
    assert 'id="decision"' in page and "tiny-llama is best on exact_match" in page
    assert page.count("<svg") >= 1 and "% best)" in page  # the ranking chart labels each arm with its p_best
    assert "Replicates" in page and "sd 0.000 over 2" in page
    md = render_markdown(results)
    assert "## Decision" in md and "## Ranking" in md and "| tiny-llama | 2 | 43 |" in md


def test_a_version_1_results_json_still_renders(tmp_path):
    from bakeoff.report.render import render_html

    results = replicated_results()
    for key in ("replicates", "ranking", "pairwise", "pairwise_stats", "decision", "planned"):
        results.pop(key)
    results["schema_version"] = 1
    assert "No decision." in render_html(results)


# --- end to end --------------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_smoke_replicates_end_to_end_with_the_pairwise_judge(tmp_path):
    from bakeoff_pipelines import run_local
    from judge_stub import serve

    mp = pytest.MonkeyPatch()
    mp.setenv("BAKEOFF_CACHE", str(tmp_path / "cache"))
    mp.setenv("JUDGE_API_KEY", "sk-replicates")
    log = open(tmp_path / "run.log", "w")
    saved = os.dup(1), os.dup(2)
    try:
        with serve("grade") as judge:
            data = load_spec(REPLICATES).model_dump(mode="json")
            data["evaluation"]["judge"] = {"base_url": judge.base_url, "model": "grader",
                                           "api_key_env": "JUDGE_API_KEY"}
            data["evaluation"]["pairwise"] = {"pairs": "all"}
            spec = parse_spec(data)
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
            try:
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    paths = run_local(spec, tmp_path / "run")
            finally:
                sys.stdout.flush(), sys.stderr.flush()
                os.dup2(saved[0], 1), os.dup2(saved[1], 2)
    finally:
        log.close()
        mp.undo()
    results = json.loads(paths["results"].read_text())
    assert set(results["replicates"]) == {"tiny-llama", "tiny-mixtral"}
    for rep in results["replicates"].values():
        assert [e["seed"] for e in rep["replicates"]] == [42, 43]
        assert rep["metrics"]["exact_match"]["n_replicates"] == 2
    for metric in ("exact_match", "pairwise"):
        rows = [r for r in results["ranking"] if r["metric"] == metric]
        assert len(rows) == 2 and sum(r["p_best"] for r in rows) == pytest.approx(1.0), metric
    (pair,) = results["pairwise"]
    assert pair["n"] + pair["failed"] == spec.data.split.test and results["pairwise_stats"]["calls"] == 2 * 60
    assert results["decision"]["metric"] == "pairwise" and results["decision"]["best_arm"] in spec.runs()
    page = paths["html"].read_text()
    assert "Ranking" in page and "Replicates" in page and "Pairwise judge" in page
