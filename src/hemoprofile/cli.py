"""The ``hemoprofile`` command line.

Subcommands register themselves in :data:`SUBCOMMANDS` (name -> function adding its parser); each
parser sets ``func`` to the function that runs it. Add a subcommand by writing ``add_<name>_parser``
and listing it there.

``hemoprofile segment INPUT_DIR OUTPUT_DIR`` segments every 2-D image in a folder (PNG or TIFF,
grayscale or multi-channel) with the same package functions the workflow uses, and writes one label
image per input: ``OUTPUT_DIR/<stem>.tif``, uint16 when the objects fit, else uint32 (TIFF for every
input, PNG included, so a label image never silently wraps at 65,535 objects).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
#: Images with more pixels than this go through the tiled path (bounded memory, same result).
TILED_ABOVE_PIXELS = 4096 * 4096
CLI_TILE_SIZE = 1024


def read_image(path: Path) -> np.ndarray:
    """Read a 2-D image as (channel, row, column); RGB(A) and (row, column, channel) become channel-first.

    An alpha channel is dropped. Raises ValueError naming the file when it is not a 2-D image.
    """
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        image = tifffile.imread(path)
    else:
        import imageio.v3 as iio

        image = iio.imread(path)
    image = np.squeeze(np.asarray(image))
    if image.ndim == 2:
        return image[np.newaxis]
    if image.ndim != 3:
        raise ValueError(f"{path}: expected a 2-D image (row, column[, channel]), got shape {image.shape}")
    if image.shape[-1] <= 4 and image.shape[0] > 4:  # channels last (PNG RGB/RGBA, most TIFFs)
        if path.suffix.lower() == ".png" and image.shape[-1] in (2, 4):
            image = image[..., :-1]  # gray+alpha / RGBA: drop alpha
        image = np.moveaxis(image, -1, 0)
    return image


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
    segment_cfg : a ``segment`` config section (see :func:`hemoprofile.segment.segment_settings`).
    channels : 0-based channel indices as strings, nucleus first then cytoplasm markers; None: the mean
        of all colour channels as a nuclear stain, no cytoplasm.
    auto_diameter : estimate the object diameter of each image (:func:`hemoprofile.segment.estimate_diameter`).
    progress : called with one line per image.

    Returns
    -------
    The label files written, in input order.
    """
    import tifffile

    from hemoprofile.io import atomic_output
    from hemoprofile.segment import build_segmenter, estimate_diameter, segment_image, segment_settings
    from hemoprofile.stitch import segment_tiled

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
    parser.add_argument("--model", help="cellpose: model file (with its .json sidecar) or built-in name "
                                        "(cyto3, nuclei, cyto2: downloaded on first use)")
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


#: Subcommand name -> function that adds its parser to the subparsers object.
def add_ingest_collection_parser(subparsers) -> None:
    from hemoprofile.collection import add_ingest_collection_parser as add

    add(subparsers)


def add_train_classifier_parser(subparsers) -> None:
    from hemoprofile.classify import add_train_classifier_parser as add  # imports torch: only when asked

    add(subparsers)


def add_classify_parser(subparsers) -> None:
    from hemoprofile.classify import add_classify_parser as add

    add(subparsers)


SUBCOMMANDS: dict[str, Callable] = {
    "segment": add_segment_parser,
    "ingest-collection": add_ingest_collection_parser,
    "train-classifier": add_train_classifier_parser,
    "classify": add_classify_parser,
}


def build_parser() -> argparse.ArgumentParser:
    from hemoprofile import __version__

    parser = argparse.ArgumentParser(prog="hemoprofile", description="Morphological profiling of blood cells.")
    parser.add_argument("--version", action="version", version=f"hemoprofile {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (device, model, thresholds)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS.values():
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hemoprofile`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"hemoprofile {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
