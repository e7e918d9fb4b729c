"""The noise-free stain signal of a cell (nucleus, chromatin, filaments, granules, membrane) and of
debris specks."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from hemoprofile.simulate.cell_models import CELL_MODELS
from hemoprofile.simulate.cells import Cell
from hemoprofile.simulate.settings import CHANNELS


def _smooth_noise(rng, shape, sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance smooth random field."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="nearest", truncate=3.0)
    return (noise - noise.mean()) / (noise.std() + 1e-9)


def _segment_distance(py, px, y0, x0, y1, x1):
    """Distance from points (py, px) to segments (y0, x0)-(y1, x1); segments on axis 0."""
    vy, vx = (y1 - y0)[:, None], (x1 - x0)[:, None]
    wy, wx = py[None, :] - y0[:, None], px[None, :] - x0[:, None]
    t = np.clip((wy * vy + wx * vx) / np.maximum(vy * vy + vx * vx, 1e-9), 0.0, 1.0)
    return np.hypot(wy - t * vy, wx - t * vx)


def _filaments(rng, cell: Cell, dy, dx, own) -> np.ndarray:
    """Filamentous texture (intermediate filaments, mostly running around the nucleus), mean 1 in ``own``."""
    n = max(8, int(2.5 * cell.radius))
    r = cell.radius * np.sqrt(rng.uniform(0.05, 0.9, n))
    phi = rng.uniform(0.0, 2 * np.pi, n)
    sy, sx = r * np.sin(phi), r * np.cos(phi)
    direction = phi + np.pi / 2 + rng.normal(0.0, 0.6, n)
    length = cell.radius * rng.uniform(0.4, 1.2, n)
    ey, ex = sy + length * np.sin(direction), sx + length * np.cos(direction)
    weight = rng.uniform(0.5, 1.5, n)
    py, px = dy[own], dx[own]
    d = _segment_distance(py, px, sy, sx, ey, ex)
    fibres = np.zeros(dy.shape)
    fibres[own] = (weight[:, None] * np.exp(-(d**2) / (2 * 0.6**2))).sum(axis=0)
    texture = 0.35 + fibres / (fibres[own].mean() + 1e-9)
    return texture / texture[own].mean()


def _granules(rng, shape, own, strength: float) -> np.ndarray:
    """Granular cytoplasm: bright specks of about a pixel; mean 1 in ``own``."""
    spots = ndimage.gaussian_filter((rng.random(shape) < 0.25).astype(float), 0.6, truncate=3.0)
    spots /= spots[own].mean() + 1e-9
    texture = (1.0 - strength) + strength * spots
    return texture / texture[own].mean()


def _nucleus_mask(rng, cell: Cell, dy, dx, rho) -> np.ndarray:
    """Nucleus of the cell in its window (before clipping to the cell's own pixels)."""
    model = CELL_MODELS[cell.model_name]
    orientation = rng.uniform(0.0, 2 * np.pi)
    cos_o, sin_o = math.cos(orientation), math.sin(orientation)
    u = dx * cos_o + dy * sin_o  # coordinates in the nucleus' own frame
    v = -dx * sin_o + dy * cos_o
    R = cell.radius
    if model.nucleus in ("round", "irregular"):
        ratio = rng.uniform(*model.nucleus_ratio)
        shift = R * (1.0 - ratio) * rng.uniform(0.0, 0.8 if model.nucleus == "round" else 1.2)
        ny, nx = dy - shift * sin_o, dx - shift * cos_o
        theta = np.arctan2(ny, nx)
        wobble_amp = 0.03 if model.nucleus == "round" else 0.09
        wobble = 1.0 + sum(
            rng.normal(0.0, wobble_amp) * np.cos(k * theta - rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4, 5)
        )
        # the nucleus follows the cell's outline (scaled), plus its own small wobble
        return np.hypot(ny, nx) / (cell.radius_at(theta) * wobble) < ratio
    if model.nucleus == "tiny":  # debris: no nucleus in about half, else a small DNA remnant
        if rng.random() < 0.5:
            return np.zeros(dy.shape, bool)
        ratio = rng.uniform(*model.nucleus_ratio)
        oy, ox = rng.normal(0.0, R * 0.25, 2)
        return np.hypot(dy - oy, dx - ox) < max(ratio * R, 1.0)
    if model.nucleus == "fragmented":  # karyorrhexis: 2-5 condensed round fragments
        mask = np.zeros(dy.shape, bool)
        for _ in range(int(rng.integers(2, 6))):
            radius = max(R * rng.uniform(*model.nucleus_ratio), 1.0)
            oy, ox = rng.normal(0.0, R * 0.3, 2)
            mask |= np.hypot(dy - oy, dx - ox) < radius
        return mask
    if model.nucleus == "kidney":
        scale = rng.uniform(*model.nucleus_ratio)
        a, b = R * 0.60 * scale, R * 0.45 * scale
        v0 = R * rng.uniform(0.0, 0.12)  # pushed away from the indentation
        ellipse = (u / a) ** 2 + ((v - v0) / b) ** 2 < 1.0
        bite_u, bite_v = a * rng.uniform(-0.2, 0.2), v0 - b * rng.uniform(0.85, 1.15)
        bite = np.hypot(u - bite_u, v - bite_v) < R * rng.uniform(0.22, 0.32)
        return ellipse & ~bite
    # lobed: 3-4 lobes along an arc, joined by thin chromatin bridges
    n_lobes = int(rng.integers(3, 5))
    span = np.deg2rad(rng.uniform(110, 220))
    angles = -span / 2 + span * np.arange(n_lobes) / (n_lobes - 1) + rng.normal(0, 0.15, n_lobes)
    arc = R * rng.uniform(0.38, 0.50)
    lu, lv = arc * np.cos(angles), arc * np.sin(angles)
    lu, lv = lu - lu.mean(), lv - lv.mean()
    lobe_r = R * rng.uniform(*model.nucleus_ratio, n_lobes)
    reach = np.hypot(lu, lv) + lobe_r
    shrink = min(1.0, 0.85 * R / reach.max())
    lu, lv, lobe_r = lu * shrink, lv * shrink, lobe_r * max(shrink, 0.85)
    mask = np.zeros(u.shape, bool)
    for k in range(n_lobes):
        stretch = rng.uniform(0.8, 1.2)
        mask |= ((u - lu[k]) / (lobe_r[k] * stretch)) ** 2 + ((v - lv[k]) * stretch / lobe_r[k]) ** 2 < 1.0
    bridges = _segment_distance(v.ravel(), u.ravel(), lv[:-1], lu[:-1], lv[1:], lu[1:]).min(axis=0)
    mask |= bridges.reshape(u.shape) < rng.uniform(0.6, 1.0)
    return mask


def render_cell(rng, cell: Cell, own: np.ndarray, dy, dx, rho) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free stain signal of one cell in its window, (channel, y, x), zero outside ``own``;
    and its nucleus mask."""
    model = CELL_MODELS[cell.model_name]
    nucleus = _nucleus_mask(rng, cell, dy, dx, rho) & own & (rho < 0.95)
    cytoplasm = own & ~nucleus
    shape = own.shape
    signal = np.zeros((len(CHANNELS),) + shape, np.float32)
    if not own.any():
        return signal, nucleus

    chromatin = np.clip(1.0 + model.chromatin * _smooth_noise(rng, shape, 0.8), 0.2, None)
    dapi = nucleus * chromatin
    if cell.cell_type == "CTC":  # nucleoli: DAPI-dim spots
        for _ in range(int(rng.integers(1, 4))):
            ny, nx = rng.normal(0.0, cell.radius * 0.2, 2)
            dapi *= 1.0 - 0.5 * np.exp(-((dy - ny) ** 2 + (dx - nx) ** 2) / (2 * 1.2**2))

    granules = _granules(rng, shape, own, model.granularity) if model.granularity > 0 else 1.0
    # CD45 is a membrane protein: seen face-on it fills the cell faintly, edge-on it makes a bright rim
    cd45 = own * (0.35 + 0.65 * np.exp(-(((rho - 0.88) / 0.16) ** 2))) * (0.5 + 0.5 * granules)
    if model.pattern == "epithelial":
        ck = (cytoplasm + 0.35 * nucleus) * _filaments(rng, cell, dy, dx, own)
        vim = (cytoplasm + 0.25 * nucleus) * _filaments(rng, cell, dy, dx, own)
    elif model.pattern == "fragment":  # blebs: blotchy, with dark gaps
        ck = own * np.clip(1.0 + 0.8 * _smooth_noise(rng, shape, 1.5), 0.05, None)
        vim = own * np.clip(1.0 + 0.5 * _smooth_noise(rng, shape, 1.5), 0.05, None)
    else:
        ck = own * granules * np.clip(1.0 + 0.3 * _smooth_noise(rng, shape, 1.0), 0.0, None)
        mottle = np.clip(1.0 + 0.2 * _smooth_noise(rng, shape, 1.0), 0.0, None)
        vim = (cytoplasm + 0.25 * nucleus) * granules * mottle
    # A level is the stain's mean over its compartment (nucleus for DAPI, cytoplasm for CK and VIM, the
    # whole cell for CD45), so a large nucleus is not dimmer per pixel just for being large.
    cyto_or_cell = cytoplasm if cytoplasm.sum() >= 3 else own
    compartments = (nucleus if nucleus.any() else own, cyto_or_cell, cyto_or_cell, own)
    for c, (channel, pattern, compartment) in enumerate(zip(CHANNELS, (dapi, ck, vim, cd45), compartments)):
        pattern = np.where(own, pattern, 0.0)
        mean = pattern[compartment].mean()
        if mean > 0:
            signal[c] = cell.levels[channel] * pattern / mean
    return signal, nucleus


def add_ck_fragment(rng, cell: Cell, signal: np.ndarray, dy, dx) -> None:
    """Lay a CK+ fragment (a blob of cytokeratin debris, 1.5-3 px sigma, peak ~4000) over a cell's
    signal in place, centred inside the cell at 20-80% of its radius: a CK+ CD45+ event."""
    theta = rng.uniform(0.0, 2 * np.pi)
    r = float(cell.radius_at(theta)) * rng.uniform(0.2, 0.8)
    cy, cx = r * math.sin(theta), r * math.cos(theta)
    sigma = rng.uniform(1.5, 3.0)
    peak = rng.lognormal(math.log(4000.0), 0.4)
    blob = np.exp(-((dy - cy) ** 2 + (dx - cx) ** 2) / (2 * sigma**2))
    signal[CHANNELS.index("CK")] += (peak * blob).astype(signal.dtype)


def render_debris(rng, mean_count: float, labels, signal) -> int:
    """Add debris specks (bright in DAPI and/or CK, never a cell) to ``signal`` in place; return the count."""
    height, width = labels.shape
    n = 0
    for _ in range(int(rng.poisson(mean_count))):
        size = float(np.clip(rng.lognormal(math.log(1.5), 0.5), 0.6, 6.0))
        pad = int(math.ceil(3 * size)) + 2
        if height <= 2 * pad or width <= 2 * pad:
            continue
        for _try in range(20):
            cy, cx = rng.uniform(pad, height - pad), rng.uniform(pad, width - pad)
            window = (slice(int(cy) - pad, int(cy) + pad + 1), slice(int(cx) - pad, int(cx) + pad + 1))
            if not labels[window].any():  # on background: debris must not alter any cell's truth
                break
        else:
            continue
        dy = np.arange(window[0].start, window[0].stop)[:, None] - cy
        dx = np.arange(window[1].start, window[1].stop)[None, :] - cx
        speck = np.zeros((window[0].stop - window[0].start, window[1].stop - window[1].start))
        for _blob in range(int(rng.integers(1, 5))):
            oy, ox = rng.normal(0.0, size * 0.7, 2)
            sigma = size * rng.uniform(0.3, 0.8)
            speck += rng.uniform(0.4, 1.0) * np.exp(-((dy - oy) ** 2 + (dx - ox) ** 2) / (2 * sigma**2))
        brightness = rng.lognormal(math.log(6000), 0.6)
        kind = rng.random()
        dapi, ck = (1.0, 0.0) if kind < 0.4 else (0.0, 1.0) if kind < 0.7 else (1.0, rng.uniform(0.3, 1.0))
        signal[0][window] += (brightness * dapi) * speck
        signal[1][window] += (brightness * ck) * speck
        n += 1
    return n
