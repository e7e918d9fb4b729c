"""Fixed-orientation patches (``embed.orientation: major_axis``): each patch is rotated at load time so
its cell's major axis is horizontal, then flipped so mirror twins agree.

One function, :func:`orient_patches`, does it for training (:func:`hemoprofile.embed.sample.load_sample`),
embedding (:func:`hemoprofile.embed.slide.embed_slide`) and the reconstruction figures; nothing rotated is
stored (measured in bench/RESULTS.md: the rotation costs less than reading the patches).

The steps, per patch (P x P, rotation about the patch centre ``((P - 1) / 2, (P - 1) / 2)``):

1. **Angle**: cells.parquet's ``orientation_deg`` (the second moments of the cell's nucleus mask, from
   extract) when the table has it, else :func:`patch_angles`: the intensity moments of the patch's
   nucleus weights (:func:`nucleus_weights`). Image axes: x = column, y = row (down); the angle turns
   from +x towards +y, in (-90, 90].
2. **Rotation** by that angle so the major axis lies along +x (bilinear; beyond the patch its edge
   pixels repeat).
3. **Sign rule**: in the rotated frame, the third central moments of the nucleus weights along x and
   along y are made >= 0 by flipping x and/or y. A mirror image has the same second moments but third
   moments of opposite sign, so a cell and its mirror twin end in the same patch.

Steps 2 and 3 are one resampling (torch's ``grid_sample``; the rest is numpy); speed measured in
bench/RESULTS.md (issue 21 section).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ORIENTATIONS = ("none", "major_axis")
#: Channel whose brightness marks the nucleus in fluorescence patches (extract.nucleus_channel's default).
NUCLEUS_CHANNEL = "DAPI"
#: Colour channels of brightfield crops (stained nuclei are dark): the weights are the darkness.
BRIGHTFIELD_CHANNELS = ({"R", "G", "B"}, {"gray"})
#: Per patch, weights below this quantile are dropped (keeps the nucleus, not the cytoplasm or background).
WEIGHT_QUANTILE = 0.8


def _unit(patches: np.ndarray) -> np.ndarray:
    x = np.asarray(patches)
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.float32) / np.float32(np.iinfo(x.dtype).max)
    return x.astype(np.float32, copy=False)


def nucleus_weights(patches: np.ndarray, channels: Sequence[str], nucleus_channel: str = NUCLEUS_CHANNEL) -> np.ndarray:
    """(N, P, P) non-negative weights of each patch's nucleus: the ``nucleus_channel`` when present
    (bright nucleus), the darkness ``1 - mean`` for R,G,B or gray crops (stained nucleus), else the sum of
    the channels; per patch, minus its ``WEIGHT_QUANTILE`` quantile and clipped at 0."""
    x = _unit(patches)
    names = [str(c) for c in channels]
    if nucleus_channel in names:
        w = x[:, names.index(nucleus_channel)]
    elif set(names) in BRIGHTFIELD_CHANNELS:
        w = 1.0 - x.mean(1)
    else:
        w = x.sum(1)
    q = np.quantile(w.reshape(len(w), -1), WEIGHT_QUANTILE, axis=1).astype(np.float32) if len(w) else np.zeros(0)
    w = w - q[:, None, None]
    return np.maximum(w, np.float32(0), out=w)


def _moments(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weighted centroid offsets from the patch centre and second moments: (cy, cx, var_y, var_x, cov)."""
    n, p, _ = w.shape
    c = (p - 1) / 2.0
    grid = np.arange(p, dtype=np.float64) - c
    total = np.maximum(w.sum((1, 2), dtype=np.float64), 1e-12)
    wy, wx = w.sum(2, dtype=np.float64), w.sum(1, dtype=np.float64)  # marginals (n, P)
    cy, cx = wy @ grid / total, wx @ grid / total
    var_y = wy @ grid**2 / total - cy**2
    var_x = wx @ grid**2 / total - cx**2
    cov = np.einsum("nyx,y,x->n", w, grid, grid, dtype=np.float64) / total - cy * cx
    return cy, cx, var_y, var_x, cov


def _central_moments(w: np.ndarray) -> np.ndarray:
    """(N, 4, 4) central moments ``mu[n, q, p] = sum w (y - cy)^q (x - cx)^p`` up to order 3 in each
    axis, from raw moments (two small matrix products per patch), normalised by the total weight."""
    n, p, _ = w.shape
    grid = np.arange(p, dtype=np.float64) - (p - 1) / 2.0
    powers = np.stack([grid**k for k in range(4)], 1)  # (P, 4)
    raw = np.einsum("yq,nyx,xp->nqp", powers, w.astype(np.float64), powers, optimize=True)
    raw /= np.maximum(raw[:, :1, :1], 1e-12)
    cy, cx = raw[:, 1, 0], raw[:, 0, 1]
    binom = ((1, 0, 0, 0), (1, 1, 0, 0), (1, 2, 1, 0), (1, 3, 3, 1))
    mu = np.zeros_like(raw)
    for q in range(4):
        for pp in range(4):
            for j in range(q + 1):
                for i in range(pp + 1):
                    mu[:, q, pp] += binom[q][j] * binom[pp][i] * (-cy) ** (q - j) * (-cx) ** (pp - i) * raw[:, j, i]
    return mu


