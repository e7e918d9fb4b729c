"""One frame: its cells drawn, placed, rasterised and rendered, debris added, the optics applied; the
image, the label image and the truth rows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hemoprofile.simulate.cell_models import CTC_EMT_FRACTION, CTC_SMALL_FRACTION
from hemoprofile.simulate.cells import cell_window, draw_cell, keep_largest_component, place_cells, polar, rasterise
from hemoprofile.simulate.lookalikes import make_lookalikes
from hemoprofile.simulate.optics import SlideOptics, apply_optics
from hemoprofile.simulate.render import add_ck_fragment, render_cell, render_debris
from hemoprofile.simulate.settings import CHANNELS, Settings
from hemoprofile.vocabulary import LEUKOCYTE_TYPES


@dataclass
class Frame:
    image: np.ndarray  # (channel, y, x) uint16
    labels: np.ndarray  # (y, x) uint32, ids first_id .. first_id + n - 1
    cells: list[dict]  # truth rows, frame-local coordinates
    n_clusters: int
    n_debris: int


def simulate_frame(rng, s: Settings, composition: np.ndarray, n_ctc: int, optics: SlideOptics,
                   first_id: int, first_cluster: int, cluster_rate: float | None = None,
                   emt_fraction: float = CTC_EMT_FRACTION, lookalikes: dict[str, int] | None = None,
                   small_fraction: float = CTC_SMALL_FRACTION) -> Frame:
    """Simulate one frame from its own ``rng``: cell ids start at ``first_id``, cluster ids at
    ``first_cluster``; ``cluster_rate`` None is the section's; ``lookalikes``: the frame's count of each
    look-alike kind (:func:`hemoprofile.simulate.lookalikes.make_lookalikes`)."""
    shape = (s.frame_h, s.frame_w)
    n_total = int(rng.poisson(s.cells_per_frame))
    n_leukocytes = max(n_total - n_ctc, 0)
    types = [LEUKOCYTE_TYPES[k] for k in rng.choice(len(LEUKOCYTE_TYPES), size=n_leukocytes, p=composition)]
    cells = [draw_cell(rng, "CTC", emt_fraction, small_fraction) for _ in range(n_ctc)]
    cells += [draw_cell(rng, t) for t in types]
    if lookalikes:
        make_lookalikes(rng, cells, lookalikes, draw_cell)
    cluster_rate = s.cluster_rate if cluster_rate is None else cluster_rate

    # leukocytes not yet in a cluster (artefacts are never a CTC's partner)
    free = [j for j in range(n_ctc, len(cells)) if cells[j].cell_type in LEUKOCYTE_TYPES]
    for i in range(n_ctc):
        if rng.random() < cluster_rate:
            k = int(rng.integers(1, 4))
            for j in free[:k]:
                cells[j].partner_of = i
            free = free[k:]

    order = place_cells(rng, cells, shape, s.touching_fraction)
    tmp_labels, windows = rasterise(cells, order, shape)
    for i in order:
        keep_largest_component(tmp_labels, i, windows[i])

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
        window = cell_window(cell, shape, pad=3)
        own = labels[window] == cell_id
        dy, dx, rho = polar(cell, window)
        cell_signal, nucleus = render_cell(rng, cell, own, dy, dx, rho)
        if cell.ck_fragment:
            add_ck_fragment(rng, cell, cell_signal, dy, dx)
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
            "lookalike": cell.lookalike,
            "ctc_subtype": cell.ctc_subtype,
            **{f"true_{c}": float(m) for c, m in zip(CHANNELS, true_means)},
        })

    n_debris = render_debris(rng, s.debris_per_frame, labels, signal)
    image = apply_optics(rng, s, optics, signal)
    return Frame(image, labels, rows, n_clusters, n_debris)
