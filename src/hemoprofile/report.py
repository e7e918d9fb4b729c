"""The cohort report: one self-contained HTML file (``results/cohort/report.html``) that collaborators
open offline in any browser.

Sections (:data:`SECTIONS`, in this order; each is a ``<section id="...">`` with an ``<h2>``):

==============  =====================================================================================
summary         run summary, notes (skipped slides, slides with no cells, missing inputs), provenance
                (git commit, software versions, command line), wall time per stage summed from the
                Snakemake benchmark TSVs, the configuration as YAML
qc              per slide: a thumbnail (at most 256 px wide) and a full-resolution detail crop, false
                colour (DAPI blue, CK red, VIM green, CD45 grey) with the segmentation outlines of
                labels.zarr; cell counts; per channel the median of the cells' mean raw intensity, flagged
                when more than 3 robust z from the cohort (:func:`intensity_qc`)
composition     predicted cell-type composition per patient (fractions of leukocytes, stacked bars) and
                a table with counts and CTCs per 1000 leukocytes
classifiers     per cell classifier task: held-out test accuracy, balanced accuracy, macro F1, per-class
                precision/recall, confusion matrix (classifier metrics JSON)
latent          the embedding's cohort figures (latent maps) and clustering metrics
rare_events     a gallery of the top CTC candidates (by ``p_ctc_CTC``) and of CTC–leukocyte clusters,
                image crops with score, slide and cell id
patients        patient-level predictions with probabilities, cross-validated metrics per stage with
                95% confidence intervals, per-model metrics, confusion matrices, out-of-fold predictions,
                the patient table's key columns and its column glossary
importances     top feature importances per stage of the patient model (bar charts and a table)
==============  =====================================================================================

Self-contained rule: the file holds everything it shows. Styles are inline, figures are PNGs (rendered
by matplotlib's Agg canvas, or read from the workflow's figure files) embedded as base64 ``data:`` URIs,
and the only script is a small inline one that makes tables sortable. No external script, style sheet,
font, image or link is referenced, so the report renders the same on a laptop without network, as a mail
attachment or from an archive years later. Slide images are 256-colour palette PNGs and cell crops are
stored at their pixel size and enlarged by the browser (``image-rendering: pixelated``): the 12-slide
demo's report is about 2.5 MB: 0.1 MB of QC images per slide, 1 MB of latent maps.

Missing inputs never stop the report: a section whose inputs are missing or unreadable shows
"not available: <why>", and the notes in the summary list what was skipped. Inputs that exist but
contradict each other (a predictions table whose rows are not the cells') are reported the same way.
The file is written atomically: a failed build leaves no report (and an older report untouched).

Entry points: :func:`collect_provenance`, then :func:`build_report` with a :class:`ReportInputs`.
Reading is per slide and keeps only summaries (medians, counts, the top candidates), so memory does not
grow with the cohort's cell count beyond one slide's tables. A thumbnail needs every chunk of the image
it is made from: it uses the coarsest pyramid level of the OME-Zarr image that is still wide enough, and
level 0 (all of the slide) when the image has no pyramid, as hemoprofile's images have none today.

Example
-------
>>> [section_id for section_id, _ in SECTIONS]
['summary', 'qc', 'composition', 'classifiers', 'latent', 'rare_events', 'patients', 'importances']
"""

from __future__ import annotations

import base64
import datetime
import html
import importlib.metadata
import json
import math
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from hemoprofile import io
from hemoprofile.io.patches import open_patch_array
from hemoprofile.vocabulary import channel_rgb, to_unit

#: Report sections: (id, title), in the order they appear.
SECTIONS: list[tuple[str, str]] = [
    ("summary", "Run summary and provenance"),
    ("qc", "Slide quality control"),
    ("composition", "Cell-type composition per patient"),
    ("classifiers", "Cell classifiers"),
    ("latent", "Latent space"),
    ("rare_events", "Rare events: CTC candidates and CTC–leukocyte clusters"),
    ("patients", "Patient-level predictions"),
    ("importances", "Feature importances of the patient model"),
]

THUMBNAIL_WIDTH = 256        # px, widest slide thumbnail
DETAIL_SIZE = 128            # px, full-resolution detail crop per slide (where cells are densest)
QC_Z_THRESHOLD = 3.0         # robust z beyond which a slide's channel median is flagged
QC_MIN_SLIDES = 3            # fewer slides: no cohort to compare with
TOP_CTC_CANDIDATES = 24
TOP_CTC_CLUSTERS = 12
CLUSTER_CROP_MAX = 96        # px, largest side of a cluster crop (centred on the cluster)
CROP_MARGIN = 6              # px around a cluster's bounding box
TOP_FEATURES = 15
FIGURE_DPI = 80
MAX_EMBEDDED_FIGURE_BYTES = 700_000   # larger figure files are downscaled before embedding
OUTLINE_RGB = (1.0, 0.85, 0.0)        # segmentation outlines (yellow)
CLUSTER_OTHER_RGB = (0.0, 0.9, 0.9)   # outlines of the non-CTC members of a cluster (cyan)
#: Distributions whose versions the provenance records (name shown -> distributions to try).
PROVENANCE_PACKAGES = {
    "hemoprofile": ("hemoprofile",), "numpy": ("numpy",), "pandas": ("pandas",), "torch": ("torch",),
    "cellpose": ("cellpose",), "snakemake": ("snakemake",), "scikit-learn": ("scikit-learn",),
    "xgboost": ("xgboost", "xgboost-cpu"), "catboost": ("catboost",), "imbalanced-learn": ("imbalanced-learn",),
    "zarr": ("zarr",), "matplotlib": ("matplotlib",),
}


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
    patients, patient_columns : patients.parquet and its column glossary (TSV: column, description).
    patient_metrics, patient_oof, patient_importances : the patient model's metrics JSON, out-of-fold
        predictions and feature importances (parquet, long format stage, feature, model, importance).
    patient_predictions : patient_predictions.parquet.
    benchmarks_dir : Snakemake benchmark TSVs (``<rule>/<wildcards>.tsv`` or ``<rule>.tsv``).
    provenance : from :func:`collect_provenance`.
    truth_cells : synthetic cohorts only: ``truth_cells.parquet``, whose per-patient condition is shown
        beside the predictions (the truth of blinded patients, whose sheet condition is 'unknown').
    """

    config: dict
    samples: pd.DataFrame
    slides: dict[str, dict[str, str]]
    classifier_metrics: dict[str, str] = field(default_factory=dict)
    embedding_metrics: str | None = None
    embedding_figures: dict[str, str] = field(default_factory=dict)
    patients: str | None = None
    patient_columns: str | None = None
    patient_metrics: str | None = None
    patient_oof: str | None = None
    patient_importances: str | None = None
    patient_predictions: str | None = None
    benchmarks_dir: str | None = None
    provenance: dict = field(default_factory=dict)
    truth_cells: str | None = None


# --- provenance -------------------------------------------------------------------------------------------


def _git(repo_dir, *args) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(repo_dir), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(distributions: Sequence[str]) -> str | None:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def collect_provenance(repo_dir: str | os.PathLike = ".", *, command: str | None = None,
                       started: str | None = None, finished: str | None = None) -> dict:
    """What produced a run: git commit (and whether the checkout had uncommitted changes), software
    versions, platform, host, date and command line.

    Versions come from the installed distributions' metadata (importing torch just to ask would
    take seconds). ``git_commit`` is None outside a git checkout; ``git_dirty`` counts tracked files
    only (results and caches are untracked).

    Parameters
    ----------
    repo_dir : the checkout of hemoprofile that ran.
    command : the command line (default: this process's ``sys.argv``).
    started, finished : when the run started and finished (ISO 8601), when the caller knows.

    Returns
    -------
    dict with ``git_commit``, ``git_dirty``, ``versions`` (name -> version or None), ``python``,
    ``platform``, ``hostname``, ``date``, ``command``, ``started``, ``finished``.
    """
    commit = _git(repo_dir, "rev-parse", "HEAD")
    status = _git(repo_dir, "status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "versions": {name: _version(dists) for name, dists in PROVENANCE_PACKAGES.items()},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command if command is not None else shlex.join(sys.argv),
        "started": started,
        "finished": finished,
    }


# --- small HTML helpers -----------------------------------------------------------------------------------


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value, digits: int = 3) -> str:
    """A table cell's text: integers with thousands separators, floats to ``digits`` significant digits."""
    if value is None or value is pd.NA:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "–"
        if math.isinf(v) or abs(v) >= 1000:
            return f"{v:,.0f}" if math.isfinite(v) else str(v)
        if abs(v) >= 1:
            return f"{v:.{digits}g}"
        if v != 0 and abs(v) < 10 ** -digits:
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}f}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(_fmt(v, digits) for v in value)
    return str(value)


def _sort_key(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, float, np.integer, np.floating)) and value is not None:
        return "" if isinstance(value, float) and math.isnan(value) else repr(float(value))
    return str(value)


