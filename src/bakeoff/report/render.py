"""Render a ``results.json`` dict (see docs/results-schema.md) as a self-contained HTML page and as Markdown.

The HTML page has no external references: CSS is inline and the loss chart is an inline SVG drawn by
matplotlib. Rendering is deterministic: the same results give byte-identical output.
"""

from __future__ import annotations

import functools
import html
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VARIANT_ORDER = ("fine-tuned", "base-zero-shot", "base-few-shot")
MAX_SAMPLES_PER_ARM = 20
HEALTH_SECTIONS = (("generation", "Generation"), ("sql", "SQL execution (mode counts)"), ("ragas", "RAGAS"))


@functools.cache
def _jinja():
    """The page's template environment (jinja2 and matplotlib load on first use, not on import)."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("bakeoff.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(value: Any, spec: str = "") -> str:
    """Format a number, or "n/a" for None."""
    if value is None:
        return "n/a"
    if not spec:
        spec = "," if isinstance(value, int) and not isinstance(value, bool) else ".4g"
    return format(value, spec)


def _duration(seconds: float | None) -> str:
    """Seconds as h:mm:ss."""
    if seconds is None:
        return "n/a"
    total = int(round(seconds))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def _arms(results: dict) -> list[str]:
    """Arm names in spec order (rows first), then any only seen in training, health or samples."""
    names = [r.get("arm") for r in results.get("rows") or []]
    names += list(results.get("training") or {}) + list(results.get("health") or {})
    names += [s.get("arm") for s in results.get("samples") or []]
    return [n for n in dict.fromkeys(names) if n is not None]


def _hosted(results: dict, arm: str) -> dict | None:
    """The hosted job's record of an arm a provider fine-tuned (``training[arm].hosted``), else None."""
    return (((results.get("training") or {}).get(arm) or {}).get("hosted")) or None


def _label(results: dict, arm: str) -> str:
    """The arm's name as shown, marked when a provider fine-tuned it."""
    hosted = _hosted(results, arm)
    return f"{arm} (hosted: {hosted.get('provider') or 'api'})" if hosted else arm


def _variant_key(variant: str) -> tuple[int, str]:
    return (VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER), variant)


def _cell(metric: dict | None, status: str) -> dict[str, Any]:
    """One metric cell: mean, ci95, n, failures, or the status text when the metric has no values."""
    metric = metric or {}
    status = metric.get("status") or status or "ok"
    ci = metric.get("ci95")
    return {
        "ok": status == "ok",
        "status": status,
        "mean": _fmt(metric.get("mean"), ".3f"),
        "ci": f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else "",
        "n": _fmt(metric.get("n")),
        "failures": _fmt(metric.get("failures")),
        # a metric that strips code fences: the unstripped score, when a fence changed any answer's score
        "raw": f"{metric['raw_mean']:.3f} without fence stripping ({metric['fence_changed']} changed)"
        if metric.get("fence_changed") else "",
    }


def _mean(row: dict | None, metric: str) -> float | None:
    """The mean of an ok metric in a row, else None."""
    m = ((row or {}).get("metrics") or {}).get(metric) or {}
    return m.get("mean") if m.get("status", "ok") == "ok" else None


def _summary(results: dict, metrics: list[str], status: dict[str, str]) -> list[dict[str, str]]:
    """Best arm per metric by fine-tuned mean (higher is better)."""
    out = []
    for metric in metrics:
        cands = [r for r in results.get("rows") or [] if r.get("variant") == "fine-tuned"
                 and _mean(r, metric) is not None]
        if not cands:
            out.append({"metric": metric, "arm": "", "value": status.get(metric) or "no values", "ci": "", "lead": ""})
            continue
        best = max(cands, key=lambda r: _mean(r, metric))  # first arm in spec order wins a tie
        cell = _cell(best["metrics"][metric], "ok")
        lead = next((x for x in results.get("leads") or [] if x.get("metric") == metric), None)
        out.append({"metric": metric, "arm": best.get("arm", ""), "value": cell["mean"], "ci": cell["ci"],
                    "lead": _lead_text(lead)})
    return out


