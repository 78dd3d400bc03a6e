"""Paired fine-tuned minus base differences: interval and p-value on the same samples."""

from __future__ import annotations

import json

import pytest

from bakeoff.evaluate import evaluate
from bakeoff.spec import EvaluationSpec
from bakeoff.stats import paired_difference


def test_clear_improvement_is_significant():
    tuned, base = [1.0] * 40 + [0.0] * 10, [0.0] * 50
    d = paired_difference(tuned, base, seed=1)
    assert d["n"] == 50 and d["mean"] == pytest.approx(0.8)
    assert 0.6 < d["ci95"][0] <= d["mean"] <= d["ci95"][1] <= 1.0
    assert d["p_value"] < 0.001


def test_no_difference_is_not_significant():
    same = [0.0, 1.0] * 25
    d = paired_difference(same, same)
    assert d["mean"] == 0 and d["p_value"] == 1.0
    noisy = paired_difference([1, 0, 1, 0, 1, 0], [0, 1, 0, 1, 1, 0], seed=3)
    assert noisy["p_value"] > 0.5


def test_pairing_matters_and_is_deterministic():
    a = [5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]
    b = [x - 0.5 for x in a]  # always 0.5 lower on the same sample, while both spread widely
    d = paired_difference(a, b, seed=0)
    assert d["mean"] == pytest.approx(0.5) and d["ci95"] == [pytest.approx(0.5), pytest.approx(0.5)]
    assert d["p_value"] < 0.01
    assert paired_difference(a, b, seed=0) == d
    assert paired_difference([], []) == {"mean": None, "ci95": None, "p_value": None, "n": 0}
    with pytest.raises(ValueError):
        paired_difference([1.0], [])


def test_evaluate_reports_comparisons_against_each_base_variant(tmp_path):
    rows = []
    for i in range(30):
        ref = f"answer {i}"
        for variant, answer in (("fine-tuned", ref if i < 24 else "wrong"), ("base-zero-shot", "wrong"),
                                ("base-few-shot", ref if i < 12 else "nope")):
            rows.append({"id": f"s{i}", "variant": variant, "instruction": "q", "input": "", "reference": ref,
                         "answer": answer, "new_tokens": 2, "stopped": "eos"})
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = evaluate("arm", EvaluationSpec(metrics=["exact_match", "judge"]), gen, tmp_path / "out")
    comparisons = {(c["baseline"], c["metric"]): c for c in result["comparisons"]}
    assert set(comparisons) == {("base-zero-shot", "exact_match"), ("base-few-shot", "exact_match")}
    zero, few = comparisons[("base-zero-shot", "exact_match")], comparisons[("base-few-shot", "exact_match")]
    assert zero["mean"] == pytest.approx(0.8) and zero["p_value"] < 0.001 and zero["n"] == 30
    assert few["mean"] == pytest.approx(0.4) and few["n"] == 30
