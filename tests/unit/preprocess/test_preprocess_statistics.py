"""Tests of hemoprofile.preprocess.statistics: sampled slide statistics and the clip range's noise floor."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from helpers.preprocess_images import synthetic_channel

from hemoprofile.preprocess.pipeline import preprocess_channel
from hemoprofile.preprocess.statistics import (
    STANDARD_PERCENTILES,
    background_noise_sigma,
    clip_range,
    percentile_key,
    sample_channel_statistics,
)


def test_statistics_of_integer_images_are_numpys_percentiles_of_the_sampled_pixels():
    image = synthetic_channel(5, shape=(300, 260))[None]
    stats = sample_channel_statistics(image, 0, 128, sample_tiles=16, seed=0, percentiles=[0.5, 99.9, 37.25])
    assert stats["n_tiles_total"] == stats["n_tiles_sampled"] == 9  # fewer tiles than sample_tiles: all
    assert stats["n_pixels"] == 300 * 260 and stats["n_nonfinite"] == 0 and not stats["constant"]
    assert stats["min"] == image.min() and stats["max"] == image.max()
    for q in (0.5, 99.9, 37.25, *STANDARD_PERCENTILES):
        assert stats["percentiles"][percentile_key(q)] == pytest.approx(np.percentile(image, q), rel=1e-12)


def test_statistics_come_from_at_most_sample_tiles_tiles_spread_and_seeded():
    # every tile holds its own index, so the statistics reveal exactly which tiles were read
    grid = np.arange(6 * 7, dtype=np.uint16).reshape(6, 7)
    image = np.kron(grid, np.ones((16, 16), dtype=np.uint16))[None]

    class CountingArray:
        def __init__(self, array):
            self.array, self.shape, self.dtype, self.reads = array, array.shape, array.dtype, 0

        def __getitem__(self, key):
            self.reads += 1
            return self.array[key]

    counting = CountingArray(image)
    stats = sample_channel_statistics(counting, 0, 16, sample_tiles=5, seed=11)
    assert counting.reads == stats["n_tiles_sampled"] == 5 and stats["n_tiles_total"] == 42
    indices = sorted(r * 7 + c for r, c in stats["sampled_tiles"])
    assert stats["min"] == indices[0] and stats["max"] == indices[-1]
    assert stats["percentiles"]["50.0"] == np.percentile(indices, 50)
    bounds = (np.arange(6) * 42) // 5  # one tile from each fifth of the slide, top to bottom
    assert [int(np.searchsorted(bounds, i, side="right")) - 1 for i in indices] == [0, 1, 2, 3, 4]
    assert sample_channel_statistics(image, 0, 16, 5, seed=11) == stats
    others = [sample_channel_statistics(image, 0, 16, 5, seed=s)["sampled_tiles"] for s in (1, 2, 3)]
    assert any(o != stats["sampled_tiles"] for o in others)


def test_statistics_of_float_images_count_non_finite_pixels_and_bin_percentiles():
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 0.1, size=(1, 200, 200)).astype(np.float32)
    image[0, :3, :5] = np.nan
    image[0, 100, 100] = np.inf
    stats = sample_channel_statistics(image, 0, 64, 100, seed=0, percentiles=[0.5, 99.9])
    finite = image[np.isfinite(image)]
    assert stats["n_nonfinite"] == 16 and stats["n_pixels"] == finite.size
    assert (stats["min"], stats["max"]) == (float(finite.min()), float(finite.max()))
    bin_width = (finite.max() - finite.min()) / 65536
    for q in (0.5, 50.0, 99.9):
        assert abs(stats["percentiles"][percentile_key(q)] - np.percentile(finite, q)) <= bin_width


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_statistics_leave_out_flat_tiles_and_saturated_pixels(dtype):
    # a blank (0) and a saturated frame drawn into the sample must not move the percentiles of the rest
    image = synthetic_channel(9, shape=(256, 256))[None]
    spoilt = image.copy()
    spoilt[0, :64, :64] = 0  # a flat tile
    spoilt[0, 64:128, :64] = 65535  # another
    spoilt[0, 200, 200:210] = 65535  # ten saturated pixels in a tile with contrast
    image, spoilt = image.astype(dtype), spoilt.astype(dtype)
    stats = sample_channel_statistics(spoilt, 0, 64, 100, seed=0, percentiles=[0.5, 99.9])
    assert stats["n_tiles_sampled"] == 16 and stats["n_flat_tiles_skipped"] == 2
    kept = np.concatenate([image[0, 128:].ravel(), image[0, :128, 64:].ravel()])
    if dtype == "uint16":
        assert stats["n_saturated_excluded"] == 10
        kept = np.concatenate([spoilt[0, 128:].ravel(), spoilt[0, :128, 64:].ravel()])
        kept = kept[kept < 65535]
        for q in (0.5, 50.0, 99.9):
            assert stats["percentiles"][percentile_key(q)] == pytest.approx(np.percentile(kept, q), rel=1e-12)
    else:  # floats have no saturation value: only the flat tiles are left out
        assert stats["n_saturated_excluded"] == 0 and stats["max"] == 65535.0
    assert stats["n_pixels"] == 14 * 64 * 64 - (10 if dtype == "uint16" else 0)
    # nothing but flat tiles: they are what the slide is (a blank slide stays constant)
    for value in (0, 65535):
        blank = np.full((1, 128, 128), value, dtype)
        flat = sample_channel_statistics(blank, 0, 64, 100, seed=0)
        assert flat["constant"] and flat["min"] == flat["max"] == value and flat["n_flat_tiles_skipped"] == 0


# --- the noise floor of the clip range ---------------------------------------------------------------


def _noise_slide(seed: int, bright_cells: int) -> np.ndarray:
    """Gaussian background (mean 300, sigma 10) with ``bright_cells`` 6x6 squares at 4000 (CK+ cells)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(300, 10, (400, 400))
    for k in range(bright_cells):
        y, x = 20 + 40 * (k // 9), 20 + 40 * (k % 9)
        image[y : y + 6, x : x + 6] = 4000
    return np.clip(image, 0, 65535).astype(np.uint16)


def test_background_noise_sigma_estimates_the_noise_of_the_dark_half():
    stats = sample_channel_statistics(_noise_slide(0, 0)[None], 0, 128, 16, 0)
    assert background_noise_sigma(stats) == pytest.approx(10.0, rel=0.05)


def test_noise_floor_keeps_a_slide_without_positive_cells_from_being_stretched():
    floored = {"percentile_clip": {"enabled": True, "low": 0.5, "high": 99.9, "min_high_noise_sigmas": 100},
               "normalise": {"enabled": True}}
    plain = copy.deepcopy(floored)
    plain["percentile_clip"]["min_high_noise_sigmas"] = 0
    negative, positive = _noise_slide(1, 0), _noise_slide(2, 30)
    stats_neg = sample_channel_statistics(negative[None], 0, 128, 16, 0, percentiles=[0.5, 99.9])
    stats_pos = sample_channel_statistics(positive[None], 0, 128, 16, 0, percentiles=[0.5, 99.9])

    # without the floor, the negative slide's noise fills the whole range
    assert preprocess_channel(negative, plain, stats_neg).max() == 1.0
    # with it, hi = median + 100 sigma (about 1300), so noise stays dark
    lo, hi = clip_range(floored, stats_neg)
    assert hi == pytest.approx(stats_neg["percentiles"]["50.0"] + 100 * background_noise_sigma(stats_neg))
    assert 1200 < hi < 1400
    assert preprocess_channel(negative, floored, stats_neg).max() < 0.1
    # a slide whose 99.9th percentile is a bright cell keeps its percentile (the floor is below it)
    assert clip_range(floored, stats_pos) == clip_range(plain, stats_pos)
    assert clip_range(plain, stats_pos)[1] == 4000


def test_negative_noise_floor_is_refused():
    stats = sample_channel_statistics(_noise_slide(0, 0)[None], 0, 128, 16, 0)
    bad = {"percentile_clip": {"enabled": True, "low": 0.5, "high": 99.9, "min_high_noise_sigmas": -1}}
    with pytest.raises(ValueError, match="min_high_noise_sigmas"):
        clip_range(bad, stats)