def _lead_text(lead: dict | None) -> str:
    """The best arm's paired lead over the runner-up, and whether it is significant at 5%."""
    if not lead or not lead.get("runner_up") or not lead.get("lead") or lead["lead"].get("mean") is None:
        return "only one arm" if lead else "n/a"
    d = lead["lead"]
    ci = d.get("ci95") or [None, None]
    verdict = "significant" if lead.get("significant") else "not significant"
    return (f"{d['mean']:+.3f} [{_fmt(ci[0], '+.3f')}, {_fmt(ci[1], '+.3f')}] over {lead['runner_up']}, "
            f"p={_fmt(d.get('p_value'), '.4f')} ({verdict})")


def _deltas(results: dict, arms: list[str], metrics: list[str]) -> list[dict[str, Any]]:
    """Fine-tuned minus each base variant per arm and metric: the paired difference with its interval and
    p-value where ``comparisons`` has it, else the difference of the means ("n/a" where either is missing)."""
    comparisons = results.get("comparisons") or []
    if comparisons:
        out = []
        for arm in arms:
            for baseline in ("base-zero-shot", "base-few-shot"):
                cells = {c["metric"]: c for c in comparisons if c.get("arm") == arm and c.get("baseline") == baseline}
                if not cells:
                    continue
                values = []
                for metric in metrics:
                    c = cells.get(metric)
                    if not c or c.get("mean") is None:
                        values.append("n/a")
                        continue
                    ci = c.get("ci95") or [None, None]
                    values.append(f"{c['mean']:+.3f} [{_fmt(ci[0], '+.3f')}, {_fmt(ci[1], '+.3f')}] "
                                  f"p={_fmt(c.get('p_value'), '.4f')}")
                out.append({"arm": f"{arm} vs {baseline}", "values": values})
        return out
    by_key = {(r.get("arm"), r.get("variant")): r for r in results.get("rows") or []}
    out = []
    for arm in arms:
        values = []
        for metric in metrics:
            ft = _mean(by_key.get((arm, "fine-tuned")), metric)
            base = _mean(by_key.get((arm, "base-zero-shot")), metric)
            values.append(f"{ft - base:+.3f}" if ft is not None and base is not None else "n/a")
        out.append({"arm": arm, "values": values})
    return out


def _training(results: dict, arms: list[str]) -> list[dict[str, str]]:
    """Training facts per arm, formatted for display."""
    out = []
    for arm in arms:
        t = (results.get("training") or {}).get(arm)
        if t is None:
            continue
        trainable, total = t.get("trainable_params"), t.get("total_params")
        params = f"{_fmt(trainable)} / {_fmt(total)}"
        if trainable is not None and total:
            params += f" ({100 * trainable / total:.2f}%)"
        gpu = f"{t.get('gpu_type') or 'none'} x {t.get('gpu_count') or 0}"
        hosted = t.get("hosted") or None
        if hosted:
            gpu = "the provider's (not reported)"
            trained_by = (f"{hosted.get('provider') or 'api'} fine-tuning job {hosted.get('job_id')}, model "
                          f"{hosted.get('fine_tuned_model')}")
        else:
            trained_by = "bakeoff (open weights)"
        out.append({
            "arm": _label(results, arm), "trained_by": trained_by, "model": t.get("model") or "",
            "method": t.get("method") or "",
            "device": t.get("device") or "n/a", "gpu": gpu, "steps": _fmt(t.get("steps")),
            "epochs": _fmt(t.get("epochs"), ".2f"), "wall": _duration(t.get("seconds")),
            "eval_time": _duration(t.get("evaluation_seconds")),
            "rows": _rows(t.get("rows") or {}), "segments": _fmt(t.get("segments")),
            "tokens": _fmt(t.get("train_tokens")), "tps": _fmt(t.get("tokens_per_second"), ",.0f"),
            "gpu_hours": _fmt(t.get("gpu_hours"), ".3f"),
            "cost": "n/a" if t.get("cost_usd") is None else f"${t['cost_usd']:,.2f}",
            "params": params, "train_loss": _fmt(t.get("final_train_loss"), ".4f"),
            "val_loss": _fmt(t.get("final_validation_loss"), ".4f"),
            "best": "n/a" if t.get("best_step") is None else
            f"{_fmt(t.get('best_validation_loss'), '.4f')} at step {t['best_step']}",
            "memory": _fmt(t.get("peak_memory_gb"), ".2f"),
            "resumed": _resumed(t),
            **_planned(((results.get("planned") or {}).get(arm)) or {}),
            **_costs((results.get("costs") or {}).get(arm) or {}),
        })
    return out


