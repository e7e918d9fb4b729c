"""CLAHE on a block grid anchored to the slide (:func:`clahe_anchored`), so a tile grown by the halo of
:func:`hemoprofile.preprocess.settings.required_halo` reproduces the whole-image values bit for bit.
"""

from __future__ import annotations

import numpy as np

#: Grey-level bins of the CLAHE histograms (as skimage's default ``nbins``); a clahe section may set
#: ``nbins`` to override it.
CLAHE_NBINS = 256


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
