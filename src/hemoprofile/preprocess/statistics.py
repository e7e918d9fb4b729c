"""Slide intensity statistics of a channel, from a seeded sample of tiles, and the ranges derived from
them: the ``percentile_clip`` range (:func:`clip_range`, with its background-noise floor) and the
``normalise`` range (:func:`normalise_range`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from hemoprofile import io
from hemoprofile.preprocess.settings import step_enabled, step_settings

#: Percentiles always recorded in the statistics (cheap from the histogram, handy for provenance and
#: QC); the percentiles a channel's ``percentile_clip`` asks for are added to these.
STANDARD_PERCENTILES = (0.1, 0.5, 1.0, 2.0, 5.0, 50.0, 95.0, 98.0, 99.0, 99.5, 99.9, 99.99)

#: Bins of the histogram used for percentiles of float images (integer images use exact counts).
FLOAT_HISTOGRAM_BINS = 65536


def percentile_key(percentile: float) -> str:
    """The key under which ``stats["percentiles"]`` stores a percentile (``repr`` of the float)."""
    return repr(float(percentile))


def _sample_tile_indices(n_tiles: int, sample_tiles: int, seed: int) -> list[int]:
    """One tile drawn at random from each of ``sample_tiles`` equal, consecutive (row-major) strata."""
    if n_tiles <= sample_tiles:
        return list(range(n_tiles))
    rng = np.random.default_rng(seed)
    bounds = (np.arange(sample_tiles + 1) * n_tiles) // sample_tiles
    return [int(rng.integers(lo, hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]


def _percentiles_from_counts(values: np.ndarray, counts: np.ndarray, percentiles: Iterable[float]) -> dict:
    """Percentiles (numpy's default 'linear' method) of the multiset ``values`` x ``counts``."""
    nonzero = counts > 0
    values, counts = values[nonzero], counts[nonzero]
    cum = np.cumsum(counts)
    n = int(cum[-1])
    out = {}
    for q in percentiles:
        pos = float(q) / 100.0 * (n - 1)
        lower = math.floor(pos)
        frac = pos - lower
        a = float(values[np.searchsorted(cum, lower, side="right")])
        b = float(values[np.searchsorted(cum, min(lower + 1, n - 1), side="right")])
        out[percentile_key(q)] = a + (b - a) * frac
    return out


def _float_percentiles(hist: np.ndarray, lo: float, hi: float, percentiles: Iterable[float]) -> dict:
    """Approximate percentiles from a histogram of ``len(hist)`` equal bins over [lo, hi]: the rank's
    position inside its bin is interpolated linearly (error below one bin width)."""
    cum = np.cumsum(hist)
    n = int(cum[-1])
    width = (hi - lo) / len(hist)

    def value_at_rank(rank: int) -> float:
        j = int(np.searchsorted(cum, rank, side="right"))
        before = int(cum[j - 1]) if j > 0 else 0
        within = (rank - before + 0.5) / int(hist[j])
        return min(max(lo + (j + within) * width, lo), hi)

    out = {}
    for q in percentiles:
        pos = float(q) / 100.0 * (n - 1)
        lower = math.floor(pos)
        a, b = value_at_rank(lower), value_at_rank(min(lower + 1, n - 1))
        out[percentile_key(q)] = a + (b - a) * (pos - lower)
    return out


def sample_channel_statistics(
    array,
    channel_index: int,
    tile_size: int,
    sample_tiles: int,
    seed: int,
    percentiles: Iterable[float] = (),
) -> dict:
    """Global intensity statistics of one channel, from a deterministic sample of tiles.

    What is sampled: the slide's tile grid (:func:`hemoprofile.io.iter_tiles`, row-major) is cut into
    ``sample_tiles`` equal consecutive strata and one tile is drawn from each with
    ``numpy.random.default_rng(seed)``, so the sample spreads from the top of the slide to the bottom;
    a slide with at most ``sample_tiles`` tiles is used whole. Every pixel of a sampled tile counts —
    background, edge tiles — with three exceptions, each counted in the result:

    - a flat tile (every pixel one value: a blank or saturated frame, an area the scanner skipped) has no
      contrast to measure and is left out (``n_flat_tiles_skipped``), unless every sampled tile is flat;
      one saturated frame drawn into the sample would otherwise set the 99.9th percentile at saturation
      and squash every real cell of the slide towards zero;
    - integer pixels at the dtype's maximum (saturated: 255, 65535) are left out of the statistics
      (``n_saturated_excluded``) unless they are all there is; saturation at a lower value (a 12-bit
      camera stored as uint16 saturates at 4095) is not recognised;
    - non-finite pixels of float images are left out (``n_nonfinite``).

    uint8/uint16 images: exact pixel counts per grey value, so the percentiles equal
    ``numpy.percentile`` (default 'linear' method) of the sampled pixels. Other dtypes: a first pass
    finds min/max, a second pass counts pixels in ``FLOAT_HISTOGRAM_BINS`` bins over that range; the
    percentiles are then within one bin width, (max - min) / 65536, of numpy's. Memory: one tile plus
    the histogram.

    Parameters
    ----------
    array : (c, y, x) array (zarr or numpy); read tile by tile.
    channel_index : which channel.
    tile_size : tile edge in pixels (the array's chunk edge).
    sample_tiles : most tiles to read (> 0).
    seed : seed of the tile draw.
    percentiles : percentiles (0-100) to compute besides ``STANDARD_PERCENTILES``.

    Returns
    -------
    dict (JSON-serialisable) with ``min``, ``max``, ``percentiles`` (key :func:`percentile_key`),
    ``constant`` (min == max: no contrast to normalise), ``n_pixels``, ``n_nonfinite``,
    ``n_flat_tiles_skipped``, ``n_saturated_excluded``, ``dtype``,
    ``n_tiles_total``, ``n_tiles_sampled``, ``sampled_tiles`` ([row, col] of each), ``seed``, ``method``.

    Example
    -------
    >>> img = np.arange(100, dtype=np.uint16).reshape(1, 10, 10)
    >>> s = sample_channel_statistics(img, 0, 5, 16, seed=0, percentiles=[50])
    >>> s["min"], s["max"], s["percentiles"]["50.0"], s["n_tiles_sampled"]
    (0.0, 99.0, 49.5, 4)
    """
    if sample_tiles <= 0:
        raise ValueError(f"sample_tiles must be positive, got {sample_tiles}")
    wanted = sorted({float(p) for p in (*STANDARD_PERCENTILES, *percentiles)})
    bad = [p for p in wanted if not 0.0 <= p <= 100.0]
    if bad:
        raise ValueError(f"percentiles must lie in [0, 100], got {bad}")
    tiles = list(io.iter_tiles(array.shape[-2:], tile_size))
    chosen = [tiles[i] for i in _sample_tile_indices(len(tiles), int(sample_tiles), int(seed))]
    dtype = np.dtype(array.dtype)

    def read(tile):
        return np.asarray(array[channel_index, tile.y0 : tile.y1, tile.x0 : tile.x1])

    n_nonfinite = n_flat = n_saturated = 0
    if dtype in (np.uint8, np.uint16):
        counts = np.zeros(np.iinfo(dtype).max + 1, dtype=np.int64)
        flat_counts = np.zeros_like(counts)
        for tile in chosen:
            tile_counts = np.bincount(read(tile).ravel(), minlength=counts.size)
            if np.count_nonzero(tile_counts) == 1:
                flat_counts += tile_counts
                n_flat += 1
            else:
                counts += tile_counts
        if not counts.any():  # every sampled tile is flat: they are all there is
            counts, n_flat = flat_counts, 0
        if counts[-1] and counts[:-1].any():
            n_saturated = int(counts[-1])
            counts[-1] = 0
        values = np.flatnonzero(counts)
        n_pixels = int(counts.sum())
        vmin, vmax = float(values[0]), float(values[-1])
        pct = _percentiles_from_counts(np.arange(counts.size), counts, wanted)
        method = "exact counts per grey value"
    else:
        vmin, vmax, n_pixels = math.inf, -math.inf, 0
        ranges, n_finite = [], []  # per sampled tile: finite (min, max) or None, finite pixel count
        for tile in chosen:
            block = read(tile).astype(np.float64)
            finite = np.isfinite(block)
            n_finite.append(int(finite.sum()))
            n_nonfinite += block.size - n_finite[-1]
            ranges.append((float(block[finite].min()), float(block[finite].max())) if finite.any() else None)
        flat = [r is not None and r[0] == r[1] for r in ranges]
        if all(f or r is None for f, r in zip(flat, ranges)):  # nothing but flat tiles: use them
            flat = [False] * len(chosen)
        n_flat = sum(flat)
        chosen_for_pixels = [t for t, f in zip(chosen, flat) if not f]
        for r, f in zip(ranges, flat):
            if r is not None and not f:
                vmin, vmax = min(vmin, r[0]), max(vmax, r[1])
        if vmin > vmax:  # nothing finite sampled
            vmin = vmax = 0.0
            pct = {percentile_key(q): 0.0 for q in wanted}
        elif vmin == vmax:
            pct = {percentile_key(q): vmin for q in wanted}
            n_pixels = sum(n for n, f in zip(n_finite, flat) if not f)
        else:
            hist = np.zeros(FLOAT_HISTOGRAM_BINS, dtype=np.int64)
            for tile in chosen_for_pixels:
                block = read(tile).astype(np.float64)
                block = block[np.isfinite(block)]
                idx = np.minimum(((block - vmin) / (vmax - vmin) * FLOAT_HISTOGRAM_BINS).astype(np.int64),
                                 FLOAT_HISTOGRAM_BINS - 1)
                hist += np.bincount(idx, minlength=FLOAT_HISTOGRAM_BINS)
            n_pixels = int(hist.sum())
            pct = _float_percentiles(hist, vmin, vmax, wanted)
        method = f"{FLOAT_HISTOGRAM_BINS}-bin histogram over the sampled min..max"
    return {
        "min": vmin,
        "max": vmax,
        "percentiles": pct,
        "constant": bool(vmin == vmax),
        "n_pixels": n_pixels,
        "n_nonfinite": n_nonfinite,
        "n_flat_tiles_skipped": n_flat,
        "n_saturated_excluded": n_saturated,
        "dtype": dtype.name,
        "n_tiles_total": len(tiles),
        "n_tiles_sampled": len(chosen),
        "sampled_tiles": [[t.row, t.col] for t in chosen],
        "seed": int(seed),
        "method": method,
    }


def _percentile(stats: dict, q: float) -> float:
    key = percentile_key(q)
    try:
        return float(stats["percentiles"][key])
    except KeyError:
        raise ValueError(
            f"statistics lack percentile {q} (have {sorted(stats.get('percentiles', {}))}); pass it to "
            "sample_channel_statistics(percentiles=...)"
        ) from None


#: Robust background-noise sigma from the dark half of a histogram: (median - p5) / z(0.95).
_NOISE_LOW_PERCENTILE, _NOISE_Z = 5.0, 1.6448536269514722


def background_noise_sigma(stats: dict) -> float:
    """Robust estimate of a channel's background noise: (median - 5th percentile) / 1.645.

    Cells are bright and cover well under half of a blood-cell slide, so the dark half of the histogram
    is background; for Gaussian noise this is its standard deviation.

    >>> round(background_noise_sigma({"percentiles": {"5.0": 283.55, "50.0": 300.0}}), 3)
    10.001
    """
    return max(0.0, (_percentile(stats, 50.0) - _percentile(stats, _NOISE_LOW_PERCENTILE)) / _NOISE_Z)


def clip_range(settings: dict, stats: dict) -> tuple[float, float]:
    """The (lo, hi) that ``percentile_clip`` clips to: the slide's percentiles ``low`` and ``high``, with
    hi raised to at least median + ``min_high_noise_sigmas`` x :func:`background_noise_sigma`.

    The floor matters for rare-event channels such as CK: a slide without CK+ cells has only noise at
    its 99.9th percentile, and stretching that to full range would make the cells of negative slides
    look CK-bright (a condition-linked artefact downstream).
    """
    clip = step_settings(settings, "percentile_clip")
    low, high = float(clip["low"]), float(clip["high"])
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"percentile_clip needs 0 <= low < high <= 100, got {low}, {high}")
    lo, hi = _percentile(stats, low), _percentile(stats, high)
    k = float(clip.get("min_high_noise_sigmas", 0) or 0)
    if k < 0:
        raise ValueError(f"percentile_clip.min_high_noise_sigmas must be >= 0, got {k}")
    if k > 0:
        hi = max(hi, _percentile(stats, 50.0) + k * background_noise_sigma(stats))
    return lo, hi


def normalise_range(settings: dict, stats: dict) -> tuple[float, float] | None:
    """The (lo, hi) that ``normalise`` maps to (0, 1), or None when normalise is disabled."""
    if not step_enabled(settings, "normalise"):
        return None
    if step_enabled(settings, "percentile_clip"):
        return clip_range(settings, stats)
    return float(stats["min"]), float(stats["max"])
