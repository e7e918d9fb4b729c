"""open_slide_source: check the sample sheet's description of a slide and open it with its reader."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from hemoprofile.io.slide_sources.base import SLIDE_FORMATS, SlideSource
from hemoprofile.io.slide_sources.frame_folder import FrameFolderSource
from hemoprofile.io.slide_sources.tiff import TiffSlideSource


def open_slide_source(
    path: str | os.PathLike,
    fmt: str,
    channels: Sequence[str],
    *,
    pixel_size_um: float | None = None,
    frame_rows: int | None = None,
    frame_cols: int | None = None,
    frame_pattern: str = "Tile{index:06d}.tif",
    frame_order: str = "row-major",
) -> SlideSource:
    """Open a slide for lazy, region-by-region reading.

    Parameters
    ----------
    path : str or PathLike
        A TIFF / OME-TIFF file, or a frame folder when ``fmt`` is ``"frames"``.
    fmt : {"tiff", "ome-tiff", "frames"}
        Input format from the sample sheet. "tiff" and "ome-tiff" are read the same way; the OME
        metadata, when present, supplies the pixel size.
    channels : sequence of str
        Channel names from the sample sheet; their number must equal the number of channels found.
    pixel_size_um : float, optional
        Pixel edge in micrometres; overrides the file's own metadata. NaN (an empty sheet cell) counts
        as not given.
    frame_rows, frame_cols : int, optional
        Frame grid size (frames only).
    frame_pattern : str
        File-name pattern of a frame (see :func:`hemoprofile.io.frame_filename`).
    frame_order : {"row-major", "snake"}
        How frame numbers map to grid positions (see :func:`hemoprofile.io.frame_grid_position`).

    Returns
    -------
    SlideSource
        Use it as a context manager, or call ``close()``.

    Raises
    ------
    FileNotFoundError
        When the file, the folder or any expected frame file is missing.
    ValueError
        Naming the file and the problem: not a TIFF, corrupt or truncated, empty, wrong number of
        channels, unsupported layout, frames of differing shape or dtype.

    Example
    -------
    >>> with open_slide_source("P01_S1.ome.tif", "ome-tiff", ["DAPI", "CK", "VIM", "CD45"]) as src:
    ...     dapi = src.read_region(0, 0, 512, 0, 512)  # doctest: +SKIP
    """
    channels = [str(c) for c in channels]
    if not channels:
        raise ValueError(f"{path}: no channel names given")
    if len(set(channels)) != len(channels):
        raise ValueError(f"{path}: channel names must be unique, got {channels}")
    if pixel_size_um is not None:
        pixel_size_um = float(pixel_size_um)
        if math.isnan(pixel_size_um):  # an empty sample-sheet cell read by pandas: not given
            pixel_size_um = None
        elif not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
            raise ValueError(f"{path}: pixel size must be a positive number of micrometres, got {pixel_size_um}")
    if fmt in ("tiff", "ome-tiff"):
        return TiffSlideSource(path, channels, pixel_size_um=pixel_size_um, fmt=fmt)
    if fmt == "frames":
        return FrameFolderSource(
            path,
            channels,
            rows=frame_rows,
            cols=frame_cols,
            pattern=frame_pattern,
            order=frame_order,
            pixel_size_um=pixel_size_um,
        )
    raise ValueError(f"{path}: slide format {fmt!r} is not one of {SLIDE_FORMATS}")

