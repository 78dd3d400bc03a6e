"""The evaluate stage with SQL execution, ViGGO and RAGAS metrics on the project's own fixtures."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT
from judge_stub import serve

from bakeoff.artifacts import read_evaluation
from bakeoff.errors import EvaluationError
from bakeoff.evaluate import evaluate
from bakeoff.evaluate.evaluate import metric_status
from bakeoff.jsonl import read_jsonl
from bakeoff.spec import EvaluationSpec, JudgeSpec

SQL = ROOT / "experiments" / "data" / "sql"


def _generations(tmp_path, rows):
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return gen


def _row(i, variant, reference, answer, **extra):
    return {"id": f"s{i}", "variant": variant, "instruction": "q", "input": "", "reference": reference,
            "answer": answer, "new_tokens": 1, "stopped": "eos", **extra}


def test_sql_execution_on_databases_and_on_schema_only_contexts(tmp_path):
    records = read_jsonl(SQL / "sql.jsonl")[:6]
    rows = []
    for i, r in enumerate(records):
        meta = {"db_id": r["db_id"]} if i < 4 else {}  # the last two have only their CREATE TABLE context
        rows.append(_row(i, "fine-tuned", r["answer"], r["answer"], input=r["context"], meta=meta))
        rows.append(_row(i, "base-zero-shot", r["answer"], "SELECT 'nonsense'", input=r["context"], meta=meta))
    spec = EvaluationSpec(metrics=["exact_match", "sql_execution"], sql={"databases": str(SQL / "databases")})
    result = evaluate("arm", spec, _generations(tmp_path, rows), tmp_path / "out")
    assert result["metrics"]["fine-tuned"]["sql_execution"]["mean"] == 1.0
    assert result["metrics"]["base-zero-shot"]["sql_execution"]["mean"] == 0.0
    assert result["health"]["sql"] == {"database": 8, "schema": 4, "failed": 0}


def test_sql_without_any_database_is_a_counted_failure_with_its_reason(tmp_path):
    rows = [_row(0, "fine-tuned", "SELECT 1", "SELECT 1")]
    with pytest.raises(EvaluationError, match="every score of sql_execution"):  # nothing scored: the stage fails
        evaluate("arm", EvaluationSpec(metrics=["sql_execution"]), _generations(tmp_path, rows), tmp_path / "o")
    result, _ = read_evaluation(tmp_path / "o")
    cell = result["metrics"]["fine-tuned"]["sql_execution"]
    assert cell["n"] == 0 and cell["failures"] == 1 and cell["mean"] is None and cell["status"] == "failed"
    sample = read_jsonl(tmp_path / "o" / "samples.jsonl")[0]
    assert "no database for this example" in sample["failures"]["fine-tuned"]["sql_execution"]


def test_mr_match_with_slot_scores(tmp_path):
    gold = "inform(name[Portal 2], genres[puzzle, platformer], rating[excellent])"
    rows = [_row(0, "fine-tuned", gold, "inform(rating[excellent], name[Portal 2], genres[puzzle, platformer])"),
            _row(1, "fine-tuned", gold, "inform(name[Portal 2], rating[poor])"),
            _row(0, "base-zero-shot", gold, "not an MR"), _row(1, "base-zero-shot", gold, "not an MR")]
    result = evaluate("arm", EvaluationSpec(metrics=["mr_match"]), _generations(tmp_path, rows), tmp_path / "o")
    tuned = result["metrics"]["fine-tuned"]
    assert tuned["mr_match"]["mean"] == 0.5
    assert tuned["mr_slot_precision"]["mean"] == pytest.approx((1 + 0.5) / 2)
    assert tuned["mr_slot_recall"]["mean"] == pytest.approx((1 + 1 / 3) / 2)
    assert result["metrics"]["base-zero-shot"]["mr_slot_f1"]["mean"] == 0.0


def test_ragas_metrics_through_the_judges_endpoint(tmp_path, cache_env):
    rows = [_row(0, "fine-tuned", "Paris is the capital of France.", "Paris is the capital of France."),
            _row(0, "base-zero-shot", "Paris is the capital of France.", "Berlin is a city in Germany.")]
    with serve("ragas") as server:
        spec = EvaluationSpec(metrics=["answer_correctness", "answer_similarity"],
                              judge=JudgeSpec(base_url=server.base_url, model="grader"))
        result = evaluate("arm", spec, _generations(tmp_path, rows), tmp_path / "o")
    tuned, base = result["metrics"]["fine-tuned"], result["metrics"]["base-zero-shot"]
    assert tuned["answer_similarity"]["mean"] > base["answer_similarity"]["mean"]
    assert tuned["answer_correctness"]["mean"] > base["answer_correctness"]["mean"]
    assert result["health"]["ragas"]["version"].startswith("0.4")


def test_ragas_without_an_llm_is_not_configured():
    status = metric_status(EvaluationSpec(metrics=["answer_correctness", "exact_match"]))
    assert status["answer_correctness"].startswith("not configured") and status["exact_match"] == "ok"


def test_ragas_tokens_are_counted_and_priced(tmp_path, monkeypatch):
    monkeypatch.setenv("BAKEOFF_CACHE", str(tmp_path / "cache"))  # a cold cache: every score is a call
    rows = [_row(0, "fine-tuned", "Paris is the capital of France.", "Paris is the capital of France.")]
    with serve("ragas") as server:
        spec = EvaluationSpec(metrics=["answer_correctness"],
                              judge=JudgeSpec(base_url=server.base_url, model="grader", usd_per_1m_input_tokens=1.0,
                                              usd_per_1m_output_tokens=4.0))
        health = evaluate("arm", spec, _generations(tmp_path, rows), tmp_path / "o")["health"]["ragas"]
    assert health["prompt_tokens"] > 0
    expected = (health["prompt_tokens"] * 1.0 + health["completion_tokens"] * 4.0) / 1e6
    assert health["cost_usd"] == pytest.approx(expected, abs=1e-6)


def test_a_fenced_sql_answer_scores_as_sql_with_the_raw_score_beside(tmp_path):
    fenced = "```sql\nSELECT name FROM people WHERE name = 'Bob';\n```"
    gold = "SELECT name FROM people WHERE name = 'Bob'"
    folded = "select NAME from people where name = 'bob'"
    rows = [_row(0, "fine-tuned", gold, fenced), _row(1, "fine-tuned", gold, folded)]
    spec = EvaluationSpec(metrics=["exact_match", "sql_execution"])
    with pytest.raises(EvaluationError):  # no database for these rows: sql_execution fails throughout
        evaluate("arm", spec, _generations(tmp_path, rows), tmp_path / "o")
    result, _ = read_evaluation(tmp_path / "o")
    cell = result["metrics"]["fine-tuned"]["exact_match"]
    # the fence is stripped (1.0), the literal 'bob' keeps its case (0.0); unstripped, the fenced one is 0.0
    assert cell["mean"] == 0.5 and cell["raw_mean"] == 0.0 and cell["fence_changed"] == 1
    assert "string literals" in result["definitions"]["exact_match"]
