"""What the report is built from: :class:`ReportInputs` (the paths a run gives), and
:class:`ReportContext`, which reads every slide once into a :class:`SlideSummary` (summaries only: medians,
counts, the top CTC candidates and clusters) and collects the :class:`Notes` the run summary lists.

Reading is per slide and keeps only summaries, so memory does not grow with the cohort's cell count
beyond one slide's tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from hemoprofile.report.images import DETAIL_SIZE
from hemoprofile.report.readers import have, try_read_table
from hemoprofile.vocabulary import TYPE_TASKS, cell_type_columns, cell_types_categorical

TOP_CTC_CANDIDATES = 24
TOP_CTC_CLUSTERS = 12


@dataclass
class ReportInputs:
    """Everything the report shows; any path may be None or missing on disk (the section says so).

    Attributes
    ----------
    config : the workflow config (already validated).
    samples : the sample sheet, one row per slide (slide, patient, condition, ...).
    slides : slide -> {"image", "preprocessed", "labels", "cells", "predictions", "clusters", "patches",
        "embedding"} paths; any key may be missing.
    classifier_metrics : task -> classifier metrics JSON path.
    embedding_metrics : the embedding's cohort metrics JSON.
    embedding_figures : figure key (map_cluster, map_condition, ...) -> PNG path.
    clusters_by_condition : the latent clusters by condition table (parquet, hemoprofile.embed.conditions).
    patients, patient_columns : patients.parquet and its column glossary (TSV: column, description).
    patient_metrics, patient_oof, patient_importances : the patient model's metrics JSON, out-of-fold
        predictions and feature importances (parquet, long format stage, feature, model, importance).
    patient_predictions : patient_predictions.parquet.
    benchmarks_dir : Snakemake benchmark TSVs (``<rule>/<wildcards>.tsv`` or ``<rule>.tsv``).
    provenance : from :func:`hemoprofile.report.provenance.collect_provenance`.
    truth_cells : synthetic cohorts only: ``truth_cells.parquet``, whose per-patient condition is shown
        beside the predictions (the truth of blinded patients, whose sheet condition is 'unknown').
    interaction_metrics, interaction_predictions : the interaction stage's metrics.json and window
        predictions.parquet (hemoprofile.interaction.cohort).
    ctc_table, ctc_calibration, ctc_calibration_curve : the cohort CTC table (ctc_review.tsv), the
        candidate threshold's JSON and the reliability diagram (TSV) of :mod:`hemoprofile.classify.calibration` and
        :mod:`hemoprofile.patients.ctc_table`.
    """

    config: dict
    samples: pd.DataFrame
    slides: dict[str, dict[str, str]]
    classifier_metrics: dict[str, str] = field(default_factory=dict)
    embedding_metrics: str | None = None
    embedding_figures: dict[str, str] = field(default_factory=dict)
    clusters_by_condition: str | None = None
    patients: str | None = None
    patient_columns: str | None = None
    patient_metrics: str | None = None
    patient_oof: str | None = None
    patient_importances: str | None = None
    patient_predictions: str | None = None
    benchmarks_dir: str | None = None
    provenance: dict = field(default_factory=dict)
    truth_cells: str | None = None
    interaction_metrics: str | None = None
    interaction_predictions: str | None = None
    ctc_table: str | None = None
    ctc_calibration: str | None = None
    ctc_calibration_curve: str | None = None


class Notes:
    """The notes the summary lists: per-slide problems grouped by kind, and free-text notes.

    Example
    -------
    >>> notes = Notes(3)
    >>> notes.slide("0 cells", "S2"); notes.add("classifier ctc: no metrics")
    >>> notes.lines()
    ['0 cells: 1 of 3 slides (S2)', 'classifier ctc: no metrics']
    """

    def __init__(self, n_slides: int) -> None:
        self.n_slides = n_slides
        self.by_kind: dict[str, list[str]] = {}
        self.text: list[str] = []

    def slide(self, kind: str, slide: str) -> None:
        self.by_kind.setdefault(kind, []).append(slide)

    def add(self, text: str) -> None:
        if text not in self.text:
            self.text.append(text)

    def lines(self) -> list[str]:
        out = []
        for kind, slides in self.by_kind.items():
            shown = ", ".join(slides[:20]) + (f" and {len(slides) - 20} more" if len(slides) > 20 else "")
            out.append(f"{kind}: {len(slides)} of {self.n_slides} slides ({shown})")
        return out + self.text


@dataclass
class SlideSummary:
    """What the report keeps of one slide: summaries, never its full tables."""

    slide: str
    patient: str
    condition: str
    paths: dict
    n_cells: int | None = None
    medians: dict = field(default_factory=dict)          # channel -> median of mean_<channel>
    type_counts: dict | None = None                      # cell type -> cells
    type_task: str | None = None
    detail_centre: tuple[int, int] | None = None         # (y, x) where cells are densest
    ctc_top: pd.DataFrame | None = None                  # top CTC candidates: cell_id, row, p, y, x
    ctc_clusters: pd.DataFrame | None = None             # top CTC–leukocyte clusters
    n_ctc: int | None = None
    n_ctc_clusters: int | None = None


def condition_text(value) -> str:
    """A sample sheet's condition as shown ('unlabelled' when empty)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return "unlabelled"
    return str(value)


