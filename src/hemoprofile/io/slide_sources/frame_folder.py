"""HDSCA-style frame folders: one single-channel 2-D TIFF per frame and channel, placed on a frame grid
(:class:`FrameFolderSource`). Every frame's header is checked when the folder is opened; frames are
decoded whole, behind an LRU cache of two frame rows."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hemoprofile.io.frames import FRAME_ORDERS, frame_filename, frame_grid_position
from hemoprofile.io.slide_sources.base import LRUCache, SlideSource, assemble_region, check_pixel_dtype
from hemoprofile.io.slide_sources.tiff import check_data_in_file, ome_pixel_size_um, ome_pixels, open_tiff

#: How many missing or empty frame files an error message lists by name.
_MAX_NAMES_IN_ERROR = 5


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
        tf = open_tiff(first)
        try:
            series = tf.series[0]
            if len(series.shape) != 2:
                raise ValueError(
                    f"{first}: a frame must be one 2-D plane, found axes {series.axes!r} with shape "
                    f"{tuple(series.shape)}"
                )
            self.frame_shape = (int(series.shape[0]), int(series.shape[1]))
            self.dtype = check_pixel_dtype(first, series.dtype)
            pixels = ome_pixels(tf)
        finally:
            tf.close()
        if 0 in self.frame_shape:
            raise ValueError(f"{first}: frame is empty (shape {self.frame_shape})")
        self._check_frame_headers()
        self.shape = (len(self.channel_names), self.rows * self.frame_shape[0], self.cols * self.frame_shape[1])
        self.pixel_size_um = pixel_size_um if pixel_size_um is not None else ome_pixel_size_um(pixels)
        self.file_channel_names = None
        self.storage = f"frames {self.rows}x{self.cols} of {self.frame_shape[0]}x{self.frame_shape[1]}"
        # two frame rows: a band of tiles no taller than a frame spans at most two, so tiling a channel
        # band by band decodes each frame once
        self._cache = LRUCache(max_entries=2 * self.cols)

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
        tf = open_tiff(file)
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
        check_data_in_file(file, series)
        return series

    def _read(self, c: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return assemble_region(lambda r, k: self._frame(c, r, k), self.frame_shape, (y0, y1, x0, x1), self.dtype)

    def _frame(self, c: int, grid_row: int, grid_col: int) -> np.ndarray:
        file = self._files[c][self._frame_at[(grid_row, grid_col)]]
        return self._cache.get((c, grid_row, grid_col), lambda: self._decode(file))

    def _decode(self, file: Path) -> np.ndarray:
        tf = open_tiff(file)
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
