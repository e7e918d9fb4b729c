"""Slides in one TIFF or OME-TIFF file: opening (damage becomes a ValueError naming the file), OME
metadata (pixel size, channel names) and :class:`TiffSlideSource`, which memory-maps uncompressed
contiguous data and otherwise decodes one storage chunk at a time behind a byte-bounded cache."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile
import zarr

from hemoprofile.io.slide_sources.base import LRUCache, SlideSource, assemble_region, check_pixel_dtype

#: Budget for decoded TIFF chunks kept between region reads. Enough for a 512-row band of full-width
#: strips of a 65k-pixel-wide 16-bit slide; a single chunk larger than this is still kept (alone),
#: because re-decoding it for every region would be far worse.
TIFF_CHUNK_CACHE_BYTES = 256 * 2**20

_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}


class _TiffLogErrors(logging.Handler):
    """Collects the errors tifffile logs (rather than raises) while it parses a damaged file."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []
        self._thread = threading.get_ident()  # another thread's damaged file is not ours

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self._thread:
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def _collect_tifffile_errors() -> Iterator[_TiffLogErrors]:
    handler = _TiffLogErrors()
    log = tifffile.logger()
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)


def open_tiff(path: Path) -> tifffile.TiffFile:
    """Open a TIFF for reading, turning every flavour of damage into a ValueError naming the file.

    tifffile logs (instead of raising) broken IFD chains and unreadable tags, which is what a truncated
    file looks like; a slide whose structure tifffile had to guess at is refused rather than tiled.
    """
    if not path.exists():
        raise FileNotFoundError(f"{path}: slide file not found")
    if not path.is_file():
        raise ValueError(f"{path}: expected a TIFF file, found a folder (use format 'frames' for frame folders)")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: file is empty (0 bytes)")
    tf = None
    try:
        with _collect_tifffile_errors() as log:
            tf = tifffile.TiffFile(path)
            series = tf.series  # parses every IFD, which is where truncation shows up
            if tf.is_ome:
                _ = tf.ome_metadata
    except Exception as err:  # TiffFileError, struct.error, OSError, ... on bad input
        if tf is not None:
            tf.close()
        raise ValueError(f"{path}: not a readable TIFF ({type(err).__name__}: {err})") from err
    problem = None
    if log.messages:
        problem = f"corrupt or truncated TIFF ({'; '.join(log.messages[:3])})"
    elif not series:
        problem = "TIFF holds no image"
    if problem:
        tf.close()
        raise ValueError(f"{path}: {problem}")
    return tf


def check_data_in_file(path: Path, series: tifffile.TiffPageSeries) -> None:
    """Refuse a file whose pixel data runs past its end (a truncated copy) before any pixel is read."""
    size = path.stat().st_size
    for i, page in enumerate(series.pages):
        if page is None:
            continue
        offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        counts = np.asarray(page.databytecounts, dtype=np.int64)
        if offsets.size == 0:
            continue
        end = int((offsets + counts).max())
        if end > size:
            raise ValueError(
                f"{path}: truncated TIFF: pixel data of page {i} ends at byte {end} but the file has "
                f"{size} bytes"
            )


def ome_pixels(tf: tifffile.TiffFile) -> dict:
    if not tf.is_ome:
        return {}
    try:
        ome = tifffile.xml2dict(tf.ome_metadata)["OME"]
        image = ome["Image"]
        image = image[0] if isinstance(image, list) else image
        return dict(image["Pixels"])
    except Exception:  # OME-XML that tifffile cannot parse only costs us the optional metadata
        return {}


def ome_pixel_size_um(pixels: dict) -> float | None:
    sizes = []
    for axis in ("X", "Y"):
        value = pixels.get(f"PhysicalSize{axis}")
        if value is None:
            continue
        factor = _UNIT_TO_UM.get(str(pixels.get(f"PhysicalSize{axis}Unit", "µm")))
        if factor is None:
            return None
        sizes.append(float(value) * factor)
    # only square pixels map onto a single scale; anisotropic ones are left to the sample sheet
    if sizes and all(math.isfinite(s) and s > 0 for s in sizes) and math.isclose(min(sizes), max(sizes), rel_tol=1e-6):
        return sizes[0]
    return None