TRAINING_FIELDS = [
    ("trained_by", "Trained by"), ("model", "Model"), ("method", "Method"), ("device", "Device"),
    ("gpu", "GPU type x count"),
    ("steps", "Steps"), ("epochs", "Epochs"), ("wall", "Training time (evaluation apart)"),
    ("eval_time", "Evaluation time"), ("segments", "Runs (segments)"), ("rows", "Train rows"),
    ("tokens", "Train tokens"),
    ("tps", "Tokens/s"), ("gpu_hours", "GPU hours"), ("cost", "Cost (USD)"), ("params", "Trainable / total params"),
    ("train_loss", "Final train loss"), ("val_loss", "Final validation loss"),
    ("best", "Kept: lowest validation loss"), ("memory", "Peak memory (GB)"),
    ("planned_memory", "Planned peak memory (GB; measured / planned)"),
    ("planned_time", "Planned training time (measured / planned)"),
    ("planned_cost", "Planned cost (measured / planned)"),
    ("resumed", "Resumed"),
    ("judge_cost", "Judge cost (USD)"), ("ragas_cost", "RAGAS cost (USD)"), ("total_cost", "Total cost (USD)"),
    ("judge_gain", "Judge score gained"),
    ("per_point", "Cost per judge point gained (USD)"),
]


def _planned(p: dict) -> dict[str, str]:
    """The capacity plan beside the measurement: planned value (measured / planned), or why there is none."""
    ratio = p.get("ratio") or {}

    def cell(key: str, text: str | None) -> str:
        if text is None:
            return "n/a" + (f" ({p['reason']})" if p.get("reason") and key == "seconds" else "")
        return text + (f" ({ratio[key]:.2f}x)" if ratio.get(key) is not None else "")

    return {"planned_memory": cell("memory_gb", None if p.get("memory_gb") is None else f"{p['memory_gb']:.2f}"),
            "planned_time": cell("seconds", None if p.get("seconds") is None else _duration(p["seconds"])),
            "planned_cost": cell("cost_usd", None if p.get("cost_usd") is None else _usd(p["cost_usd"]))}


def _resumed(t: dict) -> str:
    """Whether the training resumed from a checkpoint, or why it started fresh beside an earlier one (another
    fingerprint: what changed)."""
    if t.get("resumed_from_step") is not None:
        return f"from step {t['resumed_from_step']}"
    status = t.get("resume_status") or ""
    return f"no ({status.removeprefix('fresh: ')})" if status.startswith("fresh: ") else "no"


def _rows(rows: dict) -> str:
    """Train rows as the trainer used them: trained of read, with what it dropped or cut."""
    if not rows:
        return "n/a"
    return (f"{_fmt(rows.get('trained'))} of {_fmt(rows.get('train'))} (dropped: "
            f"{_fmt(rows.get('dropped_no_completion'))}, cut at max_seq_length: {_fmt(rows.get('at_max_length'))})")


def _usd(value: Any) -> str:
    return "n/a" if value is None else f"${value:,.2f}"


