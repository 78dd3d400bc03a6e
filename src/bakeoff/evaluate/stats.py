"""Summary statistics: means with 95% percentile-bootstrap intervals."""

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
