"""Exact intervals (hemoprofile.rates) against values computed by hand / known tables."""

import numpy as np
import pytest

from hemoprofile.rates import poisson_interval, proportion_interval, rate_per_million


def test_garwood_interval_matches_the_published_table():
    # Garwood (1936) / standard tables: k = 0 -> (0, 3.689), 1 -> (0.0253, 5.572), 10 -> (4.795, 18.39)
    low, high = poisson_interval([0, 1, 10])
    assert low == pytest.approx([0.0, 0.02532, 4.7954], abs=1e-3)
    assert high == pytest.approx([3.6889, 5.5716, 18.390], abs=1e-3)


def test_interval_covers_the_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    k = rng.poisson(4.0, 20000)
    low, high = poisson_interval(k)
    coverage = np.mean((low <= 4.0) & (4.0 <= high))
    assert 0.95 <= coverage <= 0.995  # exact intervals are conservative


def test_rate_per_million_and_proportion():
    rate, low, high = rate_per_million([3, 0], [2_000_000, 0])
    assert rate[0] == pytest.approx(1.5) and low[0] < 1.5 < high[0]
    assert np.isnan(rate[1])
    p, lo, hi = proportion_interval(0, 10)
    assert p == 0 and lo == 0 and hi == pytest.approx(0.3085, abs=1e-4)
    assert np.isnan(proportion_interval(0, 0)[0])
