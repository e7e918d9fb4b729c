"""Per-channel intensity preprocessing of a slide, tile by tile, with output equal to whole-image output.

Each channel goes through four switchable steps, in this order:

1. ``percentile_clip`` — clip to the channel's global ``[p_low, p_high]`` percentiles (the upper one
   optionally floored at median + k background-noise sigmas, :func:`clip_range`).
2. ``normalise`` — rescale to [0, 1] by the global range (the percentile range when clipping, else the
   sampled min..max). When disabled, a fixed map with no statistics: integers divided by their dtype's
   maximum (uint16 / 65535, uint8 / 255), floats unchanged; both then clipped to [0, 1].
3. ``clahe`` — contrast-limited adaptive histogram equalisation (:func:`clahe_anchored`).
4. ``denoise`` — Chambolle total-variation denoising with a fixed iteration count.

Why the tiled result equals the whole-image result
--------------------------------------------------
* Steps 1–2 are per-pixel maps whose parameters come from statistics computed once per slide
  (:func:`sample_channel_statistics`), so every tile uses the same map.
* CLAHE is implemented here in numpy instead of calling ``skimage.exposure.equalize_adapthist``, which
  rescales each call's input by its own min/max and lays its block grid on the array it is given — both
  differ from tile to tile. Here the block grid is anchored at the slide's pixel (0, 0), histograms are
  integer counts, and interpolation weights depend on slide coordinates only, so a tile grown by
  :func:`required_halo` pixels reproduces the whole-image values bit for bit.
* TV denoising runs a fixed number of iterations (``eps=0`` disables skimage's early stop, see
  :func:`required_halo`), so each output pixel depends only on input pixels within ``iterations``
  pixels of it.

The workflow entry point is :func:`preprocess_slide` (``image.zarr`` -> ``preprocessed.zarr``); the pure
whole-image function is :func:`preprocess_channel`.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from skimage.restoration import denoise_tv_chambolle

from hemoprofile import io

#: Output dtypes ``preprocess_slide`` can write; integers hold [0, 1] scaled to their full range.
OUTPUT_DTYPES = ("uint16", "uint8", "float32")

#: Grey-level bins of the CLAHE histograms (as skimage's default ``nbins``); a clahe section may set
#: ``nbins`` to override it.
CLAHE_NBINS = 256

#: Percentiles always recorded in the statistics (cheap from the histogram, handy for provenance and
#: QC); the percentiles a channel's ``percentile_clip`` asks for are added to these.
STANDARD_PERCENTILES = (0.1, 0.5, 1.0, 2.0, 5.0, 50.0, 95.0, 98.0, 99.0, 99.5, 99.9, 99.99)

#: Bins of the histogram used for percentiles of float images (integer images use exact counts).
FLOAT_HISTOGRAM_BINS = 65536

_STEPS = ("percentile_clip", "normalise", "clahe", "denoise")


# --- settings -------------------------------------------------------------------------------------------


def _deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_channel_settings(preprocess_cfg: dict, channel_names: Sequence[str]) -> dict[str, dict]:
    """Return each channel's settings: ``default`` deep-merged with ``channels.<name>``.

    Parameters
    ----------
    preprocess_cfg : the ``preprocess`` section of the config (``default`` and optional ``channels``).
    channel_names : the image's channel names, in channel order.

    Returns
    -------
    dict mapping every channel name (in image order) to its own settings dict (a copy; the config is
    never modified). Channels not named under ``channels`` get ``default``.

    Raises
    ------
    ValueError naming the unknown channels and the image's channels when ``channels`` names a channel
    the image does not have.

    Example
    -------
    >>> cfg = {"default": {"clahe": {"enabled": False, "kernel_size": 64}},
    ...        "channels": {"CK": {"clahe": {"enabled": True}}}}
    >>> resolve_channel_settings(cfg, ["DAPI", "CK"])["CK"]["clahe"]
    {'enabled': True, 'kernel_size': 64}
    """
    names = [str(n) for n in channel_names]
    default = preprocess_cfg.get("default") or {}
    overrides = preprocess_cfg.get("channels") or {}
    unknown = [n for n in overrides if n not in names]
    if unknown:
        raise ValueError(
            f"preprocess.channels names channel(s) {unknown} that the image does not have; "
            f"the image's channels are {names}"
        )
    return {name: _deep_merge(default, overrides.get(name) or {}) for name in names}


def _step(settings: dict, name: str) -> dict:
    """A step's settings; a step missing from the settings counts as disabled."""
    return settings.get(name) or {"enabled": False}


