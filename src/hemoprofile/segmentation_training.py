"""Train and score the project's own Cellpose segmentation model (offline, from scratch).

The workflow must segment with no network, so it bundles a Cellpose 3 network that its own code
trains from random weights on two labelled sources:

- **DSB 2018 fluorescence nuclei** (BBBC038, expert instance masks): split once, seeded, by image id
  into train / validation / test and saved as a split file, so that no benchmark ever scores an image
  the model was trained on. Images enter as ``[image, zeros]``; targets are nuclei.
- **Synthetic HDSCA-like slides** from :mod:`hemoprofile.synth`, simulated with a training seed that
  differs from the demo's, so the demo cohort is never trained on. Images enter as
  ``[cytoplasm composite (CD45+CK+VIM), nucleus (DAPI)]``; targets are whole cells.

Both become the same 2-channel float32 input (:func:`cellpose_input`, the same map as
``segment.CellposeSegmenter.network_input``): DAPI scaled by its 1st..99th percentile; CD45, CK, VIM
each by its 1st..99.9th, clipped at 0, summed, the sum by its 1st..99th percentile.

Object size: Cellpose rescales each training image so that its median object diameter becomes the
net's ``diam_mean``. At inference the diameter of each image must therefore be known; this module
estimates it with a quick classical pass (:func:`estimate_diameter`: Otsu foreground, connected
components, twice the largest inscribed radius per component, median, times a factor fitted on the
training split; the factor goes into the model's sidecar), and :meth:`Segmenter.segment` refines it
once from the model's own masks.

Training (:func:`train_segmenter`) is either ``cellpose.train.train_seg`` itself (a step-bound run) or,
with a time budget, a loop built from train_seg's own batch, augmentation and loss functions whose
learning rate anneals by the clock, so a CPU run of fixed length ends with a finished model and
leaves checkpoints on the way.

Model files: ``<name>.pt`` is a float16 ``state_dict`` of ``cellpose.resnet_torch.CPnet``;
``<name>.pt.json`` (the sidecar, see :func:`write_sidecar`) records ``nbase``, ``nout``, ``diam_mean``,
``nchan`` and how inputs are prepared, so :func:`load_segmenter` (or ``segment.load_cellpose_model``)
rebuilds the same network without any download.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

#: Default location of the DSB 2018 fluorescence subset (see /work/shared/data/README.md).
DSB_DIR = Path(os.environ.get("HEMOPROFILE_DSB_DIR", "/work/shared/data/dsb2018_fluo"))
#: Names of the two network input channels, in order.
INPUT_CHANNELS = ("cytoplasm", "nucleus")
#: Marker channels summed into the cytoplasm composite.
CYTOPLASM_MARKERS = ("CD45", "CK", "VIM")
NUCLEUS_MARKER = "DAPI"
PERCENTILES = (1.0, 99.0)
SIDECAR_SUFFIX = ".json"
#: Version of the training procedure; the workflow rule passes it as a param so a change retrains.
TRAINING_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Input preparation


def normalise_percentile(channel: np.ndarray, low: float = PERCENTILES[0], high: float = PERCENTILES[1]) -> np.ndarray:
    """Scale one channel so its ``low`` and ``high`` percentiles map to 0 and 1 (float32, not clipped).

    A flat channel (no contrast) becomes all zeros.

    Example
    -------
    >>> normalise_percentile(np.arange(101.0))[[1, 99]].round(3).tolist()
    [0.0, 1.0]
    """
    channel = np.asarray(channel, dtype=np.float32)
    lo, hi = (float(v) for v in np.percentile(channel, [low, high]))
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        return np.zeros_like(channel)
    return (channel - np.float32(lo)) * np.float32(1.0 / (hi - lo))


def cellpose_input(image: np.ndarray, channel_names: Sequence[str] | None = None) -> np.ndarray:
    """Return the 2-channel network input (channel, row, column) float32 of an image.

    Parameters
    ----------
    image : (row, column) single nuclear-stain image, or (channel, row, column) IF image.
    channel_names : names of the channels of a multi-channel image; must include ``DAPI`` and at
        least one of ``CD45``, ``CK``, ``VIM``.

    Returns
    -------
    (2, row, column) float32: ``[cytoplasm composite, nucleus]``, each percentile-normalised.
    A 2-D image gives ``[image, zeros]`` (the Cellpose grayscale convention).
    """
    image = np.asarray(image)
    if image.ndim == 2:
        return np.stack([normalise_percentile(image), np.zeros(image.shape, np.float32)])
    if image.ndim != 3 or channel_names is None or len(channel_names) != image.shape[0]:
        raise ValueError("a multi-channel image needs one channel name per channel (channel, row, column)")
    names = list(channel_names)
    if NUCLEUS_MARKER not in names:
        raise ValueError(f"no {NUCLEUS_MARKER} channel among {names}")
    markers = [m for m in CYTOPLASM_MARKERS if m in names]
    if not markers:
        raise ValueError(f"none of {CYTOPLASM_MARKERS} among {names}")
    # Each marker is normalised first so a bright marker (CK on a CTC) cannot hide a dim one (CD45).
    cyto = np.mean([np.clip(normalise_percentile(image[names.index(m)], 1.0, 99.9), 0, None) for m in markers], axis=0)
    return np.stack([normalise_percentile(cyto), normalise_percentile(image[names.index(NUCLEUS_MARKER)])])


# ---------------------------------------------------------------------------------------------
# Object size


def _raw_diameter(image2: np.ndarray) -> float:
    """Median of twice the largest inscribed radius of Otsu foreground components (pixels)."""
    from scipy import ndimage as ndi
    from skimage.filters import gaussian, threshold_otsu

    signal = np.clip(np.max(np.asarray(image2, np.float32), axis=0), 0, 1.5)
    signal = gaussian(signal, 1.0)
    if float(signal.max() - signal.min()) < 1e-6:
        return float("nan")
    fg = signal > threshold_otsu(signal)
    lab, n = ndi.label(fg)
    if n == 0:
        return float("nan")
    dist = ndi.distance_transform_edt(fg)
    peak = ndi.maximum(dist, lab, index=np.arange(1, n + 1))
    sizes = ndi.sum(fg, lab, index=np.arange(1, n + 1))
    keep = sizes >= 12  # specks of noise are not objects
    if not keep.any():
        return float("nan")
    return float(2.0 * np.median(peak[keep]))


def estimate_diameter(image2: np.ndarray, factor: float = 1.0, default: float = 17.0) -> float:
    """Estimate the median object diameter (pixels) of a 2-channel network input, classically.

    Otsu threshold of the smoothed channel maximum, connected components, twice each component's
    largest inscribed radius (robust to touching objects, unlike the equivalent diameter), median over
    components, times ``factor`` (fitted by :func:`fit_diameter_factor` so it matches the equivalent
    diameter Cellpose uses). Returns ``default`` when nothing stands out.
    """
    raw = _raw_diameter(image2)
    if not np.isfinite(raw) or raw <= 0:
        return float(default)
    return float(np.clip(raw * factor, 4.0, 200.0))


def label_diameter(labels: np.ndarray) -> float:
    """Median equivalent-circle diameter of the objects of a label image (Cellpose's ``utils.diameters``).

    Returns 0.0 for an image without objects.
    """
    areas = np.bincount(np.asarray(labels).ravel().astype(np.int64))[1:]
    areas = areas[areas > 0]
    if areas.size == 0:
        return 0.0
    return float(np.median(np.sqrt(areas)) / (np.sqrt(np.pi) / 2))


def fit_diameter_factor(images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> float:
    """Median ratio of true to classically estimated diameter over training images."""
    ratios = []
    for image, lab in zip(images, labels):
        raw = _raw_diameter(image)
        true = label_diameter(lab)
        if np.isfinite(raw) and raw > 0 and true > 0:
            ratios.append(true / raw)
    return float(np.median(ratios)) if ratios else 1.0


# ---------------------------------------------------------------------------------------------
# Data


def dsb_image_ids(dsb_dir: str | os.PathLike = DSB_DIR) -> list[str]:
    """Image ids listed in the DSB ``index.csv``, sorted."""
    index = Path(dsb_dir) / "index.csv"
    if not index.exists():
        raise FileNotFoundError(f"DSB 2018 index not found: {index} (see /work/shared/data/README.md)")
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


def load_dsb(ids: Sequence[str], dsb_dir: str | os.PathLike = DSB_DIR) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Load DSB images as 2-channel inputs ``[image, zeros]`` and their 16-bit instance labels."""
    from skimage.io import imread

    images, labels = [], []
    for image_id in ids:
        img = imread(Path(dsb_dir) / "images" / f"{image_id}.png")
        if img.ndim == 3:  # a few PNGs carry RGB(A) copies of one grey channel
            img = img[..., :3].mean(axis=-1)
        images.append(cellpose_input(img))
        labels.append(np.asarray(imread(Path(dsb_dir) / "masks" / f"{image_id}.png")).astype(np.int32))
    return images, labels


def synthetic_frames(synth_cfg: Mapping, out_dir: str | os.PathLike, seed: int, slides: Sequence[int] | None = None,
                     frame_pattern: str = "Tile{index:06d}.tif") -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Simulate (if not there yet) slides of a synthetic cohort and return its frames as training pairs.

    Parameters
    ----------
    synth_cfg : the ``synthetic`` config section (defaults filled in); its seed is replaced by ``seed``.
    out_dir : where the slides are written (``<out_dir>/<slide>/``).
    seed : cohort seed; use one that differs from the demo's so demo slides are never trained on.
    slides : positions in the cohort plan to use (default all).

    Returns
    -------
    images : (2, row, column) float32 network inputs; labels : (row, column) int32 cell labels;
    names : ``<slide>/<frame>`` of each frame.
    """
    from hemoprofile import synth

    cfg = dict(synth_cfg)
    cfg["seed"] = int(seed)
    plan = synth.plan_cohort(cfg, out_dir)
    rows = range(len(plan)) if slides is None else slides
    images, labels, names = [], [], []
    for i in rows:
        sample = plan.iloc[i].to_dict()
        if not (Path(out_dir) / sample["slide"] / "truth_cells.parquet").exists():
            synth.simulate_slide(cfg, sample, out_dir, frame_pattern=frame_pattern)
        for f in range(int(sample["frame_rows"]) * int(sample["frame_cols"])):
            image, lab, _ = synth.read_synthetic_frame(sample, f, frame_pattern=frame_pattern)
            channels = str(sample["channels"]).split(",")
            images.append(cellpose_input(image, channels))
            labels.append(_relabel(lab))
            names.append(f"{sample['slide']}/{f}")
    return images, labels, names


def _relabel(labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(np.asarray(labels).astype(np.int32))[0]


# ---------------------------------------------------------------------------------------------
# Model files


#: ``cellpose.core.run_net`` (3.1) stores style vectors in a fixed 256-wide array.
STYLE_WIDTH = 256


def build_net(nbase: Sequence[int], diam_mean: float, nout: int = 3):
    """A fresh ``CPnet`` (random weights) with the given widths; ``nbase[0]`` is the number of inputs.

    When ``nbase[-1]`` is not 256 the net's style output is zero-padded to 256 values, because
    Cellpose 3.1's ``run_net`` assumes that width; styles feed only Cellpose's size model, so the
    masks and the state dict are those of a plain ``CPnet`` (``segment.load_cellpose_model`` does
    the same).
    """
    from cellpose.resnet_torch import CPnet

    cls = CPnet if list(nbase)[-1] == STYLE_WIDTH else _style_padded_cpnet()
    return cls(list(nbase), nout, sz=3, mkldnn=False, max_pool=True, diam_mean=float(diam_mean))


_PADDED = None


def _style_padded_cpnet():
    global _PADDED
    if _PADDED is None:
        import torch.nn.functional as F
        from cellpose.resnet_torch import CPnet

        class StylePaddedCPnet(CPnet):
            def forward(self, data):
                out, style, features = super().forward(data)
                if style.shape[1] < STYLE_WIDTH:
                    style = F.pad(style, (0, STYLE_WIDTH - style.shape[1]))
                return out, style[:, :STYLE_WIDTH], features

        _PADDED = StylePaddedCPnet
    return _PADDED


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """The JSON sidecar of a model file: ``<model>.json`` next to it (``segmenter.pt.json``)."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + SIDECAR_SUFFIX)


def write_sidecar(model_path: str | os.PathLike, meta: Mapping) -> Path:
    """Write the model's sidecar JSON (must hold ``nbase``, ``diam_mean``, ``nchan``)."""
    missing = {"nbase", "diam_mean", "nchan"} - set(meta)
    if missing:
        raise ValueError(f"sidecar lacks {sorted(missing)}")
    path = sidecar_path(model_path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(dict(meta), indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path


def read_sidecar(model_path: str | os.PathLike) -> dict:
    """Read the sidecar JSON of a model file."""
    path = sidecar_path(model_path)
    if not path.exists():
        raise FileNotFoundError(f"model sidecar not found: {path}")
    return json.loads(path.read_text())


def save_model_fp16(net, model_path: str | os.PathLike, meta: Mapping) -> dict:
    """Save a net as a float16 state dict plus its sidecar (atomic); return the sidecar contents."""
    import torch

    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()) for k, v in net.state_dict().items()}
    tmp = model_path.with_name(model_path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, model_path)
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    full = {**dict(meta), "nbase": list(net.nbase), "nout": int(net.nout), "nchan": int(net.nbase[0]),
            "diam_mean": float(net.diam_mean.item()), "diam_labels": float(net.diam_labels.item()),
            "dtype": "float16", "sha256": digest, "bytes": model_path.stat().st_size}
    write_sidecar(model_path, full)
    return full


def load_net(model_path: str | os.PathLike, device=None):
    """Rebuild the ``CPnet`` described by a model's sidecar and load its (fp16 or fp32) weights as fp32."""
    import torch

    meta = read_sidecar(model_path)
    net = build_net(meta["nbase"], meta["diam_mean"], meta.get("nout", 3))
    state = torch.load(model_path, map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    net.eval()
    if device is not None:
        net.to(device)
    return net, meta


@dataclass
class Segmenter:
    """A loaded model ready to segment 2-channel network inputs (see :func:`load_segmenter`)."""

    model: object
    meta: dict
    diameter_factor: float = 1.0

    def segment(self, image2: np.ndarray, diameter: float | None = None, refine: bool = True,
                **eval_kwargs) -> tuple[np.ndarray, float]:
        """Segment a (2, row, column) input; returns the labels and the diameter used.

        Without ``diameter`` it is estimated classically (:func:`estimate_diameter`). When the model
        finds nothing at the estimate, it tries :data:`EMPTY_RETRY_FACTORS` times the estimate in turn
        and keeps the first that finds objects (the classical estimate can mistake bright parts of
        large textured nuclei for objects, several-fold too small; an image with no objects costs
        those extra passes). With ``refine`` the median equivalent diameter of the objects found is
        then compared with the one used, and when they differ by more than :data:`REFINE_TOLERANCE` the
        image is segmented once more at the found diameter (the net is trained for objects within about
        +-25% of ``diam_mean``).
        """
        estimated = diameter is None
        if estimated:
            diameter = estimate_diameter(image2, self.diameter_factor, default=float(self.meta["diam_mean"]))
            diameter = min(diameter, max(8.0, min(image2.shape[-2:]) / 4))
        masks = self._eval(image2, diameter, eval_kwargs)
        if estimated and masks.max() == 0:
            for factor in EMPTY_RETRY_FACTORS:
                retry = diameter * factor
                if retry > min(image2.shape[-2:]) / 2:
                    continue
                found = self._eval(image2, retry, eval_kwargs)
                if found.max() > 0:
                    masks, diameter = found, retry
                    break
        if estimated and refine and masks.max() > 0:
            found = label_diameter(masks)
            if found > 0 and abs(found / diameter - 1) > REFINE_TOLERANCE:
                diameter = found
                masks = self._eval(image2, diameter, eval_kwargs)
        return masks, float(diameter)

    def _eval(self, image2, diameter, eval_kwargs) -> np.ndarray:
        kwargs = {"flow_threshold": 0.4, "cellprob_threshold": 0.0, "min_size": 8, **eval_kwargs}
        masks = self.model.eval(np.asarray(image2, np.float32), channel_axis=0, channels=None,
                                normalize={"normalize": False}, diameter=float(diameter), **kwargs)[0]
        return np.asarray(masks).astype(np.int32)


#: Relative difference between the diameter used and the one found above which :meth:`Segmenter.segment`
#: segments again at the found diameter.
REFINE_TOLERANCE = 0.25
#: Multiples of the estimated diameter :meth:`Segmenter.segment` tries, in order, when the model finds no
#: object at the estimate.
EMPTY_RETRY_FACTORS = (2.0, 4.0, 0.5)


def load_segmenter(model_path: str | os.PathLike, device=None) -> Segmenter:
    """Load a model file + sidecar into a ``CellposeModel`` whose net has the sidecar's widths."""
    import torch
    from cellpose import models

    net, meta = load_net(model_path)
    device = torch.device("cpu") if device is None else torch.device(device)
    model = models.CellposeModel(gpu=device.type == "cuda", device=device, pretrained_model=False,
                                 diam_mean=float(meta["diam_mean"]), nchan=int(meta["nchan"]))
    model.net = net.to(device)
    model.nbase = list(meta["nbase"])
    model.diam_mean = float(meta["diam_mean"])
    model.diam_labels = float(meta.get("diam_labels", meta["diam_mean"]))
    factor = float(meta.get("diameter_estimator", {}).get("factor", 1.0))
    return Segmenter(model=model, meta=meta, diameter_factor=factor)


# ---------------------------------------------------------------------------------------------
# Scoring


def instance_scores(true_labels: Sequence[np.ndarray], pred_labels: Sequence[np.ndarray],
                    thresholds: Sequence[float] = (0.5, 0.75)) -> dict:
    """Instance-matching scores over images at IoU thresholds (:mod:`hemoprofile.instance_metrics`).

    AP = TP / (TP + FP + FN) with one-to-one matching at IoU >= t (the StarDist / DSB 2018 definition),
    counts pooled over images; ``ap_mean_image`` is the mean of per-image AP.
    """
    from hemoprofile.instance_metrics import average_precision

    scores = average_precision([np.asarray(t) for t in true_labels], [np.asarray(p) for p in pred_labels],
                               tuple(float(t) for t in thresholds))
    out = {}
    for t in thresholds:
        r, key = scores[float(t)], f"{t:g}"
        out[f"ap@{key}"] = r["ap"]
        out[f"precision@{key}"] = r["precision"]
        out[f"recall@{key}"] = r["recall"]
        out[f"ap_mean_image@{key}"] = r["ap_image_mean"]
    out["n_images"] = len(true_labels)
    out["n_true"] = int(scores[float(thresholds[0])]["n_true"])
    return out


def evaluate_segmenter(model_path: str | os.PathLike, images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                       thresholds: Sequence[float] = (0.5, 0.75), diameters: Sequence[float] | None = None,
                       segmenter: Segmenter | None = None) -> dict:
    """Segment 2-channel inputs with a model and score them against truth labels.

    Parameters
    ----------
    model_path : model file with sidecar (ignored when ``segmenter`` is given).
    images, labels : network inputs (see :func:`cellpose_input`) and truth label images.
    diameters : per-image diameters; by default each is estimated with :func:`estimate_diameter`.

    Returns
    -------
    dict of ``ap@0.5``, ``ap@0.75``, precisions, recalls, ``seconds_per_megapixel`` (including the
    diameter estimate), ``n_images``, ``n_true``.
    """
    seg = segmenter or load_segmenter(model_path)
    preds, seconds, pixels = [], 0.0, 0
    for k, image in enumerate(images):
        t0 = time.perf_counter()
        masks, _ = seg.segment(image, None if diameters is None else diameters[k])
        seconds += time.perf_counter() - t0
        pixels += image.shape[-1] * image.shape[-2]
        preds.append(masks)
    scores = instance_scores(labels, preds, thresholds)
    scores["seconds_per_megapixel"] = seconds / max(pixels / 1e6, 1e-9)
    return scores


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainConfig:
    """Everything that shapes a training run (recorded in the sidecar and metrics).

    The run stops at whichever comes first of ``steps`` optimisation steps and ``time_budget_min``
    minutes (measured from the start of :func:`train_segmenter`, data preparation included). Without a
    time budget the run is ``cellpose.train.train_seg`` itself (``ceil(steps * batch_size /
    images_per_epoch)`` epochs, its own learning-rate schedule); with one, a loop that reuses
    train_seg's batch, augmentation and loss functions but schedules the learning rate by progress
    (linear warm-up, constant, cosine decay over the last ``decay_fraction``) so that a run cut by
    the clock still ends annealed. Bit-identical reruns need a fixed ``steps`` and no time budget
    (a clock-bound run is reproducible up to where it stopped).
    """

    nbase: list = field(default_factory=lambda: [2, 16, 32, 64, 128])
    diam_mean: float = 15.0
    bsize: int = 128
    batch_size: int = 8
    learning_rate: float = 0.005
    weight_decay: float = 1e-5
    steps: int | None = 2000
    time_budget_min: float | None = None
    images_per_epoch: int = 64
    warmup_steps: int = 80
    decay_fraction: float = 0.2
    checkpoint_minutes: float = 10.0
    synthetic_weight: float = 0.3
    scale_range: float = 0.5
    seed: int = 0
    threads: int = 1
    init_model: str | None = None


def seconds_per_batch(cfg: TrainConfig, n_batches: int = 6) -> float:
    """Measure one optimisation step's seconds (forward, loss, backward, AdamW) at the config's sizes."""
    import torch
    from cellpose import train as cp_train

    net = build_net(cfg.nbase, cfg.diam_mean)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((cfg.batch_size, cfg.nbase[0], cfg.bsize, cfg.bsize), dtype=np.float32))
    lbl = np.zeros((cfg.batch_size, 3, cfg.bsize, cfg.bsize), np.float32)
    lbl[:, 0] = rng.random((cfg.batch_size, cfg.bsize, cfg.bsize)) > 0.5
    times = []
    net.train()
    for _ in range(n_batches):
        t0 = time.perf_counter()
        loss = cp_train._loss_fn_seg(lbl, net(x)[0], torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def _train_probs(n_dsb: int, n_syn: int, dsb_images: Sequence[np.ndarray], synthetic_weight: float) -> np.ndarray:
    """Sampling probability per training image: DSB by sqrt(area), the synthetic share fixed."""
    if n_syn == 0:
        synthetic_weight = 0.0
    if n_dsb == 0:
        synthetic_weight = 1.0
    area = np.array([im.shape[-1] * im.shape[-2] for im in dsb_images], float) ** 0.5
    dsb = (1 - synthetic_weight) * area / area.sum() if n_dsb else np.zeros(0)
    syn = np.full(n_syn, synthetic_weight / max(1, n_syn))
    return np.concatenate([dsb, syn])


def learning_rate_at(progress: float, step: int, cfg: TrainConfig) -> float:
    """Learning rate at a point of a clock- or step-bound run (progress in [0, 1])."""
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    start = 1.0 - cfg.decay_fraction
    if progress <= start or cfg.decay_fraction <= 0:
        return cfg.learning_rate * warm
    t = min(1.0, (progress - start) / cfg.decay_fraction)
    return cfg.learning_rate * warm * max(0.01, 0.5 * (1 + math.cos(math.pi * t)))


def _train_loop(net, images, flows, probs, diams, cfg: TrainConfig, t_start: float, ckpt_dir: Path) -> dict:
    """Clock-bound training loop (train_seg's batch, augmentation and loss; progress-based schedule)."""
    import torch
    from cellpose import train as cp_train
    from cellpose import transforms

    device = torch.device("cpu")
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    np.random.seed(cfg.seed)  # transforms.random_rotate_and_resize draws from numpy's global generator
    budget_s = None if cfg.time_budget_min is None else cfg.time_budget_min * 60.0
    max_steps = cfg.steps if cfg.steps is not None else 10**9
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last_ckpt, t_loop, step, losses, loss_trace = time.time(), time.time(), 0, [], []
    net.train()
    while True:
        elapsed = time.time() - t_start
        progress = max(step / max_steps, elapsed / budget_s if budget_s else 0.0)
        if progress >= 1.0:
            break
        lr = learning_rate_at(progress, step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        inds = rng.choice(len(images), size=cfg.batch_size, p=probs)
        imgs, lbls = cp_train._get_batch(inds, data=images, labels=flows)
        rsc = diams[inds] / net.diam_mean.item()
        imgi, lbl = transforms.random_rotate_and_resize(imgs, Y=lbls, rescale=rsc, scale_range=cfg.scale_range,
                                                        xy=(cfg.bsize, cfg.bsize))[:2]
        y = net(torch.from_numpy(imgi).to(device))[0]
        loss = cp_train._loss_fn_seg(lbl, y, device)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            loss_trace.append((step, float(np.mean(losses[-50:]))))
            log.info("step %d  loss %.4f  lr %.5f  %.2f s/step  progress %.2f", step, loss_trace[-1][1], lr,
                     (time.time() - t_loop) / step, progress)
        if time.time() - last_ckpt >= cfg.checkpoint_minutes * 60:
            torch.save(net.state_dict(), ckpt_dir / f"step_{step:06d}.pt")
            last_ckpt = time.time()
    torch.save(net.state_dict(), ckpt_dir / f"step_{step:06d}.pt")
    return {"steps": step, "train_seconds": time.time() - t_loop, "loss_trace": loss_trace,
            "final_train_loss": float(np.mean(losses[-50:])) if losses else float("nan")}


def _train_with_train_seg(net, images, flows, probs, cfg: TrainConfig, work_dir: Path, ckpt_dir: Path) -> dict:
    """Step-bound training by ``cellpose.train.train_seg`` itself (its schedule)."""
    import shutil

    from cellpose import train as cp_train

    batches_per_epoch = math.ceil(cfg.images_per_epoch / cfg.batch_size)
    n_epochs = max(1, math.ceil((cfg.steps or 100) / batches_per_epoch))
    t0 = time.time()
    final, train_losses, _ = cp_train.train_seg(
        net, train_data=list(images), train_labels=list(flows), train_probs=probs, batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, n_epochs=n_epochs, channel_axis=0,
        normalize=False, save_path=str(work_dir), save_every=max(1, n_epochs), nimg_per_epoch=cfg.images_per_epoch,
        rescale=True, scale_range=cfg.scale_range, bsize=cfg.bsize, min_train_masks=1, model_name="train_seg_final")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    steps = n_epochs * batches_per_epoch
    shutil.move(str(final), ckpt_dir / f"step_{steps:06d}.pt")
    return {"steps": steps, "n_epochs": n_epochs, "train_seconds": time.time() - t0,
            "final_train_loss": float(np.mean(train_losses[-10:]))}


def _init_from(net, cfg: TrainConfig) -> None:
    """Load ``cfg.init_model``'s weights into ``net`` (fine-tuning); its widths and diam_mean must match."""
    path = Path(cfg.init_model)
    if not path.exists() or not sidecar_path(path).exists():
        raise FileNotFoundError(f"train_segmenter.init_model: {path} or its sidecar {sidecar_path(path).name} "
                                f"does not exist")
    start, meta = load_net(path)
    if list(meta["nbase"]) != list(cfg.nbase) or float(meta["diam_mean"]) != float(cfg.diam_mean):
        raise ValueError(f"train_segmenter.init_model {path} has nbase {meta['nbase']} and diam_mean "
                         f"{meta['diam_mean']}; set train_segmenter.nbase and diam_mean to those to fine-tune it")
    net.load_state_dict(start.state_dict())
    log.info("starting from the weights of %s (fine-tuning)", path)


def train_segmenter(train_images: Sequence[np.ndarray], train_labels: Sequence[np.ndarray], out_path: str | os.PathLike,
                    cfg: TrainConfig, n_dsb: int | None = None, val_sets: Mapping[str, tuple] | None = None,
                    work_dir: str | os.PathLike | None = None, metrics_path: str | os.PathLike | None = None,
                    extra_meta: Mapping | None = None) -> dict:
    """Train a Cellpose ``CPnet`` from random weights (or from ``cfg.init_model``'s: fine-tuning); save it
    as fp16 + sidecar, and its metrics.

    Parameters
    ----------
    train_images, train_labels : (2, row, column) float32 inputs and int label images. The first
        ``n_dsb`` are DSB images (sampled by sqrt(area)); the rest synthetic frames, drawn with total
        probability ``cfg.synthetic_weight``. Each image is rescaled in training so that its median
        object diameter becomes ``cfg.diam_mean`` (Cellpose's ``rescale=True``), then randomly
        rotated, flipped, scaled by ``1 +- scale_range/2`` and cropped to ``bsize``.
    out_path : model file to write (``.pt``; sidecar ``.pt.json`` beside it).
    cfg : :class:`TrainConfig` (steps and/or a time budget; see there for which engine runs).
    val_sets : name -> (images, labels) on which the final checkpoint is scored
        (:func:`finalise_segmenter` can compare several checkpoints and keep the best).
    work_dir : where fp32 checkpoints go (default: ``<out_path stem>_work`` beside ``out_path``).
    metrics_path : JSON file receiving the training record and validation scores.

    Returns
    -------
    dict: the training record (config, steps, seconds per step, validation scores, sidecar).
    """
    import torch
    from cellpose import dynamics

    t_start = time.time()
    torch.set_num_threads(int(cfg.threads))
    out_path = Path(out_path)
    work_dir = Path(work_dir) if work_dir is not None else out_path.parent / (out_path.stem + "_work")
    work_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = work_dir / "checkpoints"
    if ckpt_dir.exists():
        for old in ckpt_dir.glob("step_*.pt"):
            old.unlink()
    n_dsb = len(train_images) if n_dsb is None else int(n_dsb)
    images = [np.ascontiguousarray(im, dtype=np.float32) for im in train_images]

    factor = fit_diameter_factor(images, train_labels)
    log.info("diameter estimator factor %.3f (true / classical) fitted on %d training images", factor, len(images))
    t0 = time.time()
    flows = dynamics.labels_to_flows([np.asarray(l) for l in train_labels], device=torch.device("cpu"))
    log.info("flows of %d training images in %.0f s", len(flows), time.time() - t0)
    diams = np.maximum(np.array([label_diameter(l) for l in train_labels]), 5.0)
    probs = _train_probs(n_dsb, len(images) - n_dsb, images[:n_dsb], cfg.synthetic_weight)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    net = build_net(cfg.nbase, cfg.diam_mean)
    if cfg.init_model:
        _init_from(net, cfg)
    net.diam_labels.data = torch.Tensor([float(diams.mean())])
    if cfg.time_budget_min is None:
        record = _train_with_train_seg(net, images, flows, probs, cfg, work_dir, ckpt_dir)
        record["engine"] = "cellpose.train.train_seg"
    else:
        record = _train_loop(net, images, flows, probs, diams, cfg, t_start, ckpt_dir)
        record["engine"] = "clock-bound loop (train_seg batch/augmentation/loss)"
    record["seconds_per_step"] = record["train_seconds"] / max(1, record["steps"])
    log.info("training done: %d steps in %.0f s (%.3f s per step)", record["steps"], record["train_seconds"],
             record["seconds_per_step"])
    record.update({"n_train_images": len(images), "n_dsb": n_dsb, "n_synthetic": len(images) - n_dsb,
                   "diameter_factor": factor, "train_config": dict(cfg.__dict__)})
    meta = {
        "trained_by": "hemoprofile.segmentation_training.train_segmenter",
        "input_channels": list(INPUT_CHANNELS),
        "input_normalisation": {"percentiles": list(PERCENTILES), "cytoplasm_markers": list(CYTOPLASM_MARKERS),
                                "marker_percentiles": [1.0, 99.9], "combine": "sum", "nucleus_marker": NUCLEUS_MARKER,
                                "single_channel": "[image, zeros]"},
        "diameter_estimator": {"method": "otsu_inscribed_radius", "factor": factor},
        "train_config": dict(cfg.__dict__),
        **dict(extra_meta or {}),
    }
    return finalise_segmenter(ckpt_dir, out_path, meta, record, val_sets, metrics_path)


def finalise_segmenter(ckpt_dir: str | os.PathLike, out_path: str | os.PathLike, meta: Mapping, record: dict,
                       val_sets: Mapping[str, tuple] | None = None, metrics_path: str | os.PathLike | None = None,
                       n_candidates: int = 1) -> dict:
    """Score the last checkpoints on the validation sets, save the best as fp16 + sidecar, write metrics."""
    import torch

    ckpt_dir, out_path = Path(ckpt_dir), Path(out_path)
    candidates = sorted(ckpt_dir.glob("step_*.pt"))[-n_candidates:] if val_sets else sorted(ckpt_dir.glob("step_*.pt"))[-1:]
    if not candidates:
        raise FileNotFoundError(f"no checkpoints in {ckpt_dir}")
    net = build_net(meta.get("nbase") or record["train_config"]["nbase"],
                    meta.get("diam_mean") or record["train_config"]["diam_mean"])
    best, best_score, scores_by = None, -1.0, {}
    for cand in candidates:
        net.load_state_dict(torch.load(cand, map_location="cpu", weights_only=True))
        tmp_path = ckpt_dir / (cand.stem + ".fp16.pt")
        save_model_fp16(net, tmp_path, meta)
        scores = {}
        if val_sets:
            seg = load_segmenter(tmp_path)
            for vname, (vimgs, vlabs) in val_sets.items():
                scores[vname] = evaluate_segmenter(tmp_path, vimgs, vlabs, segmenter=seg)
                log.info("%s on %s validation: AP@0.5 %.3f  AP@0.75 %.3f", cand.name, vname,
                         scores[vname]["ap@0.5"], scores[vname]["ap@0.75"])
        scores_by[cand.name] = scores
        score = float(np.mean([s["ap@0.5"] for s in scores.values()])) if scores else 0.0
        if score >= best_score:
            best, best_score = cand, score
        for p in (tmp_path, sidecar_path(tmp_path)):
            p.unlink(missing_ok=True)
    record = dict(record)
    record["checkpoint_scores"] = scores_by
    record["chosen_checkpoint"] = best.name
    record["validation"] = scores_by[best.name]
    net.load_state_dict(torch.load(best, map_location="cpu", weights_only=True))
    summary = {k: v for k, v in record.items() if k not in ("checkpoint_scores", "loss_trace", "train_config")}
    record["sidecar"] = save_model_fp16(net, out_path, {**dict(meta), "training": summary})
    if metrics_path is not None:
        metrics_path = Path(metrics_path)
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = metrics_path.with_name(metrics_path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1, default=str))
        os.replace(tmp, metrics_path)
    return record


def prepare_training_data(dsb_dir: str | os.PathLike, split_path: str | os.PathLike, split_seed: int,
                          synth_cfg: Mapping | None, synth_dir: str | os.PathLike | None, synth_seed: int,
                          synth_val_slides: int = 2, max_dsb: int | None = None) -> dict:
    """Split DSB by image id (seeded; written to ``split_path``), load it, simulate the synthetic cohort.

    Returns a dict with ``train`` (images, labels), ``n_dsb`` and ``val`` {"dsb": ..., "synthetic": ...}.
    The last ``synth_val_slides`` slides of the training-seed cohort are validation, never trained on.
    """
    parts = split_ids(dsb_image_ids(dsb_dir), split_seed)
    split_path = Path(split_path)
    if split_path.exists() and read_split(split_path) != parts:
        log.warning("split file %s differs from the split of seed %d; rewriting it", split_path, split_seed)
    write_split(parts, split_path, split_seed, str(dsb_dir))
    train_ids = parts["train"][:max_dsb] if max_dsb else parts["train"]
    val_ids = parts["validation"][:max(4, max_dsb // 4)] if max_dsb else parts["validation"]
    tr_img, tr_lab = load_dsb(train_ids, dsb_dir)
    va_img, va_lab = load_dsb(val_ids, dsb_dir)
    data = {"train": (tr_img, tr_lab), "n_dsb": len(tr_img), "val": {"dsb": (va_img, va_lab)}}
    if synth_cfg is not None and synth_dir is not None:
        from hemoprofile import synth

        n_slides = len(synth.plan_cohort({**synth_cfg, "seed": synth_seed}, synth_dir))
        n_val = min(synth_val_slides, max(0, n_slides - 1))
        s_img, s_lab, _ = synthetic_frames(synth_cfg, synth_dir, synth_seed, range(n_slides - n_val))
        v_img, v_lab, _ = synthetic_frames(synth_cfg, synth_dir, synth_seed, range(n_slides - n_val, n_slides))
        data["train"] = (tr_img + s_img, tr_lab + s_lab)
        if v_img:
            data["val"]["synthetic"] = (v_img, v_lab)
    return data


def train_from_config(params: Mapping, model_path: str | os.PathLike, metrics_path: str | os.PathLike,
                      split_path: str | os.PathLike, work_dir: str | os.PathLike,
                      synth_cfg: Mapping | None = None) -> dict:
    """Run a whole training from the ``train_segmenter`` config section (what the workflow rule calls).

    ``params`` keys: dsb_dir, split_seed, synthetic_seed, synthetic_patients_per_condition (null = as
    the synthetic section), synthetic_validation_slides, max_dsb_images (null = all), and the
    :class:`TrainConfig` fields (nbase, diam_mean, bsize, batch_size, learning_rate, weight_decay, steps,
    time_budget_min, images_per_epoch, warmup_steps, decay_fraction, checkpoint_minutes,
    synthetic_weight, scale_range, seed, threads, init_model). Unknown keys are ignored.
    ``synth_cfg`` is the config's ``synthetic`` section (its seed is replaced); None = DSB only.
    """
    fields = TrainConfig.__dataclass_fields__
    nullable = ("steps", "time_budget_min", "init_model")
    cfg = TrainConfig(**{k: params[k] for k in fields if k in params and (params[k] is not None or k in nullable)})
    work_dir = Path(work_dir)
    synth_part = None
    if synth_cfg is not None and params.get("synthetic_weight", cfg.synthetic_weight) > 0:
        synth_part = dict(synth_cfg)
        if int(params.get("synthetic_seed", 1007)) == int(synth_part.get("seed", -1)):
            raise ValueError("train_segmenter.synthetic_seed equals synthetic.seed: the model would be trained on the "
                             "slides it is later scored on; choose another training seed")
        if params.get("synthetic_patients_per_condition") is not None:
            synth_part["conditions"] = {name: {**spec, "patients": int(params["synthetic_patients_per_condition"])}
                                        for name, spec in synth_part["conditions"].items()}
    data = prepare_training_data(
        params.get("dsb_dir", DSB_DIR), split_path, int(params.get("split_seed", 0)),
        synth_part, work_dir / "synthetic" if synth_part else None, int(params.get("synthetic_seed", 1007)),
        int(params.get("synthetic_validation_slides", 2)), params.get("max_dsb_images"))
    images, labels = data["train"]
    log.info("training on %d images (%d DSB, %d synthetic frames); validation %s", len(images), data["n_dsb"],
             len(images) - data["n_dsb"], {k: len(v[0]) for k, v in data["val"].items()})
    extra = {"data": {"dsb_dir": str(params.get("dsb_dir", DSB_DIR)), "split_file": str(split_path),
                      "split_seed": int(params.get("split_seed", 0)), "n_dsb_train": data["n_dsb"],
                      "n_synthetic_train_frames": len(images) - data["n_dsb"],
                      "synthetic_seed": int(params.get("synthetic_seed", 1007)) if synth_part else None}}
    return train_segmenter(images, labels, model_path, cfg, n_dsb=data["n_dsb"], val_sets=data["val"],
                           work_dir=work_dir, metrics_path=metrics_path, extra_meta=extra)
