"""Single-cell image collections: a folder of labelled crops -> the patches.zarr + cells.parquet contract.

Collections such as PBC (Acevedo et al. 2020: CellaVision crops of blood cells, 8 classes) or DEPArray
exports enter the pipeline here instead of at segmentation: every crop becomes one patch (resized to
P x P) and one row of a cells table, so classify, embed and aggregate treat them like a slide's cells.

Folder layout (as ``shared/data/pbc``)::

    <folder>/labels.csv                 optional: columns path, label and optionally subtype, patient,
                                        group (paths relative to the folder)
    <folder>/images/<class>/<name>.jpg  crops: JPEG/PNG/BMP (RGB or grey) or TIFF (multi-channel)

Without ``labels.csv`` every image file under the folder is taken (sorted by path) and its label is the
name of the folder holding it.

``cells.parquet`` columns: ``slide`` (string, the collection name), ``cell_id`` (int64, 1..N in row
order), ``path`` (string, relative to the folder), ``label`` (string), ``subtype`` / ``patient`` /
``group`` (string; only when labels.csv has them), ``height``, ``width`` (int32, the crop's size in
px before resizing). ``patches.zarr``: as :mod:`hemoprofile.io.patches` defines it, with channel names
``R, G, B`` for RGB crops, ``gray`` for single-channel ones and ``ch0, ch1, ...`` for multi-channel TIFFs
(or ``channel_names``), values in [0, 1] scaled from the crop's dtype (uint8 / 255, uint16 / 65535,
floats clipped).

Command line: ``hemoprofile ingest-collection FOLDER OUT_DIR --patch-size 64`` writes
``OUT_DIR/cells.parquet`` and ``OUT_DIR/patches.zarr`` (:mod:`hemoprofile.cli.collection`).

Checks and the QC table: every file is read through :func:`hemoprofile.io.crops.check_crop`; the
unusable ones are skipped with a message and the convertible ones converted, and each file gets a row
of ``qc.csv`` / ``qc.parquet`` next to ``cells.parquet`` (:func:`ingest_collection`), so nothing is
dropped silently and one bad file never stops the collection.

Resizing: the crop is scaled so its longer side is P (anti-aliased, :func:`skimage.transform.resize`)
and its shorter side is padded to P by repeating its edge pixels (``keep_aspect=True``, the default, so
cells keep their shape); with ``keep_aspect=False`` it is stretched to P x P.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from skimage.transform import resize

import hemoprofile
from hemoprofile import io
from hemoprofile.io.crops import (
    CROP_SUFFIXES,
    PROBLEMS,
    SKIPPED,
    CropCheck,
    CropLimits,
    check_crop,
    match_channels,
)
from hemoprofile.io.patches import PatchWriter, patch_attributes, to_patch_dtype

IMAGE_SUFFIXES = CROP_SUFFIXES
OPTIONAL_COLUMNS = ("subtype", "patient", "group")
#: Crops read, resized and written per step (bounds memory: this many crops at their original size).
CHUNK_ROWS = 256


def _entries(folder: Path, listed_elsewhere: list[str]) -> Iterator[pd.DataFrame]:
    """Yield chunks of (path, label[, subtype, patient, group]) rows describing the collection.

    Without labels.csv, files that are not crops by their suffix are appended to ``listed_elsewhere``
    (the QC table lists them as skipped) rather than ignored.
    """
    labels_csv = folder / "labels.csv"
    if labels_csv.exists():
        reader = pd.read_csv(labels_csv, dtype=str, keep_default_na=False, chunksize=CHUNK_ROWS)
        for chunk in reader:
            missing = [c for c in ("path", "label") if c not in chunk.columns]
            if missing:
                raise ValueError(f"{labels_csv}: missing column(s) {missing}; has {list(chunk.columns)}")
            yield chunk[[c for c in ("path", "label", *OPTIONAL_COLUMNS) if c in chunk.columns]]
        return
    files = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            files.append(p)
        elif p.name != ".snakemake_timestamp":  # Snakemake's marker in a directory() output, not data
            listed_elsewhere.append(str(p.relative_to(folder)))
    if not files:
        raise ValueError(f"{folder}: no labels.csv and no image files ({', '.join(IMAGE_SUFFIXES)})")
    for start in range(0, len(files), CHUNK_ROWS):
        part = files[start : start + CHUNK_ROWS]
        # a crop in a sub-folder is labelled by it (images/<class>/x.jpg); one at the top has no label
        yield pd.DataFrame({"path": [str(p.relative_to(folder)) for p in part],
                            "label": ["" if p.parent == folder else p.parent.name for p in part]})


def read_crop(path: str | os.PathLike) -> np.ndarray:
    """Read one crop as a (c, y, x) float32 array in [0, 1] (:func:`hemoprofile.io.crops.check_crop`,
    without its size limits).

    Raises
    ------
    ValueError naming the file and the problem when it cannot be used.
    """
    check = check_crop(path, CropLimits(min_side=1, max_side=2**31, max_aspect=float("inf")))
    if check.data is None:
        raise ValueError(f"{path}: cannot read image ({check.problem}: {check.details})")
    return check.data


def fit_crop(crop: np.ndarray, patch_size: int, keep_aspect: bool = True) -> np.ndarray:
    """Resize a (c, y, x) crop to (c, P, P) with anti-aliasing (see the module docstring).

    Example
    -------
    >>> fit_crop(np.ones((3, 40, 20), np.float32), 16).shape
    (3, 16, 16)
    """
    p = int(patch_size)
    c, h, w = crop.shape
    if keep_aspect:
        scale = p / max(h, w)
        th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    else:
        th, tw = p, p
    out = resize(crop, (c, th, tw), order=1, anti_aliasing=(th < h or tw < w), preserve_range=True)
    if (th, tw) != (p, p):
        py, px = p - th, p - tw
        out = np.pad(out, ((0, 0), (py // 2, py - py // 2), (px // 2, px - px // 2)), mode="edge")
    return out.astype(np.float32)


def _channel_names(n: int, given: Sequence[str] | None, mode_rgb: bool) -> list[str]:
    if given:
        if len(given) != n:
            raise ValueError(f"{len(given)} channel names given for crops with {n} channels")
        return [str(g) for g in given]
    if n == 3 and mode_rgb:
        return ["R", "G", "B"]
    if n == 1:
        return ["gray"]
    return [f"ch{i}" for i in range(n)]


def ingest_collection(
    folder: str | os.PathLike,
    out_cells: str | os.PathLike,
    out_patches: str | os.PathLike,
    patch_size: int = 64,
    dtype: str = "uint8",
    *,
    name: str | None = None,
    keep_aspect: bool = True,
    channel_names: Sequence[str] | None = None,
    compression_level: int = 5,
    limit: int | None = None,
    limits: CropLimits | None = None,
    out_qc: str | os.PathLike | None = None,
    progress: Callable[[str], object] | None = print,
) -> dict:
    """Ingest a folder of labelled crops into ``cells.parquet`` + ``patches.zarr`` (row i = patch i),
    checking every file and listing each one in a QC table.

    Streams ``CHUNK_ROWS`` crops at a time (memory does not grow with the collection beyond one QC row
    and one SHA-256 per file); both outputs are written atomically. Files that cannot be used (empty,
    not an image, unreadable or truncated, too small, too large, extreme aspect, a byte-identical
    duplicate of an earlier file, channels that do not fit the collection's, listed in labels.csv but
    absent) are skipped with a message; convertible ones (CMYK, palette, alpha, 16-bit, grey in an RGB
    collection) are converted (:mod:`hemoprofile.io.crops`). Every file gets a row of the QC table
    (``qc.csv`` and ``qc.parquet``; columns path, status ok/converted/skipped, problem, details,
    sha256, height, width, mode), written even when nothing could be ingested.

    Parameters
    ----------
    folder : the collection (layout in the module docstring).
    out_cells, out_patches : outputs.
    patch_size : P.
    dtype : patch dtype: uint8, uint16 or float16.
    name : collection name, stored as ``slide`` (default: the folder's name).
    keep_aspect : pad rather than stretch non-square crops.
    channel_names : names of the crops' channels (default from the image type, see module docstring).
    compression_level : Blosc-zstd level of patches.zarr.
    limit : ingest only the first ``limit`` listed files (for quick looks).
    limits : sizes a crop must have (:class:`hemoprofile.io.crops.CropLimits`; default its defaults).
    out_qc : the QC table's CSV (default ``qc.csv`` next to ``out_cells``); ``.parquet`` beside it.
    progress : receives progress lines and one message per skipped or converted file (None: silent).

    Returns
    -------
    dict: ``name``, ``n_cells``, ``labels`` (label -> count), ``channel_names``, ``seconds``, ``n_files``,
    ``n_ok``, ``n_converted``, ``n_skipped``, ``problems`` (problem -> count), ``qc`` (the CSV's path)
    and ``summary`` (one line).

    Raises
    ------
    ValueError naming the folder when it holds no crops or none of them could be used (the QC table is
    written first), or when labels.csv lacks its columns.

    Example
    -------
    >>> ingest_collection("shared/data/pbc", "out/cells.parquet", "out/patches.zarr", 64)  # doctest: +SKIP
    {'name': 'pbc', 'n_cells': 4000, ...}
    """
    started = time.perf_counter()
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    name = name or folder.resolve().name
    say = (lambda m: progress(f"ingest {name}: {m}")) if progress else (lambda m: None)
    if str(np.dtype(dtype)) not in ("uint8", "uint16", "float16"):
        raise ValueError(f"dtype must be uint8, uint16 or float16, got {dtype!r}")
    limits = limits or CropLimits()
    out_qc = Path(out_qc) if out_qc is not None else Path(out_cells).with_name("qc.csv")

    writer = None
    table_writer = None
    schema = None
    counts: dict[str, int] = {}
    n = 0
    names: list[str] = []
    qc_rows: list[dict] = []
    seen: dict[str, str] = {}  # sha256 -> first path
    others: list[str] = []
    n_listed = 0
    try:
        with io.atomic_output(out_patches) as patches_tmp, io.atomic_output(out_cells) as cells_tmp:
            try:
                for chunk in _entries(folder, others):
                    if limit is not None:
                        chunk = chunk.iloc[: max(0, limit - n_listed)]
                        if chunk.empty:
                            break
                    n_listed += len(chunk)
                    keep, patches, heights, widths = [], [], [], []
                    for i, rel in enumerate(chunk["path"]):
                        check = check_crop(folder / rel, limits, name=rel)
                        if check.data is not None and check.sha256 in seen:
                            check.status, check.problem, check.data = SKIPPED, "duplicate", None
                            check.details = f"same bytes (SHA-256) as {seen[check.sha256]}"
                        if check.data is not None and writer is not None:
                            match_channels(check, len(names))
                        if check.data is None:
                            _note(say, check)
                            qc_rows.append(check.row())
                            continue
                        seen[check.sha256] = rel
                        if writer is None:
                            rgb = check.data.shape[0] == 3 and not check.mode.startswith("tiff")
                            names = _channel_names(check.data.shape[0], channel_names, rgb)
                            attrs = patch_attributes(names, patch_size, dtype, slide=name, source=str(folder),
                                                     keep_aspect=bool(keep_aspect), stage="ingest_collection",
                                                     hemoprofile_version=hemoprofile.__version__)
                            writer = PatchWriter(patches_tmp, len(names), patch_size, str(np.dtype(dtype)), attrs,
                                                 compression_level=compression_level)
                            schema = _schema([c for c in OPTIONAL_COLUMNS if c in chunk.columns], name, names,
                                             folder)
                            table_writer = pq.ParquetWriter(cells_tmp, schema)
                        if check.status != "ok":
                            _note(say, check)
                        qc_rows.append(check.row())
                        keep.append(i)
                        heights.append(check.data.shape[1])
                        widths.append(check.data.shape[2])
                        patches.append(to_patch_dtype(fit_crop(check.data, patch_size, keep_aspect),
                                                      str(np.dtype(dtype))))
                    if not keep:
                        continue
                    kept = chunk.iloc[keep]
                    writer.append(np.stack(patches))
                    columns = {
                        "slide": [name] * len(kept),
                        "cell_id": np.arange(n + 1, n + len(kept) + 1, dtype=np.int64),
                        "path": kept["path"].astype(str).tolist(),
                        "label": kept["label"].astype(str).tolist(),
                        **{c: kept[c].astype(str).tolist() for c in OPTIONAL_COLUMNS if c in schema.names},
                        "height": np.asarray(heights, np.int32),
                        "width": np.asarray(widths, np.int32),
                    }
                    table_writer.write_table(pa.table(columns, schema=schema))
                    for label, count in kept["label"].value_counts().items():
                        counts[str(label)] = counts.get(str(label), 0) + int(count)
                    n += len(kept)
                    say(f"{n} crops of {n_listed} files")
                for rel in others:
                    check = CropCheck(rel, SKIPPED, "not_an_image",
                                      f"suffix {Path(rel).suffix or '(none)'!r} is not one of {', '.join(IMAGE_SUFFIXES)}")
                    _note(say, check)
                    qc_rows.append(check.row())
                if writer is None:
                    raise _NothingIngested(f"{folder}: none of its {len(qc_rows)} file(s) could be ingested "
                                           f"({_problem_counts(qc_rows)}); see {out_qc}")
                writer.close()
            finally:
                if table_writer is not None:
                    table_writer.close()
    finally:
        write_qc_table(qc_rows, out_qc)
    seconds = time.perf_counter() - started
    result = qc_summary(qc_rows)
    result.update({"name": name, "n_cells": n, "labels": counts, "channel_names": names, "seconds": seconds,
                   "qc": str(out_qc)})
    result["summary"] = (f"{name}: {n} crops of {len(counts)} labels ingested from {result['n_files']} files "
                         f"({result['n_ok']} ok, {result['n_converted']} converted, {result['n_skipped']} skipped"
                         + (f": {_problem_counts(qc_rows)}" if result["n_skipped"] else "")
                         + f") in {seconds:.1f} s; QC table {out_qc}")
    say(result["summary"])
    return result


class _NothingIngested(ValueError):
    pass


def collection_limits(settings: dict) -> CropLimits:
    """The crop size limits of the config section ``collection`` (min_side_px, max_side_px, max_aspect)."""
    return CropLimits(int(settings["min_side_px"]), int(settings["max_side_px"]), float(settings["max_aspect"]))


def _note(say: Callable[[str], object], check: CropCheck) -> None:
    verb = "skipped" if check.status == SKIPPED else "converted"
    say(f"{verb} {check.path}" + (f" [{check.problem}]" if check.problem else "") + f": {check.details}")


def _problem_counts(rows: Sequence[dict]) -> str:
    found = pd.Series([r["problem"] for r in rows if r["status"] == SKIPPED], dtype=object).value_counts()
    order = [p for p in PROBLEMS if p in found] + [p for p in found.index if p not in PROBLEMS]
    return ", ".join(f"{p} {int(found[p])}" for p in order)


def qc_summary(rows: Sequence[dict]) -> dict:
    """Counts of a QC table's rows: ``n_files``, ``n_ok``, ``n_converted``, ``n_skipped``, ``problems``."""
    status = [r["status"] for r in rows]
    problems: dict[str, int] = {}
    for r in rows:
        if r["status"] == SKIPPED:
            problems[r["problem"]] = problems.get(r["problem"], 0) + 1
    return {"n_files": len(rows), "n_ok": status.count("ok"), "n_converted": status.count("converted"),
            "n_skipped": status.count(SKIPPED), "problems": problems}


QC_COLUMNS = ("path", "status", "problem", "details", "sha256", "height", "width", "mode")


def write_qc_table(rows: Sequence[dict], csv_path: str | os.PathLike) -> None:
    """Write the QC rows to ``csv_path`` and the same table as parquet beside it (atomically)."""
    table = pd.DataFrame(list(rows), columns=list(QC_COLUMNS))
    table = table.astype({"height": "int32", "width": "int32"})
    csv_path = Path(csv_path)
    with io.atomic_output(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    with io.atomic_output(csv_path.with_suffix(".parquet")) as tmp:
        table.to_parquet(tmp, index=False)


def _schema(optional: Sequence[str], name: str, channel_names: Sequence[str], folder: Path) -> pa.Schema:
    fields = [("slide", pa.string()), ("cell_id", pa.int64()), ("path", pa.string()), ("label", pa.string())]
    fields += [(c, pa.string()) for c in optional]
    fields += [("height", pa.int32()), ("width", pa.int32())]
    meta = {"stage": "ingest_collection", "collection": name, "source": str(folder),
            "channel_names": list(channel_names), "hemoprofile_version": hemoprofile.__version__}
    return pa.schema(fields, metadata={"hemoprofile": json.dumps(meta)})
