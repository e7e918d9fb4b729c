"""Readers of input slides: multi-channel (OME-)TIFF files and HDSCA-style frame folders.

Every reader opens a slide lazily and serves rectangular regions of one channel at a time
(:meth:`SlideSource.read_region`), so no stage ever has to hold a whole slide (several gigapixels) in
memory. The rest of the pipeline sees only :class:`SlideSource`; which file layout a slide has is this
module's business.

How pixels are reached, cheapest first:

- uncompressed, contiguous TIFF data is memory-mapped, so a region read touches only its own rows;
- compressed or scattered TIFF data is read through tifffile's zarr store, one storage chunk (TIFF tile
  or strip) at a time, with a byte-bounded LRU cache of decoded chunks so that neighbouring regions
  reuse a strip instead of decoding it again;
- a frame folder decodes whole frame files, with an LRU cache of ``2 * cols`` frames, so reading a
  channel row band by row band decodes each frame about once.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile
import zarr

from hemoprofile.io.frames import FRAME_ORDERS, frame_filename, frame_grid_position

SLIDE_FORMATS = ("tiff", "ome-tiff", "frames")

#: Budget for decoded TIFF chunks kept between region reads. Enough for a 512-row band of full-width
#: strips of a 65k-pixel-wide 16-bit slide; a single chunk larger than this is still kept (alone),
#: because re-decoding it for every region would be far worse.
TIFF_CHUNK_CACHE_BYTES = 256 * 2**20

#: How many missing or empty frame files an error message lists by name.
_MAX_NAMES_IN_ERROR = 5

_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}


class SlideSource(abc.ABC):
    """A slide opened for reading, one channel region at a time.

    Attributes
    ----------
    path : Path
        The slide file or frame folder.
    fmt : str
        The format it was opened as (one of ``SLIDE_FORMATS``).
    shape : tuple of int
        (channel, row, column) extent in pixels.
    dtype : numpy.dtype
        Pixel type as stored (native byte order).
    channel_names : list of str
        One name per channel, from the sample sheet.
    pixel_size_um : float or None
        Pixel edge in micrometres: the sample sheet's value, else the file's OME metadata, else None.
    file_channel_names : list of str or None
        Channel names found in the file's OME metadata, kept for provenance (the sheet's names win).
    storage : str
        How pixels are reached (``"memmap"``, ``"chunks 512x512"``, ``"frames 48x48 of 1004x1362"``),
        for logs and provenance.
    """

    path: Path
    fmt: str
    shape: tuple[int, int, int]
    dtype: np.dtype
    channel_names: list[str]
    pixel_size_um: float | None
    file_channel_names: list[str] | None = None
    storage: str = ""

    def read_region(self, channel_index: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Return the pixels [y0, y1) x [x0, x1) of one channel as a new 2-D array of ``self.dtype``.

        Raises
        ------
        IndexError
            When the channel or the window lies outside the slide.
        ValueError
            Naming the file when its pixels cannot be decoded.
        """
        c, y0, y1, x0, x1 = (int(v) for v in (channel_index, y0, y1, x0, x1))
        n_channels, height, width = self.shape
        if not 0 <= c < n_channels:
            raise IndexError(f"{self.path}: channel {c} outside 0..{n_channels - 1}")
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
            raise IndexError(
                f"{self.path}: region y[{y0}:{y1}] x[{x0}:{x1}] is empty or outside the slide "
                f"({height} x {width})"
            )
        return self._read(c, y0, y1, x0, x1)

    @abc.abstractmethod
    def _read(self, c: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Read a validated region."""

    def close(self) -> None:
        """Release open files and cached pixels."""

    def __enter__(self) -> SlideSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, shape={self.shape}, dtype={self.dtype}, "
            f"channels={self.channel_names})"
        )


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


# --- shared machinery: a grid of decoded blocks behind an LRU cache --------------------------------


class _LRUCache:
    """Least-recently-used cache of decoded blocks, bounded by entry count and/or bytes.

    The newest entry is always kept even if alone it exceeds ``max_bytes``: the caller needs it now.
    ``hits`` and ``misses`` (decodes) are kept for diagnosing cache sizing.
    """

    def __init__(self, max_entries: int | None = None, max_bytes: int | None = None):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._blocks: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, load: Callable[[], np.ndarray]) -> np.ndarray:
        block = self._blocks.get(key)
        if block is not None:
            self._blocks.move_to_end(key)
            self.hits += 1
            return block
        self.misses += 1
        block = load()
        self._blocks[key] = block
        self._bytes += block.nbytes
        while len(self._blocks) > 1 and (
            (self.max_entries is not None and len(self._blocks) > self.max_entries)
            or (self.max_bytes is not None and self._bytes > self.max_bytes)
        ):
            _, evicted = self._blocks.popitem(last=False)
            self._bytes -= evicted.nbytes
        return block

    def clear(self) -> None:
        self._blocks.clear()
        self._bytes = 0


def _assemble_region(
    block: Callable[[int, int], np.ndarray],
    block_shape: tuple[int, int],
    window: tuple[int, int, int, int],
    dtype: np.dtype,
) -> np.ndarray:
    """Copy the window (y0, y1, x0, x1) out of a regular grid of blocks into a new array.

    ``block(grid_row, grid_col)`` returns the block whose top-left pixel is
    (grid_row * block_height, grid_col * block_width); blocks on the far edges may be smaller.
    """
    y0, y1, x0, x1 = window
    bh, bw = block_shape
    out = np.empty((y1 - y0, x1 - x0), dtype=dtype)
    for grid_row in range(y0 // bh, (y1 - 1) // bh + 1):
        by0 = grid_row * bh
        sy0, sy1 = max(y0, by0), min(y1, by0 + bh)
        for grid_col in range(x0 // bw, (x1 - 1) // bw + 1):
            bx0 = grid_col * bw
            sx0, sx1 = max(x0, bx0), min(x1, bx0 + bw)
            data = block(grid_row, grid_col)
            out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = data[sy0 - by0 : sy1 - by0, sx0 - bx0 : sx1 - bx0]
    return out


def _check_pixel_dtype(path: Path, dtype: np.dtype) -> np.dtype:
    dtype = np.dtype(dtype).newbyteorder("=")
    if dtype.kind not in "uif":
        raise ValueError(f"{path}: pixel type {dtype} is not supported (need an integer or float type)")
    return dtype


# --- TIFF and OME-TIFF --------------------------------------------------------------------------------


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


def _open_tiff(path: Path) -> tifffile.TiffFile:
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


def _check_data_in_file(path: Path, series: tifffile.TiffPageSeries) -> None:
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


def _ome_pixels(tf: tifffile.TiffFile) -> dict:
    if not tf.is_ome:
        return {}
    try:
        ome = tifffile.xml2dict(tf.ome_metadata)["OME"]
        image = ome["Image"]
        image = image[0] if isinstance(image, list) else image
        return dict(image["Pixels"])
    except Exception:  # OME-XML that tifffile cannot parse only costs us the optional metadata
        return {}


def _ome_pixel_size_um(pixels: dict) -> float | None:
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
        self._cache = _LRUCache(max_bytes=TIFF_CHUNK_CACHE_BYTES)
        self._tf = _open_tiff(self.path)
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
            _check_data_in_file(path, each)
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
        self.dtype = _check_pixel_dtype(path, series.dtype)
        pixels = _ome_pixels(self._tf)
        self.pixel_size_um = pixel_size_um if pixel_size_um is not None else _ome_pixel_size_um(pixels)
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

            return _assemble_region(block, planes.block_shape, (y0, y1, x0, x1), self.dtype)
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


# --- HDSCA-style frame folders ----------------------------------------------------------------------


class FrameFolderSource(SlideSource):
    """A slide stored as one single-channel 2-D TIFF per frame and channel, placed on a frame grid.

    Use :func:`open_slide_source` rather than this class directly. Frames are butted edge to edge
    (no overlap between neighbouring frames is assumed or removed).
    """

    fmt = "frames"

    def __init__(
        self,
        path: str | os.PathLike,
        channels: Sequence[str],
        *,
        rows: int | None,
        cols: int | None,
        pattern: str = "Tile{index:06d}.tif",
        order: str = "row-major",
        pixel_size_um: float | None = None,
    ):
        self.path = folder = Path(path)
        self.channel_names = list(channels)
        if rows is None or cols is None or int(rows) <= 0 or int(cols) <= 0:
            raise ValueError(f"{folder}: a frame folder needs positive frame_rows and frame_cols, got {rows} x {cols}")
        if order not in FRAME_ORDERS:
            raise ValueError(f"{folder}: frame order {order!r} not one of {FRAME_ORDERS}")
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: frame folder not found")
        self.rows, self.cols, self.order, self.pattern = int(rows), int(cols), order, pattern
        n_frames = self.rows * self.cols
        self._files = [
            [folder / frame_filename(pattern, f, c, name, n_frames) for f in range(n_frames)]
            for c, name in enumerate(self.channel_names)
        ]
        self._check_files_present()
        # grid position -> frame number, so a region maps straight onto the files it overlaps
        self._frame_at = {frame_grid_position(f, self.rows, self.cols, order): f for f in range(n_frames)}

        first = self._files[0][0]
        tf = _open_tiff(first)
        try:
            series = tf.series[0]
            if len(series.shape) != 2:
                raise ValueError(
                    f"{first}: a frame must be one 2-D plane, found axes {series.axes!r} with shape "
                    f"{tuple(series.shape)}"
                )
            self.frame_shape = (int(series.shape[0]), int(series.shape[1]))
            self.dtype = _check_pixel_dtype(first, series.dtype)
            pixels = _ome_pixels(tf)
        finally:
            tf.close()
        if 0 in self.frame_shape:
            raise ValueError(f"{first}: frame is empty (shape {self.frame_shape})")
        self._check_frame_headers()
        self.shape = (len(self.channel_names), self.rows * self.frame_shape[0], self.cols * self.frame_shape[1])
        self.pixel_size_um = pixel_size_um if pixel_size_um is not None else _ome_pixel_size_um(pixels)
        self.file_channel_names = None
        self.storage = f"frames {self.rows}x{self.cols} of {self.frame_shape[0]}x{self.frame_shape[1]}"
        # two frame rows: a band of tiles no taller than a frame spans at most two, so tiling a channel
        # band by band decodes each frame once
        self._cache = _LRUCache(max_entries=2 * self.cols)

    def _check_files_present(self) -> None:
        missing, empty = [], []
        for files in self._files:
            for file in files:
                try:
                    if file.stat().st_size == 0:
                        empty.append(file.name)
                except FileNotFoundError:
                    missing.append(file.relative_to(self.path).as_posix())
        n_expected = sum(len(f) for f in self._files)
        if missing:
            raise FileNotFoundError(
                f"{self.path}: {len(missing)} of {n_expected} frame files missing (pattern "
                f"{self.pattern!r}, {self.rows} x {self.cols} frames, channels {self.channel_names}); "
                f"first missing: {', '.join(missing[:_MAX_NAMES_IN_ERROR])}"
            )
        if empty:
            raise ValueError(
                f"{self.path}: {len(empty)} frame file(s) are empty (0 bytes); first: "
                f"{', '.join(empty[:_MAX_NAMES_IN_ERROR])}"
            )

    def _check_frame_headers(self) -> None:
        """Parse every frame file's header (not its pixels) before any pixel is read.

        A truncated copy, a file that is not a TIFF, or a frame of another shape or dtype is then refused
        when the slide is opened, before the tile stage writes anything; about 0.3 ms per file (a few
        seconds for a 2,304-frame, 4-channel slide). Damage inside compressed pixel data can only show
        when the frame is decoded (:meth:`_decode` names the file then).
        """
        damaged = []
        for files in self._files:
            for file in files:
                try:
                    self._frame_header(file)
                except ValueError as err:
                    problem = str(err).removeprefix(f"{file}: ")
                    damaged.append(f"{file.relative_to(self.path).as_posix()}: {problem}")
        if damaged:
            n_files = sum(len(f) for f in self._files)
            raise ValueError(
                f"{self.path}: {len(damaged)} of {n_files} frame files are damaged or do not match the first "
                f"frame ({self.frame_shape[0]} x {self.frame_shape[1]} {self.dtype}); "
                + "; ".join(damaged[:_MAX_NAMES_IN_ERROR])
            )
        # A folder holding more frames than the sheet's grid and channels account for means a wrong
        # frame_rows/frame_cols or a channel missing from the sheet: the frames would land in the wrong
        # places without any error, so refuse it. The file one past the last expected one must not exist.
        n_frames = self.rows * self.cols
        last = len(self.channel_names) - 1
        extra = self.path / frame_filename(self.pattern, n_frames, last, self.channel_names[last], n_frames)
        if extra.exists() and extra not in {f for files in self._files for f in files}:
            raise ValueError(
                f"{self.path}: holds {extra.name}, beyond the {len(self.channel_names)} channel(s) x "
                f"{self.rows} x {self.cols} frames the sample sheet describes; check frame_rows, frame_cols "
                f"and that channels lists every channel of the folder ({self.channel_names})"
            )

    def _frame_header(self, file: Path) -> None:
        """Check one frame's header: a readable TIFF, the first frame's shape and dtype, data within the file."""
        tf = _open_tiff(file)
        try:
            self._checked_series(tf, file)
        finally:
            tf.close()

    def _checked_series(self, tf, file: Path):
        """The frame's first series, after checking its shape and dtype against the first frame's and
        that its pixel data lies within the file."""
        series = tf.series[0]
        if tuple(series.shape) != self.frame_shape or series.dtype.newbyteorder("=") != self.dtype:
            raise ValueError(
                f"{file}: frame has shape {tuple(series.shape)} and dtype {series.dtype}, but the "
                f"folder's first frame has {self.frame_shape} and {self.dtype}"
            )
        _check_data_in_file(file, series)
        return series

    def _read(self, c: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return _assemble_region(lambda r, k: self._frame(c, r, k), self.frame_shape, (y0, y1, x0, x1), self.dtype)

    def _frame(self, c: int, grid_row: int, grid_col: int) -> np.ndarray:
        file = self._files[c][self._frame_at[(grid_row, grid_col)]]
        return self._cache.get((c, grid_row, grid_col), lambda: self._decode(file))

    def _decode(self, file: Path) -> np.ndarray:
        tf = _open_tiff(file)
        try:
            series = self._checked_series(tf, file)
            try:
                data = series.asarray()
            except Exception as err:  # codec errors on a damaged frame
                raise ValueError(f"{file}: cannot decode frame ({type(err).__name__}: {err})") from err
        finally:
            tf.close()
        return np.asarray(data, dtype=self.dtype)

    def close(self) -> None:
        self._cache.clear()
