"""Deciding between arms: two-level bootstrap intervals (training-seed replicates, then test samples), paired
differences, the probability that each arm is best, Bradley-Terry rankings of pairwise verdicts, win rates and
a power estimate.

Conventions (those of ``bakeoff.stats``): results are plain dicts, intervals are ``ci95: [lo, hi]`` from the
2.5th and 97.5th percentiles of the bootstrap draws (linear interpolation, as numpy's default), every random
choice comes from one ``random.Random(seed)``, so the same inputs and seed give the same result. Sample ids and
replicate and arm names are sorted before drawing, so the order of the input dicts does not matter.

Scores come as ``scores[replicate][sample_id] -> float | None``; ``None`` is a sample that was not scored (a
failed judge call, say): it is skipped, never counted as 0. The test set is the same for every replicate and
arm, so each bootstrap draw resamples the sample ids once and applies the same ids to every replicate (and, when
arms are compared, to every arm); replicates are resampled on their own, per arm, since replicate "seed 1" of
one arm has nothing to do with "seed 1" of another. A replicate's mean is over its scored samples among the
drawn ids, and an arm's mean is the plain mean of its replicates' means (every replicate weighs the same).

Pure standard library: a draw costs about one pass over the test samples per replicate, so ranking 5 arms of 3
replicates each on 3,000 samples (2,000 draws) takes about 3 seconds on one core, and a Bradley-Terry bootstrap
of 5 arms, every pair judged on 3,000 samples (1,000 draws), about as long.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

Scores = Mapping[str, Mapping[str, "float | None"]]
# One replicate aligned to a list of sample ids: its values (0.0 where not scored) and its mask (1 scored,
# 0 not), or None for the mask when every id is scored.
_Replicate = tuple[list[float], "list[int] | None"]

TIE_TOLERANCE = 1e-12  # means closer than this (relative) tie for best
BT_TIE_TOLERANCE = 1e-8  # Bradley-Terry scores (summing to 1, fitted to tol 1e-10) closer than this tie
WINNERS = ("a", "b", "tie")


# --------------------------------------------------------------------------------------------------------------
# Shared pieces


def _percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th quantile (0..1) of sorted values, interpolating linearly between order statistics."""
    h = (len(ordered) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


def _ci95(draws: Iterable[float]) -> list[float] | None:
    ordered = sorted(draws)
    if not ordered:
        return None
    return [_percentile(ordered, 0.025), _percentile(ordered, 0.975)]


def _check_scores(scores: Scores, what: str) -> None:
    for rep, by_sample in scores.items():
        for sample, value in by_sample.items():
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ValueError(f"{what}[{rep!r}][{sample!r}]: score {value!r} is not a finite number or None")


def _scored_ids(scores: Scores) -> set[str]:
    """Sample ids scored in at least one replicate."""
    return {sample for by_sample in scores.values() for sample, value in by_sample.items() if value is not None}


def _align(scores: Scores, ids: Sequence[str]) -> tuple[list[_Replicate], dict[str, float | None]]:
    """The replicates that score at least one of ids, aligned to ids, and every replicate's mean over ids."""
    aligned: list[_Replicate] = []
    means: dict[str, float | None] = {}
    for rep in sorted(scores):
        by_sample = scores[rep]
        raw = [by_sample.get(sample) for sample in ids]
        values = [0.0 if value is None else float(value) for value in raw]
        mask = None if all(value is not None for value in raw) else [int(value is not None) for value in raw]
        count = len(ids) if mask is None else sum(mask)
        means[rep] = math.fsum(values) / count if count else None
        if count:
            aligned.append((values, mask))
    return aligned, means


def _replicate_mean(replicate: _Replicate, idx: Sequence[int]) -> float | None:
    values, mask = replicate
    count = len(idx) if mask is None else sum(map(mask.__getitem__, idx))
    return sum(map(values.__getitem__, idx)) / count if count else None


def _draw_mean(replicates: Sequence[_Replicate], idx: Sequence[int], rng: random.Random) -> float | None:
    """One draw of an arm's mean: replicates resampled with replacement, each on the drawn sample ids."""
    chosen = [0] if len(replicates) == 1 else rng.choices(range(len(replicates)), k=len(replicates))
    cache: dict[int, float | None] = {}
    means = []
    for r in chosen:
        if r not in cache:
            cache[r] = _replicate_mean(replicates[r], idx)
        if cache[r] is not None:
            means.append(cache[r])
    return sum(means) / len(means) if means else None


def _draw_ids(rng: random.Random, n: int) -> list[int]:
    return rng.choices(range(n), k=n)


def _best_shares(values: Sequence[float | None], higher_is_better: bool, tolerance: float) -> list[float]:
    """1 for the single best value, 1/k each when k values tie for best, 0 for the rest (None never wins)."""
    present = [v for v in values if v is not None]
    if not present:
        return [0.0] * len(values)
    best = max(present) if higher_is_better else min(present)
    slack = tolerance * max(1.0, abs(best))
    winners = [v is not None and abs(v - best) <= slack for v in values]
    share = 1.0 / sum(winners)
    return [share if won else 0.0 for won in winners]


def _arm_point(replicate_means: Mapping[str, float | None]) -> tuple[float, float | None]:
    """(mean of the replicate means, their sample sd or None with fewer than two), Nones skipped.

    Raises ValueError when no replicate has a mean.
    """
    present = [m for m in replicate_means.values() if m is not None]
    if not present:
        raise ValueError("no replicate has a score")
    return sum(present) / len(present), (statistics.stdev(present) if len(present) > 1 else None)


# --------------------------------------------------------------------------------------------------------------
# Means, differences and the probability of being best


def two_level_bootstrap(scores: Scores, *, draws: int = 2000, seed: int = 0) -> dict:
    """One arm's mean over its replicates with a 95% two-level bootstrap interval (replicates, then samples).

    ``scores[replicate][sample_id]`` is a score or None (not scored: skipped). Each draw resamples the replicates
    with replacement, then the sample ids once, applied to every drawn replicate. Returns ``{"mean", "ci95",
    "n_samples", "n_replicates", "between_replicate_sd", "replicate_means"}``: ``mean`` is the mean of the
    replicate means; ``n_samples`` counts the ids scored in at least one replicate and ``n_replicates`` the
    replicates with at least one score; ``between_replicate_sd`` is the sample standard deviation (n - 1) of
    those replicates' means (None with fewer than two); ``replicate_means`` has every replicate, None for one
    with no score. With one replicate this is the ordinary percentile bootstrap of the sample mean.
    """
    _check_scores(scores, "scores")
    ids = sorted(_scored_ids(scores))
    replicates, replicate_means = _align(scores, ids)
    result = {"mean": None, "ci95": None, "n_samples": len(ids), "n_replicates": len(replicates),
              "between_replicate_sd": None, "replicate_means": replicate_means}
    if not replicates:
        return result
    result["mean"], result["between_replicate_sd"] = _arm_point(replicate_means)
    rng = random.Random(seed)
    means = []
    for _ in range(draws):
        mean = _draw_mean(replicates, _draw_ids(rng, len(ids)), rng)
        if mean is not None:
            means.append(mean)
    result["ci95"] = _ci95(means)
    return result


def _per_sample_means(replicates: Sequence[_Replicate], n: int) -> list[float | None]:
    """Each sample's score averaged over the replicates that scored it."""
    out: list[float | None] = []
    for i in range(n):
        got = [values[i] for values, mask in replicates if mask is None or mask[i]]
        out.append(sum(got) / len(got) if got else None)
    return out


def _paired_spread(reps_a: Sequence[_Replicate], reps_b: Sequence[_Replicate], n: int,
                   sds: Sequence[float | None]) -> tuple[float | None, float | None]:
    """(sd of the per-sample differences, the arms' between-replicate sd pooled as sqrt(mean of variances))."""
    a, b = _per_sample_means(reps_a, n), _per_sample_means(reps_b, n)
    diffs = [x - y for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    sd_samples = statistics.stdev(diffs) if len(diffs) > 1 else None
    known = [sd for sd in sds if sd is not None]
    sd_between = math.sqrt(sum(sd * sd for sd in known) / len(known)) if known else None
    return sd_samples, sd_between


def _two_sided_p(diffs: Sequence[float]) -> float:
    """Twice the smaller share of draws on either side of 0 (add-one corrected, at most 1): the smallest alpha
    at which the equal-tailed percentile interval excludes 0."""
    below = sum(1 for d in diffs if d <= 0)
    above = sum(1 for d in diffs if d >= 0)
    return min(1.0, 2 * (1 + min(below, above)) / (len(diffs) + 1))


def paired_two_level(a: Scores, b: Scores, *, draws: int = 2000, seed: int = 0) -> dict:
    """Mean difference ``a - b`` between two arms on the same test samples, two-level bootstrap interval, p-value.

    Both arms' scores have two_level_bootstrap's shape; their replicates may differ in number. Only the sample
    ids scored by both arms (in at least one replicate each) are compared, so ``mean`` can differ from the
    difference of the two arms' own means when their coverage differs. Each draw resamples those ids once for
    both arms and each arm's replicates on its own. Returns ``{"mean", "ci95", "p_value", "n",
    "n_replicates_a", "n_replicates_b", "sd_samples", "sd_between"}``: ``p_value`` is two-sided, twice the
    smaller share of draws on either side of 0 (add-one corrected, so never below 2 / (draws + 1), and at most
    1), ``n`` counts the paired ids, ``sd_samples`` is the sd of the per-sample differences (each
    arm's score averaged over its replicates) and ``sd_between`` the arms' between-replicate sds pooled (None
    when neither arm has two replicates): the inputs ``power_estimate`` takes.
    """
    _check_scores(a, "a")
    _check_scores(b, "b")
    ids = sorted(_scored_ids(a) & _scored_ids(b))
    reps_a, means_a = _align(a, ids)
    reps_b, means_b = _align(b, ids)
    result = {"mean": None, "ci95": None, "p_value": None, "n": len(ids), "n_replicates_a": len(reps_a),
              "n_replicates_b": len(reps_b), "sd_samples": None, "sd_between": None}
    if not ids:
        return result
    arm_a, arm_b = (_arm_point(means) for means in (means_a, means_b))
    result["mean"] = arm_a[0] - arm_b[0]
    result["sd_samples"], result["sd_between"] = _paired_spread(reps_a, reps_b, len(ids), (arm_a[1], arm_b[1]))
    rng = random.Random(seed)
    diffs = []
    for _ in range(draws):
        idx = _draw_ids(rng, len(ids))
        mean_a, mean_b = _draw_mean(reps_a, idx, rng), _draw_mean(reps_b, idx, rng)
        if mean_a is not None and mean_b is not None:
            diffs.append(mean_a - mean_b)
    if diffs:
        result["ci95"], result["p_value"] = _ci95(diffs), _two_sided_p(diffs)
    return result


def rank_arms(scores_by_arm: Mapping[str, Scores], *, draws: int = 2000, seed: int = 0,
              higher_is_better: bool = True) -> list[dict]:
    """Each arm's mean, 95% interval and probability of being best, best first.

    ``scores_by_arm[arm]`` has two_level_bootstrap's shape. Each draw resamples the sample ids once (the union
    of the ids any arm scored) for every arm, and each arm's replicates on its own; ``p_best`` is the share of
    draws in which the arm's mean is the best (highest, or lowest with ``higher_is_better=False``), ties
    (within 1e-12 relative) split equally, so it sums to 1 over the arms that have scores. ``ci95`` comes
    from the same draws. Returns ``[{"arm", "mean", "ci95", "p_best"}]`` sorted by mean, best first (ties by
    p_best, then name); an arm with no score at all has None in each field and comes last.
    """
    arms = sorted(scores_by_arm)
    for arm in arms:
        _check_scores(scores_by_arm[arm], f"scores_by_arm[{arm!r}]")
    ids = sorted(set().union(*(_scored_ids(scores_by_arm[arm]) for arm in arms)))
    aligned = {arm: _align(scores_by_arm[arm], ids) for arm in arms}
    scored = [arm for arm in arms if aligned[arm][0]]
    rng = random.Random(seed)
    wins = dict.fromkeys(scored, 0.0)
    draws_by_arm: dict[str, list[float]] = {arm: [] for arm in scored}
    for _ in range(draws if scored else 0):
        idx = _draw_ids(rng, len(ids))
        means = [_draw_mean(aligned[arm][0], idx, rng) for arm in scored]
        shares = _best_shares(means, higher_is_better, TIE_TOLERANCE)
        for arm, mean, share in zip(scored, means, shares, strict=True):
            wins[arm] += share
            if mean is not None:
                draws_by_arm[arm].append(mean)
    counted = sum(wins.values())
    rows = [{"arm": arm, "mean": _arm_point(aligned[arm][1])[0], "ci95": _ci95(draws_by_arm[arm]),
             "p_best": wins[arm] / counted if counted else None} for arm in scored]
    sign = -1.0 if higher_is_better else 1.0
    rows.sort(key=lambda row: (sign * row["mean"], -(row["p_best"] or 0.0), row["arm"]))
    missing = [{"arm": arm, "mean": None, "ci95": None, "p_best": None} for arm in arms if arm not in scored]
    return rows + missing


# --------------------------------------------------------------------------------------------------------------
# Pairwise verdicts: Bradley-Terry and win rates


def _win_matrix(wins: Mapping[tuple[str, str], float], arms: Sequence[str]) -> list[list[float]]:
    index = {arm: i for i, arm in enumerate(arms)}
    if len(index) != len(arms):
        raise ValueError(f"arms has duplicates: {list(arms)}")
    matrix = [[0.0] * len(arms) for _ in arms]
    for (a, b), count in wins.items():
        if a not in index or b not in index:
            raise ValueError(f"wins[({a!r}, {b!r})]: {a if a not in index else b!r} is not in arms {list(arms)}")
        if a == b:
            raise ValueError(f"wins[({a!r}, {b!r})]: an arm cannot play itself")
        if not (math.isfinite(count) and count >= 0):
            raise ValueError(f"wins[({a!r}, {b!r})]: {count!r} is not a finite count >= 0")
        matrix[index[a]][index[b]] += float(count)
    return matrix


def _fit_bt(matrix: Sequence[Sequence[float]], prior: float, iterations: int, tol: float,
            start: Sequence[float] | None = None) -> list[float]:
    """Hunter's MM iteration on a win matrix (matrix[i][j]: i's wins over j), scores normalised to sum 1."""
    k = len(matrix)
    w = [sum(row) + prior * (k - 1) for row in matrix]
    games = [[matrix[i][j] + matrix[j][i] + 2 * prior if i != j else 0.0 for j in range(k)] for i in range(k)]
    p = list(start) if start is not None else [1.0 / k] * k
    for _ in range(iterations):
        new = []
        for i in range(k):
            denom = sum(games[i][j] / (p[i] + p[j]) for j in range(k) if games[i][j] > 0 and p[i] + p[j] > 0)
            new.append(w[i] / denom if denom > 0 else p[i])  # an arm never compared keeps its start
        total = sum(new)
        new = [x / total for x in new] if total > 0 else p
        change = max(abs(x - y) for x, y in zip(new, p, strict=True))
        p = new
        if change < tol:
            break
    return p


def bradley_terry(wins: Mapping[tuple[str, str], float], arms: Sequence[str], *, iterations: int = 1000,
                  tol: float = 1e-10, prior: float = 0.5) -> dict[str, float]:
    """Bradley-Terry strengths of arms from a win table, fitted by Hunter's (2004) MM algorithm.

    ``wins[(a, b)]`` is a's wins over b (a tie: the caller adds 0.5 to each side). Returns ``{arm: score}``
    with the scores summing to 1, so that ``score[a] / (score[a] + score[b])`` is the model's probability that
    a beats b. ``prior`` adds that many virtual wins to each side of every pair of arms (0.5: one virtual tie
    per pair, compared or not), which keeps the scores of an arm that never wins above 0 and ties disconnected
    groups of arms together (shrinking them toward each other); ``prior=0`` gives the plain maximum-likelihood
    fit (an arm that never wins scores 0; the scale between disconnected groups is then arbitrary, kept from the
    uniform start, and an arm never compared keeps its start). Stops when no score moves by more than ``tol``.
    """
    if prior < 0:
        raise ValueError(f"prior {prior!r} must be >= 0")
    if not arms:
        return {}
    scores = _fit_bt(_win_matrix(wins, arms), prior, iterations, tol)
    return dict(zip(arms, scores, strict=True))


def _check_verdict(record: Mapping, arms: Sequence[str]) -> None:
    for key in ("a", "b", "sample", "winner"):
        if key not in record:
            raise ValueError(f"verdict {dict(record)!r}: no {key!r}")
    if record["winner"] not in WINNERS:
        raise ValueError(f"verdict {dict(record)!r}: winner must be one of {WINNERS}")
    if record.get("inconsistent") and record["winner"] != "tie":
        raise ValueError(f"verdict {dict(record)!r}: a position-inconsistent verdict must be a tie")
    for key in ("a", "b"):
        if record[key] not in arms:
            raise ValueError(f"verdict {dict(record)!r}: {record[key]!r} is not in arms {list(arms)}")


def wins_from_verdicts(verdicts: Iterable[Mapping]) -> dict[tuple[str, str], float]:
    """The win table of verdict records: 1 to the winner's ``(winner, loser)`` entry, 0.5 each way for a tie."""
    table: dict[tuple[str, str], float] = {}
    for record in verdicts:
        a, b, winner = record["a"], record["b"], record["winner"]
        for key, share in (((a, b), {"a": 1.0, "tie": 0.5}.get(winner, 0.0)),
                           ((b, a), {"b": 1.0, "tie": 0.5}.get(winner, 0.0))):
            table[key] = table.get(key, 0.0) + share
    return table


def _sample_patterns(verdicts: Sequence[Mapping], arms: Sequence[str]) -> tuple[list[int], list[list[tuple]]]:
    """Each sample id's pattern number (ids sorted) and each pattern's win entries ``(i, j, wins of i over j)``.

    Samples whose verdicts contribute the same wins share a pattern, so a draw only counts its patterns.
    """
    index = {arm: i for i, arm in enumerate(arms)}
    by_sample: dict[str, list[Mapping]] = {}
    for record in verdicts:
        by_sample.setdefault(record["sample"], []).append(record)
    patterns: dict[tuple, int] = {}
    of_sample = []
    for sample in sorted(by_sample, key=str):
        table = wins_from_verdicts(by_sample[sample])
        entries = tuple(sorted((index[a], index[b], count) for (a, b), count in table.items() if count))
        of_sample.append(patterns.setdefault(entries, len(patterns)))
    return of_sample, [list(entries) for entries in patterns]


def bradley_terry_bootstrap(verdicts: Sequence[Mapping], arms: Sequence[str], *, draws: int = 1000, seed: int = 0,
                            prior: float = 0.5) -> list[dict]:
    """Bradley-Terry scores of arms from pairwise verdicts, with 95% intervals and the probability of being best.

    ``verdicts``: one record per compared sample and pair, ``{"a", "b", "sample", "winner": "a"|"b"|"tie"}``
    (a position-inconsistent verdict is a tie). Each draw resamples the sample ids with replacement (a drawn id
    brings every record of that sample, all pairs) and refits (bradley_terry, same ``prior``, started from the
    full fit). Returns ``[{"arm", "score", "ci95", "p_best"}]`` sorted by score, best first: ``score`` is the
    fit on all verdicts (summing to 1), ``p_best`` the share of draws in which the arm scores highest (ties
    within 1e-8 split equally), so it sums to 1; ``ci95`` and ``p_best`` are None without verdicts.
    """
    arms = list(arms)
    for record in verdicts:
        _check_verdict(record, arms)
    full = bradley_terry(wins_from_verdicts(verdicts), arms, prior=prior)
    of_sample, patterns = _sample_patterns(verdicts, arms)
    start = [full[arm] for arm in arms]
    rng = random.Random(seed)
    fitted: list[list[float]] = []
    best = [0.0] * len(arms)
    for _ in range(draws if of_sample else 0):
        matrix = [[0.0] * len(arms) for _ in arms]
        for pattern, times in Counter(map(of_sample.__getitem__, _draw_ids(rng, len(of_sample)))).items():
            for i, j, count in patterns[pattern]:
                matrix[i][j] += times * count
        scores = _fit_bt(matrix, prior, 1000, 1e-10, start)
        fitted.append(scores)
        best = [x + y for x, y in zip(best, _best_shares(scores, True, BT_TIE_TOLERANCE), strict=True)]
    rows = [{"arm": arm, "score": full[arm], "ci95": _ci95(draw[i] for draw in fitted),
             "p_best": best[i] / len(fitted) if fitted else None} for i, arm in enumerate(arms)]
    return sorted(rows, key=lambda row: (-row["score"], row["arm"]))


def _wilson(successes: float, n: int, z: float) -> list[float]:
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [max(0.0, centre - half), min(1.0, centre + half)]


def win_rate(verdicts: Sequence[Mapping], *, a: str | None = None, b: str | None = None) -> dict:
    """Wins, losses and ties of arm ``a`` against arm ``b`` over one pair's verdict records.

    Records may name the pair either way round; ``a`` defaults to the first record's ``"a"``. Returns ``{"a",
    "b", "wins", "losses", "ties", "inconsistent", "win_rate", "ci95", "n"}``: ``inconsistent`` counts records
    whose ``"inconsistent"`` is true (already ties), ``win_rate`` is ``(wins + ties / 2) / n`` and ``ci95`` its
    Wilson score interval (no seed; with ties it is conservative, since a tie varies less than a coin flip);
    ``win_rate`` and ``ci95`` are None when there are no records.
    """
    if verdicts:
        first = verdicts[0]
        if a is None:
            a = first["b"] if first["a"] == b else first["a"]
        if b is None:
            b = first["b"] if first["a"] == a else first["a"]
    counts = {"wins": 0, "losses": 0, "ties": 0, "inconsistent": 0}
    for record in verdicts:
        _check_verdict(record, (a, b))
        if {record["a"], record["b"]} != {a, b}:
            raise ValueError(f"verdict {dict(record)!r}: not the pair ({a!r}, {b!r})")
        winner = record["winner"]
        if winner == "tie":
            counts["ties"] += 1
        else:
            counts["wins" if record[winner] == a else "losses"] += 1
        counts["inconsistent"] += bool(record.get("inconsistent"))
    n = len(verdicts)
    rate = (counts["wins"] + counts["ties"] / 2) / n if n else None
    ci = _wilson(counts["wins"] + counts["ties"] / 2, n, statistics.NormalDist().inv_cdf(0.975)) if n else None
    return {"a": a, "b": b, **counts, "win_rate": rate, "ci95": ci, "n": n}


# --------------------------------------------------------------------------------------------------------------
# How much more data would separate two arms


POWER_FORMULA = (
    "normal approximation, two-sided: separable when |diff| >= (z[1-alpha/2] + z[power]) * sqrt(sd_samples^2 / n"
    " + 2 * sd_between^2 / r); samples_needed = ceil(Z^2 * sd_samples^2 / (diff^2 - Z^2 * 2 * sd_between^2 / r))"
    " at the given r; replicates_needed = ceil(Z^2 * 2 * sd_between^2 / (diff^2 - Z^2 * sd_samples^2 / n)) at"
    " the given n; Z = z[1-alpha/2] + z[power]"
)


def power_estimate(diff_mean: float, sd_samples: float, n_samples: int, sd_between: float | None = None,
                   n_replicates: int = 1, alpha: float = 0.05, power: float = 0.8) -> dict:
    """How many test samples, or replicates per arm, would separate a difference of ``diff_mean`` (normal approx.).

    ``sd_samples`` is the sd of the per-sample differences between the two arms (paired_two_level's
    ``sd_samples``); ``sd_between`` the between-replicate sd of one arm's mean (pooled over the two arms:
    paired_two_level's ``sd_between``), each arm training ``n_replicates`` replicates, so the difference carries
    ``2 * sd_between^2 / n_replicates`` of replicate variance. ``samples_needed`` holds the replicates at
    ``n_replicates``; ``replicates_needed`` (only when ``sd_between`` is given) holds the samples at
    ``n_samples``. Returns ``{"samples_needed", "replicates_needed", "formula", "reason"}``: a figure is None
    when no amount of that resource can separate the difference (a 0 difference, or the other source's noise
    alone hides it), and ``reason`` then says why in a sentence (None when both figures are given).
    """
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha {alpha!r} and power {power!r} must both lie strictly between 0 and 1")
    if sd_samples < 0 or (sd_between is not None and sd_between < 0) or n_samples < 1 or n_replicates < 1:
        raise ValueError("sds must be >= 0, n_samples and n_replicates >= 1")
    z = statistics.NormalDist().inv_cdf(1 - alpha / 2) + statistics.NormalDist().inv_cdf(power)
    result = {"samples_needed": None, "replicates_needed": None, "formula": POWER_FORMULA, "reason": None}
    target = diff_mean * diff_mean / (z * z)  # the largest variance of the difference that still separates it
    if not math.isfinite(diff_mean) or target == 0:
        result["reason"] = f"the difference is {diff_mean!r}: no number of samples or replicates separates it"
        return result
    replicate_var = 0.0 if sd_between is None else 2 * sd_between**2 / n_replicates
    sample_var = sd_samples**2 / n_samples
    reasons = []
    if replicate_var < target:
        result["samples_needed"] = max(1, math.ceil(sd_samples**2 / (target - replicate_var)))
    else:
        reasons.append(f"with {n_replicates} replicate(s) per arm the between-replicate spread alone hides a"
                       f" difference of {diff_mean:g}: no number of test samples separates it; train more replicates")
    if sd_between is not None and sample_var < target:
        result["replicates_needed"] = max(1, math.ceil(2 * sd_between**2 / (target - sample_var)))
    elif sd_between is not None:
        reasons.append(f"with {n_samples} test samples the sample noise alone hides a difference of {diff_mean:g}:"
                       " no number of replicates separates it; add test samples")
    else:
        reasons.append("no between-replicate spread given (one replicate): replicates_needed is not estimated")
    result["reason"] = " ".join(reasons) or None
    return result