def _table(frame: pd.DataFrame, *, digits: int = 3, sortable: bool = True, scroll: bool = False,
           nowrap: bool = False, row_class: Callable[[dict], str] | None = None) -> str:
    """An HTML table of ``frame`` (its index is not shown); numbers right-aligned and sortable by value."""
    head = "".join(f"<th>{_esc(c)}</th>" for c in frame.columns)
    columns = {c: frame[c].tolist() for c in frame.columns}  # per column: no int -> float upcast of a row
    rows = []
    for i in range(len(frame)):
        cells = []
        for col in frame.columns:
            value = columns[col][i]
            numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            attrs = f' class="num" data-v="{_esc(_sort_key(value))}"' if numeric else ""
            cells.append(f"<td{attrs}>{_esc(_fmt(value, digits))}</td>")
        cls = row_class({c: columns[c][i] for c in frame.columns}) if row_class else ""
        rows.append((f'<tr class="{cls}">' if cls else "<tr>") + "".join(cells) + "</tr>")
    table_cls = " ".join(c for c in ("sortable" if sortable else "", "nowrap" if nowrap else "") if c)
    wrap_cls = "tbl scroll" if scroll else "tbl"
    return (f'<div class="{wrap_cls}"><table class="{table_cls}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _kv_table(pairs: Sequence[tuple[str, object]]) -> str:
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(_fmt(v))}</td></tr>" for k, v in pairs)
    return f'<div class="tbl"><table class="kv"><tbody>{rows}</tbody></table></div>'


def _not_available(why: str) -> str:
    return f'<p class="na">not available: {_esc(why)}</p>'


