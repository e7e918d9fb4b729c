"""Drawing cells (size, outline, marker levels), placing them in a frame (touching, clustered or
apart) and rasterising them into a label image."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hemoprofile.simulate.cell_models import (
    CELL_MODELS,
    CTC_EMT_CK,
    CTC_EMT_FRACTION,
    CTC_EMT_VIM,
    CTC_SMALL_FRACTION,
)
from hemoprofile.simulate.settings import CHANNELS

_HARMONICS = np.arange(2, 8)  # radial harmonics 2 (ellipticity) .. 7 (boundary wiggles)
_MAX_PLACEMENT_TRIES = 60


@dataclass
class Cell:
    cell_type: str
    radius: float
    amps: np.ndarray  # amplitudes of _HARMONICS
    phases: np.ndarray
    rmax: float
    levels: dict[str, float]
    cy: float = math.nan
    cx: float = math.nan
    partner_of: int = -1  # index of the CTC this leukocyte is clustered with
    cluster: int = -1  # slide-wide cluster id once the frame is settled
    model: str = ""  # key of CELL_MODELS (the cell type's own when empty)
    lookalike: str = ""  # the look-alike kind this cell is ("" for an ordinary cell)
    ctc_subtype: str = ""  # CK_high | EMT | small for CTCs, "" otherwise
    ck_fragment: bool = False  # a CK+ fragment lies over this (leukocyte) cell

    @property
    def model_name(self) -> str:
        return self.model or self.cell_type

    def radius_at(self, theta):
        """Boundary radius in direction ``theta`` (radians, image coordinates, y down)."""
        theta = np.asarray(theta, dtype=float)[..., None]
        return self.radius * (1.0 + np.sum(self.amps * np.cos(_HARMONICS * theta - self.phases), axis=-1))


def draw_cell(rng: np.random.Generator, cell_type: str, emt_fraction: float = CTC_EMT_FRACTION,
              small_fraction: float = CTC_SMALL_FRACTION, model_name: str = "") -> Cell:
    """Draw one cell of ``cell_type`` (its size, outline and marker levels) from its model.

    A CTC first draws its subtype from one uniform number: EMT (CK-low, VIM-high) with probability
    ``emt_fraction``, small (model ``CTC_small``) with ``small_fraction``, else CK-high. ``model_name``
    draws from another model than the type's own (a look-alike recorded under ``cell_type``).
    """
    subtype = ""
    if cell_type == "CTC":
        u = rng.random()
        subtype = "EMT" if u < emt_fraction else "small" if u < emt_fraction + small_fraction else "CK_high"
        if subtype == "small":
            model_name = "CTC_small"
    model = CELL_MODELS[model_name or cell_type]
    if model.radius_uniform:
        radius = rng.uniform(*model.radius)
    else:
        mean, cv = model.radius
        radius = mean * math.exp(rng.normal(0.0, cv) - cv**2 / 2)
    # higher harmonics weaker (~1/k): lumpy outlines rather than star shapes
    amps = np.abs(rng.normal(0.0, 1.0, len(_HARMONICS))) * model.irregularity * 3.0 / _HARMONICS
    amps[0] = rng.uniform(0.0, model.ellipticity)
    # the radius stays positive: every ray from the centre crosses the outline once
    amps *= min(1.0, 0.45 / amps.sum())
    phases = rng.uniform(0.0, 2 * np.pi, len(_HARMONICS))
    shared = rng.normal(0.0, 0.1)
    levels = {}
    means = dict(model.levels)
    if subtype == "EMT":
        means.update(CK=CTC_EMT_CK, VIM=CTC_EMT_VIM)
    for channel in CHANNELS:
        factor = math.exp(shared + rng.normal(0.0, model.level_sigma) - model.level_sigma**2 / 2)
        levels[channel] = means[channel] * factor
    return Cell(cell_type, radius, amps, phases, radius * (1.0 + amps.sum()), levels, model=model_name,
                ctc_subtype=subtype)


def place_cells(rng, cells: list[Cell], shape: tuple[int, int], touching_fraction: float) -> list[int]:
    """Place cells in a frame (sets cy, cx); return the indices of those placed, in placement order.

    CTCs go first (large, rare) and their cluster partners right after them, pressed against them;
    then leukocytes from largest to smallest, each touching an already placed leukocyte with
    probability ``touching_fraction`` and otherwise at least 2 px clear of every other cell. Cells that
    find no room within a fixed number of tries are left out (a frame can only hold so many).
    """
    height, width = shape
    centres = np.zeros((len(cells), 2))
    rmax = np.zeros(len(cells))
    is_ctc = np.zeros(len(cells), bool)
    placed: list[int] = []

    def inside(i, y, x):
        margin = cells[i].rmax + 1.0
        return margin <= y <= height - 1 - margin and margin <= x <= width - 1 - margin

    def clear_of_others(i, y, x, gap, except_index=-1):
        if not placed:
            return True
        idx = np.array(placed)
        d = np.hypot(centres[idx, 0] - y, centres[idx, 1] - x)
        ok = d >= rmax[idx] + cells[i].rmax + gap
        ok |= idx == except_index
        return bool(ok.all())

    def commit(i, y, x):
        cells[i].cy, cells[i].cx = float(y), float(x)
        centres[i] = (y, x)
        rmax[i] = cells[i].rmax
        is_ctc[i] = cells[i].cell_type == "CTC"
        placed.append(i)

    def place_free(i):
        lo = cells[i].rmax + 1.0
        if height - 1 - 2 * lo < 0 or width - 1 - 2 * lo < 0:
            return False
        for _ in range(_MAX_PLACEMENT_TRIES):
            y = rng.uniform(lo, height - 1 - lo)
            x = rng.uniform(lo, width - 1 - lo)
            if clear_of_others(i, y, x, gap=2.0):
                commit(i, y, x)
                return True
        return False

    def place_touching(i, target):
        t = cells[target]
        for _ in range(_MAX_PLACEMENT_TRIES // 2):
            theta = rng.uniform(0.0, 2 * np.pi)
            # centre distance from both boundaries along the line joining the centres, slightly pressed
            reach = float(t.radius_at(theta)) + float(cells[i].radius_at(theta + np.pi))
            d = reach * rng.uniform(0.86, 0.97)
            y, x = t.cy + d * np.sin(theta), t.cx + d * np.cos(theta)
            if inside(i, y, x) and clear_of_others(i, y, x, gap=1.0, except_index=target):
                commit(i, y, x)
                return True
        return False

    ctcs = [i for i, c in enumerate(cells) if c.cell_type == "CTC"]
    for i in ctcs:
        ctc_placed = place_free(i)
        for j, c in enumerate(cells):
            if c.partner_of == i and not (ctc_placed and place_touching(j, i)):
                c.partner_of = -1  # no cluster after all: an ordinary leukocyte
    others = [i for i, c in enumerate(cells) if c.cell_type != "CTC" and c.partner_of < 0]
    others.sort(key=lambda i: -cells[i].rmax)
    for i in others:
        leukocytes = [j for j in placed if not is_ctc[j]]
        if leukocytes and rng.random() < touching_fraction:
            target = leukocytes[int(rng.integers(len(leukocytes)))]
            if place_touching(i, target):
                continue
        place_free(i)
    return placed


def cell_window(cell: Cell, shape, pad: int = 0) -> tuple[slice, slice]:
    r = cell.rmax + 1 + pad
    y0, y1 = max(int(math.floor(cell.cy - r)), 0), min(int(math.ceil(cell.cy + r)) + 1, shape[0])
    x0, x1 = max(int(math.floor(cell.cx - r)), 0), min(int(math.ceil(cell.cx + r)) + 1, shape[1])
    return slice(y0, y1), slice(x0, x1)


def polar(cell: Cell, window: tuple[slice, slice]):
    """Offsets (dy, dx) of the window's pixel centres from the cell centre and the normalised radius rho
    (0 at the centre, 1 on the boundary)."""
    dy = np.arange(window[0].start, window[0].stop, dtype=float)[:, None] - cell.cy
    dx = np.arange(window[1].start, window[1].stop, dtype=float)[None, :] - cell.cx
    dy, dx = np.broadcast_arrays(dy, dx)
    rho = np.hypot(dy, dx) / cell.radius_at(np.arctan2(dy, dx))
    return dy, dx, rho


def rasterise(cells: list[Cell], order: list[int], shape) -> tuple[np.ndarray, dict[int, tuple]]:
    """Label image with temporary ids (index + 1). Where cells overlap, a pixel goes to the cell it is
    relatively deepest inside (smallest rho), which splits pressed cells along a natural contact line."""
    labels = np.zeros(shape, np.int32)
    depth = np.full(shape, np.inf, np.float32)
    windows = {}
    for i in order:
        window = cell_window(cells[i], shape)
        dy, dx, rho = polar(cells[i], window)
        take = (rho < 1.0) & (rho < depth[window])
        labels[window][take] = i + 1
        depth[window][take] = rho[take]
        windows[i] = window
    return labels, windows


def keep_largest_component(labels: np.ndarray, i: int, window) -> None:
    own = labels[window] == i + 1
    components, n = ndimage.label(own)
    if n > 1:
        sizes = np.bincount(components.ravel())[1:]
        labels[window][own & (components != np.argmax(sizes) + 1)] = 0
