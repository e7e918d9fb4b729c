"""Export the tiles of a segmented slide where the segmenter is least sure, for a person to correct
(``hemoprofile export-for-annotation``; the corrected folders train the model again:
:mod:`hemoprofile.segment.training.annotations`).

Uncertainty of a tile (a number in [0, 1]; higher = less sure), the mean of two parts:

``shape``
    Share of the tile's objects (those not touching the tile's edge) whose size or shape is implausible
    for one cell: area below :data:`AREA_RANGE` [0] or above [1] times the area of a disc of the
    configured ``segment.diameter``, or solidity (area / convex-hull area) below :data:`MIN_SOLIDITY`
    (two cells merged into one, a ragged fragment). Read from labels.zarr, so it is the same measure for
    both backends; it is computed for every tile, one tile in memory at a time.
``margin``
    Share of the tile's cell-like pixels on which the backend's own decision was close, recomputed for
    the ``candidates`` tiles with the highest shape score (the model runs on those only, each in its
    halo window, so memory holds one window):

    - cellpose: pixels whose cell-probability logit lies within :data:`CELLPROB_MARGIN` of
      ``segment.cellprob_threshold``, over the pixels above ``threshold - margin``;
    - classical: pixels whose smoothed nucleus value lies within :data:`THRESHOLD_MARGIN` (relative) of
      the slide's Otsu threshold, over the pixels above ``threshold x (1 - margin)``.

The input is prepared with the slide-wide calibration the segment stage used (the same tile sample and
seed), so the exported image is exactly what the segmenter saw: the 2-channel network input
``[cytoplasm composite, nucleus]`` as float32 (or the nucleus alone, 2-D, without cytoplasm channels).
The masks are the current labels of the tile (from labels.zarr), numbered 1..N.

Output folder::

    OUT/cellpose/<name>.tif + <name>_seg.npy     open OUT/cellpose in the Cellpose 3 GUI; it saves _seg.npy
    OUT/tiff/<name>.tif + <name>_masks.tif       image / mask pairs for other tools (napari, Fiji)
    OUT/cellpose/annotation.json, OUT/tiff/annotation.json   channel names (read back by training)
    OUT/manifest.csv                             one row per tile: position in the slide and scores
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from hemoprofile.io import halo_window, iter_tiles, open_ome_zarr
from hemoprofile.segment.input import select_channels
from hemoprofile.segment.segmenter import build_segmenter
from hemoprofile.segment.settings import segment_settings
from hemoprofile.segment.tiled import _read_window, _sample_tiles, halo_pixels
from hemoprofile.segment.training.annotations import (
    FOLDER_DESCRIPTION,  # read back by training
)

log = logging.getLogger(__name__)

#: Object area outside this range (times the area of a disc of ``segment.diameter``) is implausible.
AREA_RANGE = (0.25, 2.5)
#: Objects less solid than this (area / convex-hull area) are implausible (merged or ragged).
MIN_SOLIDITY = 0.85
#: Cell-probability logits within this distance of the threshold are undecided (cellpose backend).
CELLPROB_MARGIN = 1.0
#: Smoothed nucleus values within this fraction of the Otsu threshold are undecided (classical backend).
THRESHOLD_MARGIN = 0.15
MANIFEST = "manifest.csv"


def shape_score(labels: np.ndarray, diameter: float) -> tuple[float, int]:
    """Share of implausible objects among those not touching the edge of ``labels`` (see the module doc).

    Returns (score, number of objects scored); a tile without such objects scores 0.

    Example
    -------
    >>> from skimage.draw import disk
    >>> lab = np.zeros((64, 64), np.int32); lab[disk((20, 20), 7)] = 1; lab[disk((44, 44), 2)] = 2
    >>> shape_score(lab, diameter=14)
    (0.5, 2)
    """
    from skimage.measure import regionprops

    labels = np.asarray(labels)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    disc = math.pi * float(diameter) ** 2 / 4
    n, bad = 0, 0
    for region in regionprops(labels.astype(np.int32)):
        if region.label in edge:
            continue
        n += 1
        area = region.area / disc
        if area < AREA_RANGE[0] or area > AREA_RANGE[1] or region.solidity < MIN_SOLIDITY:
            bad += 1
    return (bad / n if n else 0.0), n


def margin_fraction(values: np.ndarray, threshold: float, margin: float) -> float:
    """Share of pixels within ``margin`` of ``threshold`` among those above ``threshold - margin``."""
    values = np.asarray(values, np.float32)
    near = np.abs(values - threshold) < margin
    cell_like = values > threshold - margin
    return float(near.sum() / cell_like.sum()) if cell_like.any() else 0.0


def segment_config_from_labels(attributes: Mapping) -> dict:
    """The ``segment`` settings a labels.zarr was written with, as far as its attributes record them."""
    cfg = {k: attributes[k] for k in ("backend", "diameter", "normalisation") if attributes.get(k) is not None}
    if attributes.get("model"):
        cfg["model"] = attributes["model"]
    if attributes.get("channels"):
        cfg["channels"] = dict(attributes["channels"])
    return segment_settings(cfg)


class _TileScorer:
    """The backend of a slide, calibrated as the segment stage calibrated it, scoring tiles' margins."""

    def __init__(self, image, selection, cfg: Mapping, tiles, seed: int, segmenter=None):
        self.image, self.selection, self.cfg = image, selection, cfg
        self.shape_yx = tuple(image.shape[1:])
        self.segmenter = segmenter or build_segmenter(cfg)
        context = max(int(getattr(self.segmenter, "context", 0)), 0)
        sampled = _sample_tiles(tiles, int(cfg["sample_tiles"]), seed)

        def windows():
            for tile in sampled:
                window = halo_window(tile, context, self.shape_yx)
                core = (slice(tile.y0 - window[0], tile.y1 - window[0]), slice(tile.x0 - window[2], tile.x1 - window[2]))
                yield _read_window(image, selection.indices, window), core

        self.segmenter.calibrate(windows, len(selection.indices))
        self.halo = halo_pixels(cfg)

    def score(self, tile) -> tuple[np.ndarray, float, list | None]:
        """(network input of the tile (2, y, x) or (y, x), margin score, Cellpose flows of the tile or None)."""
        window = halo_window(tile, self.halo, self.shape_yx)
        core = (slice(tile.y0 - window[0], tile.y1 - window[0]), slice(tile.x0 - window[2], tile.x1 - window[2]))
        selected = _read_window(self.image, self.selection.indices, window)
        seg = self.segmenter
        if seg.name == "cellpose":
            x = seg.network_input(selected)
            _, flows, _ = seg.model.eval(x, channel_axis=2, channels=None, normalize={"normalize": False, "norm3D": False},
                                         diameter=seg.diameter, flow_threshold=seg.flow_threshold,
                                         cellprob_threshold=seg.cellprob_threshold, min_size=seg.min_size)
            flows = [np.asarray(f)[..., core[0], core[1]] if i else np.asarray(f)[core[0], core[1]]
                     for i, f in enumerate(flows[:3])]
            margin = margin_fraction(flows[2], seg.cellprob_threshold, CELLPROB_MARGIN)
            network = np.moveaxis(x[core[0], core[1]], -1, 0)
        else:
            nucleus, cyto = seg.calibration.prepare(selected)
            smooth = seg._smooth(nucleus)[core]
            threshold = float(seg.nucleus_threshold)
            margin = margin_fraction(smooth, threshold, THRESHOLD_MARGIN * abs(threshold)) if math.isfinite(threshold) else 0.0
            flows = None
            network = np.stack([cyto[core] if cyto is not None else nucleus[core], nucleus[core]])
        if not self.selection.cytoplasm:
            network = network[0]  # nucleus only: a 2-D image (the [nucleus, zeros] input)
        return np.ascontiguousarray(network, np.float32), margin, flows


