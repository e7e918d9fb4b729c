"""``hemoprofile segment INPUT_DIR OUTPUT_DIR``: segment every 2-D image in a folder (PNG or TIFF,
grayscale or multi-channel) with the same package functions the workflow uses, and write one label
image per input: ``OUTPUT_DIR/<stem>.tif``, uint16 when the objects fit, else uint32 (TIFF for every
input, PNG included, so a label image never silently wraps at 65,535 objects).

A bad image (:func:`read_input_image`: empty, truncated or corrupt, not 2-D, too small; or one lacking a
requested channel) is reported by name with its problem and the batch goes on; the run ends with a
summary line and exit status 1 when any image failed (``--strict``: stop at the first).

The parser imports nothing heavy; the segmentation stack (and torch, for Cellpose) loads when the
command runs.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hemoprofile.io import atomic_output
from hemoprofile.io.images import IMAGE_SUFFIXES, read_image
from hemoprofile.models import DEFAULT_SEGMENTATION_MODEL

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


#: Images smaller than this on either side are reported as bad input, not segmented.
MIN_IMAGE_SIDE = 8
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class BadImage(ValueError):
    """One input image that cannot be segmented (unreadable, empty, wrong shape); the batch goes on."""


def read_input_image(path: Path) -> np.ndarray:
    """Read one input image as (channel, row, column), or raise :class:`BadImage` saying what is wrong.

    Catches what the image readers raise for an empty, truncated or foreign file (their messages are
    long and name no problem a user can act on) and checks the shape: a 2-D image, grayscale or with
    channels, at least :data:`MIN_IMAGE_SIDE` pixels on each side.
    """
    size = path.stat().st_size
    if size == 0:
        raise BadImage("empty file (0 bytes)")
    if path.suffix.lower() == ".png":
        with open(path, "rb") as f:
            if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                raise BadImage(f"not a PNG file (no PNG signature; {size} bytes)")
    try:
        image = read_image(path)
    except ValueError as err:
        shape = re.search(r"got shape (\(.*\))", str(err))
        if shape:  # read_image's own check
            raise BadImage(f"not a 2-D image: shape {shape.group(1)}, expected (row, column[, channel])") from None
        raise BadImage(f"not a readable {path.suffix[1:].upper()} image ({_first_line(err)}; {size} bytes)") from None
    except Exception as err:  # noqa: BLE001 -- PIL, imageio and tifffile raise many types for a corrupt file
        raise BadImage(f"not a readable {path.suffix[1:].upper()} image ({_first_line(err)}; {size} bytes)") from None
    if min(image.shape[1:]) < MIN_IMAGE_SIDE:
        raise BadImage(f"image of {image.shape[1]} x {image.shape[2]} px is too small to segment (at least "
                       f"{MIN_IMAGE_SIDE} px on each side)")
    if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
        raise BadImage(f"pixel type {image.dtype} is not an intensity image")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise BadImage("the image holds NaN or infinite values")
    return image


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


@dataclass
class FolderResult:
    """What :func:`segment_folder` did: the label files written and the images that failed (name -> problem)."""

    written: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def segment_folder(
    input_dir: Path,
    output_dir: Path,
    segment_cfg: dict,
    channels: Sequence[str] | None = None,
    auto_diameter: bool = False,
    progress: Callable[[str], None] = print,
    report: Callable[[str], None] | None = None,
    strict: bool = False,
) -> FolderResult:
    """Segment every PNG/TIFF image in ``input_dir``; write ``output_dir/<stem>.tif`` label images.

    A bad image (empty, truncated or corrupt, not 2-D, too small, lacking a requested channel) is
    reported with its name and the problem and skipped; the others are segmented. The last progress
    line sums up: images segmented, images failed, megapixels and time.

    Parameters
    ----------
    input_dir, output_dir : folders (the output is created).
    segment_cfg : a ``segment`` config section (see :func:`hemoprofile.segment.settings.segment_settings`).
    channels : 0-based channel indices as strings, nucleus first then cytoplasm markers; None: the mean
        of all colour channels as a nuclear stain, no cytoplasm.
    auto_diameter : estimate the object diameter of each image (:func:`hemoprofile.segment.diameter.estimate_diameter`).
    progress : called with one line per image and the summary.
    report : called with one line per bad image (``<name>: <problem>``); default: standard error.
    strict : stop at the first bad image (raises :class:`BadImage` naming it) instead of going on.

    Returns
    -------
    FolderResult: the label files written, in input order, and the failed images with their problems.

    Raises
    ------
    FileNotFoundError / ValueError for a problem with the whole folder (missing, no images, clashing
    stems) or the model; BadImage for a bad image with ``strict``.
    """
    import tifffile

    from hemoprofile.segment.diameter import estimate_diameter
    from hemoprofile.segment.segmenter import build_segmenter, segment_image
    from hemoprofile.segment.settings import segment_settings
    from hemoprofile.segment.tiled import segment_tiled

    if report is None:
        def report(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

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
    result = FolderResult()
    started = time.perf_counter()
    total_pixels = 0
    for number, path in enumerate(paths, start=1):
        tic = time.perf_counter()
        try:
            image, names, channel_cfg = _channels_for(unit_range(read_input_image(path)), channels, path)
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
        except (BadImage, ValueError) as err:
            problem = str(err).removeprefix(f"{path}: ")
            if strict:
                raise BadImage(f"{path}: {problem} (--strict: stopped at the first bad image)") from None
            result.failed[path.name] = problem
            report(f"[{number}/{len(paths)}] {path.name}: FAILED: {problem}")
            continue
        n = int(labels.max())
        dtype = np.uint16 if n <= np.iinfo(np.uint16).max else np.uint32
        out = output_dir / f"{path.stem}.tif"
        with atomic_output(out) as tmp:
            tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib")
        result.written.append(out)
        total_pixels += labels.size
        progress(f"[{number}/{len(paths)}] {path.name}: {n} objects (diameter {image_cfg['diameter']:.1f} px) "
                 f"in {time.perf_counter() - tic:.2f} s -> {out}")
    elapsed = time.perf_counter() - started
    failed = f" ({', '.join(result.failed)})" if result.failed else ""
    progress(f"{len(result.written)} segmented, {len(result.failed)} failed{failed}; "
             f"{total_pixels / 1e6:.2f} MP in {elapsed:.1f} s ({elapsed / max(total_pixels / 1e6, 1e-9):.2f} s/MP)")
    return result


def _diameter(text: str) -> float:
    if text.lower() == "auto":
        return 0.0
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("diameter must be positive, or 0 / auto to estimate it per image")
    return value


SEGMENT_EXAMPLES = """\
examples:
  hemoprofile segment images/ labels/
      classical backend (no model), diameter estimated per image
  hemoprofile segment images/ labels/ --backend cellpose --device cpu
      the bundled Cellpose model (bundled:hemoprofile_cellpose), from any directory
  hemoprofile segment slides/ labels/ --backend cellpose --model my_model.pt --channels 0 1 2 --diameter 15
      your own model file (with its .pt.json sidecar); channel 0 = nucleus, 1 and 2 = cytoplasm markers