def _figure_uri(fig) -> str:
    """A matplotlib Figure (Agg canvas, no pyplot state) as a base64 PNG data URI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _rgb_uri(rgb: np.ndarray) -> str:
    """An (H, W, 3) float [0, 1] image as a base64 PNG data URI, quantised to a 256-colour palette.

    A palette PNG (median cut, no dithering) of a false-colour slide thumbnail is a third of the size
    of an RGB one (62 vs 180 KB for a 256 px demo thumbnail) and looks the same at this size.
    """
    from PIL import Image  # matplotlib's own image dependency

    pixels = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(pixels), "RGB").quantize(256, dither=Image.Dither.NONE)
    buf = BytesIO()
    image.save(buf, format="png", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _png_file_uri(path: str | os.PathLike) -> str:
    """A PNG file as a data URI; files over :data:`MAX_EMBEDDED_FIGURE_BYTES` are downscaled by 2 (block mean)."""
    data = Path(path).read_bytes()
    if len(data) > MAX_EMBEDDED_FIGURE_BYTES:
        from matplotlib import image as mpimg

        pixels = mpimg.imread(BytesIO(data))
        while pixels.shape[1] > 600 and len(data) > MAX_EMBEDDED_FIGURE_BYTES:
            h, w = pixels.shape[0] // 2 * 2, pixels.shape[1] // 2 * 2
            pixels = pixels[:h, :w].reshape(h // 2, 2, w // 2, 2, -1).mean(axis=(1, 3))
            buf = BytesIO()
            mpimg.imsave(buf, np.clip(pixels, 0, 1), format="png")
            data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _png_aspect(uri: str) -> float:
    """Width / height of a PNG data URI (from its IHDR chunk); 1 when it is not a PNG."""
    head = base64.b64decode(uri.split(",", 1)[1][:32])
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return 1.0
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return width / height if height else 1.0


def _img(uri: str, alt: str, *, width: int | None = None, pixelated: bool = False, cls: str = "") -> str:
    attrs = f' width="{int(width)}"' if width else ""
    classes = " ".join(c for c in (cls, "px" if pixelated else "") if c)
    attrs += f' class="{classes}"' if classes else ""
    return f'<img src="{uri}" alt="{_esc(alt)}"{attrs}>'


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


# --- reading inputs ---------------------------------------------------------------------------------------


def _have(path) -> bool:
    return bool(path) and os.path.exists(path)


def _why_missing(path, what: str) -> str:
    return f"no {what} given" if not path else f"{what} {path} does not exist"


def _read_json(path, what: str) -> tuple[dict | None, str | None]:
    if not _have(path):
        return None, _why_missing(path, what)
    try:
        with open(path) as handle:
            return json.load(handle), None
    except (OSError, ValueError) as err:
        return None, f"{what} {path} is not readable JSON ({err})"


def _read_table(path, what: str, columns: Sequence[str] | None = None) -> tuple[pd.DataFrame | None, str | None]:
    """A parquet table (or TSV for ``.tsv``); with ``columns``, only those it has (``prefix*``: every
    column starting with prefix)."""
    if not _have(path):
        return None, _why_missing(path, what)
    try:
        if str(path).endswith((".tsv", ".txt")):
            return pd.read_csv(path, sep="\t"), None
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        wanted = None if columns is None else [
            n for n in names if any(n == c or (c.endswith("*") and n.startswith(c[:-1])) for c in columns)]
        return pq.read_table(path, columns=wanted).to_pandas(), None
    except Exception as err:  # pyarrow and pandas raise many types for a broken file
        return None, f"{what} {path} is not readable ({type(err).__name__}: {err})"


class _Notes:
    """The notes the summary lists: per-slide problems grouped by kind, and free-text notes."""

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
class _Slide:
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


def _condition_text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return "unlabelled"
    return str(value)


def _slide_list(inputs: ReportInputs) -> list[_Slide]:
    sheet = inputs.samples
    out, seen = [], set()
    for _, row in sheet.iterrows():
        slide = str(row["slide"])
        seen.add(slide)
        out.append(_Slide(slide, str(row.get("patient", slide)), _condition_text(row.get("condition")),
                          dict(inputs.slides.get(slide) or {})))
    for slide, paths in inputs.slides.items():  # outputs of slides the sheet does not list
        if str(slide) not in seen:
            out.append(_Slide(str(slide), str(slide), "unlabelled", dict(paths or {})))
    return out


def _note_missing(notes: _Notes, slide: str, path, name: str, why: str) -> None:
    """A missing file is grouped with the other slides missing it; an unreadable one is noted with why."""
    if _have(path):
        notes.add(f"slide {slide}: {why}")
    else:
        notes.slide(f"no {name}", slide)


def _read_slide(info: _Slide, notes: _Notes) -> None:
    """Fill ``info`` from the slide's cells, predictions and clusters tables (one slide in memory)."""
    from hemoprofile.vocabulary import TYPE_TASKS, cell_types

    paths = info.paths
    if not paths:
        notes.slide("no outputs (skipped or failed)", info.slide)
        return
    cells, why = _read_table(paths.get("cells"), "cells table", ["cell_id", "y", "x", "mean_*"])
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

    wanted = ["cell_id", "p_ctc_CTC", "pred_ctc", *[f"pred_{t}" for t in TYPE_TASKS]]
    pred, why = _read_table(paths.get("predictions"), "predictions table", wanted)
    if pred is None:
        _note_missing(notes, info.slide, paths.get("predictions"), "predictions.parquet", why)
        return
    if len(pred) != len(cells) or not np.array_equal(pred["cell_id"].to_numpy(), cells["cell_id"].to_numpy()):
        notes.slide("predictions whose rows are not the cells' (rerun classify)", info.slide)
        return
    try:
        types, info.type_task = cell_types(pred)
        info.type_counts = {str(k): int(v) for k, v in pd.Series(types).value_counts().items()}
    except ValueError:
        notes.slide("predictions without a cell-type column", info.slide)
    if "p_ctc_CTC" not in pred:
        return
    p = pred["p_ctc_CTC"].to_numpy(np.float64)
    is_ctc = (pred["pred_ctc"].astype(str).to_numpy() == "CTC") if "pred_ctc" in pred else p >= 0.5
    info.n_ctc = int(is_ctc.sum())
    top = np.argsort(-p, kind="stable")[:TOP_CTC_CANDIDATES]
    info.ctc_top = pd.DataFrame({
        "slide": info.slide, "cell_id": cells["cell_id"].to_numpy()[top], "row": top, "p_ctc_CTC": p[top],
        "y": cells["y"].to_numpy()[top] if "y" in cells else np.nan,
        "x": cells["x"].to_numpy()[top] if "x" in cells else np.nan,
    })
    clusters, why = _read_table(paths.get("clusters"), "clusters table",
                                ["cluster_id", "cell_ids", "size", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"])
    if clusters is None:
        _note_missing(notes, info.slide, paths.get("clusters"), "clusters.parquet", why)
        return
    info.n_ctc_clusters = 0
    if len(clusters) == 0 or not info.n_ctc:
        return
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


# --- images -----------------------------------------------------------------------------------------------


def composite_rgb(unit: np.ndarray, channels: Sequence[str]) -> np.ndarray:
    """False-colour RGB (H, W, 3) of a (C, H, W) image in [0, 1]: DAPI blue, CK red, VIM green, CD45 grey
    (the colours of :data:`hemoprofile.vocabulary.CHANNEL_RGB`), other channels grey.

    The channels are not stretched further: preprocessed intensities are already normalised per slide,
    so a CK-negative cell stays dark instead of being stretched into false positives.

    Example
    -------
    >>> composite_rgb(np.ones((2, 1, 1)), ["DAPI", "CK"])[0, 0].tolist()
    [1.0, 0.0, 1.0]
    """
    x = np.asarray(unit, np.float32)
    out = np.zeros((*x.shape[1:], 3), np.float32)
    for c, name in enumerate(channels):
        out += np.clip(x[c], 0, 1)[..., None] * np.asarray(channel_rgb(name), np.float32)
    return np.clip(out, 0, 1)


def _raw_to_unit(x: np.ndarray) -> np.ndarray:
    """Raw intensities -> [0, 1] per channel between the 1st and 99.8th percentile (for display only)."""
    x = np.asarray(x, np.float32)
    out = np.empty_like(x)
    for c in range(x.shape[0]):
        lo, hi = np.percentile(x[c], [1.0, 99.8])
        out[c] = np.clip((x[c] - lo) / max(hi - lo, 1e-6), 0, 1)
    return out


def _image_source(paths: Mapping) -> tuple[str | None, bool]:
    """The image to show for a slide: preprocessed.zarr ([0, 1]) when present, else image.zarr (raw)."""
    if _have(paths.get("preprocessed")):
        return paths["preprocessed"], True
    if _have(paths.get("image")):
        return paths["image"], False
    return None, False


def _coarsest_level(path, min_width: int):
    """The coarsest resolution level of an OME-Zarr image at least ``min_width`` px wide (level 0 when
    it is the only one), and its downsampling factor relative to level 0.

    hemoprofile's images have one level today; a pyramid written later makes thumbnails of whole
    HDSCA slides cheap (level 0 means decoding every chunk of the slide).
    """
    import zarr

    root = zarr.open_group(str(path), mode="r")
    datasets = root.attrs.get("ome", {}).get("multiscales", [{}])[0].get("datasets", [{"path": "0"}])
    full = root["0"]
    best, factor = full, 1
    for d in datasets[1:]:
        try:
            level = root[d["path"]]
        except KeyError:
            continue
        if level.ndim == full.ndim and min_width <= level.shape[-1] < best.shape[-1]:
            best, factor = level, max(1, round(full.shape[-1] / level.shape[-1]))
    return best, factor


def block_mean_thumbnail(array, step: int) -> np.ndarray:
    """Downsample a (c, y, x) array by ``step`` with block means, reading bands of rows (bounded memory).

    Edge blocks that are cut by the image border are averaged over the pixels they have.

    Example
    -------
    >>> block_mean_thumbnail(np.arange(12, dtype=np.uint16).reshape(1, 3, 4), 2).tolist()
    [[[2.5, 4.5], [8.5, 10.5]]]
    """
    c, h, w = array.shape
    chunk_h = int(getattr(array, "chunks", (1, 512, 512))[1])
    band = step * max(1, round(chunk_h / step))
    xs = np.arange(0, w, step)
    out = np.zeros((c, -(-h // step), len(xs)), np.float32)
    col_counts = np.diff(np.append(xs, w)).astype(np.float64)
    for ci in range(c):
        for y0 in range(0, h, band):
            y1 = min(y0 + band, h)
            block = np.asarray(array[ci, y0:y1, :])
            sums = np.add.reduceat(block, xs, axis=1, dtype=np.float64)
            ys = np.arange(0, y1 - y0, step)
            sums = np.add.reduceat(sums, ys, axis=0)
            row_counts = np.diff(np.append(ys, y1 - y0)).astype(np.float64)
            out[ci, y0 // step: y0 // step + len(ys)] = sums / row_counts[:, None] / col_counts[None, :]
    return out


def _outline(labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import find_boundaries

    return find_boundaries(labels, mode="inner") & (labels > 0)


def _draw(rgb: np.ndarray, mask: np.ndarray, colour) -> np.ndarray:
    rgb = rgb.copy()
    rgb[mask] = np.asarray(colour, np.float32)
    return rgb


def slide_images(paths: Mapping, detail_centre: tuple[int, int] | None = None,
                 width: int = THUMBNAIL_WIDTH, detail: int = DETAIL_SIZE) -> dict:
    """The QC images of a slide: a thumbnail at most ``width`` px wide and a ``detail`` px crop at full
    resolution, false colour with segmentation outlines when labels.zarr exists.

    Returns
    -------
    dict: ``thumbnail`` and ``detail`` (H, W, 3 float arrays), ``step`` (downsampling factor),
    ``source`` (path shown), ``outlines`` (bool), ``detail_window`` (y0, y1, x0, x1).
    """
    source, unit = _image_source(paths)
    if source is None:
        raise FileNotFoundError("neither preprocessed.zarr nor image.zarr exists")
    image = io.open_ome_zarr(source)
    array = image.array
    _, h, w = array.shape
    level, factor = _coarsest_level(source, width)
    step = max(1, math.ceil(level.shape[-1] / width))
    small = block_mean_thumbnail(level, step)
    small = small / np.float32(np.iinfo(level.dtype).max) if unit and np.issubdtype(level.dtype, np.integer) else small
    small = small if unit else _raw_to_unit(small)
    thumb = composite_rgb(small, image.channel_names)
    step *= factor  # in full-resolution pixels from here on
    cy, cx = detail_centre or (h // 2, w // 2)
    y0 = int(min(max(cy - detail // 2, 0), max(h - detail, 0)))
    x0 = int(min(max(cx - detail // 2, 0), max(w - detail, 0)))
    window = (y0, min(y0 + detail, h), x0, min(x0 + detail, w))
    crop = np.asarray(array[:, window[0]:window[1], window[2]:window[3]])
    crop = to_unit(crop) if unit else _raw_to_unit(crop)
    zoom = composite_rgb(crop, image.channel_names)
    outlines = _have(paths.get("labels"))
    if outlines:
        labels = io.open_ome_zarr(paths["labels"]).array
        lab_small = np.asarray(labels[step // 2::step, step // 2::step])[: thumb.shape[0], : thumb.shape[1]]
        mask = np.zeros(thumb.shape[:2], bool)
        mask[: lab_small.shape[0], : lab_small.shape[1]] = _outline(lab_small)
        thumb = _draw(thumb, mask, OUTLINE_RGB)
        zoom = _draw(zoom, _outline(np.asarray(labels[window[0]:window[1], window[2]:window[3]])), OUTLINE_RGB)
    return {"thumbnail": thumb, "detail": zoom, "step": step, "source": source, "outlines": outlines,
            "detail_window": window}


def _crop(paths: Mapping, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """A [0, 1] (C, H, W) crop of the slide's shown image and the labels under it (None without labels)."""
    source, unit = _image_source(paths)
    if source is None:
        raise FileNotFoundError("neither preprocessed.zarr nor image.zarr exists")
    image = io.open_ome_zarr(source)
    _, h, w = image.array.shape
    y0, y1, x0, x1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
    pixels = np.asarray(image.array[:, y0:y1, x0:x1])
    pixels = to_unit(pixels) if unit else _raw_to_unit(pixels)
    labels = None
    if _have(paths.get("labels")):
        labels = np.asarray(io.open_ome_zarr(paths["labels"]).array[y0:y1, x0:x1])
    return pixels, list(image.channel_names), labels


# --- QC ---------------------------------------------------------------------------------------------------


def robust_z(values: Sequence[float]) -> np.ndarray:
    """Robust z-scores: ``(v - median) / (1.4826 * MAD)``, NaNs ignored and kept.

    The MAD is floored at 1 % of the median's magnitude, so a cohort of near-identical slides does not
    flag a slide for a difference nobody would see.

    Example
    -------
    >>> robust_z([10.0, 10.4, 9.6, 10.2, 30.0]).round(1).tolist()
    [-0.7, 0.7, -2.0, 0.0, 66.8]
    """
    v = np.asarray(values, np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return np.full(v.shape, np.nan)
    med = float(np.median(finite))
    mad = max(float(np.median(np.abs(finite - med))), 0.01 * abs(med))
    if mad == 0:
        return np.where(np.isfinite(v), np.where(v == med, 0.0, np.inf * np.sign(v - med)), np.nan)
    return (v - med) / (1.4826 * mad)


def intensity_qc(medians: pd.DataFrame, threshold: float = QC_Z_THRESHOLD,
                 min_slides: int = QC_MIN_SLIDES) -> pd.DataFrame:
    """Flag slides whose per-channel median cell intensity is far from the cohort's.

    Parameters
    ----------
    medians : one row per slide (index: slide), one column per channel: the median over the slide's
        cells of their mean raw intensity (cells.parquet ``mean_<channel>``); NaN for a slide without cells.
    threshold : a slide is flagged when ``|robust z|`` of any channel exceeds it.
    min_slides : fewer slides with cells than this: nothing is flagged (z is not computed).

    Returns
    -------
    ``medians`` with ``z_<channel>`` columns, ``flagged`` (bool) and ``reason`` (the channels and their z).

    Example
    -------
    >>> m = pd.DataFrame({"CK": [100.0, 104.0, 98.0, 400.0]}, index=["a", "b", "c", "d"])
    >>> intensity_qc(m)["flagged"].tolist()
    [False, False, False, True]
    """
    out = medians.copy()
    n = int(medians.notna().all(axis=1).sum())
    reasons = [[] for _ in range(len(out))]
    for channel in medians.columns:
        z = robust_z(medians[channel].to_numpy()) if n >= min_slides else np.full(len(out), np.nan)
        out[f"z_{channel}"] = z
        for i, value in enumerate(z):
            if abs(value) > threshold:  # NaN compares False: slides without cells are not flagged
                reasons[i].append(f"{channel} z = {value:+.1f}")
    out["flagged"] = [bool(r) for r in reasons]
    out["reason"] = ["; ".join(r) for r in reasons]
    return out


# --- sections ---------------------------------------------------------------------------------------------


class _Context:
    def __init__(self, inputs: ReportInputs, progress: Callable[[str], object]) -> None:
        self.inputs = inputs
        self.say = progress
        self.slides = _slide_list(inputs)
        self.notes = _Notes(len(self.slides))
        for info in self.slides:
            _read_slide(info, self.notes)
        self.say(f"read {len(self.slides)} slides")

    @property
    def with_cells(self) -> list[_Slide]:
        return [s for s in self.slides if s.n_cells]


def _section_qc(ctx: _Context) -> str:
    slides = ctx.slides
    if not slides:
        return _not_available("the sample sheet lists no slides")
    have_cells = [s for s in slides if s.n_cells is not None]
    parts = []
    if have_cells:
        channels = list(dict.fromkeys(c for s in have_cells for c in s.medians))
        medians = pd.DataFrame([[s.medians.get(c, np.nan) for c in channels] for s in slides],
                               index=[s.slide for s in slides], columns=channels)
        qc = intensity_qc(medians)
        table = pd.DataFrame({"slide": [s.slide for s in slides], "patient": [s.patient for s in slides],
                              "condition": [s.condition for s in slides],
                              "cells": pd.Series([s.n_cells for s in slides], dtype=object)})
        for c in channels:
            table[f"median {c}"] = qc[c].to_numpy()
            table[f"z {c}"] = qc[f"z_{c}"].to_numpy()
        table["flag"] = ["⚠ " + r if f else "" for f, r in zip(qc["flagged"], qc["reason"])]
        flagged = [s for s, f in zip(qc.index, qc["flagged"]) if f]
        n_ok = int(medians.notna().all(axis=1).sum())
        if n_ok < QC_MIN_SLIDES:
            verdict = (f"Intensity outliers are not computed: {n_ok} slide(s) with cells, at least "
                       f"{QC_MIN_SLIDES} are needed to compare a slide with its cohort.")
        elif flagged:
            verdict = (f'<strong class="flag">{len(flagged)} slide(s) flagged</strong> with a channel median more '
                       f"than {QC_Z_THRESHOLD:g} robust z from the cohort: {_esc(', '.join(flagged))}.")
            for s in flagged:
                ctx.notes.slide("intensity QC flag", s)
        else:
            verdict = (f"No slide has a channel median more than {QC_Z_THRESHOLD:g} robust z from the cohort "
                       f"({n_ok} slides compared).")
        parts.append(
            "<p>Per channel, the median over a slide's cells of their mean raw intensity "
            "(cells.parquet <code>mean_&lt;channel&gt;</code>), and its robust z across slides: "
            "(value − cohort median) / (1.4826 × MAD). " + verdict + "</p>")
        parts.append(_table(table, row_class=lambda r: "flagged" if r["flag"] else "", scroll=len(table) > 25))
    else:
        parts.append(_not_available("no slide has a readable cells.parquet (cell counts and intensities)"))

    cards = []
    for info in slides:
        if not info.paths:
            cards.append(f'<figure class="card"><figcaption><b>{_esc(info.slide)}</b></figcaption>'
                         f'{_not_available("no outputs for this slide")}</figure>')
            continue
        try:
            images = slide_images(info.paths, info.detail_centre)
        except (FileNotFoundError, ValueError, KeyError) as err:
            cards.append(f'<figure class="card"><figcaption><b>{_esc(info.slide)}</b></figcaption>'
                         f"{_not_available(str(err))}</figure>")
            ctx.notes.slide("no image for the QC thumbnail", info.slide)
            continue
        y0, y1, x0, x1 = images["detail_window"]
        count = "cells: –" if info.n_cells is None else f"{info.n_cells:,} cells"
        outline = "" if images["outlines"] else " · no labels.zarr: no outlines"
        tw = images["thumbnail"].shape[1]
        dw = 2 * images["detail"].shape[1]
        cards.append(
            f'<figure class="card"><div class="pair">'
            f'{_img(_rgb_uri(images["thumbnail"]), f"{info.slide} thumbnail", width=tw)}'
            f'{_img(_rgb_uri(images["detail"]), f"{info.slide} detail", width=dw, pixelated=True)}'
            f'</div><figcaption><b>{_esc(info.slide)}</b> · {_esc(info.patient)} · {_esc(info.condition)} · '
            f"{_esc(count)}<br>whole slide 1:{images['step']} · detail at full resolution "
            f"(y {y0}–{y1}, x {x0}–{x1}, shown 2×){_esc(outline)}</figcaption></figure>")
    parts.append('<p class="legend">False colour: <span style="color:#4060ff">DAPI</span> blue, '
                 '<span style="color:#e03030">CK</span> red, <span style="color:#20a020">VIM</span> green, '
                 'CD45 grey; <span style="background:#222;color:#ffd900;padding:0 3px">segmentation outlines</span> '
                 "yellow. Detail crop: the 128 px square around the densest cells.</p>")
    parts.append(f'<div class="cards">{"".join(cards)}</div>')
    return "".join(parts)


#: Display order of cell types (classify's task classes, coarse after fine); others follow by name.
_TYPE_DISPLAY_ORDER = ("CD4_T", "CD8_T", "T", "B", "NK", "granulocyte", "monocyte", "lymphoid", "myeloid",
                       "leukocyte")


def _type_order(types: Sequence[str]) -> list[str]:
    known = list(_TYPE_DISPLAY_ORDER)
    return sorted(set(types), key=lambda t: (t == "CTC", known.index(t) if t in known else len(known), t))


def _composition_frame(ctx: _Context) -> tuple[pd.DataFrame | None, str]:
    """Per patient: condition, slides, cells and counts per type; from predictions, else patients.parquet."""
    typed = [s for s in ctx.slides if s.type_counts is not None]
    if typed:
        rows: dict[str, dict] = {}
        for s in ctx.slides:
            row = rows.setdefault(s.patient, {"patient": s.patient, "condition": s.condition, "slides": 0,
                                              "cells": 0, "counts": {}})
            row["slides"] += 1
            row["cells"] += s.n_cells or 0
            for t, n in (s.type_counts or {}).items():
                row["counts"][t] = row["counts"].get(t, 0) + n
        types = _type_order([t for r in rows.values() for t in r["counts"]])
        frame = pd.DataFrame([{**{k: v for k, v in r.items() if k != "counts"},
                               **{t: r["counts"].get(t, 0) for t in types}} for r in rows.values()])
        tasks = sorted({s.type_task for s in typed if s.type_task})
        return frame, (f"Cell types from the '{', '.join(tasks)}' classifier predictions (predictions.parquet), "
                       "CTC where the ctc classifier says so.")
    table, why = _read_table(ctx.inputs.patients, "patient table")
    if table is not None and any(c.startswith("count_") for c in table.columns):
        types = _type_order([c[len("count_"):] for c in table.columns if c.startswith("count_")])
        frame = pd.DataFrame({"patient": table["patient"].astype(str),
                              "condition": [_condition_text(c) for c in table.get("condition", [None] * len(table))],
                              "slides": table.get("n_slides", np.nan), "cells": table.get("n_cells", np.nan)})
        for t in types:
            frame[t] = table[f"count_{t}"].to_numpy()
        return frame, "Cell types from the patient table (patients.parquet count_<type> columns)."
    return None, "no slide has predictions.parquet with cell-type predictions, and no patient table with count_ columns"


def _section_composition(ctx: _Context) -> str:
    frame, source = _composition_frame(ctx)
    if frame is None:
        return _not_available(source)
    frame = frame.sort_values(["condition", "patient"]).reset_index(drop=True)
    types = [c for c in frame.columns if c not in ("patient", "condition", "slides", "cells")]
    leuk_types = [t for t in types if t != "CTC"]
    leukocytes = frame[leuk_types].sum(axis=1).to_numpy(np.float64) if leuk_types else np.zeros(len(frame))
    fractions = frame[leuk_types].to_numpy(np.float64) / np.where(leukocytes > 0, leukocytes, np.nan)[:, None]

    fig = _new_figure(min(max(4.5, 0.32 * len(frame) + 2.5), 13), 3.6)
    ax = fig.add_subplot()
    colours = _palette(len(leuk_types))
    bottom = np.zeros(len(frame))
    x = np.arange(len(frame))
    for i, t in enumerate(leuk_types):
        values = np.nan_to_num(fractions[:, i])
        ax.bar(x, values, bottom=bottom, color=colours[i], width=0.8, label=t)
        bottom += values
    ax.set_xticks(x, frame["patient"], rotation=90 if len(frame) > 12 else 0, fontsize=8)
    ax.set_ylabel("fraction of leukocytes")
    ax.set_ylim(0, 1)
    ax.set_xlim(-0.6, len(frame) - 0.4)
    for condition, idx in frame.groupby("condition").groups.items():
        lo, hi = min(idx), max(idx)
        ax.annotate(str(condition), ((lo + hi) / 2, 1.01), xycoords=("data", "axes fraction"), ha="center",
                    va="bottom", fontsize=8)
        if lo > 0:
            ax.axvline(lo - 0.5, color="black", lw=0.8)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    chart = _img(_figure_uri(fig), "cell-type composition per patient", cls="fig")

    table = frame[["patient", "condition", "slides", "cells"]].copy()
    table["leukocytes"] = leukocytes.astype(np.int64)
    for i, t in enumerate(leuk_types):
        table[f"% {t}"] = 100 * fractions[:, i]
    if "CTC" in types:
        table["CTC"] = frame["CTC"].to_numpy()
        table["CTC per 1000 leukocytes"] = 1000 * frame["CTC"].to_numpy() / np.where(leukocytes > 0, leukocytes, np.nan)
    return (f"<p>{_esc(source)} Bars: each patient's leukocytes (every cell not predicted CTC), pooled over the "
            f"patient's slides; CTCs are counted in the table.</p>{chart}"
            f"{_table(table, scroll=len(table) > 25)}")


def _palette(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _confusion_table(matrix, classes: Sequence[str], true_label: str = "true", pred_label: str = "predicted") -> str:
    m = np.asarray(matrix, np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(classes):
        return _not_available(f"confusion matrix of shape {m.shape} for {len(classes)} classes")
    row_sums = m.sum(axis=1, keepdims=True)
    share = np.divide(m, row_sums, out=np.zeros_like(m), where=row_sums > 0)
    head = "".join(f"<th>{_esc(c)}</th>" for c in classes)
    rows = []
    for i, c in enumerate(classes):
        cells = "".join(
            f'<td class="num" style="background:rgba(31,119,180,{0.08 + 0.8 * share[i, j]:.2f});'
            f'{"color:#fff;" if share[i, j] > 0.55 else ""}" title="{share[i, j]:.0%} of true {_esc(c)}">'
            f"{int(m[i, j]):,}</td>" for j in range(len(classes)))
        rows.append(f"<tr><th>{_esc(c)}</th>{cells}</tr>")
    return (f'<div class="tbl"><table class="cm"><thead><tr><th>{_esc(true_label)} ↓ / {_esc(pred_label)} →</th>'
            f'{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def _section_classifiers(ctx: _Context) -> str:
    metrics = ctx.inputs.classifier_metrics or {}
    if not metrics:
        return _not_available("no classifier metrics given (the classify stage has not run)")
    rows, details, problems = [], [], []
    for task, path in metrics.items():
        data, why = _read_json(path, f"metrics of task {task}")
        if data is None:
            problems.append(why)
            ctx.notes.add(f"classifier {task}: {why}")
            continue
        split_name = "test" if isinstance(data.get("test"), dict) else "validation"
        block = data.get(split_name) or {}
        split = data.get("split", {})
        groups = split.get(f"{split_name}_groups") or []
        rows.append({"task": task, "classes": ", ".join(map(str, data.get("classes", block.get("classes", [])))),
                     "evaluated on": split_name, "held-out patients": ", ".join(map(str, groups)) or "–",
                     "cells": block.get("n"), "accuracy": block.get("accuracy"),
                     "balanced accuracy": block.get("balanced_accuracy"), "macro F1": block.get("macro_f1"),
                     "model": data.get("model_id", "")})
        classes = block.get("classes") or data.get("classes") or []
        per_class = block.get("per_class") or {}
        pc = pd.DataFrame([{"class": c, **{k: per_class[c].get(k) for k in ("precision", "recall", "f1", "support")}}
                           for c in classes if c in per_class])
        cm = (_confusion_table(block["confusion_matrix"], classes) if "confusion_matrix" in block
              else _not_available("no confusion matrix in the metrics"))
        details.append(f"<h3>{_esc(task)}</h3><div class=\"row\"><div><h4>Confusion matrix ({_esc(split_name)}, "
                       f"cells)</h4>{cm}</div><div><h4>Per class</h4>"
                       f"{_table(pc) if len(pc) else _not_available('no per-class metrics')}</div></div>")
    if not rows:
        return _not_available("; ".join(problems))
    intro = ("<p>Cell classifiers are evaluated on the cells of held-out patients (none of their cells was "
             "used in training or model selection). Balanced accuracy and macro F1 weigh rare classes "
             "(CTCs) like common ones.</p>")
    missing = "".join(_not_available(p) for p in problems)
    return intro + _table(pd.DataFrame(rows)) + missing + "".join(details)


_EMBEDDING_METRIC_HELP = {
    "silhouette": "silhouette of the latent clusters (−1..1, higher = better separated)",
    "davies_bouldin": "Davies–Bouldin index of the clusters (lower = better separated)",
    "calinski_harabasz": "Calinski–Harabasz index (higher = better separated)",
    "ari": "adjusted Rand index, clusters vs reference labels (1 = identical)",
    "nmi": "normalised mutual information, clusters vs reference labels",
    "purity": "share of cells whose cluster's majority label is their own",
    "silhouette_by_label": "silhouette of the reference labels in the latent space",
    "silhouette_by_batch": "silhouette of batches (near 0 or below = batches mixed, good)",
    "knn_entropy": "normalised entropy of batches among each cell's neighbours (1 = fully mixed)",
    "cluster_nmi": "NMI between clusters and batches (low = clusters are not batches)",
    "silhouette_by_batch_within_label": "silhouette of batches within each reference label (near 0 = mixed)",
    "knn_entropy_within_label": "kNN batch entropy within each reference label (1 = fully mixed)",
    "n_labelled": "cells with a reference label",
    "n_labels": "distinct reference labels",
    "n_batches": "batches (slides or the batch column)",
    "n_cells": "cells in the metrics sample",
    "n_clusters": "latent clusters",
    "condition_on": "what the conditional VAE was conditioned on (none: plain VAE)",
    "model_id": "embedder model id (SHA-256 prefix)",
}


def _flatten(data: Mapping, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out += _flatten(v, key + ".")
        else:
            out.append((key, v))
    return out


def _section_latent(ctx: _Context) -> str:
    parts = []
    figures = ctx.inputs.embedding_figures or {}
    shown = []
    for key, path in figures.items():
        if not _have(path):
            ctx.notes.add(f"latent figure {key}: {_why_missing(path, 'file')}")
            continue
        uri = _png_file_uri(path)
        wide = " wide" if _png_aspect(uri) > 1.8 else ""  # multi-panel figures take a whole row
        shown.append(f'<figure class="latentfig{wide}">{_img(uri, key, cls="fig")}'
                     f"<figcaption>{_esc(key.replace('_', ' '))}</figcaption></figure>")
    if shown:
        parts.append("<p>Each point is a cell on the first two principal components of its latent vector "
                     "(the same axes for every slide).</p>")
        parts.append(f'<div class="figs">{"".join(shown)}</div>')
    else:
        parts.append(_not_available("no embedding figure " + ("file exists" if figures else "was given")))
    data, why = _read_json(ctx.inputs.embedding_metrics, "embedding metrics")
    parts.append("<h3>Clustering metrics</h3>")
    if data is None:
        parts.append(_not_available(why))
    else:
        rows = [{"metric": k, "value": v, "meaning": _EMBEDDING_METRIC_HELP.get(k.split(".")[-1], "")}
                for k, v in _flatten(data)]
        parts.append(_table(pd.DataFrame(rows), sortable=False))
    return "".join(parts)


def _patch_unit(patches: np.ndarray) -> np.ndarray:
    if np.issubdtype(patches.dtype, np.integer):
        return patches.astype(np.float32) / np.float32(np.iinfo(patches.dtype).max)
    return np.clip(patches.astype(np.float32), 0, 1)


def _candidate_crops(info: _Slide, rows: pd.DataFrame) -> tuple[list[np.ndarray | None], str]:
    """RGB crops of a slide's candidate cells: patches.zarr rows, else crops of the slide image."""
    if _have(info.paths.get("patches")):
        try:
            array, channels, _ = open_patch_array(info.paths["patches"])
            if array.shape[0] == info.n_cells:
                return [composite_rgb(_patch_unit(np.asarray(array[int(r)])), channels) for r in rows["row"]], \
                    "patches.zarr"
        except ValueError:
            pass
    half = 16
    out = []
    for _, r in rows.iterrows():
        try:
            pixels, channels, _ = _crop(info.paths, int(r["y"]) - half, int(r["y"]) + half,
                                        int(r["x"]) - half, int(r["x"]) + half)
            out.append(composite_rgb(pixels, channels))
        except (FileNotFoundError, ValueError):
            out.append(None)
    return out, "the slide image"


def _section_rare_events(ctx: _Context) -> str:
    scored = [s for s in ctx.slides if s.ctc_top is not None]
    if not scored:
        return _not_available("no slide has predictions with p_ctc_CTC (the ctc classifier task was not run)")
    by_slide = {s.slide: s for s in scored}
    top = pd.concat([s.ctc_top for s in scored], ignore_index=True)
    top = top.sort_values("p_ctc_CTC", ascending=False, kind="stable").head(TOP_CTC_CANDIDATES)
    n_ctc = sum(s.n_ctc or 0 for s in scored)
    tiles, sources = [], set()
    crops: dict[int, np.ndarray | None] = {}
    for slide, rows in top.groupby("slide", sort=False):
        images, source = _candidate_crops(by_slide[slide], rows)
        sources.add(source)
        crops.update(dict(zip(rows.index, images)))
    for i, r in top.iterrows():
        rgb = crops.get(i)
        picture = (_img(_rgb_uri(rgb), f"{r['slide']} cell {r['cell_id']}", width=3 * rgb.shape[1], pixelated=True)
                   if rgb is not None else '<div class="noimg">no image</div>')
        tiles.append(f'<figure class="cell">{picture}<figcaption>p = {r["p_ctc_CTC"]:.3f}<br>{_esc(r["slide"])}'
                     f' · cell {int(r["cell_id"])}</figcaption></figure>')
    parts = [f"<p>{n_ctc:,} cells predicted CTC in {len(scored)} slides. The {len(top)} cells with the highest "
             f"CTC probability (<code>p_ctc_CTC</code>), whatever their predicted class; crops from "
             f"{_esc(' and '.join(sorted(sources)))}, shown 3×.</p>",
             f'<div class="gallery">{"".join(tiles)}</div>']

    parts.append("<h3>CTC–leukocyte clusters</h3>")
    with_clusters = [s for s in scored if s.n_ctc_clusters is not None]
    clusters = [s.ctc_clusters for s in scored if s.ctc_clusters is not None]
    if not with_clusters:
        parts.append(_not_available("no slide with CTC predictions has a clusters.parquet"))
    elif not clusters:
        parts.append(f"<p>No cell cluster holds both a predicted CTC and a leukocyte "
                     f"({len(with_clusters)} slides searched).</p>")
    else:
        table = pd.concat(clusters, ignore_index=True).sort_values("score", ascending=False).head(TOP_CTC_CLUSTERS)
        total = sum(s.n_ctc_clusters or 0 for s in with_clusters)
        tiles = []
        for _, r in table.iterrows():
            info = by_slide[r["slide"]]
            y0, y1, x0, x1 = (int(r["bbox_y0"]) - CROP_MARGIN, int(r["bbox_y1"]) + CROP_MARGIN,
                              int(r["bbox_x0"]) - CROP_MARGIN, int(r["bbox_x1"]) + CROP_MARGIN)
            cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
            half = CLUSTER_CROP_MAX // 2
            y0, y1, x0, x1 = max(y0, cy - half), min(y1, cy + half), max(x0, cx - half), min(x1, cx + half)
            try:
                pixels, channels, labels = _crop(info.paths, y0, y1, x0, x1)
                rgb = composite_rgb(pixels, channels)
                if labels is not None:
                    edge = _outline(labels)
                    ctc = np.isin(labels, list(r["ctc_ids"]))
                    others = np.isin(labels, [c for c in r["cell_ids"] if c not in set(r["ctc_ids"])])
                    rgb = _draw(_draw(rgb, edge & others, CLUSTER_OTHER_RGB), edge & ctc, OUTLINE_RGB)
                picture = _img(_rgb_uri(rgb), f"{r['slide']} cluster {r['cluster_id']}", width=3 * rgb.shape[1],
                               pixelated=True)
            except (FileNotFoundError, ValueError):
                picture = '<div class="noimg">no image</div>'
            tiles.append(f'<figure class="cell">{picture}<figcaption>max p = {r["score"]:.3f} · {int(r["size"])} cells '
                         f'({int(r["n_ctc"])} CTC)<br>{_esc(r["slide"])} · cluster {int(r["cluster_id"])}<br>'
                         f'CTC cell {_esc(", ".join(str(int(c)) for c in r["ctc_ids"]))}</figcaption></figure>')
        parts.append(f"<p>{total:,} clusters of touching cells hold at least one predicted CTC and one leukocyte; "
                     f"the {len(table)} with the highest CTC probability. Outlines: "
                     f'<span class="sw" style="background:#ffd900"></span> predicted CTC, '
                     f'<span class="sw" style="background:#00e6e6"></span> other members. Crops shown 3×.</p>'
                     f'<div class="gallery">{"".join(tiles)}</div>')
    return "".join(parts)


def _metric_cell(value) -> tuple[float | None, str]:
    """A metric given as a number or {"value", "ci95": [lo, hi]} -> (value, 'v [lo, hi]')."""
    if isinstance(value, Mapping):
        v = value.get("value")
        ci = value.get("ci95")
        text = _fmt(v)
        if ci is not None and len(ci) == 2:
            text += f" [{_fmt(ci[0])}, {_fmt(ci[1])}]"
        return v, text
    return value, _fmt(value)


_METRIC_NAMES = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro F1"),
                 ("roc_auc", "ROC AUC"))


def _true_conditions(path: str | None) -> dict[str, str]:
    """patient -> simulated condition from a synthetic cohort's truth_cells.parquet ({} without one)."""
    if not path or not os.path.exists(path):
        return {}
    try:
        truth = pq.read_table(path, columns=["patient", "condition"]).to_pandas().drop_duplicates("patient")
    except Exception:  # an unreadable truth table only loses this column
        return {}
    return dict(zip(truth["patient"].astype(str), truth["condition"].astype(str)))


def _section_patients(ctx: _Context) -> str:
    inputs = ctx.inputs
    parts, available = [], 0

    parts.append("<h3>Predictions</h3>")
    pred, why = _read_table(inputs.patient_predictions, "patient predictions")
    if pred is None:
        parts.append(_not_available(why))
    else:
        available += 1
        sheet = inputs.samples.drop_duplicates("patient") if "patient" in inputs.samples else None
        if sheet is not None and "condition" in sheet and "condition" not in pred:
            conditions = dict(zip(sheet["patient"].astype(str), sheet["condition"].map(_condition_text)))
            pred.insert(1, "condition (sheet)", pred["patient"].astype(str).map(conditions))
        truth = _true_conditions(inputs.truth_cells)
        if truth:
            pred.insert(2, "condition (simulated truth)", pred["patient"].astype(str).map(truth))
        parts.append("<p>Each patient's predicted state, with the model's probabilities (two stages: disease vs "
                     "control, then the disease subtype).</p>")
        parts.append(_table(pred, scroll=len(pred) > 25))

    parts.append("<h3>Cross-validated metrics</h3>")
    data, why = _read_json(inputs.patient_metrics, "patient model metrics")
    if data is None:
        parts.append(_not_available(why))
    else:
        available += 1
        features = data.get("features")
        n_features = len(features) if isinstance(features, (list, tuple)) else features
        parts.append(_kv_table([("patients (labelled)", data.get("n_patients")),
                                ("patients without a label", data.get("n_unlabelled")),
                                ("features", n_features), ("seed", data.get("seed"))]))
        stages = data.get("stages") or {}
        rows, per_model, matrices = [], [], []
        for stage, block in stages.items():
            metrics = block.get("metrics") or {}
            cv = block.get("cv") or {}
            row = {"stage": stage, "classes": ", ".join(map(str, block.get("classes", []))),
                   "patients": block.get("n_patients"),
                   "CV": (f"{cv.get('folds')} folds × {cv.get('repeats')} repeats" if cv else "–")}
            for key, name in _METRIC_NAMES:
                row[name] = _metric_cell(metrics[key])[1] if key in metrics else "–"
            skipped = [f"{what} skipped in {cv[key]} folds" for key, what in
                       (("smote_skipped_folds", "SMOTE"), ("stacking_skipped_folds", "stacking")) if cv.get(key)]
            if skipped:
                row["CV"] += f" ({'; '.join(skipped)})"
            rows.append(row)
            for model, mm in (block.get("per_model") or {}).items():
                entry = {"stage": stage, "model": model}
                for key, name in _METRIC_NAMES:
                    entry[name] = _metric_cell(mm[key])[1] if key in mm else "–"
                per_model.append(entry)
            if "confusion_matrix" in block and block.get("classes"):
                matrices.append(f"<div><h4>{_esc(stage)}</h4>"
                                f"{_confusion_table(block['confusion_matrix'], block['classes'])}</div>")
        if rows:
            parts.append("<p>Out-of-fold estimates over repeated stratified cross-validation, with 95% confidence "
                         "intervals in brackets. Stage <i>disease</i> separates disease from control, <i>subtype</i> "
                         "the disease subtypes, <i>overall</i> scores the final state of every patient.</p>")
            parts.append(_table(pd.DataFrame(rows), sortable=False, nowrap=True))
        else:
            parts.append(_not_available("the metrics list no stages"))
        if per_model:
            parts.append("<h4>Per model</h4>" + _table(pd.DataFrame(per_model), nowrap=True))
        if matrices:
            parts.append("<h4>Confusion matrices (patients, out of fold)</h4>"
                         f'<div class="row">{"".join(matrices)}</div>')

    parts.append("<h3>Out-of-fold predictions</h3>")
    oof, why = _read_table(inputs.patient_oof, "out-of-fold predictions")
    if oof is None:
        parts.append(_not_available(why))
    else:
        available += 1
        wrong = 0
        if {"condition", "predicted_state"} <= set(oof.columns):
            wrong = int((oof["condition"].astype(str) != oof["predicted_state"].astype(str)).sum())
        parts.append(f"<details><summary>{len(oof)} patients, {wrong} misclassified (highlighted)</summary>"
                     + _table(oof, scroll=len(oof) > 25,
                              row_class=lambda r: "flagged" if "predicted_state" in r and "condition" in r
                              and str(r["condition"]) != str(r["predicted_state"]) else "")
                     + "</details>")

    parts.append("<h3>Patient table</h3>")
    table, why = _read_table(inputs.patients, "patient table")
    if table is None:
        parts.append(_not_available(why))
    else:
        available += 1
        key = [c for c in ("patient", "condition", "n_slides", "n_cells", "n_leukocytes", "ctc_count",
                           "ctc_per_1000", "ctc_leukocyte_clusters") if c in table.columns]
        parts.append(f"<p>{len(table)} patients × {table.shape[1]} columns (the features of the patient model); "
                     "key columns:</p>" + _table(table[key], scroll=len(table) > 25))
    glossary, why = _read_table(inputs.patient_columns, "patient column glossary")
    if glossary is not None:
        parts.append(f"<details><summary>What each of the {len(glossary)} columns means</summary>"
                     f"{_table(glossary, scroll=len(glossary) > 25)}</details>")
    if available == 0:
        return _not_available("none of the patient-level outputs exists (the aggregate and patient model "
                              "stages have not run)")
    return "".join(parts)


def _section_importances(ctx: _Context) -> str:
    imp, why = _read_table(ctx.inputs.patient_importances, "feature importances")
    if imp is None:
        return _not_available(why)
    needed = {"stage", "feature", "model", "importance"}
    if not needed <= set(imp.columns):
        return _not_available(f"{ctx.inputs.patient_importances} lacks column(s) {sorted(needed - set(imp.columns))}")
    if len(imp) == 0:
        return _not_available("the importances table is empty")
    glossary, _ = _read_table(ctx.inputs.patient_columns, "patient column glossary")
    meaning = dict(zip(glossary["column"], glossary["description"])) if glossary is not None and {
        "column", "description"} <= set(glossary.columns) else {}
    parts = ["<p>Importances of the patient model's features, per stage: the ensemble's (the mean over its "
             f"models, each scaled to sum 1) top {TOP_FEATURES}.</p>"]
    for stage, block in imp.groupby("stage", sort=False):
        wide = block.pivot_table(index="feature", columns="model", values="importance", aggfunc="mean")
        score = wide["ensemble"] if "ensemble" in wide else wide.mean(axis=1)
        top = score.sort_values(ascending=False).head(TOP_FEATURES)
        fig = _new_figure(6.5, 0.28 * len(top) + 1.0)
        ax = fig.add_subplot()
        ax.barh(np.arange(len(top))[::-1], top.to_numpy(), color="#1f77b4")
        ax.set_yticks(np.arange(len(top))[::-1], [str(f) for f in top.index], fontsize=8)
        ax.set_xlabel("importance (ensemble)" if "ensemble" in wide else "importance (mean over models)")
        ax.set_title(f"stage: {stage}", fontsize=10)
        table = wide.loc[top.index].reset_index()
        table.insert(1, "description", [meaning.get(f, "") for f in top.index])
        parts.append(f"<h3>{_esc(stage)}</h3><div class=\"row\"><div>"
                     f"{_img(_figure_uri(fig), f'importances {stage}', cls='fig')}</div><div>"
                     f"{_table(table)}</div></div>")
    return "".join(parts)


def _benchmark_table(benchmarks_dir) -> tuple[pd.DataFrame | None, str | None]:
    """Per stage: jobs, summed, mean and longest wall time (s), peak RSS (MB) of the benchmark TSVs."""
    if not _have(benchmarks_dir):
        return None, _why_missing(benchmarks_dir, "benchmarks folder")
    root = Path(benchmarks_dir)
    rows = []
    for path in sorted(root.rglob("*.tsv")):
        stage = path.stem if path.parent == root else path.parent.relative_to(root).as_posix()
        try:
            bench = pd.read_csv(path, sep="\t")
        except Exception:  # an empty or truncated file from a killed job
            continue
        if bench.empty:
            continue
        seconds = pd.to_numeric(bench.iloc[:, 0], errors="coerce").mean()  # repeats: one job's mean
        rss = pd.to_numeric(bench["max_rss"], errors="coerce").max() if "max_rss" in bench else np.nan
        rows.append({"stage": stage, "s": seconds, "rss": rss})
    if not rows:
        return None, f"no benchmark TSVs under {benchmarks_dir}"
    frame = pd.DataFrame(rows)
    table = frame.groupby("stage").agg(jobs=("s", "size"), total_s=("s", "sum"), mean_s=("s", "mean"),
                                       max_s=("s", "max"), peak_rss_mb=("rss", "max"))
    table = table.sort_values("total_s", ascending=False).reset_index()
    total = pd.DataFrame([{"stage": "all stages", "jobs": int(table["jobs"].sum()), "total_s": table["total_s"].sum(),
                           "mean_s": np.nan, "max_s": table["max_s"].max(), "peak_rss_mb": table["peak_rss_mb"].max()}])
    table = pd.concat([table, total], ignore_index=True)
    table["total (h:m:s)"] = [str(datetime.timedelta(seconds=round(float(s)))) for s in table["total_s"]]
    return table.rename(columns={"total_s": "total s", "mean_s": "mean s", "max_s": "longest s",
                                 "peak_rss_mb": "peak RSS MB"}), None


def _config_yaml(config: Mapping) -> str:
    import yaml

    try:
        return yaml.safe_dump(config, sort_keys=False, allow_unicode=True, default_flow_style=False)
    except yaml.YAMLError:  # objects yaml cannot represent: go through JSON's string fallback
        return yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False, allow_unicode=True)


def _section_summary(ctx: _Context) -> str:
    inputs = ctx.inputs
    slides = ctx.slides
    patients = {s.patient for s in slides}
    conditions = pd.Series([s.condition for s in {s.patient: s for s in slides}.values()]).value_counts()
    n_cells = sum(s.n_cells or 0 for s in slides)
    n_ctc = [s.n_ctc for s in slides if s.n_ctc is not None]
    facts = [("slides in the sample sheet", len(inputs.samples)),
             ("slides with cells", len(ctx.with_cells)),
             ("patients", len(patients)),
             ("patients per condition", ", ".join(f"{k}: {v}" for k, v in conditions.items()) or "–"),
             ("cells segmented", n_cells),
             ("cells predicted CTC", sum(n_ctc) if n_ctc else None)]
    parts = ["<h3>Run</h3>", _kv_table(facts)]
    notes = ctx.notes.lines()
    parts.append("<h3>Notes: skipped slides and missing inputs</h3>")
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
    else:
        parts.append("<p>None: every slide has cells and every input of the report exists.</p>")

    prov = inputs.provenance or {}
    parts.append("<h3>Provenance</h3>")
    if not prov:
        parts.append(_not_available("no provenance was recorded for this run"))
    else:
        commit = prov.get("git_commit") or "not a git checkout"
        if prov.get("git_dirty"):
            commit += " (with uncommitted changes)"
        parts.append(_kv_table([("git commit", commit), ("command", prov.get("command") or "–"),
                                ("started", prov.get("started") or "–"), ("finished", prov.get("finished") or "–"),
                                ("report date", prov.get("date") or "–"), ("host", prov.get("hostname") or "–"),
                                ("platform", prov.get("platform") or "–"), ("python", prov.get("python") or "–")]))
        versions = prov.get("versions") or {}
        if versions:
            parts.append("<h4>Software versions</h4>" + _kv_table(
                [(k, v if v else "not installed") for k, v in versions.items()]))

    parts.append("<h3>Wall time per stage</h3>")
    bench, why = _benchmark_table(inputs.benchmarks_dir)
    if bench is None:
        parts.append(_not_available(why))
    else:
        parts.append("<p>From Snakemake's benchmark files: each job's wall time, summed per stage (jobs may have "
                     "run in parallel, so the sum exceeds the elapsed time of the run).</p>")
        parts.append(_table(bench, sortable=False, row_class=lambda r: "total" if r["stage"] == "all stages" else ""))
    parts.append("<h3>Configuration</h3>")
    if inputs.config:
        parts.append("<details><summary>The run's configuration (YAML)</summary>"
                     f"<pre>{_esc(_config_yaml(inputs.config))}</pre></details>")
    else:
        parts.append(_not_available("no configuration was given"))
    return "".join(parts)


_BUILDERS: dict[str, Callable[[_Context], str]] = {
    "qc": _section_qc,
    "composition": _section_composition,
    "classifiers": _section_classifiers,
    "latent": _section_latent,
    "rare_events": _section_rare_events,
    "patients": _section_patients,
    "importances": _section_importances,
    "summary": _section_summary,   # last: it lists the notes the other sections add
}

_CSS = """
:root{--ink:#1d232a;--muted:#5b6570;--line:#d8dde3;--soft:#f4f6f8;--accent:#1f77b4;--warn:#fff1d6}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
  color:var(--ink);background:#fff}
header{background:#14324a;color:#fff;padding:18px 28px 10px}
header h1{margin:0 0 4px;font-size:22px}
header .meta{margin:0 0 10px;color:#c9d6e2;font-size:13px}
nav ol{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:4px 16px}
nav a{color:#fff;text-decoration:none;font-size:13px;border-bottom:1px solid transparent}
nav a:hover{border-bottom-color:#fff}
main{max-width:1240px;margin:0 auto;padding:8px 28px 40px}
section{border-bottom:1px solid var(--line);padding:8px 0 20px}
h2{font-size:19px;margin:22px 0 10px;color:#14324a}
h3{font-size:16px;margin:18px 0 8px}
h4{font-size:14px;margin:12px 0 6px;color:var(--muted)}
p.na{background:var(--soft);border-left:4px solid #aab4be;padding:6px 10px;color:var(--muted);margin:8px 0}
.tbl{overflow-x:auto;margin:6px 0 12px;max-width:100%}
.tbl.scroll{max-height:520px;overflow-y:auto}
table{border-collapse:collapse;font-size:12.5px}
th,td{border:1px solid var(--line);padding:3px 8px;text-align:left;vertical-align:top}
thead th{background:var(--soft);position:sticky;top:0;z-index:1}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tbody tr:nth-child(even){background:#fafbfc}
tr.flagged,tr.flagged td{background:var(--warn)}
tr.total td{font-weight:600;background:var(--soft)}
table.kv th{background:var(--soft);width:15em;font-weight:600}
table.sortable thead th{cursor:pointer}
table.sortable thead th[data-sort=asc]::after{content:" ▲"}
table.sortable thead th[data-sort=desc]::after{content:" ▼"}
table.cm td{min-width:3.5em}
table.nowrap td{white-space:nowrap}
img{max-width:100%;height:auto}
img.px{image-rendering:pixelated;image-rendering:crisp-edges}
img.fig{display:block;max-width:100%}
.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.row>div{min-width:0;max-width:100%}
.cards{display:flex;flex-wrap:wrap;gap:14px}
.card{margin:0;border:1px solid var(--line);border-radius:4px;padding:8px;background:#fff;max-width:100%}
.card .pair{display:flex;gap:8px;align-items:flex-start;background:#000;padding:4px}
figcaption{font-size:12px;color:var(--muted);margin-top:4px}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
figure.cell{margin:0;width:150px;text-align:center}
figure.cell img{background:#000}
.noimg{width:96px;height:96px;margin:auto;background:var(--soft);color:var(--muted);font-size:11px;padding-top:40px}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:14px}
figure.latentfig{margin:0}
figure.latentfig.wide{grid-column:1/-1}
.legend{font-size:12.5px;color:var(--muted)}
.flag{color:#a15c00}
.sw{display:inline-block;width:10px;height:10px;border:1px solid #555;vertical-align:middle}
details{margin:8px 0}
summary{cursor:pointer;color:var(--accent)}
pre{background:var(--soft);padding:10px;overflow:auto;max-height:480px;font-size:12px}
ul.notes li{margin:2px 0}
footer{max-width:1240px;margin:0 auto;padding:0 28px 30px;color:var(--muted);font-size:12px}
"""

# Click a header of a sortable table to sort by that column (numbers by value via data-v).
_JS = """
document.addEventListener("DOMContentLoaded", function () {
  var heads = document.querySelectorAll("table.sortable thead th");
  Array.prototype.forEach.call(heads, function (th) {
    th.addEventListener("click", function () {
      var table = th.closest("table");
      var body = table.tBodies[0];
      if (!body) { return; }
      var index = Array.prototype.indexOf.call(th.parentNode.children, th);
      var ascending = th.getAttribute("data-sort") !== "asc";
      Array.prototype.forEach.call(table.querySelectorAll("thead th"), function (h) {
        h.removeAttribute("data-sort");
      });
      th.setAttribute("data-sort", ascending ? "asc" : "desc");
      var key = function (row) {
        var cell = row.cells[index];
        if (!cell) { return ""; }
        var v = cell.getAttribute("data-v");
        return v !== null && v !== "" && !isNaN(parseFloat(v)) ? parseFloat(v) : cell.textContent.trim();
      };
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        var order = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
        return ascending ? order : -order;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  // a DOM marker that the script ran to its end (the browser test looks for it)
  document.documentElement.setAttribute("data-report-script", "ready");
});
"""


def build_report(inputs: ReportInputs, out_path: str | os.PathLike,
                 progress: Callable[[str], object] | None = None) -> dict:
    """Write the cohort report (one self-contained HTML file) atomically.

    Parameters
    ----------
    inputs : what to report (missing parts become "not available" notes).
    out_path : the HTML file to write (``results/cohort/report.html``).
    progress : receives progress lines (None: silent).

    Returns
    -------
    dict: ``sections`` (ids in order), ``bytes`` (file size), ``seconds`` (build time), ``notes``
    (the summary's notes: skipped slides, missing inputs).
    """
    started = time.perf_counter()
    say = progress or (lambda _m: None)
    ctx = _Context(inputs, say)
    bodies = {}
    for section_id, builder in _BUILDERS.items():
        t0 = time.perf_counter()
        bodies[section_id] = builder(ctx)
        say(f"section {section_id}: {len(bodies[section_id]) / 1e6:.2f} MB in {time.perf_counter() - t0:.1f} s")
    prov = inputs.provenance or {}
    commit = (prov.get("git_commit") or "")[:10]
    meta = " · ".join(x for x in (
        f"{len(ctx.slides)} slides", f"{len({s.patient for s in ctx.slides})} patients",
        f"generated {prov.get('date') or datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"commit {commit}{'+' if prov.get('git_dirty') else ''}" if commit else "") if x)
    toc = "".join(f'<li><a href="#{sid}">{_esc(title)}</a></li>' for sid, title in SECTIONS)
    pieces = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>hemoprofile cohort report</title><style>{_CSS}</style></head><body>"
        f'<header><h1>hemoprofile cohort report</h1><p class="meta">{_esc(meta)}</p>'
        f'<nav id="toc"><ol>{toc}</ol></nav></header><main>',
        *(f'<section id="{sid}"><h2>{_esc(title)}</h2>{bodies[sid]}</section>' for sid, title in SECTIONS),
        f"</main><footer>hemoprofile {_esc(_version(('hemoprofile',)) or '')} · self-contained report: "
        f"no external resources.</footer><script>{_JS}</script></body></html>\n",
    ]
    with io.atomic_output(out_path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            for piece in pieces:
                handle.write(piece)
    size = os.path.getsize(out_path)
    seconds = time.perf_counter() - started
    say(f"wrote {out_path}: {size / 1e6:.2f} MB in {seconds:.1f} s")
    return {"sections": [sid for sid, _ in SECTIONS], "bytes": size, "seconds": seconds,
            "notes": ctx.notes.lines()}
