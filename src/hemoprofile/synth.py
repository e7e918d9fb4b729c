"""Simulator of HDSCA-like immunofluorescence slides (DAPI, CK, VIM, CD45) with ground truth.

The synthetic cohort is the project's embedded default: every stage can run on it with no data and be
scored against what the simulator knows. A slide is a ``rows x cols`` grid of frames placed side by
side without overlap. For each slide the simulator writes::

    <out_dir>/<slide>/frames/             one 2-D uint16 TIFF per frame and channel (output_format frames)
    <out_dir>/<slide>/slide.ome.tif       or one tiled, zlib-compressed C x Y x X OME-TIFF (ome-tiff)
    <out_dir>/<slide>/truth_labels.zarr   OME-Zarr label image of the whole mosaic (uint32, ids 1..N)
    <out_dir>/<slide>/truth_cells.parquet one row per cell (see ``TRUTH_COLUMNS``)

What is modelled, and why it makes segmentation and classification non-trivial:

- Cell types (radius in 0.65 um pixels): CD4_T (~6.3), CD8_T (~6.0), B (~5.8), NK (~7.0) lymphocytes,
  granulocytes (~8.5, 3-4 connected nuclear lobes), monocytes (~10.5, kidney-shaped nucleus) and CTCs
  (12-20, large irregular CK+ CD45- cells, some VIM+). Every size, shape and marker level is drawn per
  cell from overlapping distributions (``CELL_MODELS``); CD4/CD8 differ only subtly (size, CD45).
- Shapes: radial harmonics and ellipticity at a random orientation; nuclei drawn in the cell's frame.
- Placement: cells lie wholly inside their frame; a fraction touch or slightly overlap a neighbour
  (each pixel belongs to one cell: the one whose boundary it is relatively deeper inside); CTC-leukocyte
  clusters share a ``cluster_id``; debris specks are bright in DAPI and/or CK but are not cells.
- Optics per channel: per-cell defocus, Gaussian PSF, background, smooth uneven illumination (slide-wide
  vignetting times per-frame low-frequency variation), Poisson shot noise, read noise, camera offset.
- Cohort: a patient's composition is Dirichlet around its condition's; CTCs are Poisson per slide, with
  the condition's rate, share in CTC-leukocyte clusters (``cluster_rate``) and EMT fraction
  (``emt_fraction``); each slide has its own per-channel gain and background (a batch effect for batch
  correction to remove). A condition's ``blind_patients`` are simulated from it but enter the sample
  sheet with condition ``unknown`` (:data:`UNKNOWN_CONDITION`): new patients for the patient model to
  score, whose truth stays in ``truth_cells.parquet``.

The recorded ``true_<channel>`` levels are the mean noise-free signal inside the cell's label before
optics and before the slide's batch gain, so they are comparable across slides.

Randomness: slide ``i`` (its position in :func:`plan_cohort`) draws its slide-level values from
``default_rng([seed, 2, i])`` and frame ``f`` from ``default_rng([seed, 3, i, f])``; patient ``p``'s
composition from ``default_rng([seed, 1, p])``. The same config therefore gives bit-identical files,
slides are independent streams, and a frame does not depend on how many frames came before it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import tifffile
from scipy import ndimage

from hemoprofile.vocabulary import CELL_TYPES, HDSCA_CHANNELS, LEUKOCYTE_TYPES, LINEAGE, TYPE_COLOURS, channel_rgb  # noqa: F401
from hemoprofile.io import (
    atomic_output,
    create_ome_zarr_labels,
    frame_filename,
    frame_grid_position,
    open_ome_zarr,
)

log = logging.getLogger(__name__)

CHANNELS = tuple(HDSCA_CHANNELS)  # DAPI, CK, VIM, CD45
#: Sample-sheet condition of blinded synthetic patients (and of any patient whose condition is not known).
UNKNOWN_CONDITION = "unknown"
#: Schema of truth_cells.parquet: one row per cell, (slide, cell_id) is the key; cell_id is the cell's
#: value in truth_labels.zarr. y, x: centroid in slide-mosaic pixels; area_px: pixels in the label image;
#: radius_px: the drawn nominal radius; cluster_id: shared by a CTC and its leukocytes, -1 outside
#: clusters; touching: the label is 8-adjacent to another cell's; true_<channel>: mean noise-free stain
#: signal in the label, before optics and batch gain.
TRUTH_SCHEMA = pa.schema([
    ("slide", pa.string()), ("patient", pa.string()), ("condition", pa.string()), ("cell_id", pa.int64()),
    ("cell_type", pa.string()), ("lineage", pa.string()), ("frame", pa.int32()), ("y", pa.float64()),
    ("x", pa.float64()), ("area_px", pa.int64()), ("radius_px", pa.float64()), ("nucleus_area_px", pa.int64()),
    ("cluster_id", pa.int64()), ("touching", pa.bool_()),
    *((f"true_{c}", pa.float64()) for c in CHANNELS),
])
TRUTH_COLUMNS = tuple(TRUTH_SCHEMA.names)
_TRUTH_ROW_GROUP = 100_000  # rows buffered before a parquet row group is written

#: An OME-TIFF slide is assembled in memory (tifffile writes a C x Y x X page per channel); above this
#: size the frame-folder format, written frame by frame, is the way.
OME_TIFF_MAX_BYTES = 64 * 2**20
OME_TIFF_TILE = 256


@dataclass(frozen=True)
class CellModel:
    """Distributions of one cell type's size, shape and marker levels.

    Levels are mean pre-optics signal (ADU at gain 1) of each channel's stain; a cell's level is the type's
    mean times a lognormal factor (a shared factor of sigma 0.1 plus an independent one of
    ``level_sigma``), so neighbouring types overlap.
    """

    radius: tuple[float, float]  # (mean, coefficient of variation); CTCs: (low, high) of a uniform
    ellipticity: float  # maximum amplitude of the 2nd radial harmonic
    irregularity: float  # sigma of the 3rd harmonic's amplitude; the kth's is 3/k of it (up to the 7th)
    nucleus: str  # round | lobed | kidney | irregular
    # uniform (low, high) of the nucleus size relative to the cell radius; lobed: each lobe's radius;
    # kidney: a scale of the 0.60 x 0.45 radius ellipse
    nucleus_ratio: tuple[float, float]
    levels: dict[str, float]
    level_sigma: float = 0.22
    granularity: float = 0.0  # 0: smooth cytoplasm; up to 1: strongly granular
    chromatin: float = 0.2  # relative amplitude of the DAPI texture


CELL_MODELS: dict[str, CellModel] = {
    "CD4_T": CellModel((6.3, 0.08), 0.10, 0.025, "round", (0.76, 0.86),
                       {"DAPI": 2800, "CK": 15, "VIM": 650, "CD45": 2500}),
    # CD8 T cells: a little smaller and a little brighter in CD45 than CD4 T cells, nothing more.
    "CD8_T": CellModel((6.0, 0.08), 0.10, 0.025, "round", (0.76, 0.86),
                       {"DAPI": 2800, "CK": 15, "VIM": 600, "CD45": 2900}),
    "B": CellModel((5.8, 0.08), 0.08, 0.02, "round", (0.84, 0.92),
                   {"DAPI": 3000, "CK": 15, "VIM": 550, "CD45": 2200}),
    "NK": CellModel((7.0, 0.09), 0.12, 0.03, "round", (0.64, 0.76),
                    {"DAPI": 2600, "CK": 20, "VIM": 800, "CD45": 2300}, granularity=0.55),
    # Granulocytes: weaker CD45 than lymphocytes, granules (a little CK-channel autofluorescence).
    "granulocyte": CellModel((8.5, 0.08), 0.12, 0.03, "lobed", (0.27, 0.33),
                             {"DAPI": 3300, "CK": 60, "VIM": 900, "CD45": 1300}, granularity=0.6,
                             chromatin=0.15),
    "monocyte": CellModel((10.5, 0.09), 0.16, 0.035, "kidney", (0.9, 1.1),
                          {"DAPI": 2300, "CK": 20, "VIM": 1800, "CD45": 2800}, granularity=0.15,
                          chromatin=0.25),
    # CTCs: large, CK-high (filamentous), CD45-negative, dimmer DAPI per pixel; VIM set per cell (EMT).
    "CTC": CellModel((12.0, 20.0), 0.25, 0.07, "irregular", (0.45, 0.65),
                     {"DAPI": 1500, "CK": 4000, "VIM": 150, "CD45": 12}, level_sigma=0.35, chromatin=0.35),
}

#: Fraction of CTCs with an epithelial-mesenchymal phenotype (VIM-high; a condition's ``emt_fraction``
#: overrides it), and their VIM level.
CTC_EMT_FRACTION = 0.3
CTC_EMT_VIM = 1600.0

#: Relative background per channel (autofluorescence and filter bleed-through differ between channels).
BACKGROUND_FACTOR = {"DAPI": 1.0, "CK": 0.8, "VIM": 0.9, "CD45": 1.15}

_HARMONICS = np.arange(2, 8)  # radial harmonics 2 (ellipticity) .. 7 (boundary wiggles)
_MAX_PLACEMENT_TRIES = 60


# --- configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    seed: int
    slides_per_patient: int
    output_format: str
    pixel_size_um: float
    frame_h: int
    frame_w: int
    rows: int
    cols: int
    cells_per_frame: float
    touching_fraction: float
    cluster_rate: float
    debris_per_frame: float
    batch_effect: float
    blur_sigma: float
    background: float
    illumination: float
    photons_per_unit: float
    read_noise: float
    offset: float
    conditions: dict
    patient_variation: float

    @property
    def n_frames(self) -> int:
        return self.rows * self.cols


def _settings(cfg: Mapping) -> _Settings:
    def get(*keys):
        node = cfg
        for key in keys:
            if not isinstance(node, Mapping) or key not in node:
                raise KeyError(
                    f"synthetic config lacks key '{'.'.join(keys)}' (hemoprofile.config.validate_config "
                    "fills every default)"
                )
            node = node[key]
        return node

    output_format = str(get("output_format"))
    if output_format not in ("frames", "ome-tiff"):
        raise ValueError(f"synthetic output_format {output_format!r} is not one of frames, ome-tiff")
    conditions = dict(get("conditions"))
    if not conditions:
        raise ValueError("synthetic config has no conditions")
    for name, condition in conditions.items():
        composition = condition.get("composition", {})
        unknown = sorted(set(composition) - set(LEUKOCYTE_TYPES))
        if unknown:
            raise ValueError(
                f"synthetic condition {name!r}: unknown cell type(s) {unknown} in composition; allowed: "
                f"{', '.join(LEUKOCYTE_TYPES)} (CTCs come from ctc_per_1000)"
            )
        if sum(float(w) for w in composition.values()) <= 0:
            raise ValueError(f"synthetic condition {name!r}: composition weights sum to 0")
    optics = get("optics")
    return _Settings(
        seed=int(get("seed")),
        slides_per_patient=int(get("slides_per_patient")),
        output_format=output_format,
        pixel_size_um=float(get("pixel_size_um")),
        frame_h=int(get("frame", "height")),
        frame_w=int(get("frame", "width")),
        rows=int(get("grid", "rows")),
        cols=int(get("grid", "cols")),
        cells_per_frame=float(get("cells_per_frame")),
        touching_fraction=float(get("touching_fraction")),
        cluster_rate=float(get("cluster_rate")),
        debris_per_frame=float(get("debris_per_frame")),
        batch_effect=float(get("batch_effect")),
        blur_sigma=float(optics["blur_sigma"]),
        background=float(optics["background"]),
        illumination=float(optics["illumination"]),
        photons_per_unit=float(optics["photons_per_unit"]),
        read_noise=float(optics["read_noise"]),
        offset=float(optics["offset"]),
        conditions=conditions,
        patient_variation=float(get("patient_variation")),
    )


# --- cohort plan -----------------------------------------------------------------------------------


def plan_cohort(synth_cfg: Mapping, out_dir: str | os.PathLike) -> pd.DataFrame:
    """Plan the synthetic cohort: one row per slide, in the format of the sample sheet.

    Patients are numbered P01, P02, ... across conditions in the order of ``synth_cfg["conditions"]``;
    each has ``slides_per_patient`` slides named ``<patient>_S<k>``. No file is read or written; the
    plan depends only on the config, so the workflow can build its job graph from it.

    Parameters
    ----------
    synth_cfg : the ``synthetic`` section of the config (defaults filled in).
    out_dir : folder that receives one sub-folder per slide (``<out_dir>/<slide>/``).

    Returns
    -------
    pandas.DataFrame with columns slide, patient, condition, path, format, channels, pixel_size_um,
    frame_rows, frame_cols, batch (the slide name: each slide has its own batch effect).

    Example
    -------
    >>> plan = plan_cohort(cfg, "results/synthetic")  # doctest: +SKIP
    >>> plan.loc[0, ["slide", "patient", "condition", "path"]].tolist()  # doctest: +SKIP
    ['P01_S1', 'P01_S1', 'control', 'results/synthetic/P01_S1/frames']
    """
    s = _settings(synth_cfg)
    n_patients = sum(_patients_of(spec) for spec in s.conditions.values())
    width = max(2, len(str(n_patients)))
    image_name = "frames" if s.output_format == "frames" else "slide.ome.tif"
    rows = []
    patient_number = 0
    for condition, spec in s.conditions.items():
        labelled = int(spec.get("patients", 0))
        for j in range(_patients_of(spec)):
            patient_number += 1
            patient = f"P{patient_number:0{width}d}"
            for k in range(1, s.slides_per_patient + 1):
                slide = f"{patient}_S{k}"
                rows.append({
                    "slide": slide,
                    "patient": patient,
                    "condition": condition if j < labelled else UNKNOWN_CONDITION,
                    "path": os.path.join(os.fspath(out_dir), slide, image_name),
                    "format": s.output_format,
                    "channels": ",".join(CHANNELS),
                    "pixel_size_um": s.pixel_size_um,
                    "frame_rows": s.rows,
                    "frame_cols": s.cols,
                    "batch": slide,
                })
    columns = ["slide", "patient", "condition", "path", "format", "channels", "pixel_size_um",
               "frame_rows", "frame_cols", "batch"]
    plan = pd.DataFrame(rows, columns=columns)
    return plan.astype({"pixel_size_um": float, "frame_rows": int, "frame_cols": int})


def patient_composition(synth_cfg: Mapping, patient: str) -> dict[str, float]:
    """Return a patient's leukocyte composition: Dirichlet(patient_variation x condition composition).

    Parameters
    ----------
    synth_cfg : the ``synthetic`` section of the config.
    patient : a patient name from :func:`plan_cohort` (``P07``).

    Returns
    -------
    dict cell type -> fraction (sums to 1; types absent from the condition's composition get 0).
    """
    s = _settings(synth_cfg)
    number = int(str(patient).lstrip("P"))
    condition = _patient_condition(s, number)
    return dict(zip(LEUKOCYTE_TYPES, _composition(s, condition, number)))


def _patients_of(spec: Mapping) -> int:
    """Patients simulated for a condition: the labelled ones and the blinded ones."""
    return int(spec.get("patients", 0)) + int(spec.get("blind_patients", 0))


def _patient_condition(s: _Settings, number: int) -> str:
    first = 1
    for name, spec in s.conditions.items():
        count = _patients_of(spec)
        if first <= number < first + count:
            return name
        first += count
    raise ValueError(f"patient P{number:02d} is not in the synthetic cohort")


def _composition(s: _Settings, condition: str, patient_number: int) -> np.ndarray:
    weights = s.conditions[condition]["composition"]
    mean = np.array([float(weights.get(t, 0.0)) for t in LEUKOCYTE_TYPES])
    mean = mean / mean.sum()
    rng = np.random.default_rng([s.seed, 1, patient_number])
    present = mean > 0  # Dirichlet needs positive concentrations; absent types stay absent
    composition = np.zeros_like(mean)
    composition[present] = rng.dirichlet(s.patient_variation * mean[present])
    return composition


# --- cells: shape, placement, rasterisation, rendering ----------------------------------------------


@dataclass
class _Cell:
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

    def radius_at(self, theta):
        """Boundary radius in direction ``theta`` (radians, image coordinates, y down)."""
        theta = np.asarray(theta, dtype=float)[..., None]
        return self.radius * (1.0 + np.sum(self.amps * np.cos(_HARMONICS * theta - self.phases), axis=-1))


def _draw_cell(rng: np.random.Generator, cell_type: str, emt_fraction: float = CTC_EMT_FRACTION) -> _Cell:
    model = CELL_MODELS[cell_type]
    if cell_type == "CTC":
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
    for channel in CHANNELS:
        mean = model.levels[channel]
        if cell_type == "CTC" and channel == "VIM" and rng.random() < emt_fraction:
            mean = CTC_EMT_VIM
        levels[channel] = mean * math.exp(shared + rng.normal(0.0, model.level_sigma) - model.level_sigma**2 / 2)
    return _Cell(cell_type, radius, amps, phases, radius * (1.0 + amps.sum()), levels)


def _place_cells(rng, cells: list[_Cell], shape: tuple[int, int], touching_fraction: float) -> list[int]:
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


def _bbox(cell: _Cell, shape, pad: int = 0) -> tuple[slice, slice]:
    r = cell.rmax + 1 + pad
    y0, y1 = max(int(math.floor(cell.cy - r)), 0), min(int(math.ceil(cell.cy + r)) + 1, shape[0])
    x0, x1 = max(int(math.floor(cell.cx - r)), 0), min(int(math.ceil(cell.cx + r)) + 1, shape[1])
    return slice(y0, y1), slice(x0, x1)


def _polar(cell: _Cell, window: tuple[slice, slice]):
    """Offsets (dy, dx) of the window's pixel centres from the cell centre and the normalised radius rho
    (0 at the centre, 1 on the boundary)."""
    dy = np.arange(window[0].start, window[0].stop, dtype=float)[:, None] - cell.cy
    dx = np.arange(window[1].start, window[1].stop, dtype=float)[None, :] - cell.cx
    dy, dx = np.broadcast_arrays(dy, dx)
    rho = np.hypot(dy, dx) / cell.radius_at(np.arctan2(dy, dx))
    return dy, dx, rho


def _rasterise(cells: list[_Cell], order: list[int], shape) -> tuple[np.ndarray, dict[int, tuple]]:
    """Label image with temporary ids (index + 1). Where cells overlap, a pixel goes to the cell it is
    relatively deepest inside (smallest rho), which splits pressed cells along a natural contact line."""
    labels = np.zeros(shape, np.int32)
    depth = np.full(shape, np.inf, np.float32)
    windows = {}
    for i in order:
        window = _bbox(cells[i], shape)
        dy, dx, rho = _polar(cells[i], window)
        take = (rho < 1.0) & (rho < depth[window])
        labels[window][take] = i + 1
        depth[window][take] = rho[take]
        windows[i] = window
    return labels, windows


def _keep_largest_component(labels: np.ndarray, i: int, window) -> None:
    own = labels[window] == i + 1
    components, n = ndimage.label(own)
    if n > 1:
        sizes = np.bincount(components.ravel())[1:]
        labels[window][own & (components != np.argmax(sizes) + 1)] = 0


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


def _filaments(rng, cell: _Cell, dy, dx, own) -> np.ndarray:
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


def _nucleus_mask(rng, cell: _Cell, dy, dx, rho) -> np.ndarray:
    """Nucleus of the cell in its window (before clipping to the cell's own pixels)."""
    model = CELL_MODELS[cell.cell_type]
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


def _render_cell(rng, cell: _Cell, own: np.ndarray, dy, dx, rho) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free stain signal of one cell in its window, (channel, y, x), zero outside ``own``;
    and its nucleus mask."""
    model = CELL_MODELS[cell.cell_type]
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
    if cell.cell_type == "CTC":
        ck = (cytoplasm + 0.35 * nucleus) * _filaments(rng, cell, dy, dx, own)
        vim = (cytoplasm + 0.25 * nucleus) * _filaments(rng, cell, dy, dx, own)
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


def _render_debris(rng, mean_count: float, labels, signal) -> int:
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


# --- optics ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SlideOptics:
    gain: np.ndarray  # per channel: the slide's batch gain on the stain signal
    background: np.ndarray  # per channel background level (ADU) including the batch multiplier
    vignette_centre: tuple[float, float]  # relative offset of the optical axis from the frame centre
    vignette_strength: float


def _illumination(rng, s: _Settings, optics: _SlideOptics) -> np.ndarray:
    """Smooth multiplicative illumination of one frame: the slide's vignetting times a per-frame
    low-frequency variation (uneven sample thickness, lamp drift)."""
    y = (np.arange(s.frame_h) + 0.5) / s.frame_h - 0.5 - optics.vignette_centre[0]
    x = (np.arange(s.frame_w) + 0.5) / s.frame_w - 0.5 - optics.vignette_centre[1]
    r2 = (y[:, None] ** 2 + x[None, :] ** 2) / 0.5
    field = 1.0 - optics.vignette_strength * r2
    waves = np.zeros_like(field)
    for _ in range(3):
        fy, fx = rng.uniform(-1.0, 1.0, 2)  # at most one cycle per frame: low frequency only
        waves += np.cos(2 * np.pi * (fy * y[:, None] + fx * x[None, :]) + rng.uniform(0, 2 * np.pi))
    field *= 1.0 + 0.4 * s.illumination * waves / 3.0
    return np.clip(field, 0.2, None)


def _apply_optics(rng, s: _Settings, optics: _SlideOptics, signal: np.ndarray) -> np.ndarray:
    """Camera image (channel, y, x) uint16 from the noise-free stain signal of one frame."""
    illumination = _illumination(rng, s, optics)
    image = np.empty(signal.shape, np.uint16)
    for c in range(signal.shape[0]):
        blurred = ndimage.gaussian_filter(signal[c], s.blur_sigma, truncate=3.0) if s.blur_sigma > 0 else signal[c]
        channel_light = illumination * rng.lognormal(0.0, 0.02)  # filter cubes differ slightly
        expected = (blurred * optics.gain[c] + optics.background[c]) * channel_light
        photons = rng.poisson(np.clip(expected, 0, None) * s.photons_per_unit)
        adu = photons / s.photons_per_unit + rng.normal(0.0, s.read_noise, expected.shape) + s.offset
        image[c] = np.clip(np.rint(adu), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    return image


# --- one frame -------------------------------------------------------------------------------------


@dataclass
class _Frame:
    image: np.ndarray  # (channel, y, x) uint16
    labels: np.ndarray  # (y, x) uint32, ids first_id .. first_id + n - 1
    cells: list[dict]  # truth rows, frame-local coordinates
    n_clusters: int
    n_debris: int


def _simulate_frame(rng, s: _Settings, composition: np.ndarray, n_ctc: int, optics: _SlideOptics,
                    first_id: int, first_cluster: int, cluster_rate: float | None = None,
                    emt_fraction: float = CTC_EMT_FRACTION) -> _Frame:
    shape = (s.frame_h, s.frame_w)
    n_total = int(rng.poisson(s.cells_per_frame))
    n_leukocytes = max(n_total - n_ctc, 0)
    types = [LEUKOCYTE_TYPES[k] for k in rng.choice(len(LEUKOCYTE_TYPES), size=n_leukocytes, p=composition)]
    cells = [_draw_cell(rng, "CTC", emt_fraction) for _ in range(n_ctc)] + [_draw_cell(rng, t) for t in types]
    cluster_rate = s.cluster_rate if cluster_rate is None else cluster_rate

    free = list(range(n_ctc, len(cells)))  # leukocytes not yet in a cluster
    for i in range(n_ctc):
        if rng.random() < cluster_rate:
            k = int(rng.integers(1, 4))
            for j in free[:k]:
                cells[j].partner_of = i
            free = free[k:]

    order = _place_cells(rng, cells, shape, s.touching_fraction)
    tmp_labels, windows = _rasterise(cells, order, shape)
    for i in order:
        _keep_largest_component(tmp_labels, i, windows[i])

    # Keep cells that kept most of their area (a cell almost hidden under others is not a fair target).
    kept = []
    for i in order:
        area = int(np.count_nonzero(tmp_labels[windows[i]] == i + 1))
        if area >= 0.4 * math.pi * cells[i].radius ** 2:
            kept.append(i)
        else:
            tmp_labels[windows[i]][tmp_labels[windows[i]] == i + 1] = 0
    kept_set = set(kept)

    # A cluster needs its CTC and at least one leukocyte touching it.
    n_clusters = 0
    for i in kept:
        if cells[i].cell_type != "CTC":
            continue
        partners = [j for j in kept if cells[j].partner_of == i]
        if partners:
            for k in (i, *partners):
                cells[k].cluster = first_cluster + n_clusters
            n_clusters += 1
    for j in range(len(cells)):
        if cells[j].partner_of >= 0 and (j not in kept_set or cells[j].partner_of not in kept_set):
            cells[j].cluster = -1

    lookup = np.zeros(len(cells) + 1, np.uint32)
    for new, i in enumerate(kept):
        lookup[i + 1] = first_id + new
    labels = lookup[tmp_labels]

    signal = np.zeros((len(CHANNELS),) + shape, np.float32)
    rows = []
    for i in kept:
        cell = cells[i]
        cell_id = int(lookup[i + 1])
        window = _bbox(cell, shape, pad=3)
        own = labels[window] == cell_id
        dy, dx, rho = _polar(cell, window)
        cell_signal, nucleus = _render_cell(rng, cell, own, dy, dx, rho)
        true_means = cell_signal[:, own].mean(axis=1)
        # slight defocus: cells do not all sit in the focal plane
        defocus = abs(rng.normal(0.0, 0.4))
        if defocus > 0.15:
            cell_signal = ndimage.gaussian_filter(cell_signal, (0, defocus, defocus), truncate=3.0)
        signal[(slice(None),) + window] += cell_signal
        yy, xx = np.nonzero(own)
        grown = ndimage.binary_dilation(own, structure=np.ones((3, 3), bool))
        neighbours = labels[window][grown]
        rows.append({
            "cell_id": cell_id,
            "cell_type": cell.cell_type,
            "y": float(yy.mean() + window[0].start),
            "x": float(xx.mean() + window[1].start),
            "area_px": int(own.sum()),
            "radius_px": float(cell.radius),
            "nucleus_area_px": int(nucleus.sum()),
            "cluster_id": int(cell.cluster),
            "touching": bool(np.any((neighbours != 0) & (neighbours != cell_id))),
            **{f"true_{c}": float(m) for c, m in zip(CHANNELS, true_means)},
        })

    n_debris = _render_debris(rng, s.debris_per_frame, labels, signal)
    image = _apply_optics(rng, s, optics, signal)
    return _Frame(image, labels, rows, n_clusters, n_debris)


# --- one slide -------------------------------------------------------------------------------------


def _slide_index(s: _Settings, plan: pd.DataFrame, sample: Mapping) -> int:
    slide = str(sample["slide"])
    matches = np.flatnonzero(plan["slide"].to_numpy() == slide)
    if len(matches) != 1:
        raise ValueError(f"slide {slide!r} is not in the synthetic cohort plan")
    index = int(matches[0])
    for key in ("patient", "condition"):
        if key in sample and str(sample[key]) != str(plan.loc[index, key]):
            raise ValueError(
                f"slide {slide!r}: {key} {sample[key]!r} differs from the plan's {plan.loc[index, key]!r}; "
                "the sample must come from plan_cohort with the same config"
            )
    return index


def _slide_optics(rng, s: _Settings) -> _SlideOptics:
    n = len(CHANNELS)
    gain = rng.lognormal(0.0, s.batch_effect, n) if s.batch_effect > 0 else np.ones(n)
    background_batch = rng.lognormal(0.0, s.batch_effect, n) if s.batch_effect > 0 else np.ones(n)
    background = s.background * np.array([BACKGROUND_FACTOR[c] for c in CHANNELS]) * background_batch
    centre = tuple(rng.normal(0.0, 0.08, 2))
    strength = s.illumination * rng.uniform(0.6, 1.0)
    return _SlideOptics(gain, background, centre, strength)


def simulate_slide(
    synth_cfg: Mapping,
    sample: Mapping,
    out_dir: str | os.PathLike,
    frame_pattern: str = "Tile{index:06d}.tif",
    frame_order: str = "row-major",
) -> dict:
    """Simulate one slide of the synthetic cohort and write its image and ground truth.

    The slide is written frame by frame (one frame's channels plus small state in memory), except an
    OME-TIFF, which is assembled in memory and so is limited to ``OME_TIFF_MAX_BYTES``. Every output is
    written atomically.

    Parameters
    ----------
    synth_cfg : the ``synthetic`` section of the config (defaults filled in).
    sample : one row of :func:`plan_cohort` for the same config (at least ``slide``).
    out_dir : the folder given to :func:`plan_cohort`; the slide goes to ``<out_dir>/<slide>/``.
    frame_pattern : file name pattern of frame files (see :func:`hemoprofile.io.frame_filename`).
    frame_order : how frame numbers map to grid positions (``row-major`` or ``snake``).

    Returns
    -------
    dict with slide, n_cells, counts (cell type -> number), n_clusters, n_debris, seconds.

    Raises
    ------
    ValueError when the slide is not in the plan, or an OME-TIFF slide would exceed the memory limit.

    Example
    -------
    >>> plan = plan_cohort(cfg, "out")  # doctest: +SKIP
    >>> simulate_slide(cfg, plan.iloc[0], "out")["n_cells"]  # doctest: +SKIP
    512
    """
    start = time.perf_counter()
    s = _settings(synth_cfg)
    plan = plan_cohort(synth_cfg, out_dir)
    index = _slide_index(s, plan, sample)
    row = plan.iloc[index]
    slide, patient = str(row["slide"]), str(row["patient"])
    condition = _patient_condition(s, int(patient.lstrip("P")))  # the truth, also for blinded patients
    spec = s.conditions[condition]
    slide_dir = Path(out_dir) / slide
    height, width = s.rows * s.frame_h, s.cols * s.frame_w
    if s.output_format == "ome-tiff":
        size = len(CHANNELS) * height * width * 2
        if size > OME_TIFF_MAX_BYTES:
            raise ValueError(
                f"slide {slide}: a {height}x{width} px OME-TIFF needs {size / 2**20:.0f} MiB in memory "
                f"(limit {OME_TIFF_MAX_BYTES / 2**20:.0f} MiB); set synthetic.output_format to 'frames', "
                "which is written frame by frame"
            )
    for f in range(s.n_frames):  # fail on a bad pattern or order before any work
        frame_grid_position(f, s.rows, s.cols, frame_order)
    frame_filename(frame_pattern, 0, 0, CHANNELS[0], s.n_frames)

    composition = _composition(s, condition, int(patient.lstrip("P")))
    slide_rng = np.random.default_rng([s.seed, 2, index])
    optics = _slide_optics(slide_rng, s)
    ctc_rate = float(spec.get("ctc_per_1000", 0.0))
    cluster_rate = float(spec["cluster_rate"]) if spec.get("cluster_rate") is not None else s.cluster_rate
    emt_fraction = float(spec.get("emt_fraction", CTC_EMT_FRACTION))
    n_ctc = int(slide_rng.poisson(ctc_rate * s.cells_per_frame * s.n_frames / 1000.0))
    ctc_per_frame = np.bincount(slide_rng.integers(0, s.n_frames, n_ctc), minlength=s.n_frames)

    # chunks no larger than a frame, so that writing a frame rewrites few chunks
    tile = min(512, s.frame_h, s.frame_w)
    truth_rows: list[dict] = []  # buffered; written to parquet in row groups, so memory stays bounded
    counts = dict.fromkeys(CELL_TYPES, 0)
    next_id, next_cluster, n_debris = 1, 0, 0
    with contextlib.ExitStack() as stack:
        labels_tmp = stack.enter_context(atomic_output(slide_dir / "truth_labels.zarr"))
        image_path = slide_dir / Path(row["path"]).name
        image_tmp = stack.enter_context(atomic_output(image_path))
        table_tmp = stack.enter_context(atomic_output(slide_dir / "truth_cells.parquet"))
        # entered last, so closed before the renames
        table_writer = stack.enter_context(pq.ParquetWriter(table_tmp, TRUTH_SCHEMA))
        label_array = create_ome_zarr_labels(
            labels_tmp, (height, width), tile_size=tile, pixel_size_um=s.pixel_size_um, name="truth_labels",
            extra_attributes={"slide": slide, "source": "hemoprofile.synth"},
        )
        mosaic = np.zeros((len(CHANNELS), height, width), np.uint16) if s.output_format == "ome-tiff" else None
        if mosaic is None:
            image_tmp.mkdir(parents=True)
        for f in range(s.n_frames):
            frame = _simulate_frame(
                np.random.default_rng([s.seed, 3, index, f]), s, composition, int(ctc_per_frame[f]), optics,
                next_id, next_cluster, cluster_rate, emt_fraction,
            )
            grid_row, grid_col = frame_grid_position(f, s.rows, s.cols, frame_order)
            y0, x0 = grid_row * s.frame_h, grid_col * s.frame_w
            window = (slice(y0, y0 + s.frame_h), slice(x0, x0 + s.frame_w))
            label_array[window] = frame.labels
            if mosaic is not None:
                mosaic[(slice(None),) + window] = frame.image
            else:
                for c, channel in enumerate(CHANNELS):
                    target = image_tmp / frame_filename(frame_pattern, f, c, channel, s.n_frames)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tifffile.imwrite(target, frame.image[c], photometric="minisblack")
            for cell in frame.cells:
                cell["y"] += y0
                cell["x"] += x0
                cell["frame"] = f
            truth_rows.extend(frame.cells)
            for cell in frame.cells:
                counts[cell["cell_type"]] += 1
            if len(truth_rows) >= _TRUTH_ROW_GROUP:
                table_writer.write_table(_truth_table(truth_rows, slide, patient, condition))
                truth_rows = []
            next_id += len(frame.cells)
            next_cluster += frame.n_clusters
            n_debris += frame.n_debris
        if mosaic is not None:
            tifffile.imwrite(
                image_tmp, mosaic, ome=True, photometric="minisblack", tile=(OME_TIFF_TILE, OME_TIFF_TILE),
                compression="zlib",
                metadata={
                    "axes": "CYX",
                    "Channel": {"Name": list(CHANNELS)},
                    "PhysicalSizeX": s.pixel_size_um, "PhysicalSizeXUnit": "µm",
                    "PhysicalSizeY": s.pixel_size_um, "PhysicalSizeYUnit": "µm",
                },
            )
        if truth_rows or next_id == 1:
            table_writer.write_table(_truth_table(truth_rows, slide, patient, condition))

    summary = {
        "slide": slide,
        "n_cells": next_id - 1,
        "counts": counts,
        "n_clusters": int(next_cluster),
        "n_debris": int(n_debris),
        "seconds": round(time.perf_counter() - start, 3),
    }
    log.info("simulated %s: %s", slide, summary)
    return summary


def _truth_table(rows: list[dict], slide: str, patient: str, condition: str) -> pa.Table:
    columns = {name: [row[name] for row in rows] for name in TRUTH_COLUMNS if name not in
               ("slide", "patient", "condition", "lineage")}
    columns["slide"] = [slide] * len(rows)
    columns["patient"] = [patient] * len(rows)
    columns["condition"] = [condition] * len(rows)
    columns["lineage"] = [LINEAGE[t] for t in columns["cell_type"]]
    return pa.table({name: columns[name] for name in TRUTH_COLUMNS}, schema=TRUTH_SCHEMA)


def write_cohort_truth(truth_parquets: Sequence[str | os.PathLike], out_path: str | os.PathLike) -> int:
    """Concatenate per-slide truth tables into one parquet file, written atomically, one slide at a time.

    Parameters
    ----------
    truth_parquets : the slides' ``truth_cells.parquet`` files (rows keep this order).
    out_path : the cohort table to write.

    Returns
    -------
    The number of rows written.

    Example
    -------
    >>> write_cohort_truth(["out/P01_S1/truth_cells.parquet"], "out/truth_cells.parquet")  # doctest: +SKIP
    531
    """
    n_rows = 0
    with atomic_output(out_path) as tmp, pq.ParquetWriter(tmp, TRUTH_SCHEMA) as writer:
        for path in truth_parquets:
            table = pq.read_table(path).select(list(TRUTH_COLUMNS)).cast(TRUTH_SCHEMA)
            writer.write_table(table)
            n_rows += table.num_rows
        if not truth_parquets:
            writer.write_table(TRUTH_SCHEMA.empty_table())
    return n_rows


# --- reading back and looking at a frame -------------------------------------------------------------


def read_synthetic_frame(
    sample: Mapping,
    frame: int,
    frame_pattern: str = "Tile{index:06d}.tif",
    frame_order: str = "row-major",
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Read one frame of a simulated slide with its ground truth.

    Parameters
    ----------
    sample : the slide's row of :func:`plan_cohort` (path, format, channels, frame_rows, frame_cols).
    frame : 0-based frame number.
    frame_pattern, frame_order : as given to :func:`simulate_slide`.

    Returns
    -------
    image : (channel, y, x) uint16.
    labels : (y, x) uint32 ground-truth labels of the frame (slide-wide ids).
    cells : the truth table rows of the frame, with y and x in frame pixels.
    """
    path = Path(sample["path"])
    slide_dir = path.parent
    channels = str(sample["channels"]).split(",")
    rows, cols = int(sample["frame_rows"]), int(sample["frame_cols"])
    n_frames = rows * cols
    if sample["format"] == "frames":
        image = np.stack([
            tifffile.imread(path / frame_filename(frame_pattern, frame, c, name, n_frames))
            for c, name in enumerate(channels)
        ])
        frame_h, frame_w = image.shape[1:]
    else:
        whole = tifffile.imread(path)
        frame_h, frame_w = whole.shape[1] // rows, whole.shape[2] // cols
        image = None
    grid_row, grid_col = frame_grid_position(frame, rows, cols, frame_order)
    y0, x0 = grid_row * frame_h, grid_col * frame_w
    window = (slice(y0, y0 + frame_h), slice(x0, x0 + frame_w))
    if image is None:
        image = np.ascontiguousarray(whole[(slice(None),) + window])
    labels = np.asarray(open_ome_zarr(slide_dir / "truth_labels.zarr").array[window])
    cells = pd.read_parquet(slide_dir / "truth_cells.parquet")
    cells = cells[cells["frame"] == frame].copy()
    cells["y"] -= y0
    cells["x"] -= x0
    return image, labels, cells.reset_index(drop=True)


#: Outline colours of the cell types in overlays (chosen to stand apart from the channel colours).
def composite_rgb(image: np.ndarray, channel_names: Sequence[str]) -> np.ndarray:
    """RGB float image (y, x, 3) in [0, 1] of an IF frame: DAPI blue, CK red, VIM green, CD45 grey.

    Each channel is stretched from just above its background (median + 0.5 robust sigma) to its 99.8th
    percentile, with a floor on the range so that a channel with no positive cell shows dark rather than
    stretched noise.
    """
    rgb = np.zeros(image.shape[1:] + (3,))
    for c, name in enumerate(channel_names):
        channel = image[c].astype(float)
        median = np.median(channel)
        sigma = 1.4826 * np.median(np.abs(channel - median))
        lo = median + 0.5 * sigma
        hi = max(np.percentile(channel, 99.8), lo + 1500.0)
        stretched = np.clip((channel - lo) / (hi - lo), 0, 1) ** 0.8
        rgb += stretched[..., None] * np.array(channel_rgb(name))
    return np.clip(rgb, 0, 1)


def render_frame_overlay(
    sample: Mapping,
    frame: int,
    out_png: str | os.PathLike,
    frame_pattern: str = "Tile{index:06d}.tif",
    frame_order: str = "row-major",
    title: str | None = None,
) -> Path:
    """Draw one frame of a simulated slide: the RGB composite, and beside it the same composite with the
    ground-truth outlines coloured by cell type and a legend.

    Parameters
    ----------
    sample : the slide's row of :func:`plan_cohort`.
    frame : 0-based frame number.
    out_png : PNG file to write (atomically).
    frame_pattern, frame_order : as given to :func:`simulate_slide`.
    title : figure title; defaults to the slide and frame.

    Returns
    -------
    The path of the PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from skimage.segmentation import find_boundaries

    image, labels, cells = read_synthetic_frame(sample, frame, frame_pattern, frame_order)
    channels = str(sample["channels"]).split(",")
    rgb = composite_rgb(image, channels)
    outlined = rgb.copy()
    type_of = dict(zip(cells["cell_id"], cells["cell_type"]))
    boundaries = find_boundaries(labels, mode="inner")
    for cell_type, colour in TYPE_COLOURS.items():
        ids = [i for i, t in type_of.items() if t == cell_type]
        if ids:
            outlined[boundaries & np.isin(labels, ids)] = matplotlib.colors.to_rgb(colour)

    height, width = labels.shape
    # dark figure, as fluorescence is usually shown, so that light outline colours stay visible
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 11.0 * height / (2 * width) + 1.1), dpi=100,
                             facecolor="black")
    axes[0].imshow(rgb, interpolation="nearest")
    axes[0].set_title("DAPI (blue), CK (red), VIM (green), CD45 (grey)", fontsize=9, color="white")
    axes[1].imshow(outlined, interpolation="nearest")
    axes[1].set_title("ground truth outlines (debris is unlabelled)", fontsize=9, color="white")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for _, cell in cells[(cells["cluster_id"] >= 0) & (cells["cell_type"] == "CTC")].iterrows():
        axes[1].annotate("cluster", (cell["x"], cell["y"] - cell["radius_px"] - 3), color="white",
                         fontsize=7, ha="center", va="bottom")
    present = cells["cell_type"].value_counts()
    handles = [
        Patch(facecolor="none", edgecolor=colour, linewidth=2, label=f"{t} ({int(present.get(t, 0))})")
        for t, colour in TYPE_COLOURS.items()
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False,
               labelcolor="white")
    slide = Path(sample["path"]).parent.name
    pixel = sample.get("pixel_size_um") if hasattr(sample, "get") else None
    scale = f", {width * float(pixel):.0f} x {height * float(pixel):.0f} um" if pixel else ""
    fig.suptitle(title or f"synthetic slide {slide}, frame {frame}{scale}", fontsize=11, color="white")
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    out_png = Path(out_png)
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, format="png", facecolor=fig.get_facecolor())
    plt.close(fig)
    return out_png
