"""The evaluate stage: score every generated answer, summarise per variant and metric.

Output folder (``bakeoff.artifacts``): ``samples.jsonl`` (per test example: answers and scores per variant, the judge's
explanation) and ``evaluation.json`` (per variant and metric: mean, 95% interval, n, failures,
status; evaluation health: the adapter guard and the judge's counters).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from bakeoff import endpoints
from bakeoff.artifacts import read_generation_summary, read_generations, write_evaluation
from bakeoff.errors import EvaluationError
from bakeoff.evaluate.judge import Judge
from bakeoff.evaluate.metrics import exact_match
from bakeoff.evaluate.viggo import mr_match, slot_scores
from bakeoff.spec import RAGAS_METRICS as RAGAS
from bakeoff.spec import SLOT_METRICS, EvaluationSpec, metric_names
from bakeoff.stats import mean_ci95, paired_difference

log = logging.getLogger(__name__)

NOT_CONFIGURED = "not configured"


def metric_status(evaluation: EvaluationSpec) -> dict[str, str]:
    """Per reported metric: ``ok`` or why it cannot produce values (for the report)."""
    status = {}
    has_ragas = (evaluation.ragas and evaluation.ragas.base_url and evaluation.ragas.model) or evaluation.judge
    for name in metric_names(evaluation):
        if name == "judge" and evaluation.judge is None:
            status[name] = f"{NOT_CONFIGURED}: the spec has no evaluation.judge"
        elif name in RAGAS and not has_ragas:
            status[name] = f"{NOT_CONFIGURED}: the spec has neither evaluation.ragas (base_url, model) nor a judge"
        else:
            status[name] = "ok"
    return status


def summarise(scores: list[float | None], seed: int) -> dict[str, Any]:
    """Mean, interval, n and failures of one cell; ``None`` scores are failures, never zeros."""
    values = [s for s in scores if s is not None]
    failures = len(scores) - len(values)
    mean, ci = mean_ci95(values, seed=seed)
    status = "ok" if values else ("failed" if failures else "empty")
    return {"mean": mean, "ci95": ci, "n": len(values), "failures": failures, "status": status}


def evaluate(
    arm: str,
    evaluation: EvaluationSpec,
    generations_dir: str | Path,
    out_dir: str | Path,
    seed: int = 42,
    judge: Judge | None = None,
) -> dict[str, Any]:
    """Score ``generations_dir``'s answers with the spec's metrics; writes and returns the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_generations(generations_dir)
    status = metric_status(evaluation)
    scores: dict[int, dict[str, float | None]] = defaultdict(dict)
    explanations: dict[int, str] = {}

    reasons: dict[int, dict[str, str]] = defaultdict(dict)
    generated = read_generation_summary(generations_dir)
    health_extra: dict[str, Any] = {"generation": {k: generated[k] for k in ("backend", "backend_reason", "precision")
                                                   if generated.get(k) is not None}} if generated else {}
    if "exact_match" in evaluation.metrics:
        for i, row in enumerate(rows):
            scores[i]["exact_match"] = exact_match(row["reference"], row["answer"],
                                                   evaluation.exact_match.case_sensitive)
    if "mr_match" in evaluation.metrics:
        for i, row in enumerate(rows):
            try:
                scores[i]["mr_match"] = 1.0 if mr_match(row["reference"], row["answer"]) else 0.0
                p, r, f = slot_scores(row["reference"], row["answer"])
                scores[i].update(mr_slot_precision=p, mr_slot_recall=r, mr_slot_f1=f)
            except EvaluationError as exc:  # the reference itself is no meaning representation
                scores[i].update({m: None for m in ("mr_match", *SLOT_METRICS)})
                reasons[i]["mr_match"] = str(exc)
    if "sql_execution" in evaluation.metrics:
        health_extra["sql"] = _score_sql(rows, evaluation, scores, reasons, out)
    if any(m in evaluation.metrics for m in RAGAS) and status[next(m for m in RAGAS if m in status)] == "ok":
        health_extra["ragas"] = _score_ragas(rows, evaluation, scores, reasons)

    judge_stats = None
    if "judge" in evaluation.metrics and evaluation.judge is not None:
        judge = judge or Judge(evaluation.judge)
        question = [_question(r) for r in rows]
        judgments = judge.judge_many([(q, r["reference"], r["answer"]) for q, r in zip(question, rows, strict=True)])
        for i, j in enumerate(judgments):
            scores[i]["judge"] = j.rating
            if evaluation.judge.logprobs:
                scores[i]["judge_weighted"] = j.weighted
            explanations[i] = j.explanation or (j.error or "")
            if j.error:
                reasons[i]["judge"] = j.error
        judge_stats = judge.summary()
        log.info("judge: %s", judge_stats)

    variants = list(dict.fromkeys(r["variant"] for r in rows))
    summary: dict[str, dict[str, Any]] = {}
    for variant in variants:
        idx = [i for i, r in enumerate(rows) if r["variant"] == variant]
        summary[variant] = {}
        for name in metric_names(evaluation):
            if not status[name].startswith("ok"):
                summary[variant][name] = {"mean": None, "ci95": None, "n": 0, "failures": 0, "status": NOT_CONFIGURED}
            else:
                summary[variant][name] = summarise([scores[i].get(name) for i in idx], seed)

    result = {
        "arm": arm,
        "metric_status": status,
        "metrics": summary,
        "comparisons": compare_variants(rows, scores, [m for m in metric_names(evaluation) if status[m] == "ok"],
                                        seed),
        "health": {**adapter_guard(rows), "judge": judge_stats, **health_extra},
    }
    write_evaluation(out, result, _samples(arm, rows, scores, explanations, reasons))
    return result


