"""A frame of a simulated slide drawn for people: a stretched RGB composite and the ground-truth
outlines coloured by cell type (the figure in docs/)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from hemoprofile.io import atomic_output
from hemoprofile.simulate.slide import read_synthetic_frame
from hemoprofile.vocabulary import TYPE_COLOURS, channel_rgb


def stretched_composite(image: np.ndarray, channel_names: Sequence[str]) -> np.ndarray:
    """RGB float image (y, x, 3) in [0, 1] of an IF frame: DAPI blue, CK red, VIM green, CD45 grey.

    Each channel is stretched from just above its background (median + 0.5 robust sigma) to its 99.8th
    percentile, with a floor on the range so that a channel with no positive cell shows dark rather than
    stretched noise.
    """
    rgb = np.zeros(image.shape[1:] + (3,))
    for c, name in enumerate(channel_names):
        channel = image[c].astype(float)
        median = np.median(channel)
        sigma = 1.4826 * np.median(np.abs(channel - median))
        lo = median + 0.5 * sigma
        hi = max(np.percentile(channel, 99.8), lo + 1500.0)
        stretched = np.clip((channel - lo) / (hi - lo), 0, 1) ** 0.8
        rgb += stretched[..., None] * np.array(channel_rgb(name))
    return np.clip(rgb, 0, 1)


def render_frame_overlay(
    sample: Mapping,
    frame: int,
    out_png: str | os.PathLike,
    frame_pattern: str = "Tile{index:06d}.tif",
    frame_order: str = "row-major",
    title: str | None = None,
) -> Path:
    """Draw one frame of a simulated slide: the RGB composite, and beside it the same composite with the
    ground-truth outlines coloured by cell type and a legend.

    Parameters
    ----------
    sample : the slide's row of :func:`plan_cohort`.
    frame : 0-based frame number.
    out_png : PNG file to write (atomically).
    frame_pattern, frame_order : as given to :func:`simulate_slide`.
    title : figure title; defaults to the slide and frame.

    Returns
    -------
    The path of the PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from skimage.segmentation import find_boundaries

    image, labels, cells = read_synthetic_frame(sample, frame, frame_pattern, frame_order)
    channels = str(sample["channels"]).split(",")
    rgb = stretched_composite(image, channels)
    outlined = rgb.copy()
    type_of = dict(zip(cells["cell_id"], cells["cell_type"]))
    boundaries = find_boundaries(labels, mode="inner")
    for cell_type, colour in TYPE_COLOURS.items():
        ids = [i for i, t in type_of.items() if t == cell_type]
        if ids:
            outlined[boundaries & np.isin(labels, ids)] = matplotlib.colors.to_rgb(colour)

    height, width = labels.shape
    # dark figure, as fluorescence is usually shown, so that light outline colours stay visible
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 11.0 * height / (2 * width) + 1.1), dpi=100,
                             facecolor="black")
    axes[0].imshow(rgb, interpolation="nearest")
    axes[0].set_title("DAPI (blue), CK (red), VIM (green), CD45 (grey)", fontsize=9, color="white")
    axes[1].imshow(outlined, interpolation="nearest")
    axes[1].set_title("ground truth outlines (debris is unlabelled)", fontsize=9, color="white")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for _, cell in cells[(cells["cluster_id"] >= 0) & (cells["cell_type"] == "CTC")].iterrows():
        axes[1].annotate("cluster", (cell["x"], cell["y"] - cell["radius_px"] - 3), color="white",
                         fontsize=7, ha="center", va="bottom")
    present = cells["cell_type"].value_counts()
    handles = [
        Patch(facecolor="none", edgecolor=colour, linewidth=2, label=f"{t} ({int(present.get(t, 0))})")
        for t, colour in TYPE_COLOURS.items()
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False,
               labelcolor="white")
    slide = Path(sample["path"]).parent.name
    pixel = sample.get("pixel_size_um") if hasattr(sample, "get") else None
    scale = f", {width * float(pixel):.0f} x {height * float(pixel):.0f} um" if pixel else ""
    fig.suptitle(title or f"synthetic slide {slide}, frame {frame}{scale}", fontsize=11, color="white")
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    out_png = Path(out_png)
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, format="png", facecolor=fig.get_facecolor())
    plt.close(fig)
    return out_png