def _ome_channel_names(pixels: dict) -> list[str] | None:
    channels = pixels.get("Channel")
    if channels is None:
        return None
    channels = channels if isinstance(channels, list) else [channels]
    names = [c.get("Name") for c in channels if isinstance(c, dict)]
    return [str(n) for n in names] if names and all(n is not None for n in names) else None


def _check_channel_order(path: Path, sheet: Sequence[str], in_file: Sequence[str] | None) -> None:
    """Refuse a sheet that lists the file's own channel names in another order.

    The sheet's names win (files often carry generic names such as ``Channel:0:1``), but the same names
    in another order can only mean the sheet is not in file order, and every channel would be mislabelled.
    """
    if not in_file or len(in_file) != len(sheet):
        return
    sheet_folded, file_folded = [n.casefold() for n in sheet], [n.casefold() for n in in_file]
    if sorted(sheet_folded) == sorted(file_folded) and sheet_folded != file_folded:
        raise ValueError(
            f"{path}: the file's OME metadata names its channels {list(in_file)}, the sample sheet the same "
            f"names in another order {list(sheet)}; list the channels in file order"
        )


class _TiffPlanes:
    """Region access to the channels of one TIFF series (or of one 2-D series per channel).

    ``channel_axis`` says where the channel sits in the series' array: None (a 2-D series is one
    channel), 0 (C x Y x X) or 2 (Y x X x samples).
    """

    def __init__(self, tf: tifffile.TiffFile, series: tifffile.TiffPageSeries, channel_axis: int | None):
        self.channel_axis = channel_axis
        if series.dataoffset is not None:
            # uncompressed and contiguous: a memory map reads only the rows a region needs, whereas
            # tifffile would hand a whole single-strip plane to zarr as one chunk
            stored = np.dtype(series.dtype).newbyteorder(tf.byteorder)
            self.array = np.memmap(tf.filehandle.path, dtype=stored, mode="r", offset=series.dataoffset,
                                   shape=tuple(series.shape))
            self.block_shape = None
            self.storage = "memmap"
        else:
            self.array = zarr.open(series.aszarr(level=0), mode="r")
            chunks = tuple(int(c) for c in self.array.chunks)
            self.block_shape = chunks[:2] if channel_axis == 2 else chunks[-2:]
            self.storage = f"chunks {self.block_shape[0]}x{self.block_shape[1]}"

    def get(self, c: int, ys: slice, xs: slice) -> np.ndarray:
        if self.channel_axis is None:
            return self.array[ys, xs]
        if self.channel_axis == 0:
            return self.array[c, ys, xs]
        return self.array[ys, xs, c]


