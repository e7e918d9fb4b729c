"""``hemoprofile segment INPUT_DIR OUTPUT_DIR``: segment every 2-D image in a folder (PNG or TIFF,
grayscale or multi-channel) with the same package functions the workflow uses, and write one label
image per input: ``OUTPUT_DIR/<stem>.tif``, uint16 when the objects fit, else uint32 (TIFF for every
input, PNG included, so a label image never silently wraps at 65,535 objects).

The parser imports nothing heavy; the segmentation stack (and torch, for Cellpose) loads when the
command runs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from hemoprofile.io import atomic_output
from hemoprofile.io.images import IMAGE_SUFFIXES, read_image

#: Images with more pixels than this go through the tiled path (bounded memory, same result).
TILED_ABOVE_PIXELS = 4096 * 4096
CLI_TILE_SIZE = 1024


def unit_range(image: np.ndarray) -> np.ndarray:
    """Scale each image to [0, 1] by its own minimum and maximum (float32); a flat image becomes zeros."""
    image = image.astype(np.float32)
    lo, hi = float(image.min()), float(image.max())
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def _channels_for(image: np.ndarray, channels: Sequence[str] | None, path: Path) -> tuple[np.ndarray, list[str], dict]:
    """Choose the nucleus and cytoplasm channels of one image; return (image, names, channels config)."""
    names = [str(i) for i in range(image.shape[0])]
    if not channels:
        # No choice given: the nuclear stain is the mean of the colour channels (a grayscale image saved
        # as RGB, as many DSB 2018 images are, comes out unchanged).
        return image.mean(axis=0, keepdims=True), ["nucleus"], {"nucleus": "nucleus", "cytoplasm": []}
    for c in channels:
        if c not in names:
            raise ValueError(f"{path}: channel {c!r} not among its channels {names} (0-based indices)")
    return image, names, {"nucleus": channels[0], "cytoplasm": list(channels[1:])}


def segment_folder(
    input_dir: Path,
    output_dir: Path,
    segment_cfg: dict,
    channels: Sequence[str] | None = None,
    auto_diameter: bool = False,
    progress: Callable[[str], None] = print,
) -> list[Path]:
    """Segment every PNG/TIFF image in ``input_dir``; write ``output_dir/<stem>.tif`` label images.

    Parameters
    ----------
    input_dir, output_dir : folders (the output is created).
    segment_cfg : a ``segment`` config section (see :func:`hemoprofile.segment.settings.segment_settings`).
    channels : 0-based channel indices as strings, nucleus first then cytoplasm markers; None: the mean
        of all colour channels as a nuclear stain, no cytoplasm.
    auto_diameter : estimate the object diameter of each image (:func:`hemoprofile.segment.diameter.estimate_diameter`).
    progress : called with one line per image.

    Returns
    -------
    The label files written, in input order.
    """
    import tifffile

    from hemoprofile.segment.diameter import estimate_diameter
    from hemoprofile.segment.segmenter import build_segmenter, segment_image
    from hemoprofile.segment.settings import segment_settings
    from hemoprofile.segment.tiled import segment_tiled

    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder {input_dir} not found")
    paths = sorted(p for p in input_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise FileNotFoundError(f"{input_dir}: no PNG or TIFF images")
    stems = [p.stem for p in paths]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise ValueError(f"{input_dir}: several images share the stem(s) {clashes}; outputs would collide")
    output_dir.mkdir(parents=True, exist_ok=True)
    cfg = segment_settings(segment_cfg)
    model = None
    if cfg["backend"] == "cellpose":  # load once for the whole folder
        model = build_segmenter(cfg).model
    written = []
    started = time.perf_counter()
    total_pixels = 0
    for number, path in enumerate(paths, start=1):
        tic = time.perf_counter()
        image, names, channel_cfg = _channels_for(unit_range(read_image(path)), channels, path)
        image_cfg = segment_settings(cfg, channels=channel_cfg)
        if auto_diameter:
            image_cfg["diameter"] = estimate_diameter(image, names, image_cfg, source=str(path))
        segmenter = build_segmenter(image_cfg, model=model)
        if image.shape[1] * image.shape[2] > TILED_ABOVE_PIXELS:
            labels = np.zeros(image.shape[1:], np.uint32)
            segment_tiled(image, labels, names, {**image_cfg, "sample_tiles": 10**9}, CLI_TILE_SIZE,
                          segmenter=segmenter, progress=None, source_name=str(path))
        else:
            labels = segment_image(image, names, image_cfg, segmenter=segmenter, source=str(path))
        n = int(labels.max())
        dtype = np.uint16 if n <= np.iinfo(np.uint16).max else np.uint32
        out = output_dir / f"{path.stem}.tif"
        with atomic_output(out) as tmp:
            tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib")
        written.append(out)
        total_pixels += labels.size
        progress(f"[{number}/{len(paths)}] {path.name}: {n} objects (diameter {image_cfg['diameter']:.1f} px) "
                 f"in {time.perf_counter() - tic:.2f} s -> {out}")
    elapsed = time.perf_counter() - started
    progress(f"segmented {len(paths)} images, {total_pixels / 1e6:.2f} MP in {elapsed:.1f} s "
             f"({elapsed / max(total_pixels / 1e6, 1e-9):.2f} s/MP)")
    return written


def _diameter(text: str) -> float:
    if text.lower() == "auto":
        return 0.0
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("diameter must be positive, or 0 / auto to estimate it per image")
    return value


def add_segment_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment every image in a folder into label images",
        description="Segment every 2-D PNG/TIFF image in INPUT_DIR; write OUTPUT_DIR/<stem>.tif label images "
                    "(uint16, or uint32 above 65535 objects; 0 = background).",
    )
    parser.add_argument("input_dir", type=Path, metavar="INPUT_DIR")
    parser.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR")
    parser.add_argument("--backend", choices=("classical", "cellpose"), default="classical",
                        help="segmentation backend (default: classical)")
    parser.add_argument("--model", help="cellpose: model file (with its .json sidecar; a relative path is "
                                        "relative to the current directory) or built-in name (cyto3, nuclei, "
                                        "cyto2: downloaded on first use)")
    parser.add_argument("--diameter", type=_diameter, default=0.0,
                        help="object diameter in pixels; 0 or auto (default) estimates it per image")
    parser.add_argument("--channels", nargs="+", metavar="CH",
                        help="0-based channel indices: nucleus first, then cytoplasm markers "
                             "(default: mean of the colour channels as a nuclear stain)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--flow-threshold", type=float, default=0.4)
    parser.add_argument("--cellprob-threshold", type=float, default=0.0)
    parser.add_argument("--min-size", type=int, default=15, help="drop objects smaller than this (pixels)")
    parser.add_argument("--threshold-scale", type=float, default=1.0,
                        help="classical: factor on each image's Otsu threshold (below 1 finds dimmer objects)")
    parser.set_defaults(func=run_segment)


def run_segment(args) -> int:
    cfg = {
        "backend": args.backend,
        "device": args.device,
        "flow_threshold": args.flow_threshold,
        "cellprob_threshold": args.cellprob_threshold,
        "min_size": args.min_size,
        "classical": {"threshold_scale": args.threshold_scale},
        # whole images: statistics of each image itself
        "normalisation": "slide",
    }
    if args.model:
        cfg["model"] = args.model
    if args.diameter > 0:
        cfg["diameter"] = args.diameter
    segment_folder(args.input_dir, args.output_dir, cfg, channels=args.channels, auto_diameter=args.diameter == 0)
    return 0
