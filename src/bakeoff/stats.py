"""Summary statistics every stage reports with: means with 95% percentile-bootstrap intervals, and paired
differences with their interval and a sign-flip p-value."""

from __future__ import annotations

from collections.abc import Sequence

BOOTSTRAP_RESAMPLES = 2000


def mean_ci95(values: Sequence[float], seed: int = 0) -> tuple[float | None, list[float] | None]:
    """Mean and 95% percentile-bootstrap interval (seeded, 2,000 resamples); (None, None) when empty."""
    import numpy as np

    if len(values) == 0:
        return None, None
    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean())
    if len(arr) == 1:
        return mean, [mean, mean]
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), size=(BOOTSTRAP_RESAMPLES, len(arr)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return mean, [float(lo), float(hi)]


PERMUTATIONS = 10000


def paired_difference(a: Sequence[float], b: Sequence[float], seed: int = 0) -> dict:
    """Mean of ``a - b`` over paired samples, its 95% bootstrap interval and a two-sided p-value.

    The p-value comes from a paired sign-flip permutation test (10,000 seeded flips, add-one
    corrected): how often flipping the signs of the per-sample differences gives a mean at least as far
    from 0 as the observed one. ``n`` is the number of pairs.
    """
    import numpy as np

    if len(a) != len(b):
        raise ValueError("paired_difference needs the same number of samples on both sides")
    if len(a) == 0:
        return {"mean": None, "ci95": None, "p_value": None, "n": 0}
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean, ci = mean_ci95(diff, seed=seed)
    observed = abs(diff.mean())
    if not diff.any():
        return {"mean": mean, "ci95": ci, "p_value": 1.0, "n": len(diff)}
    rng = np.random.default_rng(seed)
    signs = rng.choice((-1.0, 1.0), size=(PERMUTATIONS, len(diff)))
    flipped = np.abs((signs * diff).mean(axis=1))
    p = (1 + int((flipped >= observed - 1e-12).sum())) / (PERMUTATIONS + 1)
    return {"mean": mean, "ci95": ci, "p_value": float(p), "n": len(diff)}
