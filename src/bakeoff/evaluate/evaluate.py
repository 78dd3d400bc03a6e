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


def _add_raw(cell: dict, raw: list, stripped: list) -> None:
    """The score without stripping code fences beside the stripped one (``raw_mean``), and how many answers
    it changed (``fence_changed``), for the metrics that strip fences."""
    pairs = [(r, s) for r, s in zip(raw, stripped, strict=True) if r is not None and s is not None]
    if not pairs:
        return
    cell["raw_mean"] = round(sum(r for r, _ in pairs) / len(pairs), 6)
    cell["fence_changed"] = sum(1 for r, s in pairs if r != s)


def metric_definitions(evaluation: EvaluationSpec) -> dict[str, str]:
    """How each reported metric is scored, in one sentence each (for results.json and the report)."""
    from bakeoff.evaluate import metrics
    from bakeoff.evaluate.judge import PROMPT_VERSION, prompt_sha256

    texts = dict(metrics.NORMALISATION)
    fence = " The score without stripping the fence is kept beside it (raw_mean, fence_changed)."
    if "sql_execution" in evaluation.metrics:
        texts["exact_match"] = texts["exact_match_sql"] + fence
    for name in ("sql_execution", "mr_match"):
        texts[name] = texts[name] + fence
    judge = evaluation.judge
    if judge is not None:
        texts["judge"] = (f"1-10 by {judge.model}, rubric {judge.rubric} ("
                          + ("compared with the reference first, its mistakes corrected" if judge.rubric == "reference"
                             else "helpfulness, correctness and instruction following; the reference one good answer "
                                  "among many, its style not rewarded")
                          + f"), prompt {PROMPT_VERSION} sha256 {prompt_sha256(judge.rubric)[:12]}; an unparseable "
                            "reply is a failure, asked again on a rerun")
    for name in RAGAS:
        texts[name] = f"RAGAS {name.replace('_', ' ')}; an empty or whitespace-only answer scores 0 without a call"
    return {name: texts[name] for name in metric_names(evaluation) if name in texts}


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
    if not rows:
        raise EvaluationError(f"arm {arm}: {generations_dir} holds no answers to score (an empty test split?); "
                              "a run that evaluated nothing is not a result")
    status = metric_status(evaluation)
    scores: dict[int, dict[str, float | None]] = defaultdict(dict)
    explanations: dict[int, str] = {}

    reasons: dict[int, dict[str, str]] = defaultdict(dict)
    generated = read_generation_summary(generations_dir)
    health_extra: dict[str, Any] = {"generation": {k: generated[k] for k in ("backend", "backend_reason", "precision")
                                                   if generated.get(k) is not None}} if generated else {}
    if "exact_match" in evaluation.metrics:
        _score_exact_match(rows, evaluation, scores)
    if "mr_match" in evaluation.metrics:
        for i, row in enumerate(rows):
            try:
                scores[i]["mr_match"] = 1.0 if mr_match(row["reference"], row["answer"]) else 0.0
                scores[i]["mr_match_raw"] = 1.0 if mr_match(row["reference"], row["answer"], strip_fences=False) \
                    else 0.0
                p, r, f = slot_scores(row["reference"], row["answer"])
                scores[i].update(mr_slot_precision=p, mr_slot_recall=r, mr_slot_f1=f)
            except EvaluationError as exc:  # the reference itself is no meaning representation
                scores[i].update({m: None for m in ("mr_match", "mr_match_raw", *SLOT_METRICS)})
                reasons[i]["mr_match"] = str(exc)
    if "sql_execution" in evaluation.metrics:
        health_extra["sql"] = _score_sql(rows, evaluation, scores, reasons, out)
    if any(m in evaluation.metrics for m in RAGAS) and status[next(m for m in RAGAS if m in status)] == "ok":
        health_extra["ragas"] = _score_ragas(rows, evaluation, scores, reasons)

    judge_stats = None
    if "judge" in evaluation.metrics and evaluation.judge is not None:
        judge_stats = _score_judge(rows, evaluation, judge or Judge(evaluation.judge), scores, explanations, reasons)

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
                _add_raw(summary[variant][name], [scores[i].get(f"{name}_raw") for i in idx],
                         [scores[i].get(name) for i in idx])

    result = {
        "arm": arm,
        "metric_status": status,
        "metrics": summary,
        "comparisons": compare_variants(rows, scores, [m for m in metric_names(evaluation) if status[m] == "ok"],
                                        seed),
        "health": {**adapter_guard(rows), "judge": judge_stats, **health_extra},
        "definitions": metric_definitions(evaluation),
    }
    write_evaluation(out, result, _samples(arm, rows, scores, explanations, reasons))
    _fail_if_nothing_scored(arm, summary, reasons)
    return result


