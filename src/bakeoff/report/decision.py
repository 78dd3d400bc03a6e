"""The decision a bake-off exists for: replicates pooled, every arm ranked with its odds, the best arm named.

From the runs' per-sample scores (an arm's replicates are its runs NAME, NAME-r2, ...; see
``ExperimentSpec.arm_runs``) and the pairwise judge's verdicts:

- ``replicates``: per arm with more than one run, each replicate's fine-tuned means, seed, time and cost,
  the between-replicate spread and the totals;
- ``ranking``: per metric (and ``pairwise``), each arm's mean with a 95% interval from a two-level bootstrap
  (replicates, then the shared test samples) and ``p_best``, the share of bootstrap draws in which it ranks
  first (Bradley-Terry strengths from the pairwise verdicts, resampled by sample, for ``pairwise``);
- ``pairwise``: per judged pair, wins / losses / ties (a verdict that flips with the order is a tie and
  counted as inconsistent), the win rate with its Wilson interval;
- ``decision``: on the primary metric (``evaluation.primary``), the best arm, its ``p_best``, its lead over the
  runner-up paired on the same samples with an interval, whether the data separate them and, when they do
  not, how many more test samples or replicates would (a normal-approximation power estimate).

The statistics are bakeoff.ranking's.
"""

from __future__ import annotations

from typing import Any

from bakeoff.ranking import (
    bradley_terry_bootstrap,
    paired_two_level,
    power_estimate,
    rank_arms,
    two_level_bootstrap,
    win_rate,
)
from bakeoff.spec import ExperimentSpec

DRAWS = 2000


def fine_tuned_scores(spec: ExperimentSpec, samples_by_run: dict[str, list[dict]], metric: str,
                      variant: str = "fine-tuned") -> dict[str, dict[str, dict[str, float | None]]]:
    """``{arm: {run: {sample_id: score}}}`` of one metric: every replicate of every arm (a base variant's
    answers come from the arm's first run only: they do not depend on the training seed)."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for arm in spec.arms:
        runs = spec.arm_runs(arm) if variant == "fine-tuned" else [arm.name]
        out[arm.name] = {run: {s["id"]: ((s.get("scores") or {}).get(variant) or {}).get(metric)
                               for s in samples_by_run.get(run, [])} for run in runs}
    return out


def replicate_summaries(spec: ExperimentSpec, trainings: dict[str, dict], summaries: dict[str, dict],
                        metrics: list[str], samples_by_run: dict[str, list[dict]], seed: int) -> dict[str, Any]:
    """Per arm trained more than once: each replicate's figures, the spread and the totals."""
    out = {}
    for arm in spec.arms:
        runs = spec.arm_runs(arm)
        if len(runs) < 2:
            continue
        entries = []
        for i, run in enumerate(runs, start=1):
            t = trainings.get(run) or {}
            cells = ((summaries.get(run) or {}).get("metrics") or {}).get("fine-tuned") or {}
            entries.append({"replicate": i, "run": run, "seed": spec.run_seed(run),
                            "metrics": {m: (cells.get(m) or {}).get("mean") for m in metrics},
                "seconds": t.get("seconds"), "gpu_hours": t.get("gpu_hours"), "cost_usd": t.get("cost_usd"),
                "final_validation_loss": t.get("final_validation_loss")})
        spread = {}
        for metric in metrics:
            scores = fine_tuned_scores(spec, samples_by_run, metric)[arm.name]
            pooled = two_level_bootstrap(scores, draws=DRAWS, seed=seed)
            spread[metric] = {"mean": pooled["mean"], "ci95": pooled["ci95"],
                              "between_replicate_sd": pooled["between_replicate_sd"],
                              "n_replicates": pooled["n_replicates"], "n_samples": pooled["n_samples"]}
        costs = [e["cost_usd"] for e in entries if e["cost_usd"] is not None]
        out[arm.name] = {"replicates": entries, "metrics": spread,
                         "total": {"seconds": round(sum(e["seconds"] or 0 for e in entries), 3),
                                   "gpu_hours": round(sum(e["gpu_hours"] or 0 for e in entries), 6),
                                   "cost_usd": round(sum(costs), 6) if costs else None}}
    return out


