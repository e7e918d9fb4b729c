"""Exact intervals for rare-event counts: Garwood's Poisson interval for a count (CTCs per million
cells, false candidates per million leukocytes) and the Clopper-Pearson interval for a proportion
(recall of true CTCs)."""

from __future__ import annotations

import numpy as np
from scipy import stats


def poisson_interval(count, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Garwood) two-sided interval of a Poisson mean from an observed ``count``.

    Lower bound ``chi2.ppf(a/2, 2k) / 2`` (0 for k = 0), upper ``chi2.ppf(1 - a/2, 2k + 2) / 2`` with
    ``a = 1 - level``. Works elementwise on arrays.

    Example
    -------
    >>> low, high = poisson_interval([0, 3])
    >>> [round(float(v), 3) for v in low], [round(float(v), 3) for v in high]
    ([0.0, 0.619], [3.689, 8.767])
    """
    k = np.asarray(count, dtype=float)
    alpha = 1.0 - level
    low = np.where(k > 0, stats.chi2.ppf(alpha / 2, 2 * np.maximum(k, 1e-300)) / 2, 0.0)
    high = stats.chi2.ppf(1 - alpha / 2, 2 * k + 2) / 2
    return low, high


def rate_per_million(count, denominator, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A count per million of ``denominator`` (cells) with its Garwood interval: ``(rate, low, high)``;
    NaN where the denominator is 0.

    Example
    -------
    >>> [round(float(v), 2) for v in rate_per_million(2, 1_000_000)]
    [2.0, 0.24, 7.22]
    """
    n = np.asarray(denominator, dtype=float)
    scale = np.where(n > 0, 1e6 / np.where(n > 0, n, 1.0), np.nan)
    low, high = poisson_interval(count, level)
    return np.asarray(count, float) * scale, low * scale, high * scale


def proportion_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float, float]:
    """A proportion and its exact (Clopper-Pearson) interval: ``(p, low, high)``; NaNs for no trials.

    Example
    -------
    >>> [round(v, 3) for v in proportion_interval(19, 20)]
    [0.95, 0.751, 0.999]
    """
    if trials <= 0:
        return float("nan"), float("nan"), float("nan")
    alpha = 1.0 - level
    low = 0.0 if successes == 0 else float(stats.beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return successes / trials, low, high
