"""Assemble ``results.json`` (schema in docs/results-schema.md) from the stages' artifacts."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from bakeoff import __version__
from bakeoff.artifacts import read_evaluation, read_pairwise, read_stats, read_training
from bakeoff.capacity.plan import predicted_beside_measured
from bakeoff.report.decision import decide, pairwise_tables, pooled_leads, ranking, replicate_summaries
from bakeoff.spec import ExperimentSpec, metric_names
from bakeoff.stats import paired_difference

SCHEMA_VERSION = 2  # 2: replicates, ranking, pairwise, decision (docs/results-schema.md)
KEY_LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "openai", "kfp")


def library_versions() -> dict[str, str]:
    """Python and the key libraries' versions ("not installed" where absent)."""
    versions = {"python": platform.python_version()}
    for name in KEY_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def build_results(
    spec: ExperimentSpec,
    data_stats: dict[str, Any],
    trainings: list[dict[str, Any]],
    evaluations: list[tuple[dict[str, Any], list[dict[str, Any]]]],
    pairwise: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One results document; arms in spec order whatever order the artifacts came in. An arm's first run (its
    own name) gives its rows, training and samples; with replicates, its fine-tuned means and intervals pool
    every run (bakeoff.report.decision)."""
    by_run = {t["arm"]: t for t in trainings}
    evals_by_run = {summary["arm"]: (summary, samples) for summary, samples in evaluations}
    missing = [run for run in spec.runs() if run not in by_run or run not in evals_by_run]
    if missing:
        raise ValueError(f"report: no training or evaluation artifacts for arm(s) {', '.join(missing)}")
    training = {a.name: by_run[a.name] for a in spec.arms}
    evals = {a.name: evals_by_run[a.name] for a in spec.arms}
    rows, health, samples, status, comparisons = [], {}, [], {}, []
    for arm in spec.arms:
        summary, arm_samples = evals[arm.name]
        status.update({k: v for k, v in summary["metric_status"].items() if k not in status or v != "ok"})
        for variant in spec.variants:
            if variant not in summary["metrics"]:
                continue
            rows.append({
                "arm": arm.name, "variant": variant, "model": arm.model, "method": spec.arm_method(arm),
                "metrics": summary["metrics"][variant],
            })
        health[arm.name] = summary["health"]
        comparisons += [{"arm": arm.name, **c} for c in summary.get("comparisons", [])]
        samples += arm_samples
    stats = {k: v for k, v in data_stats.items() if k not in ("out_dir", "files")}
    names = metric_names(spec.evaluation)
    samples_by_run = {run: samples_ for run, (_, samples_) in evals_by_run.items()}
    replicates = replicate_summaries(spec, by_run, {run: s for run, (s, _) in evals_by_run.items()}, names,
                                     samples_by_run, spec.seed)
    for row in rows:  # with replicates, an arm's fine-tuned figures pool its runs
        pooled = (replicates.get(row["arm"]) or {}).get("metrics") or {}
        if row["variant"] == "fine-tuned":
            for metric, cell in pooled.items():
                if metric in row["metrics"] and cell["mean"] is not None:
                    row["metrics"][metric] = {**row["metrics"][metric], **cell}
    pairwise_table, bt_rows = pairwise_tables(pairwise)
    ranked = ranking(spec, names, samples_by_run, bt_rows, spec.seed)
    return {
        "schema_version": SCHEMA_VERSION,
        "bakeoff_version": __version__,
        "experiment": {"name": spec.name, "description": spec.description, "seed": spec.seed,
                       "spec": spec.model_dump(mode="json")},
        "versions": library_versions(),
        "data": stats,
        "metrics": metric_names(spec.evaluation),
        "metric_status": status,
        "metric_definitions": {k: v for summary, _ in evaluations for k, v in summary.get("definitions", {}).items()},
        "rows": rows,
        "training": {a.name: training[a.name] for a in spec.arms},
        "planned": {a.name: predicted_beside_measured(spec, data_stats, training[a.name]) for a in spec.arms},
        "comparisons": comparisons,
        "replicates": replicates,
        "ranking": ranked,
        "pairwise": pairwise_table,
        "pairwise_stats": (pairwise or {}).get("stats") if (pairwise or {}).get("configured") else None,
        "decision": decide(spec, ranked, pairwise_table, samples_by_run, spec.seed),
        "leads": pooled_leads(spec, arm_leads(rows, samples, names, spec.seed), samples_by_run, spec.seed),
        "costs": arm_costs(spec, training, health, rows),
        "arm_differences": arm_differences(spec),
        "health": health,
        "samples": samples,
    }


def arm_leads(rows: list[dict], samples: list[dict], metrics: list[str], seed: int) -> list[dict[str, Any]]:
    """Per metric: the best arm's fine-tuned mean and its lead over the runner-up, paired on the test
    samples both scored (the arms share the test split), with an interval and a p-value."""
    out = []
    for metric in metrics:
        tuned = [r for r in rows
                 if r["variant"] == "fine-tuned" and r["metrics"].get(metric, {}).get("mean") is not None]
        if not tuned:
            continue
        ranked = sorted(tuned, key=lambda r: -r["metrics"][metric]["mean"])  # stable: spec order breaks ties
        best = ranked[0]
        entry = {"metric": metric, "best_arm": best["arm"], "mean": best["metrics"][metric]["mean"],
                 "ci95": best["metrics"][metric]["ci95"], "runner_up": None, "lead": None, "significant": None}
        if len(ranked) > 1:
            second = ranked[1]
            score = {(s["arm"], s["id"]): (s.get("scores") or {}).get("fine-tuned", {}).get(metric) for s in samples}
            ids = [s["id"] for s in samples if s["arm"] == best["arm"]]
            pairs = [(score[(best["arm"], i)], score.get((second["arm"], i))) for i in ids]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            lead = paired_difference([a for a, _ in pairs], [b for _, b in pairs], seed=seed)
            entry.update(runner_up=second["arm"], lead=lead,
                         significant=lead["p_value"] is not None and lead["p_value"] < 0.05)
        out.append(entry)
    return out


def arm_costs(spec: ExperimentSpec, training: dict, health: dict, rows: list[dict]) -> dict[str, dict]:
    """Per arm: training and judge cost, their total, the judge score gained over the base model
    (fine-tuned minus base zero-shot) and the cost per point gained (None where it cannot be said)."""
    out = {}
    for arm in spec.arms:
        train_usd = training[arm.name].get("cost_usd")
        judge_usd = ((health.get(arm.name) or {}).get("judge") or {}).get("cost_usd")
        ragas_usd = ((health.get(arm.name) or {}).get("ragas") or {}).get("cost_usd")
        parts = [x for x in (train_usd, judge_usd, ragas_usd) if x is not None]
        total = round(sum(parts), 6) if parts else None
        means = {r["variant"]: r["metrics"].get("judge", {}).get("mean") for r in rows if r["arm"] == arm.name}
        gain = None
        if means.get("fine-tuned") is not None and means.get("base-zero-shot") is not None:
            gain = round(means["fine-tuned"] - means["base-zero-shot"], 6)
        per_point = round(total / gain, 6) if total is not None and gain and gain > 0 else None
        out[arm.name] = {"training_usd": train_usd, "judge_usd": judge_usd, "ragas_usd": ragas_usd, "total_usd": total,
                         "judge_gain": gain, "usd_per_judge_point": per_point}
    return out


HOSTED_SETTINGS = ("epochs", "batch_size", "learning_rate_multiplier", "suffix", "system_prompt", "base_url")


def arm_differences(spec: ExperimentSpec) -> list[dict[str, Any]]:
    """What differs between arms: each setting whose value is not the same for every arm (a setting an
    arm does not have, such as a hosted arm's PEFT rank, is null for it)."""
    settings = {}
    for arm in spec.arms:
        flat = {"kind": arm.kind, "model": arm.model, "trust_remote_code": arm.trust_remote_code}
        if arm.is_hosted:
            flat.update({f"hosted.{k}": getattr(arm.hosted, k) for k in HOSTED_SETTINGS})
        else:
            flat.update({f"peft.{k}": v for k, v in spec.arm_peft(arm).model_dump(mode="json").items()})
        settings[arm.name] = flat
    keys = list(dict.fromkeys(k for flat in settings.values() for k in flat))
    return [{"setting": k, "values": {a: settings[a].get(k) for a in settings}} for k in keys
            if len({json.dumps(settings[a].get(k), sort_keys=True) for a in settings}) > 1]


def collect_results(
    spec: ExperimentSpec, data_dir: str | Path, model_dirs: list[str | Path], eval_dirs: list[str | Path],
    pairwise_dir: str | Path | None = None,
) -> dict[str, Any]:
    """``build_results`` from artifact folders: the prepare output, finetune outputs, evaluate outputs and the
    pairwise judge's output (optional)."""
    stats = read_stats(data_dir)
    pairwise = read_pairwise(pairwise_dir) if pairwise_dir is not None else None
    return build_results(spec, stats, [read_training(d) for d in model_dirs], [read_evaluation(d) for d in eval_dirs],
                         pairwise)


def headline_metrics(results: dict[str, Any]) -> dict[str, float]:
    """One scalar per arm x variant x metric (for KFP Metrics): ``ARM/VARIANT/METRIC``."""
    out = {}
    for row in results["rows"]:
        for name, cell in row["metrics"].items():
            if cell.get("mean") is not None:
                out[f"{row['arm']}/{row['variant']}/{name}"] = float(cell["mean"])
    return out