def _contestant_arm(name: str) -> str | None:
    arm, _, variant = name.partition("/")
    return arm if variant == "fine-tuned" else None


def pairwise_tables(pairwise: dict | None) -> tuple[list[dict], list[dict] | None]:
    """(one win-rate entry per judged pair, Bradley-Terry rows over arms or None when the pairs rank no arms)."""
    if not pairwise or not pairwise.get("configured"):
        return [], None
    verdicts = [v for v in pairwise.get("verdicts") or [] if v.get("winner") in ("a", "b", "tie")]
    table = []
    for a, b in pairwise.get("pairs") or []:
        mine = [v for v in verdicts if v["a"] == a and v["b"] == b]
        entry = {"a": a, "b": b, "failed": sum(1 for v in pairwise.get("verdicts") or []
                                               if v["a"] == a and v["b"] == b and v.get("winner") is None)}
        if mine:
            rate = win_rate(mine, a=a, b=b)
            entry.update({k: rate[k] for k in ("wins", "losses", "ties", "inconsistent", "win_rate", "ci95", "n")})
        else:
            entry.update(wins=0, losses=0, ties=0, inconsistent=0, win_rate=None, ci95=None, n=0)
        table.append(entry)
    arm_verdicts = [{**v, "a": _contestant_arm(v["a"]), "b": _contestant_arm(v["b"])} for v in verdicts
                    if _contestant_arm(v["a"]) and _contestant_arm(v["b"])]
    arms = sorted({v["a"] for v in arm_verdicts} | {v["b"] for v in arm_verdicts})
    if len(arms) < 2:
        return table, None
    return table, bradley_terry_bootstrap(arm_verdicts, arms, draws=DRAWS // 2, seed=0)


def ranking(spec: ExperimentSpec, metrics: list[str], samples_by_run: dict[str, list[dict]],
            bt_rows: list[dict] | None, seed: int) -> list[dict]:
    """One entry per arm and metric: ``arm``, ``metric``, ``mean``, ``ci95``, ``p_best`` (pairwise: the
    Bradley-Terry strength, which sums to 1 over arms, as ``mean``)."""
    out = []
    for metric in metrics:
        scores = fine_tuned_scores(spec, samples_by_run, metric)
        if not any(v is not None for runs in scores.values() for by_id in runs.values() for v in by_id.values()):
            continue
        for row in rank_arms(scores, draws=DRAWS, seed=seed):
            out.append({"arm": row["arm"], "metric": metric, "mean": row["mean"], "ci95": row["ci95"],
                        "p_best": row["p_best"]})
    for row in bt_rows or []:
        out.append({"arm": row["arm"], "metric": "pairwise", "mean": row["score"], "ci95": row["ci95"],
                    "p_best": row["p_best"]})
    return out


def decide(spec: ExperimentSpec, ranked: list[dict], pairwise_table: list[dict],
           samples_by_run: dict[str, list[dict]], seed: int) -> dict[str, Any]:
    """The best arm on the primary metric, how sure that is, and what would make it surer."""
    metric = spec.evaluation.primary_metric()
    rows = sorted((r for r in ranked if r["metric"] == metric and r["mean"] is not None),
                  key=lambda r: (-(r["p_best"] or 0), -r["mean"]))
    out: dict[str, Any] = {"metric": metric, "best_arm": None, "p_best": None, "mean": None, "ci95": None,
                           "runner_up": None, "lead": None, "separable": None, "power": None}
    if not rows:
        out["text"] = f"No arm was scored on {metric}: no decision."
        return out
    best = rows[0]
    out.update(best_arm=best["arm"], p_best=best["p_best"], mean=best["mean"], ci95=best["ci95"])
    if len(rows) == 1:
        out["text"] = f"{best['arm']} is the only arm scored on {metric}."
        return out
    second = rows[1]
    out["runner_up"] = second["arm"]
    if metric == "pairwise":
        head = next((p for p in pairwise_table if {p["a"], p["b"]} == {f"{best['arm']}/fine-tuned",
                                                                       f"{second['arm']}/fine-tuned"}), None)
        if head and head.get("win_rate") is not None:
            rate, ci = head["win_rate"], head["ci95"]
            if head["a"] != f"{best['arm']}/fine-tuned":
                rate, ci = 1 - rate, [1 - ci[1], 1 - ci[0]]
            out["lead"] = {"win_rate": rate, "ci95": ci, "n": head["n"]}
            out["separable"] = ci[0] > 0.5
    else:
        scores = fine_tuned_scores(spec, samples_by_run, metric)
        lead = paired_two_level(scores[best["arm"]], scores[second["arm"]], draws=DRAWS, seed=seed)
        out["lead"] = {k: lead[k] for k in ("mean", "ci95", "p_value", "n")}
        out["separable"] = lead["ci95"] is not None and (lead["ci95"][0] > 0 or lead["ci95"][1] < 0)
        if not out["separable"] and lead["mean"] is not None and lead.get("sd_samples") is not None:
            n_reps = min(len(scores[best["arm"]]), len(scores[second["arm"]]))
            out["power"] = power_estimate(lead["mean"], lead["sd_samples"], lead["n"],
                                          sd_between=lead.get("sd_between"), n_replicates=n_reps)
    out["text"] = _decision_text(out)
    return out


def _decision_text(d: dict[str, Any]) -> str:
    best, metric, p = d["best_arm"], d["metric"], d["p_best"]
    head = f"{best} is best on {metric} (it ranks first in {100 * p:.0f}% of bootstrap draws)"
    lead = d["lead"]
    if lead is None:
        return head + "."
    if "win_rate" in lead:
        lead_text = (f"it beats {d['runner_up']} in {100 * lead['win_rate']:.0f}% of head-to-head comparisons "
                     f"(95% CI {100 * lead['ci95'][0]:.0f}-{100 * lead['ci95'][1]:.0f}%, n {lead['n']})")
    else:
        ci = lead["ci95"] or [None, None]
        lead_text = (f"its lead over {d['runner_up']} is {lead['mean']:+.3g} (95% CI {ci[0]:+.3g} to {ci[1]:+.3g}, "
                     f"n {lead['n']})") if ci[0] is not None else f"its lead over {d['runner_up']} has no interval"
    if d["separable"]:
        return f"{head}; {lead_text}: the data separate the two."
    tail = f"{head}; {lead_text}: the data cannot separate {best} from {d['runner_up']}"
    power = d.get("power") or {}
    more = []
    if power.get("samples_needed"):
        more.append(f"about {power['samples_needed']} test samples")
    if power.get("replicates_needed"):
        more.append(f"about {power['replicates_needed']} replicates per arm")
    if more:
        return tail + f"; {' or '.join(more)} would (80% power at alpha 0.05, if the lead is real)."
    if power:
        return tail + ("; a lead this small is within both the test-sample and the training-seed noise: more "
                       "test samples and more replicates together would be needed.")
    return tail + "."


def pooled_leads(spec: ExperimentSpec, leads: list[dict], samples_by_run: dict[str, list[dict]],
                 seed: int) -> list[dict]:
    """The summary's leads, with replicates: the best arm's lead over the runner-up paired on the same samples
    across both arms' replicates (two-level), as the decision computes it."""
    if all(len(spec.arm_runs(arm)) == 1 for arm in spec.arms):
        return leads
    out = []
    for entry in leads:
        if entry.get("runner_up"):
            scores = fine_tuned_scores(spec, samples_by_run, entry["metric"])
            lead = paired_two_level(scores[entry["best_arm"]], scores[entry["runner_up"]], draws=DRAWS, seed=seed)
            entry = {**entry, "lead": {k: lead[k] for k in ("mean", "ci95", "p_value", "n")},
                     "significant": lead["p_value"] is not None and lead["p_value"] < 0.05}
        out.append(entry)
    return out


__all__ = ["decide", "fine_tuned_scores", "pairwise_tables", "pooled_leads", "ranking", "replicate_summaries"]