def _enabled(settings: dict, name: str) -> bool:
    return bool(_step(settings, name).get("enabled", False))


def _clahe_halo(kernel_size: int) -> int:
    k = int(kernel_size)
    return 2 * k - k // 2  # = ceil(1.5 k); derivation in required_halo


def _channel_halo(settings: dict) -> int:
    halo = 0
    if _enabled(settings, "clahe"):
        halo += _clahe_halo(_step(settings, "clahe")["kernel_size"])
    if _enabled(settings, "denoise"):
        halo += int(_step(settings, "denoise")["iterations"])
    return halo


def required_halo(settings: dict[str, dict]) -> int:
    """Return the halo (pixels added on every side of a tile) that makes tiled output equal whole-image
    output, for the largest need among the given channels.

    The halos of the neighbourhood operators add up, because TV denoising reads CLAHE's output: a tile
    needs CLAHE values that are correct ``tv_halo`` pixels beyond it, which need ``clahe_halo`` more.
    Percentile clip and normalise are per-pixel maps with global parameters and need none.

    * **CLAHE** (kernel ``k``): a pixel at slide row ``y`` blends the mappings of the two blocks whose
      anchor rows bracket it (block ``i`` covers rows ``[i k, (i + 1) k)`` and anchors at
      ``i k + ceil(k / 2)``, skimage's convention), i.e. blocks ``pb - 1`` and ``pb`` with
      ``pb = (y + k // 2) // k``. Their rows span at most ``y - (2k - k//2 - 1)`` to
      ``y + k + k//2 - 1``, so ``ceil(1.5 k)`` = ``2k - k // 2`` pixels cover both blocks entirely (and,
      at the slide's end, the rows the last block mirrors in), making every histogram a tile pixel uses
      identical to the whole-image one. Same for columns. (Measured with k = 64: a tile starting at
      row 31 mod 64 differs by 4e-5 with a 94-pixel halo and is exact with 95.)
    * **TV (Chambolle)** with ``n`` iterations: one iteration updates the dual field from forward
      differences of the current estimate and the estimate from the backward divergence of the dual
      field, so information travels one pixel per iteration; skimage returns the estimate of the last
      iteration, which depends on input pixels at most ``n - 1`` pixels away. A window edge acts as an
      image edge (no flux across it); its error likewise travels one pixel per iteration, so ``n``
      pixels (one spare) keep it out of the tile. ``eps=0`` is what makes ``n`` fixed: skimage stops when
      ``|E_prev - E| < eps * E_0``, never true for ``eps=0``, so a tile and the whole image run the same
      iterations.

    Parameters
    ----------
    settings : channel name -> resolved settings (:func:`resolve_channel_settings`).

    Returns
    -------
    int, the maximum over the channels (0 when no neighbourhood operator is enabled).

    Example
    -------
    >>> required_halo({"CK": {"clahe": {"enabled": True, "kernel_size": 64, "clip_limit": 0.01},
    ...                        "denoise": {"enabled": True, "weight": 0.05, "iterations": 20}}})
    116
    """
    return max((_channel_halo(s) for s in settings.values()), default=0)


# --- statistics -----------------------------------------------------------------------------------------


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
    clip = _step(settings, "percentile_clip")
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
    if not _enabled(settings, "normalise"):
        return None
    if _enabled(settings, "percentile_clip"):
        return clip_range(settings, stats)
    return float(stats["min"]), float(stats["max"])


# --- operators ------------------------------------------------------------------------------------------


def _reflect(index: np.ndarray, size: int) -> np.ndarray:
    """Mirror indices >= size back into [0, size) without repeating the edge (numpy's 'reflect')."""
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    m = index % period
    return np.where(m < size, m, period - m)