class TiffSlideSource(SlideSource):
    """A slide in one TIFF or OME-TIFF file.

    Accepted layouts: a C x Y x X stack (OME ``CYX``, pages stacked as ``QYX``/``IYX``, planar
    ``SYX``), a single Y x X plane for a one-channel slide, Y x X x samples (``YXS``/``YXC``), and one
    2-D series per channel (what writing planes one by one with tifffile produces). Use
    :func:`open_slide_source` rather than this class directly.
    """

    def __init__(self, path: str | os.PathLike, channels: Sequence[str], *, pixel_size_um: float | None = None,
                 fmt: str = "tiff"):
        self.path = Path(path)
        self.fmt = fmt
        self.channel_names = list(channels)
        self._cache = LRUCache(max_bytes=TIFF_CHUNK_CACHE_BYTES)
        self._tf = open_tiff(self.path)
        try:
            self._setup(pixel_size_um)
        except BaseException:
            self._tf.close()
            raise

    def _setup(self, pixel_size_um: float | None) -> None:
        path, all_series = self.path, self._tf.series
        series = all_series[0]
        axes, shape = series.axes, tuple(int(s) for s in series.shape)
        n_wanted = len(self.channel_names)
        for each in all_series:  # before any memory map is made over a short file
            check_data_in_file(path, each)
        # per channel: (planes, index of the channel within them)
        if len(shape) == 2 and n_wanted > 1 and _planes_per_series(all_series, n_wanted):
            planes = [_TiffPlanes(self._tf, s, None) for s in all_series]
            self._channels = [(p, 0) for p in planes]
            n_channels, height, width = len(planes), shape[0], shape[1]
        elif len(shape) == 2:
            self._channels = [(_TiffPlanes(self._tf, series, None), 0)]
            n_channels, height, width = 1, shape[0], shape[1]
        elif len(shape) == 3 and axes[-2:] == "YX":
            planes = _TiffPlanes(self._tf, series, 0)
            n_channels, height, width = shape
            self._channels = [(planes, c) for c in range(n_channels)]
        elif len(shape) == 3 and axes[:2] == "YX":
            planes = _TiffPlanes(self._tf, series, 2)
            height, width, n_channels = shape
            self._channels = [(planes, c) for c in range(n_channels)]
        else:
            raise ValueError(
                f"{path}: unsupported TIFF layout: axes {axes!r} with shape {shape}; expected a C x Y x X "
                "stack, a single Y x X plane or Y x X x samples"
            )
        if n_channels != n_wanted:
            extra = f", {len(all_series)} image series" if len(all_series) > 1 else ""
            raise ValueError(
                f"{path}: file holds {n_channels} channel(s) (axes {axes!r}, shape {shape}{extra}) but the "
                f"sample sheet names {n_wanted}: {self.channel_names}"
            )
        if height == 0 or width == 0:
            raise ValueError(f"{path}: image is empty (shape {shape})")
        self.shape = (n_channels, height, width)
        self.dtype = check_pixel_dtype(path, series.dtype)
        pixels = ome_pixels(self._tf)
        self.pixel_size_um = pixel_size_um if pixel_size_um is not None else ome_pixel_size_um(pixels)
        self.file_channel_names = _ome_channel_names(pixels)
        _check_channel_order(path, self.channel_names, self.file_channel_names)
        self.storage = self._channels[0][0].storage

    def _read(self, c: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        planes, index = self._channels[c]
        try:
            if planes.block_shape is None:
                return np.array(planes.get(index, slice(y0, y1), slice(x0, x1)), dtype=self.dtype)

            def block(grid_row: int, grid_col: int) -> np.ndarray:
                bh, bw = planes.block_shape
                ys = slice(grid_row * bh, (grid_row + 1) * bh)
                xs = slice(grid_col * bw, (grid_col + 1) * bw)
                return self._cache.get((c, grid_row, grid_col),
                                       lambda: np.asarray(planes.get(index, ys, xs), dtype=self.dtype))

            return assemble_region(block, planes.block_shape, (y0, y1, x0, x1), self.dtype)
        except Exception as err:  # codec errors (DeflateError, ...), OSError on a vanishing file
            raise ValueError(
                f"{self.path}: cannot read channel {c} ({self.channel_names[c]}) region y[{y0}:{y1}] "
                f"x[{x0}:{x1}]: {type(err).__name__}: {err}"
            ) from err

    def close(self) -> None:
        self._cache.clear()
        self._channels = []
        self._tf.close()


def _planes_per_series(all_series, n_channels: int) -> bool:
    """True when a file holds exactly one 2-D series per channel, all of one shape and dtype."""
    first = all_series[0]
    return len(all_series) == n_channels and all(
        len(s.shape) == 2 and tuple(s.shape) == tuple(first.shape) and s.dtype == first.dtype for s in all_series
    )
