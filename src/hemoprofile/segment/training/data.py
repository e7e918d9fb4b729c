"""Training data of the project's Cellpose model, read from disk and prepared as the pipeline prepares
its input (:func:`hemoprofile.segment.input.cellpose_input`).

- **DSB 2018 fluorescence nuclei** (BBBC038, expert instance masks), from the folder the config names
  (``train_segmenter.dsb_dir``: ``images/<id>.png``, ``masks/<id>.png``, ``index.csv``): split once,
  seeded, by image id into train / validation / test and saved as a split file, so that no benchmark
  ever scores an image the model was trained on. Images enter as ``[image, zeros]``; targets are nuclei.
- **Synthetic HDSCA-like slides**: a cohort simulated by the simulate stage with a training seed that
  differs from the demo's (:func:`training_cohort_config`; the workflow's ``simulate_segmenter_training``
  rule writes the slides and a cohort sheet), so the demo cohort is never trained on. Frames are read
  back with their ``truth_labels.zarr`` (:func:`read_training_frames`). Images enter as
  ``[cytoplasm composite, nucleus]``; targets are whole cells.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hemoprofile.io import frame_grid_position, open_ome_zarr
from hemoprofile.io.slide_sources import open_slide_source
from hemoprofile.segment.input import cellpose_input

log = logging.getLogger(__name__)

#: File name of the training cohort's sheet (one row per slide, the simulate stage's plan columns).
COHORT_SHEET = "cohort.tsv"


# --- DSB 2018 ------------------------------------------------------------------------------------------


def dsb_image_ids(dsb_dir: str | os.PathLike) -> list[str]:
    """Image ids listed in the DSB ``index.csv``, sorted."""
    index = Path(dsb_dir) / "index.csv"
    if not index.exists():
        raise FileNotFoundError(f"DSB 2018 index not found: {index} (train_segmenter.dsb_dir must name the DSB 2018 "
                                "fluorescence folder: images/<id>.png, masks/<id>.png, index.csv)")
    with open(index, newline="") as fh:
        return sorted(row["image_id"] for row in csv.DictReader(fh))


def split_ids(ids: Sequence[str], seed: int, fractions: Mapping[str, float] | None = None) -> dict[str, list[str]]:
    """Seeded random split of image ids into disjoint named parts (default train/validation/test 70/10/20).

    The ids are sorted first, so the split depends only on the set of ids, the seed and the fractions.

    Example
    -------
    >>> parts = split_ids([f"i{k}" for k in range(10)], seed=0)
    >>> [len(parts[p]) for p in ("train", "validation", "test")]
    [7, 1, 2]
    """
    fractions = dict(fractions or {"train": 0.7, "validation": 0.1, "test": 0.2})
    total = sum(fractions.values())
    ids = sorted(set(ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    names = list(fractions)
    bounds = np.round(np.cumsum([fractions[n] / total for n in names]) * len(ids)).astype(int)
    parts, start = {}, 0
    for name, end in zip(names, bounds):
        parts[name] = sorted(ids[i] for i in order[start:end])
        start = end
    return parts


def write_split(parts: Mapping[str, Sequence[str]], path: str | os.PathLike, seed: int, source: str) -> None:
    """Write a split file (JSON: seed, source, and the ids of each part)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"seed": seed, "source": source, "parts": {k: list(v) for k, v in parts.items()}}, indent=1))
    os.replace(tmp, path)