def _fail_if_nothing_scored(arm: str, summary: dict, reasons: dict) -> None:
    """A metric the spec asks for whose every score failed (the judge answering 500 throughout) fails the
    stage, after its outputs are written, saying why; partial failure is shown as counts, not fatal."""
    failed = []
    for name in dict.fromkeys(m for cells in summary.values() for m in cells):
        cells = [cells[name] for cells in summary.values()]
        if all(c["status"] == "failed" for c in cells):
            why = next((r[name] for r in reasons.values() if name in r), "no reason recorded")
            failed.append(f"{name} ({sum(c['failures'] for c in cells)} of {sum(c['failures'] for c in cells)} "
                          f"failed; first: {why})")
    if failed:
        raise EvaluationError(f"arm {arm}: every score of {'; '.join(failed)}; the counts and each reason are in "
                              "samples.jsonl and evaluation.json: fix the endpoint or the data and rerun (what "
                              "was scored is cached)")


def _score_judge(rows: list[dict], evaluation: EvaluationSpec, judge: Judge, scores: dict, explanations: dict,
                 reasons: dict) -> dict[str, Any]:
    """The judge's rating of every answer (a failure is None with its reason) and the judge's counters."""
    question = [_question(r) for r in rows]
    judgments = judge.judge_many([(q, r["reference"], r["answer"]) for q, r in zip(question, rows, strict=True)])
    for i, j in enumerate(judgments):
        scores[i]["judge"] = j.rating
        if evaluation.judge.logprobs:
            scores[i]["judge_weighted"] = j.weighted
        explanations[i] = j.explanation or (j.error or "")
        if j.error:
            reasons[i]["judge"] = j.error
    stats = judge.summary()
    log.info("judge: %s", stats)
    return stats


def _score_exact_match(rows: list[dict], evaluation: EvaluationSpec, scores: dict) -> None:
    """Exact match; for SQL (the spec scores sql_execution) with string literals compared case-sensitively
    and a code fence stripped, the unstripped score kept as ``exact_match_raw``."""
    from bakeoff.evaluate.sql import exact_match_sql

    sql = "sql_execution" in evaluation.metrics
    for i, row in enumerate(rows):
        if sql:
            scores[i]["exact_match"] = exact_match_sql(row["reference"], row["answer"])
            scores[i]["exact_match_raw"] = exact_match_sql(row["reference"], row["answer"], strip_fences=False)
        else:
            scores[i]["exact_match"] = exact_match(row["reference"], row["answer"],
                                                   evaluation.exact_match.case_sensitive)


def _score_sql(rows: list[dict], evaluation: EvaluationSpec, scores: dict, reasons: dict, out: Path) -> dict:
    """Execution accuracy per answer: on the example's database when the spec's folder has it, else on
    synthetic databases built from the CREATE TABLE context. Counts which mode each answer used."""
    from bakeoff.evaluate.metrics import strip_code_fence
    from bakeoff.evaluate.sql import execution_match, execution_match_schema

    cfg = evaluation.sql
    folder = Path(cfg.databases) if cfg.databases else None
    modes = {"database": 0, "schema": 0, "failed": 0}
    for i, row in enumerate(rows):
        db_id = (row.get("meta") or {}).get("db_id")
        fenced = strip_code_fence(row["answer"]) != row["answer"]
        try:
            if folder is not None and db_id and (folder / f"{db_id}.sqlite").is_file():
                def run(strip: bool, db=folder / f"{db_id}.sqlite", row=row) -> bool:
                    return execution_match(db, row["reference"], row["answer"], cfg.timeout_s, strip_fences=strip)
                mode = "database"
            elif "CREATE TABLE" in (row.get("input") or "").upper():
                def run(strip: bool, row=row) -> bool:
                    return execution_match_schema(row["input"], row["reference"], row["answer"], seed=0,
                                                  n=cfg.synthetic_databases, timeout_s=cfg.timeout_s,
                                                  workdir=out / "sql-databases", strip_fences=strip)
                mode = "schema"
            else:
                raise EvaluationError("no database for this example (meta.db_id in evaluation.sql.databases) "
                                      "and no CREATE TABLE context to build one from")
            ok = run(True)
            raw = run(False) if fenced else ok  # the unstripped answer differs only when it had a fence
            modes[mode] += 1
        except EvaluationError as exc:  # the gold query or the context is at fault: a counted failure
            scores[i]["sql_execution"] = scores[i]["sql_execution_raw"] = None
            reasons[i]["sql_execution"] = str(exc)
            modes["failed"] += 1
            continue
        scores[i]["sql_execution"] = 1.0 if ok else 0.0
        scores[i]["sql_execution_raw"] = 1.0 if raw else 0.0
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