def patch_angles(patches: np.ndarray, channels: Sequence[str], nucleus_channel: str = NUCLEUS_CHANNEL) -> np.ndarray:
    """Major axis angle (degrees in (-90, 90], x = column, y = row) of each patch's nucleus weights
    (:func:`nucleus_weights`); 0 for a patch without weights.

    Example
    -------
    >>> p = np.zeros((1, 1, 9, 9), np.uint8); p[0, 0, 4, 1:8] = 255  # a horizontal bar
    >>> patch_angles(p, ["DAPI"]).tolist(), patch_angles(p.transpose(0, 1, 3, 2), ["DAPI"]).tolist()
    ([0.0], [90.0])
    """
    if not len(patches):
        return np.zeros(0)
    _, _, var_y, var_x, cov = _moments(nucleus_weights(patches, channels, nucleus_channel))
    deg = np.degrees(0.5 * np.arctan2(2.0 * cov, var_x - var_y))
    return np.where(deg <= -90.0, deg + 180.0, deg)


def orient_patches(patches: np.ndarray, channels: Sequence[str], angles: np.ndarray | None = None,
                   nucleus_channel: str = NUCLEUS_CHANNEL) -> np.ndarray:
    """Rotate each patch so its major axis is horizontal and flip it by the sign rule (module docstring).

    Parameters
    ----------
    patches : (N, C, P, P) stored patches (any dtype; the result has it, integers rounded).
    channels : channel names (which one marks the nucleus: :func:`nucleus_weights`).
    angles : (N,) major axis angles in degrees (cells.parquet ``orientation_deg``); ``None`` or NaN
        entries are computed from the patch (:func:`patch_angles`).

    Returns
    -------
    (N, C, P, P) oriented patches.

    Example
    -------
    >>> p = np.zeros((1, 1, 9, 9), np.uint8); p[0, 0, 1:8, 4] = 200; p[0, 0, 1, 4] = 255  # vertical bar
    >>> o = orient_patches(p, ["DAPI"])
    >>> o[0, 0, 4].tolist()  # now horizontal; the heavy end (255) on the left: the long tail of the
    ...                      # mass is towards +x (third central moment along x >= 0)
    [0, 255, 200, 200, 200, 200, 200, 200, 0]
    """
    x = np.asarray(patches)
    n = len(x)
    if not n:
        return x.copy()
    p = x.shape[-1]
    a = np.full(n, np.nan) if angles is None else np.asarray(angles, np.float64).copy()
    missing = ~np.isfinite(a)
    if missing.any():
        a[missing] = patch_angles(x[missing], channels, nucleus_channel)
    t = np.radians(a)
    cos, sin = np.cos(t), np.sin(t)
    # sign rule: third central moments of the nucleus weights along the rotated axes u (major) and v
    mu = _central_moments(nucleus_weights(x, channels, nucleus_channel))  # mu[n, q, p]: y^q x^p
    m30, m21, m12, m03 = mu[:, 0, 3], mu[:, 1, 2], mu[:, 2, 1], mu[:, 3, 0]
    # u = x cos + y sin, v = -x sin + y cos (offsets from the centroid), expanded
    u3 = cos**3 * m30 + 3 * cos**2 * sin * m21 + 3 * cos * sin**2 * m12 + sin**3 * m03
    v3 = -(sin**3) * m30 + 3 * sin**2 * cos * m21 - 3 * sin * cos**2 * m12 + cos**3 * m03
    sx = np.where(u3 < 0, -1.0, 1.0)
    sy = np.where(v3 < 0, -1.0, 1.0)
    # output pixel (y', x') samples the source at centre + R(angle) (sx x', sy y'): an affine map
    c = (p - 1) / 2.0
    grid = np.arange(p, dtype=np.float32) - np.float32(c)
    ax, bx = (sx * cos).astype(np.float32), (-sy * sin).astype(np.float32)  # src_x = c + ax x' + bx y'
    ay, by = (sx * sin).astype(np.float32), (sy * cos).astype(np.float32)   # src_y = c + ay x' + by y'
    gx, gy = grid[None, None, :], grid[:, None][None]
    src_x = c + ax[:, None, None] * gx + bx[:, None, None] * gy
    src_y = c + ay[:, None, None] * gx + by[:, None, None] * gy
    return _bilinear(x, src_y, src_x)


def _bilinear(x: np.ndarray, src_y: np.ndarray, src_x: np.ndarray) -> np.ndarray:
    """Sample (N, C, P, P) ``x`` at (N, P, P) coordinates, bilinear (``torch.nn.functional.grid_sample``,
    about 10x numpy gathers); outside the patch its edge pixels repeat (zero for masked fluorescence
    patches, the background for brightfield crops); same dtype, integers rounded."""
    import torch  # the embed stage's training and embedding load it anyway

    n, ch, p, _ = x.shape
    scale = np.float32(2.0 / (p - 1))
    grid = np.stack([src_x * scale - 1, src_y * scale - 1], -1).astype(np.float32)  # (N, P, P, 2): x, y
    with torch.no_grad():
        out = torch.nn.functional.grid_sample(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(grid),
                                              mode="bilinear", padding_mode="border", align_corners=True).numpy()
    if np.issubdtype(x.dtype, np.integer):  # the inputs' range bounds bilinear values: no clipping needed
        return np.rint(out, out=out).astype(x.dtype)
    return out.astype(x.dtype)


def maybe_orient(patches: np.ndarray, orientation: str, channels: Sequence[str],
                 angles: np.ndarray | None = None) -> np.ndarray:
    """:func:`orient_patches` for ``orientation == "major_axis"``, the patches unchanged for ``"none"``."""
    if orientation == "none":
        return patches
    if orientation != "major_axis":
        raise ValueError(f"embed.orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    return orient_patches(patches, channels, angles)