def read_split(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read the parts of a split file written by :func:`write_split`."""
    return {k: list(v) for k, v in json.loads(Path(path).read_text())["parts"].items()}


def read_dsb_image(dsb_dir: str | os.PathLike, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """One DSB image as stored (2-D; an RGB(A) copy of one grey channel becomes that channel, in the
    file's dtype) and its int32 instance labels."""
    from skimage.io import imread

    img = imread(Path(dsb_dir) / "images" / f"{image_id}.png")
    if img.ndim == 3:  # a few PNGs carry RGB(A) copies of one grey channel
        img = img[..., :3].mean(axis=-1).astype(img.dtype)
    labels = np.asarray(imread(Path(dsb_dir) / "masks" / f"{image_id}.png")).astype(np.int32)
    return img, labels


def load_dsb(ids: Sequence[str], dsb_dir: str | os.PathLike,
             segment_cfg: Mapping | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Load DSB images as 2-channel network inputs ``[image, zeros]`` and their instance labels."""
    images, labels = [], []
    for image_id in ids:
        img, lab = read_dsb_image(dsb_dir, image_id)
        images.append(cellpose_input(img, None, segment_cfg, source=f"DSB image {image_id}"))
        labels.append(lab)
    return images, labels


# --- the synthetic training cohort ---------------------------------------------------------------------


def training_cohort_config(synth_cfg: Mapping, params: Mapping) -> dict:
    """The ``synthetic`` config section of the training cohort: the demo's, with the training seed
    (``train_segmenter.synthetic_seed``) and, when set, ``synthetic_patients_per_condition``.

    Raises
    ------
    ValueError when the training seed equals the demo's (the model would be trained on the slides it is
    later scored on).
    """
    cfg = dict(synth_cfg)
    seed = int(params["synthetic_seed"])
    if seed == int(cfg.get("seed", -1)):
        raise ValueError("train_segmenter.synthetic_seed equals synthetic.seed: the model would be trained on the "
                         "slides it is later scored on; choose another training seed")
    if params.get("synthetic_patients_per_condition") is not None:
        cfg["conditions"] = {name: {**spec, "patients": int(params["synthetic_patients_per_condition"])}
                             for name, spec in cfg["conditions"].items()}
    cfg["seed"] = seed
    return cfg


def read_cohort(cohort_path: str | os.PathLike) -> pd.DataFrame:
    """The training cohort's sheet (:data:`COHORT_SHEET`): slide, path, format, channels, frame grid."""
    return pd.read_csv(cohort_path, sep="\t")


def _relabel(labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(np.asarray(labels).astype(np.int32))[0]


def read_training_frames(cohort: pd.DataFrame, slides: Sequence[int] | None = None,
                         segment_cfg: Mapping | None = None) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Read the frames of simulated slides with their truth labels, as training pairs.

    Parameters
    ----------
    cohort : the cohort sheet (:func:`read_cohort`); each slide's image at ``path`` (a frame folder in
        the default ``Tile{index:06d}.tif`` pattern, row-major, or an OME-TIFF) and its
        ``truth_labels.zarr`` beside it.
    slides : positions in the sheet to read (default all).
    segment_cfg : the ``segment`` config section (channels and input preparation).

    Returns
    -------
    images : (2, row, column) float32 network inputs; labels : (row, column) int32 cell labels numbered
    1..N per frame; names : ``<slide>/<frame>`` of each frame.
    """
    rows = range(len(cohort)) if slides is None else slides
    images, labels, names = [], [], []
    for i in rows:
        sample = cohort.iloc[i]
        channels = str(sample["channels"]).split(",")
        n_rows, n_cols = int(sample["frame_rows"]), int(sample["frame_cols"])
        truth = open_ome_zarr(Path(sample["path"]).parent / "truth_labels.zarr").array
        with open_slide_source(sample["path"], sample["format"], channels, frame_rows=n_rows,
                               frame_cols=n_cols) as source:
            frame_h, frame_w = source.shape[1] // n_rows, source.shape[2] // n_cols
            for f in range(n_rows * n_cols):
                grid_row, grid_col = frame_grid_position(f, n_rows, n_cols)
                y0, x0 = grid_row * frame_h, grid_col * frame_w
                image = np.stack([source.read_region(c, y0, y0 + frame_h, x0, x0 + frame_w)
                                  for c in range(len(channels))])
                images.append(cellpose_input(image, channels, segment_cfg, source=f"{sample['slide']} frame {f}"))
                labels.append(_relabel(truth[y0:y0 + frame_h, x0:x0 + frame_w]))
                names.append(f"{sample['slide']}/{f}")
    return images, labels, names


# --- both ------------------------------------------------------------------------------------------------


def prepare_training_data(dsb_dir: str | os.PathLike, split_path: str | os.PathLike, split_seed: int,
                          cohort_path: str | os.PathLike | None = None, synth_val_slides: int = 2,
                          max_dsb: int | None = None, segment_cfg: Mapping | None = None) -> dict:
    """Split DSB by image id (seeded; written to ``split_path``), load it, read the synthetic cohort.

    Returns a dict with ``train`` (images, labels), ``n_dsb`` and ``val`` {"dsb": ..., "synthetic": ...}.
    The last ``synth_val_slides`` slides of the training cohort (``cohort_path``, its sheet; None: DSB
    only) are validation, never trained on.
    """
    parts = split_ids(dsb_image_ids(dsb_dir), split_seed)
    split_path = Path(split_path)
    if split_path.exists() and read_split(split_path) != parts:
        log.warning("split file %s differs from the split of seed %d; rewriting it", split_path, split_seed)
    write_split(parts, split_path, split_seed, str(dsb_dir))
    train_ids = parts["train"][:max_dsb] if max_dsb else parts["train"]
    val_ids = parts["validation"][:max(4, max_dsb // 4)] if max_dsb else parts["validation"]
    tr_img, tr_lab = load_dsb(train_ids, dsb_dir, segment_cfg)
    va_img, va_lab = load_dsb(val_ids, dsb_dir, segment_cfg)
    data = {"train": (tr_img, tr_lab), "n_dsb": len(tr_img), "val": {"dsb": (va_img, va_lab)}}
    if cohort_path is not None:
        cohort = read_cohort(cohort_path)
        n_slides = len(cohort)
        n_val = min(synth_val_slides, max(0, n_slides - 1))
        s_img, s_lab, _ = read_training_frames(cohort, range(n_slides - n_val), segment_cfg)
        v_img, v_lab, _ = read_training_frames(cohort, range(n_slides - n_val, n_slides), segment_cfg)
        data["train"] = (tr_img + s_img, tr_lab + s_lab)
        if v_img:
            data["val"]["synthetic"] = (v_img, v_lab)
    return data
