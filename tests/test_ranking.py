"""The decision statistics: two-level bootstrap, paired differences, p_best, Bradley-Terry, win rates, power."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from bakeoff.ranking import (
    bradley_terry,
    bradley_terry_bootstrap,
    paired_two_level,
    power_estimate,
    rank_arms,
    two_level_bootstrap,
    win_rate,
    wins_from_verdicts,
)
from bakeoff.stats import mean_ci95

DRAWS = 400


def binary(n: int, hits: int, prefix: str = "s") -> dict[str, float]:
    """n samples s000..., the first `hits` scoring 1, the rest 0."""
    return {f"{prefix}{i:03d}": float(i < hits) for i in range(n)}


def percentile(ordered: list[float], q: float) -> float:
    h = (len(ordered) - 1) * q
    lo = math.floor(h)
    return ordered[lo] + (h - lo) * (ordered[min(lo + 1, len(ordered) - 1)] - ordered[lo])


# --------------------------------------------------------------------------------------------------------------
# two_level_bootstrap


def test_one_replicate_is_the_ordinary_sample_bootstrap():
    values = {f"s{i:02d}": float((i * 7) % 5) for i in range(60)}
    got = two_level_bootstrap({"seed0": values}, draws=DRAWS, seed=3)

    # The ordinary percentile bootstrap of the mean, written out: ids sorted, one seeded stream.
    ordered = [values[k] for k in sorted(values)]
    rng = random.Random(3)
    means = sorted(sum(ordered[i] for i in rng.choices(range(60), k=60)) / 60 for _ in range(DRAWS))
    assert got["mean"] == pytest.approx(statistics.mean(ordered))
    assert got["ci95"] == pytest.approx([percentile(means, 0.025), percentile(means, 0.975)])
    assert got["n_samples"] == 60 and got["n_replicates"] == 1 and got["between_replicate_sd"] is None
    assert got["replicate_means"] == {"seed0": pytest.approx(got["mean"])}

    # and it agrees with stats.mean_ci95 (numpy's stream) up to bootstrap noise
    mean, ci = mean_ci95(ordered)
    assert got["mean"] == pytest.approx(mean)
    assert got["ci95"] == pytest.approx(ci, abs=0.1)


def test_between_replicate_sd_is_the_sd_of_the_replicate_means():
    scores = {"r0": binary(40, 10), "r1": binary(40, 20), "r2": binary(40, 30), "r3": {"s000": None}}
    got = two_level_bootstrap(scores, draws=DRAWS)
    assert got["replicate_means"] == {"r0": 0.25, "r1": 0.5, "r2": 0.75, "r3": None}  # r3 never scored: shown
    assert got["n_replicates"] == 3 and got["n_samples"] == 40
    assert got["mean"] == pytest.approx(0.5)
    assert got["between_replicate_sd"] == pytest.approx(statistics.stdev([0.25, 0.5, 0.75]))
    assert got["ci95"][0] < 0.5 < got["ci95"][1]


def test_unscored_samples_are_skipped_not_zero():
    got = two_level_bootstrap({"r0": {"a": 1.0, "b": None, "c": 1.0}}, draws=50)
    assert got["mean"] == 1.0 and got["ci95"] == [1.0, 1.0] and got["n_samples"] == 2
    empty = two_level_bootstrap({"r0": {"a": None}}, draws=50)
    assert empty["mean"] is None and empty["ci95"] is None and empty["n_replicates"] == 0
    with pytest.raises(ValueError, match="not a finite number"):
        two_level_bootstrap({"r0": {"a": float("nan")}})


def test_replicate_spread_widens_the_interval():
    same = {f"r{k}": binary(100, 50) for k in range(3)}
    spread = {"r0": binary(100, 35), "r1": binary(100, 50), "r2": binary(100, 65)}
    narrow, wide = two_level_bootstrap(same, draws=DRAWS), two_level_bootstrap(spread, draws=DRAWS)
    assert narrow["mean"] == pytest.approx(wide["mean"]) == pytest.approx(0.5)
    assert wide["ci95"][1] - wide["ci95"][0] > narrow["ci95"][1] - narrow["ci95"][0]


def test_deterministic_under_a_seed_and_independent_of_input_order():
    scores = {"r1": binary(30, 12), "r0": binary(30, 18)}
    reordered = {"r0": dict(reversed(list(scores["r0"].items()))), "r1": scores["r1"]}
    first = two_level_bootstrap(scores, draws=DRAWS, seed=7)
    assert two_level_bootstrap(scores, draws=DRAWS, seed=7) == first
    assert two_level_bootstrap(reordered, draws=DRAWS, seed=7) == first
    assert two_level_bootstrap(scores, draws=DRAWS, seed=8)["ci95"] != first["ci95"]


# --------------------------------------------------------------------------------------------------------------
# paired_two_level


def test_paired_difference_on_the_same_samples():
    b = {"r0": {f"s{i}": float(i % 7) for i in range(50)}}
    a = {"r0": {k: v + 0.5 for k, v in b["r0"].items()}, "r1": {k: v + 0.5 for k, v in b["r0"].items()}}
    d = paired_two_level(a, b, draws=DRAWS)
    assert d["mean"] == pytest.approx(0.5) and d["ci95"] == [pytest.approx(0.5), pytest.approx(0.5)]
    assert d["p_value"] == pytest.approx(2 / (DRAWS + 1))  # no draw on the other side of 0
    assert d["n"] == 50 and d["n_replicates_a"] == 2 and d["n_replicates_b"] == 1
    assert d["sd_samples"] == pytest.approx(0.0, abs=1e-12) and d["sd_between"] == pytest.approx(0.0)
    assert paired_two_level(a, b, draws=DRAWS) == d


def test_paired_identical_arms_and_unshared_samples():
    a = {"r0": binary(40, 20)}
    same = paired_two_level(a, a, draws=DRAWS)
    assert same["mean"] == 0 and same["p_value"] == 1.0
    only_a = {"r0": {**binary(40, 20), "extra": 1.0}}
    assert paired_two_level(only_a, a, draws=DRAWS)["n"] == 40  # "extra" has no partner
    assert paired_two_level({"r0": {"x": 1.0}}, {"r0": {"y": 1.0}})["mean"] is None


def test_clear_paired_gain_is_significant():
    a = {f"r{k}": binary(100, 70 + k) for k in range(3)}
    b = {f"r{k}": binary(100, 30 + k) for k in range(2)}
    d = paired_two_level(a, b, draws=DRAWS)
    assert d["mean"] == pytest.approx(0.71 - 0.305)
    assert 0.2 < d["ci95"][0] < d["mean"] < d["ci95"][1] and d["p_value"] < 0.01


# --------------------------------------------------------------------------------------------------------------
# rank_arms


def test_p_best_sums_to_one_and_a_dominant_arm_is_best():
    arms = {
        "strong": {"r0": binary(100, 80), "r1": binary(100, 78)},
        "mid": {"r0": binary(100, 50)},
        "weak": {"r0": binary(100, 20), "r1": binary(100, 22), "r2": binary(100, 18)},
    }
    ranking = rank_arms(arms, draws=DRAWS)
    assert [row["arm"] for row in ranking] == ["strong", "mid", "weak"]
    assert sum(row["p_best"] for row in ranking) == pytest.approx(1.0)
    assert ranking[0]["p_best"] > 0.99
    assert ranking[0]["mean"] == pytest.approx(0.79) and ranking[0]["ci95"][0] < 0.79 < ranking[0]["ci95"][1]
    assert set(ranking[0]) == {"arm", "mean", "ci95", "p_best"}
    assert rank_arms(arms, draws=DRAWS) == ranking

    lowest = rank_arms(arms, draws=DRAWS, higher_is_better=False)
    assert lowest[0]["arm"] == "weak" and lowest[0]["p_best"] > 0.99


def test_ties_split_p_best_equally():
    scores = {"r0": binary(30, 15)}
    ranking = rank_arms({"x": scores, "y": scores, "z": {"r0": binary(30, 0)}}, draws=DRAWS)
    assert {row["arm"]: row["p_best"] for row in ranking} == {"x": 0.5, "y": 0.5, "z": 0.0}


def test_close_arms_share_p_best_and_unscored_arm_comes_last():
    ranking = rank_arms({"a": {"r0": binary(50, 26)}, "b": {"r0": binary(50, 25, prefix="s")},
                         "none": {"r0": {"s000": None}}}, draws=DRAWS)
    assert ranking[-1] == {"arm": "none", "mean": None, "ci95": None, "p_best": None}
    assert 0.2 < ranking[0]["p_best"] < 0.9 and ranking[0]["p_best"] + ranking[1]["p_best"] == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------------------------
# Bradley-Terry


def table_from(strengths: dict[str, float], pairs: list[tuple[str, str]], games: float) -> dict:
    """The expected win table of `games` games per pair under Bradley-Terry with these strengths."""
    wins = {}
    for a, b in pairs:
        p = strengths[a] / (strengths[a] + strengths[b])
        wins[(a, b)], wins[(b, a)] = games * p, games * (1 - p)
    return wins


def test_mm_recovers_known_strengths():
    truth = {"x": 0.5, "y": 0.3, "z": 0.2}
    wins = table_from(truth, [("x", "y"), ("x", "z"), ("y", "z")], 100)
    fitted = bradley_terry(wins, list(truth), prior=0)
    assert fitted == {arm: pytest.approx(s, abs=1e-6) for arm, s in truth.items()}
    assert sum(fitted.values()) == pytest.approx(1.0)

    # each arm against one reference only (a star, not every pair), unequal numbers of games
    star = {"ref": 0.1, "a": 0.4, "b": 0.3, "c": 0.2}
    wins = {**table_from(star, [("a", "ref")], 60), **table_from(star, [("b", "ref")], 200),
            **table_from(star, [("ref", "c")], 35)}
    assert bradley_terry(wins, list(star), prior=0) == {arm: pytest.approx(s, abs=1e-6) for arm, s in star.items()}


def test_two_arms_have_a_closed_form():
    wins = {("a", "b"): 7.0, ("b", "a"): 3.0}
    assert bradley_terry(wins, ["a", "b"], prior=0) == {"a": pytest.approx(0.7), "b": pytest.approx(0.3)}
    # the default prior is one virtual tie: (wins + 0.5) / (games + 1)
    assert bradley_terry(wins, ["a", "b"]) == {"a": pytest.approx(7.5 / 11), "b": pytest.approx(3.5 / 11)}


def test_an_arm_that_never_wins_and_disconnected_groups():
    wins = {("a", "b"): 6.0, ("b", "a"): 4.0, ("a", "c"): 5.0, ("b", "c"): 5.0}  # c never wins
    plain = bradley_terry(wins, ["a", "b", "c"], prior=0)
    assert plain["c"] == 0.0 and plain["a"] == pytest.approx(0.6) and plain["b"] == pytest.approx(0.4)
    smoothed = bradley_terry(wins, ["a", "b", "c"])
    assert all(0 < s < 1 for s in smoothed.values()) and smoothed["a"] > smoothed["b"] > smoothed["c"]

    # two groups never compared with each other, and an arm never compared at all
    apart = {("a", "b"): 8.0, ("b", "a"): 2.0, ("c", "d"): 8.0, ("d", "c"): 2.0}
    arms = ["a", "b", "c", "d", "lonely"]
    smoothed = bradley_terry(apart, arms)
    assert smoothed["a"] == pytest.approx(smoothed["c"]) and smoothed["b"] == pytest.approx(smoothed["d"])
    assert sum(smoothed.values()) == pytest.approx(1.0)
    plain = bradley_terry(apart, arms, prior=0)  # no division by zero; the lonely arm keeps its start
    assert plain["a"] / (plain["a"] + plain["b"]) == pytest.approx(0.8) and plain["lonely"] == pytest.approx(0.2)


def test_bradley_terry_rejects_bad_tables():
    with pytest.raises(ValueError, match="not in arms"):
        bradley_terry({("a", "q"): 1.0}, ["a", "b"])
    with pytest.raises(ValueError, match="itself"):
        bradley_terry({("a", "a"): 1.0}, ["a", "b"])
    with pytest.raises(ValueError, match="finite count"):
        bradley_terry({("a", "b"): -1.0}, ["a", "b"])
    assert bradley_terry({}, []) == {}


def verdicts_for(a: str, b: str, wins: int, losses: int, ties: int, start: int = 0) -> list[dict]:
    outcomes = ["a"] * wins + ["b"] * losses + ["tie"] * ties
    return [{"a": a, "b": b, "sample": f"s{start + i:03d}", "winner": w} for i, w in enumerate(outcomes)]


def test_bradley_terry_bootstrap():
    verdicts = (verdicts_for("top", "mid", 40, 8, 2) + verdicts_for("mid", "low", 30, 15, 5)
                + verdicts_for("top", "low", 45, 3, 2))
    arms = ["low", "mid", "top"]
    ranking = bradley_terry_bootstrap(verdicts, arms, draws=200)
    full = bradley_terry(wins_from_verdicts(verdicts), arms)
    assert [row["arm"] for row in ranking] == ["top", "mid", "low"]
    assert {row["arm"]: row["score"] for row in ranking} == {arm: pytest.approx(s) for arm, s in full.items()}
    assert sum(row["p_best"] for row in ranking) == pytest.approx(1.0) and ranking[0]["p_best"] > 0.99
    assert all(row["ci95"][0] <= row["score"] <= row["ci95"][1] for row in ranking)
    assert bradley_terry_bootstrap(verdicts, arms, draws=200) == ranking
    assert bradley_terry_bootstrap([], arms, draws=10)[0]["p_best"] is None
    with pytest.raises(ValueError, match="winner"):
        bradley_terry_bootstrap([{"a": "low", "b": "top", "sample": "s", "winner": "left"}], arms)


# --------------------------------------------------------------------------------------------------------------
# win_rate and power_estimate


def test_win_rate_counts_and_wilson_interval():
    records = verdicts_for("x", "y", 6, 1, 1) + [
        {"a": "y", "b": "x", "sample": "s100", "winner": "b"},  # the pair named the other way round: x wins
        {"a": "x", "b": "y", "sample": "s101", "winner": "tie", "inconsistent": True},
    ]
    got = win_rate(records)
    assert {k: got[k] for k in ("a", "b", "wins", "losses", "ties", "inconsistent", "n")} == {
        "a": "x", "b": "y", "wins": 7, "losses": 1, "ties": 2, "inconsistent": 1, "n": 10}
    assert got["win_rate"] == pytest.approx(0.8)
    assert got["ci95"] == pytest.approx([0.4902, 0.9433], abs=1e-4)  # Wilson 95% for 8 of 10
    flipped = win_rate(records, a="y")
    assert flipped["wins"] == 1 and flipped["losses"] == 7 and flipped["win_rate"] == pytest.approx(0.2)
    assert win_rate([], a="x", b="y") == {"a": "x", "b": "y", "wins": 0, "losses": 0, "ties": 0,
                                          "inconsistent": 0, "win_rate": None, "ci95": None, "n": 0}
    with pytest.raises(ValueError, match="must be a tie"):
        win_rate([{"a": "x", "b": "y", "sample": "s", "winner": "a", "inconsistent": True}])
    with pytest.raises(ValueError, match="not in arms"):
        win_rate(records + [{"a": "x", "b": "z", "sample": "s", "winner": "a"}])


def test_power_estimate_matches_a_hand_calculation():
    # z(0.975) + z(0.8) = 1.959964 + 0.841621 = 2.801585; n = (2.801585 * 0.5 / 0.1)^2 = 196.22 -> 197
    got = power_estimate(0.1, 0.5, 100)
    assert got["samples_needed"] == 197 and got["replicates_needed"] is None
    assert "z[1-alpha/2] + z[power]" in got["formula"] and "replicates_needed is not estimated" in got["reason"]
    assert power_estimate(-0.1, 0.5, 100)["samples_needed"] == 197

    # with replicates: target variance 0.01 / 2.801585^2 = 0.0012741, replicate part 2 * 0.02^2 / 2 = 0.0004
    # samples: 0.25 / (0.0012741 - 0.0004) = 286.02 -> 287; replicates at n = 300: 0.0008 / (0.0012741 -
    # 0.25 / 300) = 1.82 -> 2
    got = power_estimate(0.1, 0.5, 300, sd_between=0.02, n_replicates=2)
    assert got["samples_needed"] == 287 and got["replicates_needed"] == 2 and got["reason"] is None


def test_power_estimate_says_when_nothing_separates():
    zero = power_estimate(0.0, 0.5, 100, sd_between=0.1)
    assert zero["samples_needed"] is None and zero["replicates_needed"] is None
    assert "difference is 0.0" in zero["reason"]
    swamped = power_estimate(0.01, 0.5, 100, sd_between=0.2, n_replicates=1)
    assert swamped["samples_needed"] is None and swamped["replicates_needed"] is None
    assert "train more replicates" in swamped["reason"] and "add test samples" in swamped["reason"]
    with pytest.raises(ValueError):
        power_estimate(0.1, 0.5, 100, alpha=1.5)
