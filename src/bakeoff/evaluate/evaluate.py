"""The evaluate stage: score every generated answer, summarise per variant and metric.

Output folder: ``samples.jsonl`` (per test example: answers and scores per variant, the judge's
explanation) and ``evaluation.json`` (per variant and metric: mean, 95% interval, n, failures,
status; evaluation health: the adapter guard and the judge's counters).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from bakeoff.evaluate.judge import Judge, check_endpoint
from bakeoff.evaluate.metrics import exact_match
from bakeoff.evaluate.stats import mean_ci95, paired_difference
from bakeoff.generate.generate import read_generations
from bakeoff.jsonl import read_jsonl, write_jsonl
from bakeoff.spec import EvaluationSpec

log = logging.getLogger(__name__)

NOT_CONFIGURED = "not configured"


def metric_status(evaluation: EvaluationSpec) -> dict[str, str]:
    """Per listed metric: ``ok`` or why it cannot produce values (for the report)."""
    status = {}
    for name in evaluation.metrics:
        if name == "judge" and evaluation.judge is None:
            status[name] = f"{NOT_CONFIGURED}: the spec has no evaluation.judge"
        else:
            status[name] = "ok"
    return status


def preflight(evaluation: EvaluationSpec) -> None:
    """Check the configured endpoints before any paid work (training, generation) starts."""
    if "judge" in evaluation.metrics and evaluation.judge is not None:
        check_endpoint(evaluation.judge)


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

    if "exact_match" in evaluation.metrics:
        for i, row in enumerate(rows):
            scores[i]["exact_match"] = exact_match(row["reference"], row["answer"])

    judge_stats = None
    if "judge" in evaluation.metrics and evaluation.judge is not None:
        judge = judge or Judge(evaluation.judge)
        question = [_question(r) for r in rows]
        judgments = judge.judge_many([(q, r["reference"], r["answer"]) for q, r in zip(question, rows, strict=True)])
        for i, j in enumerate(judgments):
            scores[i]["judge"] = j.rating
            explanations[i] = j.explanation or (j.error or "")
        judge_stats = judge.summary()
        log.info("judge: %s", judge_stats)

    variants = list(dict.fromkeys(r["variant"] for r in rows))
    summary: dict[str, dict[str, Any]] = {}
    for variant in variants:
        idx = [i for i, r in enumerate(rows) if r["variant"] == variant]
        summary[variant] = {}
        for name in evaluation.metrics:
            if not status[name].startswith("ok"):
                summary[variant][name] = {"mean": None, "ci95": None, "n": 0, "failures": 0, "status": NOT_CONFIGURED}
            else:
                summary[variant][name] = summarise([scores[i].get(name) for i in idx], seed)

    write_jsonl(out / "samples.jsonl", _samples(arm, rows, scores, explanations))
    result = {
        "arm": arm,
        "metric_status": status,
        "metrics": summary,
        "comparisons": compare_variants(rows, scores, [m for m in evaluation.metrics if status[m] == "ok"], seed),
        "health": {**adapter_guard(rows), "judge": judge_stats},
    }
    (out / "evaluation.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


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


def _samples(arm: str, rows: list[dict], scores: dict, explanations: dict) -> list[dict]:
    merged: dict[str, dict] = {}
    for i, r in enumerate(rows):
        s = merged.setdefault(r["id"], {
            "arm": arm, "id": r["id"], "instruction": r["instruction"], "input": r.get("input", ""),
            "reference": r["reference"], "answers": {}, "scores": {}, "judge_explanations": {},
            **({"task": r["task"]} if "task" in r else {}),
        })
        s["answers"][r["variant"]] = r["answer"]
        s["scores"][r["variant"]] = scores.get(i, {})
        if i in explanations:
            s["judge_explanations"][r["variant"]] = explanations[i]
    return list(merged.values())


def read_evaluation(eval_dir: str | Path) -> tuple[dict, list[dict]]:
    """The ``evaluation.json`` summary and the samples an evaluate run wrote."""
    eval_dir = Path(eval_dir)
    summary = json.loads((eval_dir / "evaluation.json").read_text())
    return summary, read_jsonl(eval_dir / "samples.jsonl")
