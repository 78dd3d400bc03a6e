"""Assemble ``results.json`` (schema in docs/results-schema.md) from the stages' artifacts."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from bakeoff import __version__
from bakeoff.evaluate.evaluate import metric_names, read_evaluation
from bakeoff.spec import ExperimentSpec
from bakeoff.train.finetune import read_training

SCHEMA_VERSION = 1
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
) -> dict[str, Any]:
    """One results document; arms in spec order whatever order the artifacts came in."""
    training = {t["arm"]: t for t in trainings}
    evals = {summary["arm"]: (summary, samples) for summary, samples in evaluations}
    missing = [a.name for a in spec.arms if a.name not in training or a.name not in evals]
    if missing:
        raise ValueError(f"report: no training or evaluation artifacts for arm(s) {', '.join(missing)}")
    rows, health, samples, status, comparisons = [], {}, [], {}, []
    for arm in spec.arms:
        summary, arm_samples = evals[arm.name]
        status.update({k: v for k, v in summary["metric_status"].items() if k not in status or v != "ok"})
        for variant in spec.variants:
            if variant not in summary["metrics"]:
                continue
            rows.append({
                "arm": arm.name, "variant": variant, "model": arm.model, "method": spec.arm_peft(arm).method,
                "metrics": summary["metrics"][variant],
            })
        health[arm.name] = summary["health"]
        comparisons += [{"arm": arm.name, **c} for c in summary.get("comparisons", [])]
        samples += arm_samples
    stats = {k: v for k, v in data_stats.items() if k not in ("out_dir", "files")}
    return {
        "schema_version": SCHEMA_VERSION,
        "bakeoff_version": __version__,
        "experiment": {"name": spec.name, "description": spec.description, "seed": spec.seed,
                       "spec": spec.model_dump(mode="json")},
        "versions": library_versions(),
        "data": stats,
        "metrics": metric_names(spec.evaluation),
        "metric_status": status,
        "rows": rows,
        "training": {a.name: training[a.name] for a in spec.arms},
        "comparisons": comparisons,
        "health": health,
        "samples": samples,
    }


def collect_results(
    spec: ExperimentSpec, data_dir: str | Path, model_dirs: list[str | Path], eval_dirs: list[str | Path]
) -> dict[str, Any]:
    """``build_results`` from artifact folders: the prepare output, finetune outputs, evaluate outputs."""
    stats = json.loads((Path(data_dir) / "stats.json").read_text())
    return build_results(spec, stats, [read_training(d) for d in model_dirs], [read_evaluation(d) for d in eval_dirs])


def headline_metrics(results: dict[str, Any]) -> dict[str, float]:
    """One scalar per arm x variant x metric (for KFP Metrics): ``ARM/VARIANT/METRIC``."""
    out = {}
    for row in results["rows"]:
        for name, cell in row["metrics"].items():
            if cell.get("mean") is not None:
                out[f"{row['arm']}/{row['variant']}/{name}"] = float(cell["mean"])
    return out