def _relabel(labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(np.asarray(labels).astype(np.int64))[0].astype(np.int32)


def seg_npy_record(image_path: str | os.PathLike, masks: np.ndarray, flows: list | None = None,
                   diameter: float = 30.0, two_channel: bool = True) -> dict:
    """The dict the Cellpose 3 GUI loads from ``<name>_seg.npy`` (the keys of
    ``cellpose.io.masks_flows_to_seg``: outlines, masks, chan_choose, ismanual, filename, flows, diameter).

    ``flows`` are Cellpose's ``[rgb, dP, cellprob]`` of the image (None: the GUI's own placeholder for
    masks without flows). ``two_channel``: the image is ``[cytoplasm, nucleus]``, shown red and green,
    so the GUI is told to segment channel 1 with nucleus channel 2 (else grayscale, [0, 0]).
    """
    from skimage.segmentation import find_boundaries

    masks = np.asarray(masks)
    dtype = np.uint16 if masks.max(initial=0) < 2**16 - 1 else np.uint32
    outlines = (find_boundaries(masks, mode="inner") * masks).astype(dtype)
    if flows is not None:
        rgb, dp, cellprob = flows
        scaled = np.clip((cellprob - np.percentile(cellprob, 1)) / max(np.ptp(cellprob), 1e-6), 0, 1)
        gui_flows = [rgb[np.newaxis].astype(np.uint8), (scaled * 255).astype(np.uint8)[np.newaxis],
                     np.zeros(rgb.shape, np.uint8)[np.newaxis], [],
                     np.concatenate([dp, cellprob[np.newaxis]], axis=0).astype(np.float32)]
    else:
        gui_flows = [[], [], [], [], [[]]]
    return {"outlines": outlines, "masks": masks.astype(dtype), "chan_choose": [1, 2] if two_channel else [0, 0],
            "ismanual": np.zeros(int(masks.max(initial=0)), bool), "filename": str(image_path), "flows": gui_flows,
            "diameter": float(diameter)}


def _write_pair(folder: Path, name: str, image: np.ndarray, masks: np.ndarray, flows, diameter: float) -> dict:
    import tifffile

    cp_dir, tif_dir = folder / "cellpose", folder / "tiff"
    image_path = cp_dir / f"{name}.tif"
    tifffile.imwrite(image_path, image)
    np.save(cp_dir / f"{name}_seg.npy", seg_npy_record(image_path.resolve(), masks, flows, diameter, image.ndim == 3),
            allow_pickle=True)
    tifffile.imwrite(tif_dir / f"{name}.tif", image)
    tifffile.imwrite(tif_dir / f"{name}_masks.tif", masks.astype(np.uint16 if masks.max(initial=0) < 2**16 else np.uint32))
    return {"cellpose_image": str(image_path), "tiff_image": str(tif_dir / f"{name}.tif")}


def export_for_annotation(
    preprocessed_path: str | os.PathLike,
    labels_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    k: int = 8,
    segment_cfg: Mapping | None = None,
    seed: int = 0,
    candidates: int | None = None,
    tile_size: int | None = None,
    slide: str | None = None,
    segmenter=None,
    progress: Callable[[str], None] | None = print,
) -> pd.DataFrame:
    """Write the ``k`` tiles of a segmented slide where the segmenter is least sure (see the module doc).

    Parameters
    ----------
    preprocessed_path, labels_path : the slide's ``preprocessed.zarr`` and ``labels.zarr``.
    out_dir : the folder to write (``cellpose/``, ``tiff/``, ``manifest.csv``).
    k : number of tiles to export.
    segment_cfg : the ``segment`` section the slide was segmented with (None: what labels.zarr records
        over the schema's defaults; thresholds it does not record take the defaults).
    seed : the config ``seed`` the slide was segmented with (its tile sample fixes the calibration).
    candidates : tiles rescored with the backend (default ``max(4 k, 16)``).
    tile_size : tile edge (default: labels.zarr's chunk edge, the segment stage's tiles).
    slide : name used in file names and the manifest (default: the labels folder's parent's name).
    segmenter : a built backend to reuse (tests); built from the settings when None.

    Returns
    -------
    The manifest (also written as ``manifest.csv``): name, slide, y0, y1, x0, x1, n_objects,
    shape_score, margin_score, score, backend; sorted by score, highest first.

    Example
    -------
    >>> export_for_annotation("results/P01_S1/preprocessed.zarr", "results/P01_S1/labels.zarr", "fix_me", k=8)  # doctest: +SKIP
    """
    say = progress or (lambda message: None)
    image = open_ome_zarr(preprocessed_path)
    labels = open_ome_zarr(labels_path)
    if image.array.ndim != 3:
        raise ValueError(f"{preprocessed_path}: expected a (c, y, x) image, got shape {image.array.shape}")
    if tuple(labels.array.shape) != tuple(image.array.shape[1:]):
        raise ValueError(f"{labels_path}: labels of shape {labels.array.shape} do not match the image "
                         f"{preprocessed_path} of shape {image.array.shape[1:]}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    cfg = segment_settings(segment_cfg) if segment_cfg is not None else segment_config_from_labels(labels.attributes)
    slide = slide or Path(labels_path).resolve().parent.name
    selection = select_channels(image.channel_names, cfg["channels"]["nucleus"], cfg["channels"]["cytoplasm"],
                                str(preprocessed_path))
    tile_size = int(tile_size or labels.array.chunks[-1])
    seg_tile = int(image.array.chunks[-1])  # the segment stage's tiles fix the calibration sample
    tiles = list(iter_tiles(labels.array.shape, tile_size))

    rows = []
    for tile in tiles:
        score, n = shape_score(np.asarray(labels.array[tile.y0:tile.y1, tile.x0:tile.x1]), cfg["diameter"])
        rows.append({"tile": tile, "shape_score": score, "n_objects": n})
    n_candidates = min(len(rows), int(candidates or max(4 * k, 16)))
    tiebreak = np.random.default_rng(seed).permutation(len(rows))
    order = sorted(range(len(rows)), key=lambda i: (-rows[i]["shape_score"], tiebreak[i]))[:n_candidates]
    say(f"{slide}: shape scores of {len(rows)} tiles; rescoring the {n_candidates} least plausible with "
        f"the {cfg['backend']} backend")

    scorer = _TileScorer(image.array, selection, cfg, list(iter_tiles(labels.array.shape, seg_tile)), seed, segmenter)
    for i in order:
        network, margin, flows = scorer.score(rows[i]["tile"])
        rows[i].update(margin_score=margin, score=0.5 * (rows[i]["shape_score"] + margin), network=network, flows=flows)
        if len(order) > k:  # keep at most k + 1 tiles' arrays in memory
            kept = sorted((r for r in rows if "network" in r), key=lambda r: -r["score"])
            for r in kept[k:]:
                r.pop("network"), r.pop("flows")
    chosen = sorted((rows[i] for i in order), key=lambda r: -r["score"])[:k]

    out_dir = Path(out_dir)
    for sub in ("cellpose", "tiff"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    two_channel = bool(selection.cytoplasm)
    description = {
        "channels": ["cytoplasm", "nucleus"] if two_channel else ["nucleus"],
        "prepared": True,
        "note": "images are the segmenter's network input (hemoprofile.segment.input); training uses them as they are",
        "slide": slide, "preprocessed": str(preprocessed_path), "labels": str(labels_path),
        "backend": cfg["backend"], "model": cfg["model"] if cfg["backend"] == "cellpose" else None,
        "diameter": float(cfg["diameter"]),
        "slide_channels": {"nucleus": cfg["channels"]["nucleus"], "cytoplasm": list(cfg["channels"]["cytoplasm"])},
    }
    for sub in ("cellpose", "tiff"):
        (out_dir / sub / FOLDER_DESCRIPTION).write_text(json.dumps(description, indent=1))
    manifest = []
    for r in chosen:
        t = r["tile"]
        name = f"{slide}_y{t.y0:06d}_x{t.x0:06d}"
        masks = _relabel(labels.array[t.y0:t.y1, t.x0:t.x1])
        _write_pair(out_dir, name, r["network"], masks, r["flows"], float(cfg["diameter"]))
        manifest.append({"name": name, "slide": slide, "y0": t.y0, "y1": t.y1, "x0": t.x0, "x1": t.x1,
                         "n_objects": int(masks.max(initial=0)), "shape_score": round(r["shape_score"], 4),
                         "margin_score": round(r["margin_score"], 4), "score": round(r["score"], 4),
                         "backend": cfg["backend"]})
    table = pd.DataFrame(manifest, columns=["name", "slide", "y0", "y1", "x0", "x1", "n_objects", "shape_score",
                                            "margin_score", "score", "backend"])
    table.to_csv(out_dir / MANIFEST, index=False)
    say(f"wrote {len(table)} tiles to {out_dir} (cellpose/: open in the Cellpose GUI; tiff/: image/mask pairs)")
    return table