def _clahe_axis(origin: int, length: int, slide_length: int, k: int):
    """Per-axis geometry of the slide-anchored block grid seen from a window [origin, origin + length)."""
    b0, b1 = origin // k, (origin + length - 1) // k  # blocks meeting the window
    n_local = b1 - b0 + 1
    rows = np.arange(b0 * k, (b1 + 1) * k)  # slide rows of those blocks; past the slide end: mirrored
    local = _reflect(rows, slide_length) - origin
    valid = (local >= 0) & (local < length)  # rows outside the window only matter to halo pixels
    local = np.clip(local, 0, length - 1)
    shifted = np.arange(origin, origin + length) + k // 2
    upper = shifted // k
    weight = ((shifted % k) / k).astype(np.float32)
    n_blocks = -(-slide_length // k)
    lower_block = np.clip(np.clip(upper - 1, 0, n_blocks - 1) - b0, 0, n_local - 1)
    upper_block = np.clip(np.clip(upper, 0, n_blocks - 1) - b0, 0, n_local - 1)
    return n_local, local, valid, lower_block, upper_block, weight


def _clip_and_redistribute(hist: np.ndarray, cap: int) -> np.ndarray:
    """Cap each histogram (row) at ``cap`` and hand the excess out evenly to the bins below the cap,
    none pushed above it: the result is ``min(min(hist, cap) + a, cap)`` with the level ``a`` that keeps
    each row's total (water filling; the exact form of Zuiderveld's and skimage's integer
    redistribution). A row whose total exceeds ``cap * nbins`` becomes flat at ``cap``."""
    nbins = hist.shape[1]
    total = hist.sum(axis=1, keepdims=True).astype(np.float64)
    clipped = np.sort(np.minimum(hist, cap), axis=1).astype(np.float64)
    # with the m smallest bins unsaturated: total = sum(clipped[:m]) + m * a + (nbins - m) * cap
    m = np.arange(1, nbins + 1, dtype=np.float64)
    below = np.cumsum(clipped, axis=1)
    level = (total - (nbins - m) * cap - below) / m
    above = np.concatenate([clipped[:, 1:], np.full((len(hist), 1), np.inf)], axis=1)
    slack = 1e-9 * cap  # counts are exact in float64; only the division rounds
    fits = (clipped + level <= cap + slack) & (above + level >= cap - slack) & (level >= -slack)
    a = np.where(fits.any(axis=1), level[np.arange(len(hist)), fits.argmax(axis=1)], np.inf)
    return np.minimum(np.minimum(hist, cap) + a[:, None], cap)


def clahe_anchored(
    image: np.ndarray,
    kernel_size: int,
    clip_limit: float,
    *,
    nbins: int = CLAHE_NBINS,
    origin: tuple[int, int] = (0, 0),
    slide_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """CLAHE of a [0, 1] image on a block grid anchored to the slide, so tiles agree with the whole.

    Definition (Zuiderveld's CLAHE with skimage's grid and clip-limit conventions):

    * Grey levels: ``bin = min(floor(value * nbins), nbins - 1)`` — a fixed map, no per-call rescale.
    * Blocks of ``kernel_size`` x ``kernel_size`` slide pixels, block (i, j) covering rows
      ``[i k, (i + 1) k)`` and columns ``[j k, (j + 1) k)`` of the slide; blocks that run past the slide's
      end are filled by mirroring the slide at its edge (as skimage pads with 'reflect').
    * ``clip_limit`` is skimage's normalised limit: each block histogram's bins are capped at
      ``max(1, int(clip_limit * k * k))`` pixels (0.01 with k = 64 caps a bin at 40 of 4096 pixels,
      2.56x the flat level 16 with 256 bins; OpenCV's ``clipLimit`` would be ``clip_limit * nbins``).
      The clipped excess is handed out evenly to the bins below the cap without lifting any above it
      (Zuiderveld's and skimage's redistribution, solved exactly). ``clip_limit <= 0`` or ``>= 1``
      means no clipping (plain adaptive equalisation).
    * A block's mapping is its clipped histogram's cumulative fraction (inclusive), in (0, 1].
    * Each pixel blends the mappings of the 4 blocks whose anchors surround it bilinearly (anchor of
      block i at row ``i k + ceil(k / 2)``); outside the outermost anchors the nearest block's mapping
      is used.

    Unlike skimage's ``equalize_adapthist``, the output is not rescaled to the result's min..max (that
    would make it depend on the tile). Rescaled that way, it stays within 0.002 (mean absolute) of
    ``equalize_adapthist`` on images that skimage grids the same way (shape a multiple of ``k``,
    values spanning [0, 1]); the rest is skimage's 253 effective bins and integer rounding.

    Parameters
    ----------
    image : 2-D array with values in [0, 1] (the whole slide, or a window of it).
    kernel_size : block edge ``k`` in pixels.
    clip_limit : normalised clip limit, see above.
    nbins : grey-level bins.
    origin : slide coordinates (row, col) of ``image[0, 0]``.
    slide_shape : (rows, cols) of the slide; defaults to ``origin + image.shape``. A window's pixels
        closer than :func:`required_halo` to its edge are only right where the window meets the slide's
        edge.

    Returns
    -------
    float32 array of ``image.shape`` with values in [0, 1].

    Example
    -------
    >>> ramp = np.tile(np.linspace(0.4, 0.6, 128, dtype=np.float32), (128, 1))
    >>> out = clahe_anchored(ramp, 32, 0.01)
    >>> bool(out.max() - out.min() > ramp.max() - ramp.min())   # local contrast stretched
    True
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"clahe_anchored needs a 2-D image, got shape {img.shape}")
    k, nbins = int(kernel_size), int(nbins)
    if k < 1 or nbins < 2:
        raise ValueError(f"kernel_size must be >= 1 and nbins >= 2, got {kernel_size}, {nbins}")
    h, w = img.shape
    oy, ox = (int(o) for o in origin)
    slide_h, slide_w = (oy + h, ox + w) if slide_shape is None else (int(s) for s in slide_shape)

    bins = np.clip(img * nbins, 0, nbins - 1).astype(np.intp)
    nby, rows, rows_valid, r_lo, r_hi, ty = _clahe_axis(oy, h, slide_h, k)
    nbx, cols, cols_valid, c_lo, c_hi, tx = _clahe_axis(ox, w, slide_w, k)

    # histograms of all blocks at once: one bincount over (block id, bin)
    block_offset = ((np.arange(nby * k) // k) * (nbx * nbins))[:, None] + ((np.arange(nbx * k) // k) * nbins)
    index = bins[np.ix_(rows, cols)] + block_offset
    if rows_valid.all() and cols_valid.all():
        index = index.ravel()
    else:
        index = index[rows_valid[:, None] & cols_valid[None, :]]
    hist = np.bincount(index, minlength=nby * nbx * nbins).reshape(nby * nbx, nbins)

    if 0.0 < clip_limit < 1.0:
        hist = _clip_and_redistribute(hist, max(1, int(clip_limit * k * k)))
    cdf = np.cumsum(hist, axis=1, dtype=np.float64)
    lut = np.clip(cdf / np.maximum(cdf[:, -1:], 1e-12), 0.0, 1.0).astype(np.float32).ravel()

    def mapped(block_rows, block_cols):
        return lut[(block_rows * (nbx * nbins))[:, None] + (block_cols * nbins)[None, :] + bins]

    tx = tx[None, :]
    top = (1 - tx) * mapped(r_lo, c_lo) + tx * mapped(r_lo, c_hi)
    bottom = (1 - tx) * mapped(r_hi, c_lo) + tx * mapped(r_hi, c_hi)
    ty = ty[:, None]
    return (1 - ty) * top + ty * bottom


def _scale_to_unit(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The fixed map of a disabled ``normalise``: integers by their dtype's maximum, floats as they are."""
    if np.issubdtype(dtype, np.integer):
        x /= np.float32(np.iinfo(dtype).max)
    return x


def preprocess_channel(
    image_2d: np.ndarray,
    settings: dict,
    stats: dict,
    *,
    origin: tuple[int, int] = (0, 0),
    slide_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Preprocess one channel: percentile clip, normalise, CLAHE, TV denoise (each as enabled).

    Parameters
    ----------
    image_2d : (y, x) raw intensities (uint8, uint16, float32 ...); not modified.
    settings : the channel's resolved settings (:func:`resolve_channel_settings`).
    stats : the channel's slide statistics (:func:`sample_channel_statistics`), containing the
        percentiles ``percentile_clip`` names.
    origin, slide_shape : for tiled callers: slide coordinates of ``image_2d[0, 0]`` and the slide's
        (rows, cols), so CLAHE's block grid stays anchored to the slide. Defaults: ``image_2d`` is the
        whole slide.

    Returns
    -------
    float32 (y, x) array in [0, 1].

    Notes
    -----
    With ``normalise`` enabled and an empty range (hi <= lo — a constant channel, or percentiles that
    coincide) the channel has no contrast to show: the result is all zeros and no further step runs.
    Non-finite float inputs become 0 (NaN, -inf) or 1 (+inf) after normalisation.

    Example
    -------
    >>> img = np.array([[0, 100], [200, 400]], dtype=np.uint16)
    >>> stats = {"min": 0.0, "max": 400.0, "percentiles": {}}
    >>> preprocess_channel(img, {"normalise": {"enabled": True}}, stats).tolist()
    [[0.0, 0.25], [0.5, 1.0]]
    """
    img = np.asarray(image_2d)
    if img.ndim != 2:
        raise ValueError(f"preprocess_channel needs a 2-D image, got shape {img.shape}")
    x = img.astype(np.float32, copy=True)

    if _enabled(settings, "percentile_clip"):
        lo, hi = clip_range(settings, stats)
        np.clip(x, np.float32(lo), np.float32(hi), out=x)

    bounds = normalise_range(settings, stats)
    if bounds is None:
        x = _scale_to_unit(x, img.dtype)
    else:
        lo, hi = np.float32(bounds[0]), np.float32(bounds[1])
        if not hi > lo:
            return np.zeros(img.shape, dtype=np.float32)
        x -= lo
        x /= hi - lo  # a division (not a reciprocal) so that hi maps to exactly 1
    x = np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)

    if _enabled(settings, "clahe"):
        c = _step(settings, "clahe")
        x = clahe_anchored(
            x, c["kernel_size"], float(c["clip_limit"]), nbins=int(c.get("nbins", CLAHE_NBINS)),
            origin=origin, slide_shape=slide_shape,
        )

    if _enabled(settings, "denoise"):
        d = _step(settings, "denoise")
        weight, iterations = float(d["weight"]), int(d["iterations"])
        if weight <= 0 or iterations < 1:
            raise ValueError(f"denoise needs weight > 0 and iterations >= 1, got {weight}, {iterations}")
        # eps=0: never stop early, so every tile runs exactly `iterations` (see required_halo)
        x = denoise_tv_chambolle(x, weight=weight, max_num_iter=iterations, eps=0)

    return np.clip(x, 0.0, 1.0).astype(np.float32, copy=False)


# --- slide ----------------------------------------------------------------------------------------------


def _to_output_dtype(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """[0, 1] floats -> ``dtype``: integers scaled to their full range and rounded."""
    if np.issubdtype(dtype, np.integer):
        return np.rint(x * np.float32(np.iinfo(dtype).max)).astype(dtype)
    return x.astype(dtype, copy=False)


def _needed_percentiles(settings: dict) -> list[float]:
    if not _enabled(settings, "percentile_clip"):
        return []
    clip = _step(settings, "percentile_clip")
    return [float(clip["low"]), float(clip["high"])]


def preprocess_slide(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    preprocess_cfg: dict,
    seed: int = 0,
    progress: Callable[[str], object] | None = print,
) -> dict:
    """Preprocess every channel of an OME-Zarr image tile by tile into a new OME-Zarr image.

    Per channel: statistics from up to ``sample_tiles`` tiles (:func:`sample_channel_statistics`, the
    same ``seed`` for every channel), then for each tile of the input's chunk grid the tile grown by the
    channel's halo (:func:`required_halo`) is read, preprocessed (:func:`preprocess_channel`), cropped
    back and written once. Memory: one halo-grown tile and its temporaries (TV keeps ~5 float32 copies),
    whatever the slide's size. The output is written atomically (:func:`hemoprofile.io.atomic_output`).

    Parameters
    ----------
    in_path : ``image.zarr`` (c, y, x), chunk = tile, uint8/uint16/float32.
    out_path : ``preprocessed.zarr`` to write: same shape, chunks, channel names and pixel size; dtype
        ``preprocess_cfg["output_dtype"]`` (uint16 | uint8 | float32) holding [0, 1] (integers scaled
        to their full range).
    preprocess_cfg : the config's ``preprocess`` section (``output_dtype``, ``sample_tiles``,
        ``default``, ``channels``).
    seed : seed of the statistics' tile sample.
    progress : called with a line of text about every 10% of a channel's tiles and at the end
        (None: silent).

    Returns
    -------
    dict: ``path``, ``shape``, ``tile_size``, ``n_tiles``, ``output_dtype``, ``halo`` (max),
    ``halo_per_channel``, ``settings``, ``statistics``, ``normalise_range``, ``seconds``,
    ``seconds_per_channel``, ``megapixels_per_second`` (channel-pixels over all channels).

    ``attributes["hemoprofile"]`` of the output holds ``stage``, ``settings``, ``statistics``,
    ``normalise_range``, ``halo``, ``halo_per_channel``, ``output_dtype``, ``seed`` and the input's own
    ``hemoprofile`` attributes under ``input_attributes``.
    """
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    image = io.open_ome_zarr(in_path)
    array = image.array
    if array.ndim != 3:
        raise ValueError(f"{in_path}: expected a (c, y, x) image, got shape {array.shape}")
    n_channels, height, width = (int(s) for s in array.shape)
    tile_size = int(array.chunks[-1])
    out_dtype = np.dtype(preprocess_cfg.get("output_dtype", "uint16"))
    if out_dtype.name not in OUTPUT_DTYPES:
        raise ValueError(f"preprocess.output_dtype must be one of {OUTPUT_DTYPES}, got {out_dtype.name}")
    names = list(image.channel_names)
    settings = resolve_channel_settings(preprocess_cfg, names)
    sample_tiles = int(preprocess_cfg.get("sample_tiles", 16))

    statistics, ranges, halos = {}, {}, {}
    for ci, name in enumerate(names):
        statistics[name] = sample_channel_statistics(
            array, ci, tile_size, sample_tiles, seed, percentiles=_needed_percentiles(settings[name])
        )
        bounds = normalise_range(settings[name], statistics[name])
        ranges[name] = None if bounds is None else [bounds[0], bounds[1]]
        halos[name] = required_halo({name: settings[name]})
        if bounds is not None and not bounds[1] > bounds[0]:
            say(f"preprocess: WARNING channel {name} has an empty normalise range {bounds} "
                f"(constant={statistics[name]['constant']}); it is written as zeros")
    attributes = {
        "stage": "preprocess",
        "settings": settings,
        "statistics": statistics,
        "normalise_range": ranges,
        "halo": max(halos.values(), default=0),
        "halo_per_channel": halos,
        "output_dtype": out_dtype.name,
        "seed": int(seed),
        "input_attributes": image.attributes,
    }
    say(f"preprocess: {in_path} {n_channels}x{height}x{width} {np.dtype(array.dtype).name}, "
        f"tile {tile_size}, halo per channel {halos}")

    tiles = list(io.iter_tiles((height, width), tile_size))
    report_every = max(1, math.ceil(len(tiles) / 10))
    seconds = {}
    with io.atomic_output(out_path) as tmp:
        out = io.create_ome_zarr_image(
            tmp, array.shape, out_dtype, tile_size, names, pixel_size_um=image.pixel_size_um,
            name="preprocessed", extra_attributes=attributes,
        )
        for ci, name in enumerate(names):
            channel_started = time.perf_counter()
            for done, tile in enumerate(tiles, start=1):
                wy0, wy1, wx0, wx1 = io.halo_window(tile, halos[name], (height, width))
                window = np.asarray(array[ci, wy0:wy1, wx0:wx1])
                result = preprocess_channel(
                    window, settings[name], statistics[name], origin=(wy0, wx0), slide_shape=(height, width)
                )
                core = result[tile.y0 - wy0 : tile.y1 - wy0, tile.x0 - wx0 : tile.x1 - wx0]
                out[ci, tile.y0 : tile.y1, tile.x0 : tile.x1] = _to_output_dtype(core, out_dtype)
                if done % report_every == 0 or done == len(tiles):
                    say(f"preprocess: {name} {done}/{len(tiles)} tiles")
            seconds[name] = time.perf_counter() - channel_started
            say(f"preprocess: {name} done, {height * width / 1e6 / max(seconds[name], 1e-9):.2f} MP/s")
    total = time.perf_counter() - started
    rate = n_channels * height * width / 1e6 / max(total, 1e-9)
    say(f"preprocess: {n_channels} channels x {height * width / 1e6:.2f} MP in {total:.1f} s "
        f"({rate:.2f} MP/s)")
    return {
        "path": str(out_path),
        "shape": [n_channels, height, width],
        "tile_size": tile_size,
        "n_tiles": len(tiles),
        "output_dtype": out_dtype.name,
        "halo": attributes["halo"],
        "halo_per_channel": halos,
        "settings": settings,
        "statistics": statistics,
        "normalise_range": ranges,
        "seconds": total,
        "seconds_per_channel": seconds,
        "megapixels_per_second": rate,
    }
