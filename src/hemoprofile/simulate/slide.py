"""One slide of the cohort written frame by frame (image, truth label image, truth table), the
cohort's truth table, and a frame read back with its truth."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import tifffile

from hemoprofile.io import (
    atomic_output,
    create_ome_zarr_labels,
    frame_filename,
    frame_grid_position,
    open_ome_zarr,
    ordered_map,
)
from hemoprofile.simulate.cell_models import CTC_EMT_FRACTION, CTC_SMALL_FRACTION
from hemoprofile.simulate.cohort import composition_of, patient_condition, plan_cohort
from hemoprofile.simulate.frame import simulate_frame
from hemoprofile.simulate.lookalikes import slide_event_counts
from hemoprofile.simulate.optics import slide_optics
from hemoprofile.simulate.settings import CHANNELS, Settings, read_settings
from hemoprofile.vocabulary import LINEAGE, TRUTH_TYPES

log = logging.getLogger(__name__)

#: Schema of truth_cells.parquet: one row per cell, (slide, cell_id) is the key; cell_id is the cell's
#: value in truth_labels.zarr. y, x: centroid in slide-mosaic pixels; area_px: pixels in the label image;
#: radius_px: the drawn nominal radius; cluster_id: shared by a CTC and its leukocytes, -1 outside
#: clusters; touching: the label is 8-adjacent to another cell's; lookalike: the look-alike kind of the
#: event ("" for ordinary cells and CTCs; :mod:`hemoprofile.simulate.lookalikes`); ctc_subtype: CK_high,
#: EMT or small for CTCs, "" otherwise; true_<channel>: mean noise-free stain signal in the label, before
#: optics and batch gain. cell_type is one of :data:`~hemoprofile.vocabulary.TRUTH_TYPES`.
TRUTH_SCHEMA = pa.schema([
    ("slide", pa.string()), ("patient", pa.string()), ("condition", pa.string()), ("cell_id", pa.int64()),
    ("cell_type", pa.string()), ("lineage", pa.string()), ("frame", pa.int32()), ("y", pa.float64()),
    ("x", pa.float64()), ("area_px", pa.int64()), ("radius_px", pa.float64()), ("nucleus_area_px", pa.int64()),
    ("cluster_id", pa.int64()), ("touching", pa.bool_()), ("lookalike", pa.string()), ("ctc_subtype", pa.string()),
    *((f"true_{c}", pa.float64()) for c in CHANNELS),
])
TRUTH_COLUMNS = tuple(TRUTH_SCHEMA.names)
#: Rows per row group of truth_cells.parquet: the most truth rows held in memory (~150 bytes each, columnar).
TRUTH_ROW_GROUP = 65_536

#: An OME-TIFF slide is assembled in memory (tifffile writes a C x Y x X page per channel); above this
#: size the frame-folder format, written frame by frame, is the way.
OME_TIFF_MAX_BYTES = 64 * 2**20
OME_TIFF_TILE = 256


def _slide_index(s: Settings, plan: pd.DataFrame, sample: Mapping) -> int:
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


def simulate_slide(
    synth_cfg: Mapping,
    sample: Mapping,
    out_dir: str | os.PathLike,
    frame_pattern: str = "Tile{index:06d}.tif",
    frame_order: str = "row-major",
    truth_row_group: int = TRUTH_ROW_GROUP,
    threads: int | None = 1,
) -> dict:
    """Simulate one slide of the synthetic cohort and write its image and ground truth.

    The slide is written frame by frame (one frame's channels plus small state in memory), except an
    OME-TIFF, which is assembled in memory and so is limited to ``OME_TIFF_MAX_BYTES``. The truth table
    is written incrementally: each frame's rows become a columnar table at once, and a parquet row group
    is written whenever ``truth_row_group`` rows are buffered, so memory does not grow with the slide.
    Every output is written atomically. With ``threads`` > 1, up to ``2 x threads`` rendered frames
    are held at once.

    Parameters
    ----------
    synth_cfg : the ``synthetic`` section of the config (defaults filled in).
    sample : one row of :func:`plan_cohort` for the same config (at least ``slide``).
    out_dir : the folder given to :func:`plan_cohort`; the slide goes to ``<out_dir>/<slide>/``.
    frame_pattern : file name pattern of frame files (see :func:`hemoprofile.io.frame_filename`).
    frame_order : how frame numbers map to grid positions (``row-major`` or ``snake``).
    truth_row_group : rows per parquet row group of truth_cells.parquet (the most rows held at once).
    threads : frames rendered at once, each in a forked worker process (the rendering is many small
        numpy calls per cell and holds the GIL, so threads would not run it in parallel). Every frame
        draws from its own generator seeded by (seed, slide, frame) and is numbered, stitched and
        written in frame order, so every output is byte for byte the same for any number.

    CTCs and look-alikes: the slide's count of each is Poisson (the condition's ``ctc_per_million``
    times ``ctc_enrichment``; ``lookalikes`` per kind) over its expected nucleated cells, and the frames
    they fall on are drawn from the slide's generator before rendering
    (:func:`hemoprofile.simulate.lookalikes.slide_event_counts`).

    Returns
    -------
    dict with slide, n_cells, counts (truth cell type -> number), lookalikes (kind -> number),
    n_ctc_drawn (the slide's Poisson draw; a CTC left out of a full frame is not in ``counts``),
    ctc_per_million (the rate simulated), n_clusters, n_debris, seconds.

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
    s = read_settings(synth_cfg)
    plan = plan_cohort(synth_cfg, out_dir)
    index = _slide_index(s, plan, sample)
    row = plan.iloc[index]
    slide, patient = str(row["slide"]), str(row["patient"])
    condition = patient_condition(s, int(patient.lstrip("P")))  # the truth, also for blinded patients
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

    composition = composition_of(s, condition, int(patient.lstrip("P")))
    slide_rng = np.random.default_rng([s.seed, 2, index])
    optics = slide_optics(slide_rng, s)
    ctc_rate = s.ctc_per_million(condition)
    cluster_rate = float(spec["cluster_rate"]) if spec.get("cluster_rate") is not None else s.cluster_rate
    emt_fraction = float(spec.get("emt_fraction", CTC_EMT_FRACTION))
    small_fraction = float(spec.get("small_fraction", CTC_SMALL_FRACTION))
    events = slide_event_counts(slide_rng, s.cells_per_frame * s.n_frames, s.n_frames, ctc_rate, s.lookalikes)
    ctc_per_frame = events.pop("CTC")

    # chunks no larger than a frame, so that writing a frame rewrites few chunks
    tile = min(512, s.frame_h, s.frame_w)
    if truth_row_group < 1:
        raise ValueError(f"truth_row_group must be at least 1, got {truth_row_group}")
    truth_buffer: list[pa.Table] = []  # whole frames' rows, columnar, until a row group is full
    buffered = 0
    counts = dict.fromkeys(TRUTH_TYPES, 0)
    lookalike_counts = dict.fromkeys(events, 0)
    next_id, next_cluster, n_debris = 1, 0, 0
    with contextlib.ExitStack() as stack:
        labels_tmp = stack.enter_context(atomic_output(slide_dir / "truth_labels.zarr"))
        image_path = slide_dir / Path(row["path"]).name
        image_tmp = stack.enter_context(atomic_output(image_path))
        table_tmp = stack.enter_context(atomic_output(slide_dir / "truth_cells.parquet"))
        # entered last, so closed before the renames
        table_writer = stack.enter_context(pq.ParquetWriter(table_tmp, TRUTH_SCHEMA))
        # "source" keeps the simulator's old module name: truth_labels.zarr stays byte-identical within
        # STAGE_VERSIONS["simulate"] 1
        label_array = create_ome_zarr_labels(
            labels_tmp, (height, width), tile_size=tile, pixel_size_um=s.pixel_size_um, name="truth_labels",
            extra_attributes={"slide": slide, "source": "hemoprofile.synth"},
        )
        mosaic = np.zeros((len(CHANNELS), height, width), np.uint16) if s.output_format == "ome-tiff" else None
        if mosaic is None:
            image_tmp.mkdir(parents=True)
        render = functools.partial(
            _render_frame, s=s, seed_key=(s.seed, 3, index), composition=composition, ctc_per_frame=ctc_per_frame,
            optics=optics, cluster_rate=cluster_rate, emt_fraction=emt_fraction, small_fraction=small_fraction,
            lookalikes_per_frame=events, frame_dir=None if mosaic is not None else image_tmp,
            frame_pattern=frame_pattern,
        )
        # frames are rendered on `threads` worker processes (the per-cell rendering holds the GIL) and
        # come back in frame order: ids, labels, truth rows and row groups are settled here, in order
        for f, frame in enumerate(ordered_map(render, range(s.n_frames), threads, processes=True)):
            _number_frame(frame, next_id, next_cluster)
            grid_row, grid_col = frame_grid_position(f, s.rows, s.cols, frame_order)
            y0, x0 = grid_row * s.frame_h, grid_col * s.frame_w
            window = (slice(y0, y0 + s.frame_h), slice(x0, x0 + s.frame_w))
            label_array[window] = frame.labels
            if mosaic is not None:
                mosaic[(slice(None),) + window] = frame.image
            for cell in frame.cells:
                cell["y"] += y0
                cell["x"] += x0
                cell["frame"] = f
            for cell in frame.cells:
                counts[cell["cell_type"]] += 1
                if cell["lookalike"]:
                    lookalike_counts[cell["lookalike"]] += 1
            if frame.cells:
                truth_buffer.append(_truth_table(frame.cells, slide, patient, condition))
                buffered += len(frame.cells)
            if buffered >= truth_row_group:
                truth_buffer, buffered = _write_row_groups(table_writer, truth_buffer, truth_row_group, final=False)
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
        if truth_buffer or next_id == 1:
            _write_row_groups(table_writer, truth_buffer, truth_row_group, final=True)

    summary = {
        "slide": slide,
        "n_cells": next_id - 1,
        "counts": counts,
        "lookalikes": lookalike_counts,
        "n_ctc_drawn": int(ctc_per_frame.sum()),
        "ctc_per_million": ctc_rate,
        "n_clusters": int(next_cluster),
        "n_debris": int(n_debris),
        "seconds": round(time.perf_counter() - start, 3),
    }
    log.info("simulated %s: %s", slide, summary)
    return summary


def _render_frame(f: int, s: Settings, seed_key: tuple, composition: np.ndarray, ctc_per_frame: np.ndarray,
                  optics, cluster_rate: float, emt_fraction: float, small_fraction: float,
                  lookalikes_per_frame: dict, frame_dir: Path | None, frame_pattern: str):
    """Render frame ``f`` from its own generator with frame-local ids (cells from 1, clusters from 0),
    write its channel TIFFs into ``frame_dir`` (when given; the image is then dropped, so that a worker
    process sends back only labels and truth rows) and return the frame."""
    frame = simulate_frame(
        np.random.default_rng([*seed_key, f]), s, composition, int(ctc_per_frame[f]), optics, 1, 0,
        cluster_rate, emt_fraction, {k: int(v[f]) for k, v in lookalikes_per_frame.items()}, small_fraction,
    )
    if frame_dir is not None:
        for c, channel in enumerate(CHANNELS):
            target = frame_dir / frame_filename(frame_pattern, f, c, channel, s.n_frames)
            target.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(target, frame.image[c], photometric="minisblack")
        frame.image = None
    return frame


def _number_frame(frame, first_id: int, first_cluster: int) -> None:
    """Give a frame rendered with local ids (:func:`_render_frame`) its slide-wide cell and cluster ids,
    in place: exactly what rendering it with ``first_id`` and ``first_cluster`` gives (no random draw
    depends on the ids)."""
    offset = first_id - 1
    if offset:
        frame.labels[frame.labels != 0] += np.uint32(offset)
    for cell in frame.cells:
        cell["cell_id"] += offset
        if cell["cluster_id"] >= 0:
            cell["cluster_id"] += first_cluster


def simulate_cohort(synth_cfg: Mapping, out_dir: str | os.PathLike, sheet_path: str | os.PathLike,
                    progress=None) -> pd.DataFrame:
    """Simulate every slide of a cohort plan into ``out_dir`` and write the plan as a tab-separated sheet.

    For cohorts outside the workflow's per-slide jobs (the segmentation model's training cohort); the
    sheet is written atomically, last, so it exists only when every slide does. Returns the plan.
    """
    plan = plan_cohort(synth_cfg, out_dir)
    for _, sample in plan.iterrows():
        summary = simulate_slide(synth_cfg, sample.to_dict(), out_dir)
        if progress:
            progress(f"{sample['slide']}: {summary}")
    with atomic_output(sheet_path) as tmp:
        plan.to_csv(tmp, sep="\t", index=False)
    if progress:
        progress(f"wrote {len(plan)} slides and {sheet_path}")
    return plan


def _write_row_groups(writer: pq.ParquetWriter, tables: list[pa.Table], row_group: int,
                      final: bool) -> tuple[list[pa.Table], int]:
    """Write the buffered truth rows as row groups of exactly ``row_group`` rows (the rest too when
    ``final``); return the unwritten remainder and its row count. Row groups do not depend on how rows
    were split into frames, so the file equals a one-shot write with the same row group size."""
    table = pa.concat_tables(tables) if tables else TRUTH_SCHEMA.empty_table()
    n_full = table.num_rows if final else table.num_rows - table.num_rows % row_group
    if n_full or (final and table.num_rows == 0):
        writer.write_table(table.slice(0, n_full).combine_chunks(), row_group_size=row_group)
    rest = table.slice(n_full)
    return ([rest] if rest.num_rows else []), rest.num_rows


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