A bad image (empty, truncated, corrupt, not 2-D, too small) is reported with its name and the problem
and skipped; the last line sums up (N segmented, M failed). Exit status: 0 when every image was
segmented, 1 when any failed (or with --strict, at the first bad image).
"""


def add_segment_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment every image in a folder into label images",
        description="Segment every 2-D PNG/TIFF image in INPUT_DIR; write OUTPUT_DIR/<stem>.tif label images "
                    "(uint16, or uint32 above 65535 objects; 0 = background).",
        epilog=SEGMENT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input_dir", type=Path, metavar="INPUT_DIR")
    parser.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR")
    parser.add_argument("--backend", choices=("classical", "cellpose"), default="classical",
                        help="segmentation backend (default: classical)")
    parser.add_argument("--model", default=DEFAULT_SEGMENTATION_MODEL,
                        help="cellpose: a bundled model (default: %(default)s, shipped in the package), a model "
                             "file (with its .json sidecar; a relative path is relative to the current "
                             "directory) or a Cellpose built-in name (cyto3, nuclei, cyto2: downloaded on first use)")
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
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first bad image (default: report it, segment the rest, exit 1 at the end)")
    parser.set_defaults(func=run_segment)


def run_segment(args) -> int:
    """Run ``hemoprofile segment``; exit status 1 when any image failed."""
    cfg = {
        "backend": args.backend,
        "model": args.model,
        "device": args.device,
        "flow_threshold": args.flow_threshold,
        "cellprob_threshold": args.cellprob_threshold,
        "min_size": args.min_size,
        "classical": {"threshold_scale": args.threshold_scale},
        # whole images: statistics of each image itself
        "normalisation": "slide",
    }
    if args.diameter > 0:
        cfg["diameter"] = args.diameter
    result = segment_folder(args.input_dir, args.output_dir, cfg, channels=args.channels,
                            auto_diameter=args.diameter == 0, strict=args.strict)
    return 0 if result.ok else 1
