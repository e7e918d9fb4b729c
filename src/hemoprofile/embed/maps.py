"""PNG figures of the latent space: 2-D maps coloured by latent cluster, slide, condition, reference label or
predicted class, and reconstructions beside their originals.

The map coordinates are ``map_x``/``map_y`` of embedding.parquet: the first two principal components of
the training sample's latent means (:mod:`hemoprofile.embed.clustering`), the same axes for every slide,
so maps of different slides and runs of :func:`cohort_figures` line up. (t-SNE/UMAP would separate groups more
visibly but cannot place new cells on an existing map; neither is a dependency.) Points are drawn in a
seeded random order so that no slide or class hides the others by being drawn last.

Entry point for the workflow: :func:`cohort_figures`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never open a window (cluster nodes have no display)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from hemoprofile.embed.metrics import evaluate_embeddings, format_metrics, write_json  # noqa: E402
from hemoprofile.embed.model_files import load_embedder  # noqa: E402
from hemoprofile.embed.orientation import maybe_orient  # noqa: E402
from hemoprofile.embed.sample import cohort_labels, read_angles  # noqa: E402
from hemoprofile.embed.settings import resolve_embed  # noqa: E402
from hemoprofile.embed.slide import read_embeddings  # noqa: E402
from hemoprofile.embed.training import reconstruct  # noqa: E402
from hemoprofile.io import atomic_output  # noqa: E402
from hemoprofile.io.patches import open_patch_array  # noqa: E402
from hemoprofile.vocabulary import channel_rgb, to_unit  # noqa: E402

#: Figure outputs :func:`cohort_figures` can write, by key.
FIGURE_KEYS = ("cluster", "slide", "condition", "batch", "label", "prediction", "reconstructions")


def composite(patches: np.ndarray, channels: Sequence[str]) -> np.ndarray:
    """RGB images (N, P, P, 3) in [0, 1] of [0, 1] patches (N, C, P, P).

    RGB collections (channels R, G, B) are shown as they are; fluorescence channels are mixed with
    :data:`hemoprofile.vocabulary.CHANNEL_RGB` after stretching each channel to its 99.5th percentile over the shown patches
    (dim markers such as CK would otherwise be invisible beside DAPI); other channels are grey.

    Example
    -------
    >>> composite(np.ones((2, 3, 4, 4)), ["R", "G", "B"]).shape
    (2, 4, 4, 3)
    """
    x = np.asarray(patches, np.float32)
    names = [str(c) for c in channels]
    if names == ["R", "G", "B"]:
        return np.clip(np.moveaxis(x, 1, -1), 0, 1)
    out = np.zeros((x.shape[0], x.shape[2], x.shape[3], 3), np.float32)
    for c, name in enumerate(names):
        channel = x[:, c]
        positive = channel[channel > 0]
        hi = max(float(np.percentile(positive, 99.5)) if positive.size else 1.0, 1e-3)
        weight = np.asarray(channel_rgb(name), np.float32)
        out += np.clip(channel / hi, 0, 1)[..., None] * weight
    return np.clip(out, 0, 1)


def _save(fig, path) -> None:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_map(xy: np.ndarray, values: Sequence | None, path: str | os.PathLike, title: str = "",
             seed: int = 0, max_legend: int = 24, note: str = "") -> None:
    """Scatter the 2-D map coloured by a categorical ``values`` column and write a PNG (atomically).

    ``None``/NaN values are drawn in light grey as "unknown". With ``values`` ``None`` (nothing to
    colour by) the figure shows ``note`` instead of points, so a declared output always exists.
    """
    fig, ax = plt.subplots(figsize=(7.5, 6))
    ax.set_xlabel("PC 1 of the latent space")
    ax.set_ylabel("PC 2 of the latent space")
    ax.set_title(title)
    xy = np.asarray(xy, np.float32)
    if values is None or not len(xy):
        ax.text(0.5, 0.5, note or "nothing to show", ha="center", va="center", transform=ax.transAxes, wrap=True)
        _save(fig, path)
        return
    vals = np.array(["unknown" if v is None or (isinstance(v, float) and v != v) else str(v) for v in values], object)
    cats = sorted(set(vals) - {"unknown"}, key=lambda s: (len(s), s) if s.lstrip("-").isdigit() else (1e9, s))
    cmap = plt.get_cmap("tab20" if len(cats) > 10 else "tab10")
    colour = {c: cmap(i % cmap.N) for i, c in enumerate(cats)}
    colour["unknown"] = (0.8, 0.8, 0.8, 1.0)
    order = np.random.default_rng(seed).permutation(len(xy))
    size = float(np.clip(3000.0 / max(len(xy), 1), 1.0, 20.0))
    ax.scatter(xy[order, 0], xy[order, 1], c=[colour[v] for v in vals[order]], s=size, linewidths=0, alpha=0.8,
               rasterized=True)
    shown = cats[:max_legend] + (["unknown"] if "unknown" in set(vals) else [])
    counts = pd.Series(vals).value_counts()
    handles = [plt.Line2D([], [], marker="o", ls="", color=colour[c], label=f"{c} ({counts.get(c, 0)})") for c in shown]
    if len(cats) > max_legend:
        handles.append(plt.Line2D([], [], ls="", label=f"... {len(cats) - max_legend} more"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if note:
        ax.text(0.0, -0.12, note, transform=ax.transAxes, fontsize=8, va="top")
    _save(fig, path)


def plot_prediction_maps(xy: np.ndarray, predictions: pd.DataFrame | None, path: str | os.PathLike,
                         seed: int = 0, note: str = "") -> None:
    """One map panel per ``pred_<task>`` column of ``predictions`` (rows aligned with ``xy``)."""
    tasks = [c for c in (predictions.columns if predictions is not None else []) if c.startswith("pred_")]
    if not tasks:
        plot_map(xy, None, path, "predicted class", note=note or "no predictions.parquet to colour by")
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 5.5), squeeze=False)
    order = np.random.default_rng(seed).permutation(len(xy))
    size = float(np.clip(3000.0 / max(len(xy), 1), 1.0, 20.0))
    for ax, task in zip(axes[0], tasks):
        vals = predictions[task].astype(object).where(predictions[task].notna(), "unknown").astype(str).to_numpy()
        cats = sorted(set(vals))
        cmap = plt.get_cmap("tab20" if len(cats) > 10 else "tab10")
        colour = {c: cmap(i % cmap.N) for i, c in enumerate(cats)}
        ax.scatter(xy[order, 0], xy[order, 1], c=[colour[v] for v in vals[order]], s=size, linewidths=0, alpha=0.8,
                   rasterized=True)
        ax.set_title(f"predicted class: {task[len('pred_'):]}")
        ax.set_xlabel("PC 1 of the latent space")
        ax.set_ylabel("PC 2 of the latent space")
        ax.legend(handles=[plt.Line2D([], [], marker="o", ls="", color=colour[c], label=c) for c in cats],
                  fontsize=8, frameon=False, loc="best")
    _save(fig, path)


def plot_reconstructions(originals: np.ndarray, reconstructions: np.ndarray, channels: Sequence[str],
                         path: str | os.PathLike, titles: Sequence[str] | None = None) -> None:
    """Originals (top row) above their reconstructions (bottom row), as colour composites stretched
    together so the two rows are comparable, then one row per channel pair in grey."""
    n = len(originals)
    both = composite(np.concatenate([originals, reconstructions]), channels)
    n_ch = originals.shape[1]
    rows = 2 + 2 * n_ch
    fig, axes = plt.subplots(rows, max(n, 1), figsize=(1.3 * max(n, 1), 1.35 * rows), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(both[i])
        axes[1, i].imshow(both[n + i])
        if titles is not None:
            axes[0, i].set_title(str(titles[i]), fontsize=6)
        for c in range(n_ch):
            axes[2 + 2 * c, i].imshow(originals[i, c], cmap="gray", vmin=0, vmax=max(float(originals[:, c].max()), 1e-3))
            axes[3 + 2 * c, i].imshow(reconstructions[i, c], cmap="gray", vmin=0,
                                      vmax=max(float(originals[:, c].max()), 1e-3))
    labels = ["original", "reconstruction"]
    for c, name in enumerate(channels):
        labels += [f"{name}", f"{name} recon."]
    for r in range(rows):
        axes[r, 0].set_ylabel(labels[r], fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    _save(fig, path)


def map_predictions(frame: pd.DataFrame, items: Sequence,
                    prediction_paths: Sequence[str] | None) -> pd.DataFrame | None:
    """The ``pred_*`` columns of the cells on the map (``frame``: slide, cell_id), one row per frame row
    (NaN where a slide has no predictions); None without prediction files.

    Each slide's predictions.parquet is read alone, only ``cell_id`` and the ``pred_*`` columns, and cut
    to the cells on the map, so memory follows the map's ``max_points``, not the cohort's cells.
    """
    if not prediction_paths:
        return None
    slides = frame["slide"].astype(str).to_numpy()
    parts = []
    for item, path in zip(items, prediction_paths):
        if path and os.path.exists(path):
            names = pq.read_schema(path).names
            p = pd.read_parquet(path, columns=["cell_id"] + [c for c in names if c.startswith("pred_")])
            p = p[p["cell_id"].isin(frame.loc[slides == str(item.slide), "cell_id"])]
            p.insert(0, "slide", item.slide)
            parts.append(p)
    if not parts:
        return None
    return frame[["slide", "cell_id"]].merge(pd.concat(parts), on=["slide", "cell_id"], how="left")


def cohort_figures(model_path: str | os.PathLike, embedding_paths: Sequence[str], items: Sequence,
                   outputs: Mapping[str, str], *, truth_cells=None, prediction_paths: Sequence[str] | None = None,
                   embed_cfg: Mapping | None = None, seed: int = 0, progress=None) -> dict:
    """The cohort figures and metrics of the embedding (the workflow's ``embedding_figures`` rule).

    Parameters
    ----------
    model_path : the embedder model (for reconstructions).
    embedding_paths : every slide's embedding.parquet, in the order of ``items``.
    items : :class:`hemoprofile.embed.sample.EmbedSlide` per slide (cells, patches, condition, batch, truth).
    outputs : key (:data:`FIGURE_KEYS`, or ``metrics`` for a JSON of :func:`hemoprofile.embed.metrics.evaluate_embeddings`)
        -> path; only the given keys are written.
    truth_cells : synthetic truth_cells.parquet (reference labels), optional.
    prediction_paths : predictions.parquet per slide (same order), optional.
    embed_cfg : the ``embed`` section (``figures`` and ``metrics`` settings).

    Returns
    -------
    The cohort metrics dict.
    """
    cfg = resolve_embed(embed_cfg)
    say = progress or (lambda m: None)
    unknown = set(outputs) - set(FIGURE_KEYS) - {"metrics"}
    if unknown:
        raise ValueError(f"unknown figure output(s) {sorted(unknown)}; allowed: {FIGURE_KEYS + ('metrics',)}")
    frame = read_embeddings(embedding_paths, int(cfg["figures"]["max_points"]), seed)
    say(f"{len(frame)} cells of {len(embedding_paths)} slides on the maps")
    xy = frame[["map_x", "map_y"]].to_numpy()
    by_slide = {i.slide: i for i in items}
    slides = frame["slide"].astype(str).to_numpy()
    emb = load_embedder(model_path)
    labels = cohort_labels(frame, items, truth_cells)
    metrics = evaluate_embeddings(frame, items, emb.condition_on, truth_cells,
                                  int(cfg["metrics"]["sample_size"]), int(cfg["metrics"]["knn"]), seed)
    metrics["model_id"] = emb.model_id
    say("cohort: " + format_metrics(metrics).replace("\n", "; "))
    subtitle = (f"cVAE on {emb.condition_on}" if emb.condition_on != "none" else "VAE") + f", {len(frame)} cells"
    if "cluster" in outputs:
        plot_map(xy, frame["cluster"].to_numpy(), outputs["cluster"], f"clusters ({emb.clustering['method']}, "
                 f"k={emb.clustering['k']}); {subtitle}", seed)
    if "slide" in outputs:
        plot_map(xy, slides, outputs["slide"], f"slide; {subtitle}", seed)
    if "condition" in outputs:
        plot_map(xy, [by_slide[s].condition if s in by_slide else None for s in slides], outputs["condition"],
                 f"condition; {subtitle}", seed)
    if "batch" in outputs:
        plot_map(xy, [(by_slide[s].batch or s) if s in by_slide else None for s in slides], outputs["batch"],
                 f"batch; {subtitle}", seed)
    if "label" in outputs:
        plot_map(xy, labels, outputs["label"], f"reference label; {subtitle}", seed,
                 note="" if labels is not None else "no reference labels (truth or a collection's label column)")
    if "prediction" in outputs:
        preds = map_predictions(frame, items, prediction_paths)
        plot_prediction_maps(xy, preds, outputs["prediction"], seed)
    if "reconstructions" in outputs:
        n = int(cfg["figures"]["reconstructions"])
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(frame), min(n, len(frame)), replace=False)) if len(frame) else np.zeros(0, int)
        originals, cats, titles = [], [], []
        for j in pick:
            item = by_slide[str(slides[j])]
            array, _, _ = open_patch_array(item.patches)
            row = int(frame["row"].iloc[j])
            angle = read_angles(item.cells, [row]) if emb.orientation != "none" else None
            # the model's input: rotated like training and embedding did (embed.orientation)
            originals.append(maybe_orient(np.asarray(array[row])[None], emb.orientation, emb.channels, angle)[0])
            cats.append(item.category(emb.condition_on))
            titles.append(f"{slides[j]}\ncell {int(frame['cell_id'].iloc[j])}")
        if originals:
            orig = to_unit(np.stack(originals))
            rec = reconstruct(emb.model, np.stack(originals), emb.conditions_for(cats))
            plot_reconstructions(orig, rec, emb.channels, outputs["reconstructions"], titles)
        else:
            plot_map(np.zeros((0, 2)), None, outputs["reconstructions"], "reconstructions", note="no cells")
    if "metrics" in outputs:
        write_json(outputs["metrics"], metrics)
    return metrics