def _costs(c: dict) -> dict[str, str]:
    return {"judge_cost": _usd(c.get("judge_usd")), "ragas_cost": _usd(c.get("ragas_usd")),
            "total_cost": _usd(c.get("total_usd")),
            "judge_gain": _fmt(c.get("judge_gain"), "+.2f"), "per_point": _usd(c.get("usd_per_judge_point"))}


def _svg_text(fig) -> str:
    """A matplotlib figure as an inline ``<svg>`` element, without the RDF metadata and the xlink namespace
    (no URLs but the SVG one), the same bytes for the same figure."""
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.S)
    return svg.replace(' xmlns:xlink="http://www.w3.org/1999/xlink"', "").replace("xlink:href=", "href=")


def _loss_svg(results: dict, arms: list[str]) -> str:
    """The loss curves as an inline SVG string, or "" when no arm has a loss history."""
    histories = {arm: ((results.get("training") or {}).get(arm) or {}).get("loss_history") or {} for arm in arms}
    if not any(h.get("train") or h.get("validation") for h in histories.values()):
        return ""
    plt = _pyplot()
    plt.rcParams["svg.hashsalt"] = "bakeoff"
    fig, ax = plt.subplots(figsize=(9, 4.5))
    try:
        for i, (arm, hist) in enumerate(histories.items()):
            color, label = f"C{i % 10}", arm.replace("$", r"\$")
            train = [p for p in hist.get("train") or [] if p.get("loss") is not None]
            val = [p for p in hist.get("validation") or [] if p.get("loss") is not None]
            if train:
                ax.plot([p["step"] for p in train], [p["loss"] for p in train], "-", color=color,
                        label=f"{label} train")
            if val:
                ax.plot([p["step"] for p in val], [p["loss"] for p in val], "--", color=color,
                        label=f"{label} validation")
                best = min(val, key=lambda p: p["loss"])
                ax.plot([best["step"]], [best["loss"]], "o", color=color, markersize=7,
                        label=f"{label} lowest validation ({best['loss']:.3f} @ {best['step']})")
                if val[-1]["loss"] > best["loss"]:  # validation loss rose after its lowest point: over-fitting
                    ax.axvline(best["step"], color=color, linestyle=":", linewidth=1,
                               label=f"{label} over-fitting after step {best['step']}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        return _svg_text(fig)
    finally:
        plt.close(fig)


def _samples(results: dict, arms: list[str]) -> list[dict[str, Any]]:
    """Per arm, up to MAX_SAMPLES_PER_ARM samples: those where the fine-tuned model scored lower than its base
    (on the judge when it scored both, else on exact match) first."""
    out = []
    for arm in arms:
        samples = [s for s in results.get("samples") or [] if s.get("arm") == arm]
        if not samples:
            continue
        shown = []
        for s in samples:
            scores = s.get("scores") or {}
            ft_scores, base_scores = scores.get("fine-tuned") or {}, scores.get("base-zero-shot") or {}
            key = "judge" if ft_scores.get("judge") is not None and base_scores.get("judge") is not None \
                else "exact_match"
            ft, base = ft_scores.get(key), base_scores.get(key)
            variants = sorted(set(s.get("answers") or {}) | set(scores), key=_variant_key)
            shown.append({
                "id": s.get("id") or "", "task": s.get("task") or "", "instruction": s.get("instruction") or "",
                "input": s.get("input") or "", "reference": s.get("reference") or "",
                "regressed": ft is not None and base is not None and ft < base,
                "variants": [{
                    "name": v, "answer": (s.get("answers") or {}).get(v),
                    "scores": ", ".join(f"{k}={_fmt(x, '.3g')}" for k, x in (scores.get(v) or {}).items()),
                    "explanation": (s.get("judge_explanations") or {}).get(v) or "",
                } for v in variants],
            })
        shown.sort(key=lambda x: not x["regressed"])  # stable: regressions first, otherwise original order
        out.append({"arm": arm, "total": len(samples), "regressed": sum(x["regressed"] for x in shown),
                    "samples": shown[:MAX_SAMPLES_PER_ARM]})
    return out


def _context(results: dict) -> dict[str, Any]:
    """Everything the template and the Markdown need, formatted.

    The results are first put in the form results.json stores (keys sorted, JSON types), so a page
    rendered in the pipeline and one rebuilt from results.json are the same.
    """
    results = json.loads(json.dumps(results, sort_keys=True, default=str))
    experiment = results.get("experiment") or {}
    metrics = list(results.get("metrics") or [])
    status = results.get("metric_status") or {}
    arms = _arms(results)
    rows = sorted(results.get("rows") or [], key=lambda r: (arms.index(r.get("arm")) if r.get("arm") in arms
                                                            else len(arms), _variant_key(r.get("variant") or "")))
    health = []
    for arm in arms:
        h = (results.get("health") or {}).get(arm)
        if h is not None:
            health.append({"arm": arm, "adapter_applied": h.get("adapter_applied"),
                           "identical": _fmt(h.get("identical_to_base")), "judge": h.get("judge"),
                           "others": {label: ", ".join(f"{k}={v}" for k, v in h[key].items())
                                      for key, label in HEALTH_SECTIONS if isinstance(h.get(key), dict)}})
    data = results.get("data") or {}
    return {
        "name": experiment.get("name") or "unnamed",
        "description": experiment.get("description") or "",
        "seed": experiment.get("seed"),
        "schema_version": results.get("schema_version"),
        "bakeoff_version": results.get("bakeoff_version") or "n/a",
        "metrics": metrics,
        "metric_notes": [(m, status[m]) for m in metrics if status.get(m, "ok") != "ok"],
        "metric_definitions": list((results.get("metric_definitions") or {}).items()),
        "summary": _summary(results, metrics, status),
        "rows": [{"arm": _label(results, r.get("arm", "")), "variant": r.get("variant", ""),
                  "model": r.get("model") or "",
                  "cells": [_cell((r.get("metrics") or {}).get(m), status.get(m, "ok")) for m in metrics]}
                 for r in rows],
        "deltas": _deltas(results, arms, metrics),
        "training": _training(results, arms),
        "training_fields": TRAINING_FIELDS,
        "health": health,
        "no_adapter": [h["arm"] for h in health if h["adapter_applied"] is False],
        "data": {k: {name: _fmt(v) for name, v in (data.get(k) or {}).items()}
                 for k in ("rows_read", "dropped", "rows")},
        "unused": _fmt(data.get("unused")),
        "token_count": data.get("token_count") or "",
        "token_lengths": [{"split": split, "part": part, **{k: _fmt(v) for k, v in (pcts or {}).items()}}
                          for split, parts in (data.get("token_lengths") or {}).items()
                          for part, pcts in (parts or {}).items()],
        "leakage": data.get("leakage") or {},
        "arm_differences": [{"setting": d["setting"], "values": [json.dumps(d["values"].get(a)) for a in arms]}
                            for d in results.get("arm_differences") or []],
        "arms": arms,
        **_decision_context(results),
        "samples": _samples(results, arms),
        "versions": results.get("versions") or {},
        "spec_json": json.dumps(experiment.get("spec") or {}, indent=2, default=str),
    }


def _ci_text(ci: Any, spec: str = ".3g") -> str:
    return f"[{ci[0]:{spec}}, {ci[1]:{spec}}]" if isinstance(ci, list) and len(ci) == 2 and None not in ci else "n/a"


def _decision_context(results: dict) -> dict[str, Any]:
    """The decision, the ranking, the replicates and the pairwise table, formatted."""
    decision = results.get("decision") or {}
    ranking = [{"metric": r["metric"], "arm": r["arm"], "mean": _fmt(r.get("mean"), ".3f"),
                "ci": _ci_text(r.get("ci95")),
                "p_best": "n/a" if r.get("p_best") is None else f"{100 * r['p_best']:.0f}%"}
               for r in results.get("ranking") or []]
    replicates = []
    for arm, rep in (results.get("replicates") or {}).items():
        spread = "; ".join(f"{m}: sd {_fmt(c.get('between_replicate_sd'), '.3f')} over {c.get('n_replicates')}"
                           for m, c in (rep.get("metrics") or {}).items())
        for e in rep.get("replicates") or []:
            replicates.append({"arm": arm, "replicate": e["replicate"], "run": e["run"], "seed": e["seed"],
                               "metrics": ", ".join(f"{m} {_fmt(v, '.3f')}" for m, v in (e["metrics"] or {}).items()),
                               "time": _duration(e.get("seconds")), "cost": _usd(e.get("cost_usd")),
                               "val_loss": _fmt(e.get("final_validation_loss"), ".4f")})
        total = rep.get("total") or {}
        replicates.append({"arm": arm, "replicate": "all", "run": "", "seed": "", "metrics": spread,
                           "time": _duration(total.get("seconds")), "cost": _usd(total.get("cost_usd")),
                           "val_loss": ""})
    pairwise = [{"a": p["a"], "b": p["b"], "wins": p["wins"], "losses": p["losses"], "ties": p["ties"],
                 "inconsistent": p["inconsistent"], "failed": p.get("failed", 0),
                 "win_rate": "n/a" if p.get("win_rate") is None else f"{100 * p['win_rate']:.0f}%",
                 "ci": _ci_text([100 * x for x in p["ci95"]] if p.get("ci95") else None, ".0f"), "n": p["n"]}
                for p in results.get("pairwise") or []]
    return {"decision": decision.get("text") or "", "decision_separable": decision.get("separable"),
            "ranking": ranking, "replicates": replicates, "pairwise": pairwise}


def _ranking_svg(results: dict) -> str:
    """Each metric's ranking as an interval chart (mean and 95% interval per arm, p_best in the label)."""
    rows = [r for r in results.get("ranking") or [] if r.get("mean") is not None]
    if not rows:
        return ""
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    plt = _pyplot()
    plt.rcParams["svg.hashsalt"] = "bakeoff"
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 0.6 + 0.5 * len(_arms(results))),
                             squeeze=False)
    try:
        for ax, metric in zip(axes[0], metrics, strict=True):
            mine = [r for r in rows if r["metric"] == metric][::-1]
            ys = range(len(mine))
            lo = [r["mean"] - r["ci95"][0] if r.get("ci95") else 0 for r in mine]
            hi = [r["ci95"][1] - r["mean"] if r.get("ci95") else 0 for r in mine]
            ax.errorbar([r["mean"] for r in mine], list(ys), xerr=[lo, hi], fmt="o", capsize=4, color="C0")
            ax.set_yticks(list(ys), [f"{r['arm'].replace('$', '')} ({100 * (r['p_best'] or 0):.0f}% best)"
                                     for r in mine])
            ax.set_title(metric)
            ax.grid(True, axis="x", alpha=0.3)
        return _svg_text(fig)
    finally:
        plt.close(fig)