def _score_sql(rows: list[dict], evaluation: EvaluationSpec, scores: dict, reasons: dict, out: Path) -> dict:
    """Execution accuracy per answer: on the example's database when the spec's folder has it, else on
    synthetic databases built from the CREATE TABLE context. Counts which mode each answer used."""
    from bakeoff.evaluate.sql import execution_match, execution_match_schema

    cfg = evaluation.sql
    folder = Path(cfg.databases) if cfg.databases else None
    modes = {"database": 0, "schema": 0, "failed": 0}
    for i, row in enumerate(rows):
        db_id = (row.get("meta") or {}).get("db_id")
        try:
            if folder is not None and db_id and (folder / f"{db_id}.sqlite").is_file():
                ok = execution_match(folder / f"{db_id}.sqlite", row["reference"], row["answer"], cfg.timeout_s)
                modes["database"] += 1
            elif "CREATE TABLE" in (row.get("input") or "").upper():
                ok = execution_match_schema(row["input"], row["reference"], row["answer"], seed=0,
                                            n=cfg.synthetic_databases, timeout_s=cfg.timeout_s,
                                            workdir=out / "sql-databases")
                modes["schema"] += 1
            else:
                raise EvaluationError("no database for this example (meta.db_id in evaluation.sql.databases) "
                                      "and no CREATE TABLE context to build one from")
        except EvaluationError as exc:  # the gold query or the context is at fault: a counted failure
            scores[i]["sql_execution"] = None
            reasons[i]["sql_execution"] = str(exc)
            modes["failed"] += 1
            continue
        scores[i]["sql_execution"] = 1.0 if ok else 0.0
    if modes["failed"]:
        log.warning("sql_execution: %d answers could not be scored", modes["failed"])
    return modes


def _score_ragas(rows: list[dict], evaluation: EvaluationSpec, scores: dict, reasons: dict) -> dict:
    from bakeoff.evaluate.ragas_metrics import RagasScorer

    scorer = RagasScorer(evaluation.ragas_llm(), evaluation.ragas_embeddings())
    wanted = tuple(m for m in RAGAS if m in evaluation.metrics)
    values, why = scorer.score_many_with_reasons([(_question(r), r["reference"], r["answer"]) for r in rows],
                                                 metrics=wanted)
    for i, (v, w) in enumerate(zip(values, why, strict=True)):
        scores[i].update(v)
        reasons[i].update(w)
    stats = scorer.stats.to_dict()
    # prices: the ragas section's, else the judge's (the same endpoint by default)
    stats["cost_usd"] = endpoints.cost_usd(stats["prompt_tokens"], stats["completion_tokens"],
                                           *evaluation.ragas_prices())
    return {"version": scorer.version, **stats}


def compare_variants(rows: list[dict], scores: dict, metrics: list[str], seed: int) -> list[dict[str, Any]]:
    """Fine-tuned minus each base variant, per metric, paired on the samples both scored."""
    index = {(r["id"], r["variant"]): i for i, r in enumerate(rows)}
    ids = list(dict.fromkeys(r["id"] for r in rows))
    out = []
    for baseline in ("base-zero-shot", "base-few-shot"):
        for name in metrics:
            pairs = []
            for sid in ids:
                if (sid, "fine-tuned") in index and (sid, baseline) in index:
                    a = scores[index[(sid, "fine-tuned")]].get(name)
                    b = scores[index[(sid, baseline)]].get(name)
                    if a is not None and b is not None:
                        pairs.append((a, b))
            if not any((sid, baseline) in index for sid in ids):
                continue
            diff = paired_difference([a for a, _ in pairs], [b for _, b in pairs], seed=seed)
            out.append({"variant": "fine-tuned", "baseline": baseline, "metric": name, **diff})
    return out


def _question(row: dict) -> str:
    return f"{row['instruction']}\n\n{row['input']}".strip() if row.get("input") else row["instruction"]


def adapter_guard(rows: list[dict]) -> dict[str, Any]:
    """Compare fine-tuned with base zero-shot answers: identical on every sample means no adapter effect."""
    by_id: dict[str, dict[str, str]] = defaultdict(dict)
    for r in rows:
        by_id[r["id"]][r["variant"]] = r["answer"]
    pairs = [(v["fine-tuned"], v["base-zero-shot"]) for v in by_id.values()
             if "fine-tuned" in v and "base-zero-shot" in v]
    if not pairs:
        return {"adapter_applied": None, "identical_to_base": None}
    same = sum(1 for a, b in pairs if a == b)
    return {"adapter_applied": same < len(pairs), "identical_to_base": same}


def _samples(arm: str, rows: list[dict], scores: dict, explanations: dict, reasons: dict) -> list[dict]:
    merged: dict[str, dict] = {}
    for i, r in enumerate(rows):
        s = merged.setdefault(r["id"], {
            "arm": arm, "id": r["id"], "instruction": r["instruction"], "input": r.get("input", ""),
            "reference": r["reference"], "answers": {}, "scores": {}, "judge_explanations": {},
            **({"task": r["task"]} if "task" in r else {}),
        })
        s["answers"][r["variant"]] = r["answer"]
        s["scores"][r["variant"]] = scores.get(i, {})
        if reasons.get(i):
            s.setdefault("failures", {})[r["variant"]] = reasons[i]
        if i in explanations:
            s["judge_explanations"][r["variant"]] = explanations[i]
    return list(merged.values())
