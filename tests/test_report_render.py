"""Tests for the report renderer: sections, self-containment, statuses, escaping, determinism, files."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from bakeoff.report import render_html, render_markdown, write_report

ARMS = ("tiny-llama", "tiny-mixtral")
VARIANTS = ("fine-tuned", "base-zero-shot")
SECTIONS = ("decision", "summary", "metrics", "training", "loss-curves", "data", "health", "samples", "configuration")
SCRIPT = "<script>alert('x')</script>"


def _row(arm: str, variant: str, mean: float) -> dict:
    return {
        "arm": arm, "variant": variant, "model": f"tiny://{arm[5:]}", "method": "lora",
        "metrics": {
            "exact_match": {"mean": mean, "ci95": [round(mean - 0.08, 3), round(mean + 0.09, 3)], "n": 100,
                            "failures": 0, "status": "ok"},
            "judge": {"mean": None, "ci95": None, "n": 0, "failures": 0, "status": "not configured"},
        },
    }


def _training(arm: str, offset: float) -> dict:
    return {
        "arm": arm, "model": f"tiny://{arm[5:]}", "method": "lora", "seconds": 3725.4, "steps": 300, "epochs": 2.0,
        "train_tokens": 290000, "tokens_per_second": 9300.0, "device": "cpu", "gpu_type": None, "gpu_count": 0,
        "gpu_hours": 0.0, "cost_usd": None, "trainable_params": 73728, "total_params": 600000,
        "final_train_loss": 1.9 + offset, "final_validation_loss": 2.1 + offset,
        "loss_history": {
            "train": [{"step": s, "loss": 6.0 / (1 + s / 50) + offset, "epoch": s / 150} for s in range(20, 320, 20)],
            "validation": [{"step": 100, "loss": 3.2 + offset, "epoch": 0.67},
                           {"step": 200, "loss": 2.0 + offset, "epoch": 1.33},
                           {"step": 300, "loss": 2.1 + offset, "epoch": 2.0}],
        },
        "hyperparameters": {"training": {}, "peft": {}, "precision": "fp32"},
    }


def _sample(arm: str, i: int, ft_answer: str, base_answer: str, ft_em: float, base_em: float) -> dict:
    return {
        "arm": arm, "id": f"{arm}-{i}", "task": "opposite", "instruction": f"Give the opposite of word {i}.",
        "input": "", "reference": "cold",
        "answers": {"fine-tuned": ft_answer, "base-zero-shot": base_answer},
        "scores": {"fine-tuned": {"exact_match": ft_em, "judge": None},
                   "base-zero-shot": {"exact_match": base_em, "judge": None}},
        "judge_explanations": {},
    }


@pytest.fixture
def results() -> dict:
    """A small results dict following docs/results-schema.md."""
    return {
        "schema_version": 1,
        "bakeoff_version": "0.1.0",
        "experiment": {"name": "smoke", "description": "Two tiny arms.", "seed": 42,
                       "spec": {"name": "smoke", "arms": [{"name": a} for a in ARMS]}},
        "versions": {"python": "3.11.7", "torch": "2.13.0"},
        "data": {"rows_read": {"synthetic://opposites": 1500}, "dropped": {"empty_instruction": 2, "empty_response": 0},
                 "rows": {"train": 1200, "validation": 100, "test": 100}, "unused": 98},
        "metrics": ["exact_match", "judge"],
        "metric_status": {"exact_match": "ok", "judge": "not configured: the spec has no evaluation.judge"},
        "rows": [_row("tiny-llama", "fine-tuned", 0.27), _row("tiny-llama", "base-zero-shot", 0.12),
                 _row("tiny-mixtral", "fine-tuned", 0.41), _row("tiny-mixtral", "base-zero-shot", 0.15)],
        "training": {"tiny-llama": _training("tiny-llama", 0.0), "tiny-mixtral": _training("tiny-mixtral", 0.3)},
        "health": {"tiny-llama": {"adapter_applied": True, "identical_to_base": 3, "judge": None},
                   "tiny-mixtral": {"adapter_applied": True, "identical_to_base": 1, "judge": None}},
        "samples": [_sample("tiny-llama", 0, "cold", "hot", 1.0, 0.0),
                    _sample("tiny-llama", 1, SCRIPT, "cold", 0.0, 1.0),
                    _sample("tiny-mixtral", 0, "cold", "warm", 1.0, 0.0)],
    }


def test_every_section_present(results: dict) -> None:
    page = render_html(results)
    assert "<title>bakeoff report: smoke</title>" in page
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    assert "<svg" in page  # the loss chart is inline


def test_self_contained(results: dict) -> None:
    page = render_html(results)
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) <= {"http://www.w3.org/2000/svg"}
    assert "src=" not in page
    assert "<link" not in page
    assert "<script" not in page


def test_not_configured_metric_is_not_zero(results: dict) -> None:
    page = render_html(results)
    assert "not configured" in page
    cells = re.findall(r"<td[^>]*>(.*?)</td>", page, flags=re.S)
    judge_cells = [c for c in cells if "not configured" in c]
    assert len(judge_cells) >= len(ARMS) * len(VARIANTS)
    assert all(not re.search(r"\b0(\.0+)?\b", c) for c in judge_cells)


def test_ci95_and_delta_shown(results: dict) -> None:
    page = render_html(results)
    assert "[0.190, 0.360]" in page
    assert "+0.150" in page  # tiny-llama fine-tuned minus base zero-shot
    assert "1:02:05" in page  # wall time 3725.4 s
    assert "tiny-mixtral" in re.search(r'<section id="summary">.*?</section>', page, flags=re.S).group(0)


def test_deterministic(results: dict) -> None:
    assert render_html(results) == render_html(copy.deepcopy(results))
    assert render_markdown(results) == render_markdown(copy.deepcopy(results))


def test_adapter_not_applied_warns(results: dict) -> None:
    assert "probably not applied" not in render_html(results)
    results["health"]["tiny-mixtral"]["adapter_applied"] = False
    page = render_html(results)
    health = re.search(r'<section id="health">.*?</section>', page, flags=re.S).group(0)
    assert 'class="warning"' in health and "probably not applied" in health
    assert "probably not applied" in render_markdown(results)


def test_text_is_escaped(results: dict) -> None:
    page = render_html(results)
    assert SCRIPT not in page
    assert "&lt;script&gt;" in page


def test_regressions_listed_first(results: dict) -> None:
    page = render_html(results)
    assert page.index("tiny-llama-1") < page.index("tiny-llama-0")


def test_missing_values(results: dict) -> None:
    results["rows"][0]["metrics"]["exact_match"]["ci95"] = None
    results["training"]["tiny-llama"]["loss_history"] = {"train": [], "validation": []}
    results["training"]["tiny-mixtral"]["loss_history"] = {}
    results["samples"] = []
    page = render_html(results)
    assert "No loss history recorded." in page and "No samples." in page
    assert "n/a" in page  # cost_usd is null
    assert render_html({"experiment": {"name": "empty"}}).count("<section id=") == len(SECTIONS)
    assert render_markdown({}).startswith("# bakeoff report:")


def test_markdown_rows(results: dict) -> None:
    md = render_markdown(results)
    for arm in ARMS:
        for variant in VARIANTS:
            assert re.search(rf"^\| {re.escape(arm)} \| {re.escape(variant)} \|", md, flags=re.M)
    assert "not configured" in md
    assert "judge not configured" in md


def test_write_report(results: dict, tmp_path: Path) -> None:
    paths = write_report(results, tmp_path / "out")
    assert set(paths) == {"html", "md", "results"}
    assert [p.name for p in paths.values()] == ["report.html", "report.md", "results.json"]
    assert all(p.is_file() for p in paths.values())
    assert json.loads(paths["results"].read_text(encoding="utf-8")) == results
    assert paths["html"].read_text(encoding="utf-8") == render_html(results)


def test_paired_comparisons_shown_with_interval_and_p_value(results: dict) -> None:
    results = {**results, "comparisons": [
        {"arm": "tiny-llama", "variant": "fine-tuned", "baseline": "base-zero-shot", "metric": "exact_match",
         "mean": 0.15, "ci95": [0.05, 0.25], "p_value": 0.0021, "n": 100},
    ]}
    page, md = render_html(results), render_markdown(results)
    for text in (page, md):
        assert "tiny-llama vs base-zero-shot" in text and "+0.150 [+0.050, +0.250] p=0.0021" in text


def test_sql_and_ragas_health_shown(results: dict) -> None:
    health = {arm: {**h, "sql": {"database": 40, "schema": 10, "failed": 2}, "ragas": {"version": "0.4.3", "nan": 1}}
              for arm, h in results["health"].items()}
    results = {**results, "health": health}
    page, md = render_html(results), render_markdown(results)
    for text in (page, md):
        assert "database=40, failed=2, schema=10" in text and "nan=1, version=0.4.3" in text


def test_summary_says_whether_the_lead_is_significant_and_costs_are_shown(results: dict) -> None:
    results = {**results,
               "leads": [{"metric": "exact_match", "best_arm": "tiny-llama", "mean": 0.3, "ci95": [0.2, 0.4],
                          "runner_up": "tiny-mixtral", "significant": False,
                          "lead": {"mean": 0.05, "ci95": [-0.04, 0.14], "p_value": 0.31, "n": 100}}],
               "costs": {"tiny-llama": {"training_usd": 1.5, "judge_usd": 0.25, "total_usd": 1.75, "judge_gain": 0.7,
                                        "usd_per_judge_point": 2.5}},
               "arm_differences": [{"setting": "model", "values": {"tiny-llama": "tiny://llama",
                                                                   "tiny-mixtral": "tiny://mixtral"}}],
               "data": {**results["data"], "token_lengths": {"test": {"prompt": {"p50": 25, "p90": 29, "p99": 30,
                                                                                 "max": 31}}}}}
    page, md = render_html(results), render_markdown(results)
    for text in (page, md):
        assert "+0.050 [-0.040, +0.140] over tiny-mixtral, p=0.3100 (not significant)" in text
        assert "$1.75" in text and "$2.50" in text
    assert "What differs between arms" in page and "&#34;tiny://mixtral&#34;" in page
    assert "Length distribution" in page


def test_how_each_metric_is_scored_is_in_the_page_and_the_markdown(results: dict) -> None:
    doc = {**results, "metric_definitions": {
        "judge": "1-10 by gpt-4o, rubric open-ended (...), prompt judge-v2 sha256 0123456789ab",
        "exact_match": "after NFKC <and> whitespace collapsing"}}
    page, md = render_html(doc), render_markdown(doc)
    assert "How each metric is scored" in page and "rubric open-ended" in page and "sha256 0123456789ab" in page
    assert "&lt;and&gt;" in page  # escaped like every other text
    assert "- `judge`: 1-10 by gpt-4o, rubric open-ended" in md


def test_training_time_evaluation_time_and_rows_are_shown(results: dict) -> None:
    doc = json.loads(json.dumps(results))
    arm = next(iter(doc["training"]))
    doc["training"][arm].update(evaluation_seconds=65.0, segments=2,
                                rows={"train": 10, "trained": 9, "dropped_no_completion": 1, "at_max_length": 3})
    page = render_html(doc)
    assert "Evaluation time" in page and "0:01:05" in page and "Runs (segments)" in page
    assert "9 of 10 (dropped: 1, cut at max_seq_length: 3)" in page
