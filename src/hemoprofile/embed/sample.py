"""Inputs of the embed stage: the slides (:class:`EmbedSlide`), the seeded training sample of cells
(:func:`load_sample`), reference labels of cells (truth or a collection's ``label`` column) and the
one-hot cVAE condition rows (:func:`condition_matrix`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from hemoprofile.embed.orientation import maybe_orient
from hemoprofile.io.patches import (
    check_slide_patches,
    open_patch_array,
    read_patch_rows,
)
from hemoprofile.io.tables import read_cells
from hemoprofile.io.truth import truth_cell_types

log = logging.getLogger(__name__)


@dataclass
class EmbedSlide:
    """One slide's inputs: cells.parquet, patches.zarr and its sample-sheet fields.

    ``batch`` defaults to the slide (as the sample sheet does); ``truth_labels`` is the slide's
    ``truth_labels.zarr`` on synthetic cohorts (labels for the metrics only, never for training).
    """

    slide: str
    cells: str
    patches: str
    patient: str = ""
    condition: str = ""
    batch: str = ""
    truth_labels: str | None = None

    def category(self, condition_on: str) -> str | None:
        """The cVAE condition value of this slide (``None`` for a plain VAE)."""
        if condition_on == "none":
            return None
        value = {"slide": self.slide, "batch": self.batch or self.slide, "condition": self.condition}[condition_on]
        if not value:
            raise ValueError(f"slide {self.slide}: condition_on {condition_on!r} but the sample sheet gives no value")
        return str(value)


@dataclass
class EmbedSample:
    """Cells drawn for training: uint8/uint16/float16 patches in memory plus keys, covariates and labels."""

    patches: np.ndarray
    slides: np.ndarray
    cell_ids: np.ndarray
    batches: np.ndarray
    conditions: np.ndarray
    labels: np.ndarray | None  # object; None where a cell has no label
    channels: list[str]
    patch_size: int
    categories: np.ndarray = field(default_factory=lambda: np.zeros(0, object))  # cVAE condition per cell


def _read_cells(item: EmbedSlide, with_position: bool, with_angle: bool = False) -> pd.DataFrame:
    available = pq.read_schema(item.cells).names if os.path.exists(item.cells) else []
    wanted = ["slide", "cell_id"] + (["y", "x"] if with_position else []) + ["label"]
    wanted += ["orientation_deg"] if with_angle else []
    return read_cells(item.cells, [c for c in wanted if c in available] or ["cell_id"])


def table_angles(cells: pd.DataFrame) -> np.ndarray | None:
    """The cells' ``orientation_deg`` (NaN where null), ``None`` when the table has no such column (a
    collection ingested from crops: :func:`hemoprofile.embed.orientation.orient_patches` then computes
    the angles from the patches)."""
    if "orientation_deg" not in cells.columns:
        return None
    return pd.to_numeric(cells["orientation_deg"], errors="coerce").to_numpy(np.float64)


def read_angles(cells_path: str | os.PathLike, rows: np.ndarray | None = None) -> np.ndarray | None:
    """:func:`table_angles` of a cells.parquet (only ``rows`` when given)."""
    if "orientation_deg" not in pq.read_schema(cells_path).names:
        return None
    angles = table_angles(read_cells(cells_path, ["orientation_deg"]))
    return angles if rows is None else angles[np.asarray(rows, np.int64)]


def slide_labels(item: EmbedSlide, cells: pd.DataFrame, truth_cells: pd.DataFrame | None) -> np.ndarray | None:
    """Each cell's reference label (truth cell type or collection ``label``), ``None`` where unknown;
    ``None`` overall when the slide has no labels at all."""
    if item.truth_labels and truth_cells is not None:
        return truth_cell_types(cells, item.truth_labels, truth_cells, item.slide)
    if "label" in cells.columns:
        return np.array([v if isinstance(v, str) and v else None for v in cells["label"]], dtype=object)
    return None


def truth_table(truth_cells) -> pd.DataFrame | None:
    """truth_cells.parquet (a path) read with the columns the labels need; a table or ``None`` as given."""
    if truth_cells is None or isinstance(truth_cells, pd.DataFrame):
        return truth_cells
    return read_cells(truth_cells, ["slide", "cell_id", "cell_type"])


def load_sample(items: Sequence[EmbedSlide], cells_per_slide: int, condition_on: str = "none", seed: int = 0,
                truth_cells: str | os.PathLike | pd.DataFrame | None = None,
                progress: Callable[[str], None] | None = None, orientation: str = "none") -> EmbedSample:
    """Draw up to ``cells_per_slide`` cells of each slide (seeded per slide, rows ascending) into memory.

    Parameters
    ----------
    items : the slides.
    cells_per_slide : cap per slide (keeps memory bounded and every slide represented).
    condition_on : which sample-sheet field becomes each cell's cVAE category.
    seed : base seed; slide i draws with ``default_rng([seed, i])`` so adding a slide changes no other draw.
    truth_cells : truth_cells.parquet (synthetic cohorts) for reference labels.
    orientation : ``embed.orientation``; ``major_axis`` rotates the patches as they are read
        (:func:`hemoprofile.embed.orientation.orient_patches`, angles from cells.parquet when it has them).

    Raises
    ------
    ValueError naming the files when rows and patches disagree or slides differ in channels/patch size.
    """
    say = progress or (lambda m: log.info(m))
    truth = truth_table(truth_cells)
    parts = []
    channels = size = None
    any_labels = False
    for i, item in enumerate(items):
        array, names, attributes = open_patch_array(item.patches)
        cells = _read_cells(item, with_position=bool(item.truth_labels and truth is not None),
                            with_angle=orientation != "none")
        channels, size = check_slide_patches(item, cells, array, attributes, names, channels, size)
        n = len(cells)
        rng = np.random.default_rng([int(seed), i])
        rows = np.sort(rng.choice(n, min(n, int(cells_per_slide)), replace=False)) if n else np.zeros(0, np.int64)
        sub = cells.iloc[rows].reset_index(drop=True)
        labels = slide_labels(item, sub, truth)
        any_labels |= labels is not None
        m = len(rows)
        parts.append({
            "patches": maybe_orient(read_patch_rows(array, rows), orientation, names, table_angles(sub)),
            "slides": np.full(m, item.slide, object),
            "cell_ids": sub["cell_id"].to_numpy(np.int64),
            "batches": np.full(m, item.batch or item.slide, object),
            "conditions": np.full(m, item.condition or "", object),
            "labels": labels if labels is not None else np.full(m, None, object),
            "categories": np.full(m, item.category(condition_on), object),
        })
        say(f"{item.slide}: {m} of {n} cells drawn")
    if not parts:
        raise ValueError("no slides given")
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if not len(cat["patches"]):
        raise ValueError(f"no cells in any of the {len(items)} slides ({items[0].cells}, ...)")
    return EmbedSample(cat["patches"], cat["slides"], cat["cell_ids"], cat["batches"], cat["conditions"],
                       cat["labels"] if any_labels else None, list(channels), int(size), cat["categories"])


def cohort_labels(frame: pd.DataFrame, items: Sequence[EmbedSlide],
                  truth_cells: str | os.PathLike | pd.DataFrame | None = None) -> np.ndarray | None:
    """Reference labels of the rows of :func:`hemoprofile.embed.slide.read_embeddings` (``None`` when no
    slide has any)."""
    truth = truth_table(truth_cells)
    out = np.full(len(frame), None, object)
    found = False
    by_slide = {i.slide: i for i in items}
    for slide, rows in frame.groupby("slide").indices.items():
        item = by_slide.get(str(slide))
        if item is None:
            continue
        cells = _read_cells(item, with_position=bool(item.truth_labels and truth is not None))
        sub = cells.iloc[frame["row"].to_numpy()[rows]].reset_index(drop=True)
        labels = slide_labels(item, sub, truth)
        if labels is not None:
            out[rows] = labels
            found = True
    return out if found else None


def condition_matrix(categories: Sequence, known: Sequence[str]) -> np.ndarray | None:
    """One-hot (cells, len(known)) rows of the cVAE condition; an unknown category gets the uniform row
    (the average condition), ``None`` when ``known`` is empty (a plain VAE).

    Example
    -------
    >>> condition_matrix(["b", "z"], ["a", "b"]).tolist()
    [[0.0, 1.0], [0.5, 0.5]]
    """
    if not len(known):
        return None
    index = {k: i for i, k in enumerate(known)}
    out = np.zeros((len(categories), len(known)), np.float32)
    for row, value in enumerate(categories):
        j = index.get(value)
        if j is None:
            out[row] = 1.0 / len(known)
        else:
            out[row, j] = 1.0
    return out