def _slide_list(inputs: ReportInputs) -> list[SlideSummary]:
    sheet = inputs.samples
    out, seen = [], set()
    for _, row in sheet.iterrows():
        slide = str(row["slide"])
        seen.add(slide)
        out.append(SlideSummary(slide, str(row.get("patient", slide)), condition_text(row.get("condition")),
                                dict(inputs.slides.get(slide) or {})))
    for slide, paths in inputs.slides.items():  # outputs of slides the sheet does not list
        if str(slide) not in seen:
            out.append(SlideSummary(str(slide), str(slide), "unlabelled", dict(paths or {})))
    return out


def _note_missing(notes: Notes, slide: str, path, name: str, why: str) -> None:
    """A missing file is grouped with the other slides missing it; an unreadable one is noted with why."""
    if have(path):
        notes.add(f"slide {slide}: {why}")
    else:
        notes.slide(f"no {name}", slide)


def _read_slide(info: SlideSummary, notes: Notes) -> None:
    """Fill ``info`` from the slide's cells, predictions and clusters tables (one slide in memory)."""
    paths = info.paths
    if not paths:
        notes.slide("no outputs (skipped or failed)", info.slide)
        return
    cells, why = try_read_table(paths.get("cells"), "cells table", ["cell_id", "y", "x", "mean_*"])
    if cells is None or "cell_id" not in cells:
        _note_missing(notes, info.slide, paths.get("cells"), "cells.parquet", why or "cells table without cell_id")
        return
    info.n_cells = len(cells)
    if info.n_cells == 0:
        notes.slide("0 cells", info.slide)
        return
    info.medians = {c[len("mean_"):]: float(np.nanmedian(cells[c].to_numpy(np.float64)))
                    for c in cells.columns if c.startswith("mean_")}
    if {"y", "x"} <= set(cells.columns):
        y, x = cells["y"].to_numpy(), cells["x"].to_numpy()
        by, bx = (y // DETAIL_SIZE).astype(np.int64), (x // DETAIL_SIZE).astype(np.int64)
        keys, counts = np.unique(by * 1_000_003 + bx, return_counts=True)
        best = keys[np.argmax(counts)]
        in_bin = (by * 1_000_003 + bx) == best
        info.detail_centre = (int(np.median(y[in_bin])), int(np.median(x[in_bin])))

    # only the columns the summary needs (the finest type task, not every one), strings as categoricals
    type_columns = [f"pred_{t}" for t in TYPE_TASKS] + ["pred_ctc"]
    if have(paths.get("predictions")):
        try:
            type_columns = cell_type_columns(pq.read_schema(paths["predictions"]).names)
        except Exception:  # unreadable: try_read_table says why
            pass
    pred, why = try_read_table(paths.get("predictions"), "predictions table",
                               ["cell_id", "p_ctc_CTC", *type_columns], categorical=type_columns)
    if pred is None:
        _note_missing(notes, info.slide, paths.get("predictions"), "predictions.parquet", why)
        return
    if len(pred) != len(cells) or not np.array_equal(pred["cell_id"].to_numpy(), cells["cell_id"].to_numpy()):
        notes.slide("predictions whose rows are not the cells' (rerun classify)", info.slide)
        return
    try:
        types, info.type_task = cell_types_categorical(pred)
        info.type_counts = {str(k): int(v) for k, v in pd.Series(types).value_counts().items() if v}
    except ValueError:
        notes.slide("predictions without a cell-type column", info.slide)
    if "p_ctc_CTC" not in pred:
        return
    p = pred["p_ctc_CTC"].to_numpy(np.float64)
    is_ctc = (pred["pred_ctc"] == "CTC").to_numpy() if "pred_ctc" in pred else p >= 0.5
    info.n_ctc = int(is_ctc.sum())
    top = np.argsort(-p, kind="stable")[:TOP_CTC_CANDIDATES]
    info.ctc_top = pd.DataFrame({
        "slide": info.slide, "cell_id": cells["cell_id"].to_numpy()[top], "row": top, "p_ctc_CTC": p[top],
        "y": cells["y"].to_numpy()[top] if "y" in cells else np.nan,
        "x": cells["x"].to_numpy()[top] if "x" in cells else np.nan,
    })
    clusters, why = try_read_table(paths.get("clusters"), "clusters table",
                                   ["cluster_id", "cell_ids", "size", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"])
    if clusters is None:
        _note_missing(notes, info.slide, paths.get("clusters"), "clusters.parquet", why)
        return
    info.n_ctc_clusters = 0
    if len(clusters) == 0 or not info.n_ctc:
        return
    _ctc_clusters(info, cells, clusters, is_ctc, p)


def _ctc_clusters(info: SlideSummary, cells: pd.DataFrame, clusters: pd.DataFrame, is_ctc: np.ndarray,
                  p: np.ndarray) -> None:
    """The slide's clusters holding both a predicted CTC and a leukocyte: their count and the top ones."""
    members = clusters[["cluster_id", "cell_ids"]].explode("cell_ids").dropna()
    member_ids = members["cell_ids"].to_numpy(np.int64)
    position = pd.Index(cells["cell_id"].to_numpy()).get_indexer(member_ids)
    ok = position >= 0
    members = pd.DataFrame({"cluster_id": members["cluster_id"].to_numpy()[ok], "cell_id": member_ids[ok],
                            "ctc": is_ctc[position[ok]], "p": p[position[ok]]})
    per = members.groupby("cluster_id").agg(size=("cell_id", "size"), n_ctc=("ctc", "sum"), score=("p", "max"))
    ctc_ids = members[members["ctc"]].groupby("cluster_id")["cell_id"].apply(list)
    per["ctc_ids"] = [ctc_ids.get(k, []) for k in per.index]
    mixed = per[(per["size"] >= 2) & (per["n_ctc"] >= 1) & (per["n_ctc"] < per["size"])]
    info.n_ctc_clusters = len(mixed)
    if len(mixed):
        mixed = mixed.sort_values("score", ascending=False).head(TOP_CTC_CLUSTERS)
        geom = clusters.set_index("cluster_id").loc[mixed.index]
        info.ctc_clusters = pd.DataFrame({
            "slide": info.slide, "cluster_id": mixed.index.to_numpy(), "size": mixed["size"].to_numpy(),
            "n_ctc": mixed["n_ctc"].to_numpy().astype(int), "score": mixed["score"].to_numpy(),
            "ctc_ids": list(mixed["ctc_ids"]), "cell_ids": [list(map(int, v)) for v in geom["cell_ids"]],
            **{c: geom[c].to_numpy() for c in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")},
        })


class ReportContext:
    """What every section reads: the inputs, every slide's summary (read once, here) and the notes."""

    def __init__(self, inputs: ReportInputs, progress: Callable[[str], object]) -> None:
        self.inputs = inputs
        self.say = progress
        self.slides = _slide_list(inputs)
        self.notes = Notes(len(self.slides))
        for info in self.slides:
            _read_slide(info, self.notes)
        self.say(f"read {len(self.slides)} slides")

    @property
    def with_cells(self) -> list[SlideSummary]:
        return [s for s in self.slides if s.n_cells]
