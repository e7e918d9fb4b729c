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
import tifffile
from skimage.transform import resize

import hemoprofile
from hemoprofile import io
from hemoprofile.io.patches import PatchWriter, patch_attributes, to_patch_dtype
from hemoprofile.vocabulary import to_unit

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
OPTIONAL_COLUMNS = ("subtype", "patient", "group")
#: Crops read, resized and written per step (bounds memory: this many crops at their original size).
CHUNK_ROWS = 256


def _entries(folder: Path) -> Iterator[pd.DataFrame]:
    """Yield chunks of (path, label[, subtype, patient, group]) rows describing the collection."""
    labels_csv = folder / "labels.csv"
    if labels_csv.exists():
        reader = pd.read_csv(labels_csv, dtype=str, keep_default_na=False, chunksize=CHUNK_ROWS)
        for chunk in reader:
            missing = [c for c in ("path", "label") if c not in chunk.columns]
            if missing:
                raise ValueError(f"{labels_csv}: missing column(s) {missing}; has {list(chunk.columns)}")
            yield chunk[[c for c in ("path", "label", *OPTIONAL_COLUMNS) if c in chunk.columns]]
        return
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no labels.csv and no image files ({', '.join(IMAGE_SUFFIXES)})")
    for start in range(0, len(files), CHUNK_ROWS):
        part = files[start : start + CHUNK_ROWS]
        yield pd.DataFrame({"path": [str(p.relative_to(folder)) for p in part],
                            "label": [p.parent.name for p in part]})


def read_crop(path: str | os.PathLike) -> np.ndarray:
    """Read one crop as a (c, y, x) float32 array in [0, 1].

    RGB(A) and grey images via PIL (alpha dropped); TIFFs via tifffile, where a 3-D array with a last
    axis of at most 4 and a longer first axis is taken as (y, x, c), otherwise as (c, y, x).

    Raises
    ------
    ValueError naming the file when it cannot be read or is not 2-D or 3-D.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            data = np.asarray(tifffile.imread(path))
            if data.ndim == 3 and data.shape[-1] <= 4 and data.shape[0] > 4:
                data = np.moveaxis(data, -1, 0)
        else:
            from PIL import Image

            with Image.open(path) as image:
                if image.mode not in ("RGB", "L", "I;16", "I"):
                    image = image.convert("RGB")
                data = np.asarray(image)
            if data.ndim == 3:
                data = np.moveaxis(data, -1, 0)
    except Exception as err:  # PIL and tifffile raise many types for broken files
        raise ValueError(f"{path}: cannot read image ({err})") from err
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 2-D or 3-D image, got shape {data.shape}")
    return to_unit(data)


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
    progress: Callable[[str], object] | None = print,
) -> dict:
    """Ingest a folder of labelled crops into ``cells.parquet`` + ``patches.zarr`` (row i = patch i).

    Streams ``CHUNK_ROWS`` crops at a time; both outputs are written atomically.

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
    limit : ingest only the first ``limit`` crops (for quick looks).
    progress : receives progress lines (None: silent).

    Returns
    -------
    dict: ``name``, ``n_cells``, ``labels`` (label -> count), ``channel_names``, ``seconds``.

    Raises
    ------
    ValueError naming the file for an unreadable crop, a crop whose channel count differs from the
    first's, a path in labels.csv that does not exist, or a folder without crops.

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

    writer = None
    table_writer = None
    schema = None
    counts: dict[str, int] = {}
    n = 0
    names: list[str] = []
    with io.atomic_output(out_patches) as patches_tmp, io.atomic_output(out_cells) as cells_tmp:
        try:
            for chunk in _entries(folder):
                if limit is not None:
                    chunk = chunk.iloc[: max(0, limit - n)]
                    if chunk.empty:
                        break
                patches, heights, widths = [], [], []
                for rel in chunk["path"]:
                    path = folder / rel
                    if not path.exists():
                        raise ValueError(f"{folder / 'labels.csv'}: listed image {rel} does not exist")
                    crop = read_crop(path)
                    if writer is None:
                        rgb = path.suffix.lower() not in (".tif", ".tiff")
                        names = _channel_names(crop.shape[0], channel_names, rgb)
                        attrs = patch_attributes(names, patch_size, dtype, slide=name, source=str(folder),
                                                 keep_aspect=bool(keep_aspect), stage="ingest_collection",
                                                 hemoprofile_version=hemoprofile.__version__)
                        writer = PatchWriter(patches_tmp, len(names), patch_size, str(np.dtype(dtype)), attrs,
                                             compression_level=compression_level)
                        schema = _schema([c for c in OPTIONAL_COLUMNS if c in chunk.columns], name, names, folder)
                        table_writer = pq.ParquetWriter(cells_tmp, schema)
                    if crop.shape[0] != len(names):
                        raise ValueError(f"{path}: {crop.shape[0]} channels, but the collection's first crop "
                                         f"has {len(names)} ({', '.join(names)})")
                    heights.append(crop.shape[1])
                    widths.append(crop.shape[2])
                    patches.append(to_patch_dtype(fit_crop(crop, patch_size, keep_aspect), str(np.dtype(dtype))))
                writer.append(np.stack(patches))
                columns = {
                    "slide": [name] * len(chunk),
                    "cell_id": np.arange(n + 1, n + len(chunk) + 1, dtype=np.int64),
                    "path": chunk["path"].astype(str).tolist(),
                    "label": chunk["label"].astype(str).tolist(),
                    **{c: chunk[c].astype(str).tolist() for c in OPTIONAL_COLUMNS if c in schema.names},
                    "height": np.asarray(heights, np.int32),
                    "width": np.asarray(widths, np.int32),
                }
                table_writer.write_table(pa.table(columns, schema=schema))
                for label, count in chunk["label"].value_counts().items():
                    counts[str(label)] = counts.get(str(label), 0) + int(count)
                n += len(chunk)
                say(f"{n} crops")
            if writer is None:
                raise ValueError(f"{folder}: no crops to ingest")
            writer.close()
        finally:
            if table_writer is not None:
                table_writer.close()
    seconds = time.perf_counter() - started
    say(f"{n} crops of {len(counts)} labels in {seconds:.1f} s")
    return {"name": name, "n_cells": n, "labels": counts, "channel_names": names, "seconds": seconds}


def _schema(optional: Sequence[str], name: str, channel_names: Sequence[str], folder: Path) -> pa.Schema:
    fields = [("slide", pa.string()), ("cell_id", pa.int64()), ("path", pa.string()), ("label", pa.string())]
    fields += [(c, pa.string()) for c in optional]
    fields += [("height", pa.int32()), ("width", pa.int32())]
    meta = {"stage": "ingest_collection", "collection": name, "source": str(folder),
            "channel_names": list(channel_names), "hemoprofile_version": hemoprofile.__version__}
    return pa.schema(fields, metadata={"hemoprofile": json.dumps(meta)})