def render_html(results: dict) -> str:
    """Render results as one self-contained HTML document (inline CSS and SVG, no external references)."""
    ctx = _context(results)
    from markupsafe import Markup

    ctx["loss_svg"] = Markup(_loss_svg(results, _arms(results)))
    ctx["ranking_svg"] = Markup(_ranking_svg(json.loads(json.dumps(results, sort_keys=True, default=str))))
    return _jinja().get_template("report.html.j2").render(**ctx)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table; cells are HTML-escaped and pipes and newlines are neutralised."""
    def cell(text: Any) -> str:
        return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows] + [""]


def render_markdown(results: dict) -> str:
    """Render the headline content (summary, metrics, training, data, health) as Markdown."""
    c = _context(results)
    out = [f"# bakeoff report: {html.escape(c['name'], quote=False)}", ""]
    out += [f"⚠️ **Adapter probably not applied** for arm `{arm}`: fine-tuned answers equal base answers on every "
            "sample." for arm in c["no_adapter"]] + ([""] if c["no_adapter"] else [])
    out += ["## Decision", "", html.escape(c["decision"] or "No decision.", quote=False), ""]
    if c["ranking"]:
        out += ["## Ranking", ""] + _md_table(["Metric", "Arm", "Mean", "ci95", "P(best)"],
                                              [[r["metric"], r["arm"], r["mean"], r["ci"], r["p_best"]]
                                               for r in c["ranking"]])
    if c["pairwise"]:
        out += ["## Pairwise", ""] + _md_table(
            ["A", "B", "Wins", "Losses", "Ties", "Inconsistent", "Failed", "Win rate", "ci95 (%)", "n"],
            [[p["a"], p["b"], p["wins"], p["losses"], p["ties"], p["inconsistent"], p["failed"], p["win_rate"],
              p["ci"], p["n"]] for p in c["pairwise"]])
    if c["replicates"]:
        out += ["## Replicates", ""] + _md_table(
            ["Arm", "Replicate", "Seed", "Fine-tuned", "Training time", "Cost", "Final validation loss"],
            [[r["arm"], r["replicate"], r["seed"], r["metrics"], r["time"], r["cost"], r["val_loss"]]
             for r in c["replicates"]])
    out += ["## Summary", ""] + _md_table(["Metric", "Best arm (fine-tuned)", "Mean", "ci95", "Lead over runner-up"],
                                          [[s["metric"], s["arm"], s["value"], s["ci"], s["lead"]]
                                           for s in c["summary"]])

    def md_cell(x: dict) -> str:
        raw = f"; {x['raw']}" if x["raw"] else ""
        return f"{x['mean']} {x['ci']} (n={x['n']}, failures={x['failures']}{raw})" if x["ok"] else x["status"]
    out += ["## Metrics", ""] + _md_table(["Arm", "Variant"] + c["metrics"],
                                          [[r["arm"], r["variant"]] + [md_cell(x) for x in r["cells"]]
                                           for r in c["rows"]])
    out += [f"- `{m}`: {html.escape(note, quote=False)}" for m, note in c["metric_notes"]]
    if c["metric_definitions"]:
        out += ["", "How each metric is scored:", ""] + [f"- `{m}`: {html.escape(text, quote=False)}"
                                                         for m, text in c["metric_definitions"]]
    out += ["", "Fine-tuned minus base (paired: mean difference [95% interval], p-value):", ""]
    out += _md_table(["Arm"] + c["metrics"], [[d["arm"]] + d["values"] for d in c["deltas"]])
    out += ["## Training", ""] + _md_table([""] + [t["arm"] for t in c["training"]],
                                           [[label] + [t[k] for t in c["training"]] for k, label in TRAINING_FIELDS])
    out += ["## Data", ""]
    for key, label in (("rows_read", "Source"), ("dropped", "Dropped reason"), ("rows", "Split")):
        out += _md_table([label, "Rows"], [[k, v] for k, v in c["data"][key].items()])
    out += [f"Unused rows: {c['unused']}", "", "## Evaluation health", ""]
    health_rows = []
    for h in c["health"]:
        applied = {True: "yes", False: "NO (adapter probably not applied)"}.get(h["adapter_applied"], "unknown")
        judge = ", ".join(f"{k}={v}" for k, v in h["judge"].items()) if h["judge"] else "judge not configured"
        others = "; ".join(f"{label}: {text}" for label, text in h["others"].items()) or "-"
        health_rows.append([h["arm"], applied, h["identical"], judge, others])
    out += _md_table(["Arm", "Adapter applied", "Identical to base", "Judge", "Other metrics"], health_rows)
    return "\n".join(out).rstrip("\n") + "\n"


def write_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write report.html, report.md and results.json into out_dir; return their paths by kind."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / "report.html", "md": out / "report.md", "results": out / "results.json"}
    paths["html"].write_text(render_html(results), encoding="utf-8")
    paths["md"].write_text(render_markdown(results), encoding="utf-8")
    paths["results"].write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("wrote report to %s", out)
    return paths
