"""What every slide reader is: :class:`SlideSource` (regions of one channel at a time), and the machinery
the readers share: an LRU cache of decoded blocks and the assembly of a region from a grid of blocks."""

from __future__ import annotations

import abc
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path

import numpy as np

SLIDE_FORMATS = ("tiff", "ome-tiff", "frames")


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


# --- shared machinery: a grid of decoded blocks behind an LRU cache --------------------------------


class LRUCache:
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


def assemble_region(
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


def check_pixel_dtype(path: Path, dtype: np.dtype) -> np.dtype:
    dtype = np.dtype(dtype).newbyteorder("=")
    if dtype.kind not in "uif":
        raise ValueError(f"{path}: pixel type {dtype} is not supported (need an integer or float type)")
    return dtype

