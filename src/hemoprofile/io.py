"""File formats and dtype policy: OME-Zarr (zarr v3, NGFF 0.5) images and label images, atomic writes.

Every other module deals in arrays and tables; this one owns how they live on disk.

Layout of an image written here (``image.zarr``, ``preprocessed.zarr``)::

    image.zarr/            zarr v3 group, attributes["ome"] = NGFF 0.5 multiscales + omero channels
        0/                 array (c, y, x), chunks (1, tile, tile), Blosc-zstd compressed

A label image (``labels.zarr``, ``truth_labels.zarr``) is the same with axes (y, x), an integer dtype and
``attributes["ome"]["image-label"]`` set, so napari and other OME-Zarr readers show it as labels.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

NGFF_VERSION = "0.5"

#: Display colours (hex RGB) for known channel names; others get a neutral grey.
CHANNEL_COLOURS = {"DAPI": "0000FF", "CK": "FF0000", "VIM": "00FF00", "CD45": "FFFFFF"}


class Tile(NamedTuple):
    """One tile of a tile grid: its grid position and its pixel window [y0, y1) x [x0, x1)."""

    row: int
    col: int
    y0: int
    y1: int
    x0: int
    x1: int


def iter_tiles(shape_yx: Sequence[int], tile_size: int) -> Iterator[Tile]:
    """Yield the tiles of a (y, x) extent in row-major order; edge tiles are smaller when the extent
    is not a multiple of ``tile_size``.

    Example
    -------
    >>> [t[2:] for t in iter_tiles((5, 3), 4)]
    [(0, 4, 0, 3), (4, 5, 0, 3)]
    """
    if tile_size <= 0:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    height, width = int(shape_yx[0]), int(shape_yx[1])
    for row, y0 in enumerate(range(0, height, tile_size)):
        for col, x0 in enumerate(range(0, width, tile_size)):
            yield Tile(row, col, y0, min(y0 + tile_size, height), x0, min(x0 + tile_size, width))


def halo_window(tile: Tile, halo: int, shape_yx: Sequence[int]) -> tuple[int, int, int, int]:
    """Return the window (y0, y1, x0, x1) of ``tile`` grown by ``halo`` pixels, clipped to the image."""
    return (
        max(tile.y0 - halo, 0),
        min(tile.y1 + halo, int(shape_yx[0])),
        max(tile.x0 - halo, 0),
        min(tile.x1 + halo, int(shape_yx[1])),
    )


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Write a file or folder atomically: yield a temporary sibling path, rename it to ``path`` on success.

    A failed writer removes its temporary path; a killed one (SIGKILL, a node that went down) leaves it
    (``<name>.tmp-<pid>``), but never a partial output under the final name, and the next write of the
    same output removes such leftovers first, so a crashed slide does not keep gigabytes of half an
    image. An existing output is replaced only once the new one is complete. One writer per output at a
    time is assumed, as Snakemake's lock on the working directory guarantees: a second, concurrent
    writer of the same path would remove the first one's temporary path.

    Example
    -------
    >>> with atomic_output(tmp_dir / "cells.parquet") as tmp:  # doctest: +SKIP
    ...     table.to_parquet(tmp)
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    for leftover in final.parent.glob(f"{glob.escape(final.name)}.tmp-*"):
        _remove(leftover)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    _remove(final)
    os.replace(tmp, final)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _compressors(level: int):
    return (BloscCodec(cname="zstd", clevel=int(level), shuffle=BloscShuffle.bitshuffle),)


def _space_axes(pixel_size_um: float | None) -> list[dict]:
    unit = {"unit": "micrometer"} if pixel_size_um else {}
    return [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]


def _multiscales(name: str, axes: list[dict], scale: list[float]) -> list[dict]:
    return [
        {
            "name": name,
            "axes": axes,
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }
    ]


def create_ome_zarr_image(
    path: str | os.PathLike,
    shape: Sequence[int],
    dtype,
    tile_size: int,
    channel_names: Sequence[str],
    pixel_size_um: float | None = None,
    name: str = "image",
    compression_level: int = 5,
    extra_attributes: dict | None = None,
) -> zarr.Array:
    """Create an empty OME-Zarr image (c, y, x) chunked one tile per chunk, and return its array.

    Parameters
    ----------
    path : folder to create (overwritten).
    shape : (c, y, x).
    dtype : numpy dtype of the pixels.
    tile_size : chunk edge in pixels; chunks are (1, tile_size, tile_size).
    channel_names : one name per channel, stored as omero channel labels.
    pixel_size_um : physical pixel size; recorded as the scale and unit of the y and x axes when known.
    extra_attributes : stored under ``attributes["hemoprofile"]`` (provenance, statistics).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"an OME-Zarr image needs shape (c, y, x), got {shape}")
    if len(channel_names) != shape[0]:
        raise ValueError(f"{len(channel_names)} channel names given for {shape[0]} channels")
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        window_max = float(np.iinfo(dtype).max)
    else:
        window_max = 1.0
    omero_channels = [
        {
            "label": str(ch),
            "color": CHANNEL_COLOURS.get(str(ch), "808080"),
            "active": True,
            "window": {"start": 0.0, "end": window_max, "min": 0.0, "max": window_max},
        }
        for ch in channel_names
    ]
    scale = float(pixel_size_um) if pixel_size_um else 1.0
    ome = {
        "version": NGFF_VERSION,
        "multiscales": _multiscales(name, [{"name": "c", "type": "channel"}, *_space_axes(pixel_size_um)],
                                    [1.0, scale, scale]),
        "omero": {"channels": omero_channels, "rdefs": {"model": "color"}},
    }
    return _create_ome_group_array(path, ome, extra_attributes, shape, (1, int(tile_size), int(tile_size)),
                                   dtype, compression_level, ("c", "y", "x"))


def create_ome_zarr_labels(
    path: str | os.PathLike,
    shape_yx: Sequence[int],
    tile_size: int,
    pixel_size_um: float | None = None,
    name: str = "labels",
    dtype="uint32",
    compression_level: int = 5,
    extra_attributes: dict | None = None,
) -> zarr.Array:
    """Create an empty OME-Zarr label image (y, x), 0 = background, one chunk per tile; return its array."""
    scale = float(pixel_size_um) if pixel_size_um else 1.0
    ome = {
        "version": NGFF_VERSION,
        "multiscales": _multiscales(name, _space_axes(pixel_size_um), [scale, scale]),
        "image-label": {"version": NGFF_VERSION},
    }
    return _create_ome_group_array(path, ome, extra_attributes, tuple(int(s) for s in shape_yx),
                                   (int(tile_size), int(tile_size)), dtype, compression_level, ("y", "x"))


def _create_ome_group_array(path, ome, extra_attributes, shape, chunks, dtype, compression_level, dimension_names):
    """Write a zarr v3 group carrying ``ome`` metadata and return its empty full-resolution array ``0``."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.attrs["ome"] = ome
    if extra_attributes:
        root.attrs["hemoprofile"] = extra_attributes
    return root.create_array(
        "0",
        shape=shape,
        chunks=chunks,
        dtype=np.dtype(dtype),
        compressors=_compressors(compression_level),
        fill_value=0,
        dimension_names=dimension_names,
    )


class OmeZarrImage(NamedTuple):
    """An opened OME-Zarr image: the full-resolution array and the metadata hemoprofile relies on."""

    array: zarr.Array
    channel_names: list[str]
    pixel_size_um: float | None
    attributes: dict


def open_ome_zarr(path: str | os.PathLike) -> OmeZarrImage:
    """Open an OME-Zarr image or label image written by this module (read only).

    Raises
    ------
    ValueError naming the path when it is not an OME-Zarr group with a level ``0`` array.
    """
    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as err:  # zarr raises several types for a missing or broken store
        raise ValueError(f"{path}: not a readable zarr group ({err})") from err
    ome = root.attrs.get("ome")
    if not ome or "multiscales" not in ome:
        raise ValueError(f"{path}: zarr group has no OME-NGFF 'multiscales' metadata")
    array = root["0"]
    channels = [c.get("label", f"channel_{i}") for i, c in enumerate(ome.get("omero", {}).get("channels", []))]
    axes = ome["multiscales"][0]["axes"]
    unit = any(a.get("unit") == "micrometer" for a in axes)
    scale = ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    pixel_size = float(scale[-1]) if unit else None
    return OmeZarrImage(array, channels, pixel_size, dict(root.attrs.get("hemoprofile", {})))


# --- HDSCA-style frame folders -----------------------------------------------------------------------
#
# An HDSCA scanner writes one single-channel image per frame and channel. Its convention numbers files
# channel-major: with n frames, channel k's frame f (0-based) is file index k * n + f + 1, e.g.
# Tile000001.tif ... Tile002304.tif for DAPI, Tile002305.tif ... for CK. ``frame_filename`` renders a
# pattern with the fields {index}, {frame} (1-based frame number), {channel} (name) and {channel_index}.

FRAME_ORDERS = ("row-major", "snake")


def frame_filename(pattern: str, frame: int, channel_index: int, channel_name: str, n_frames: int) -> str:
    """Return the file name of 0-based ``frame`` in channel ``channel_index`` for a frame-folder pattern.

    Example
    -------
    >>> frame_filename("Tile{index:06d}.tif", 0, 1, "CK", 2304)
    'Tile002305.tif'
    """
    try:
        return pattern.format(
            index=channel_index * n_frames + frame + 1,
            frame=frame + 1,
            channel=channel_name,
            channel_index=channel_index,
        )
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"frame pattern {pattern!r} is not usable ({err}); allowed fields: "
            "{index}, {frame}, {channel}, {channel_index}"
        ) from err


def frame_grid_position(frame: int, rows: int, cols: int, order: str = "row-major") -> tuple[int, int]:
    """Return the (row, col) of 0-based ``frame`` in a rows x cols grid.

    ``row-major`` fills each row left to right; ``snake`` (a serpentine scan) reverses every second row.
    """
    if not 0 <= frame < rows * cols:
        raise ValueError(f"frame {frame} outside a {rows}x{cols} grid")
    if order not in FRAME_ORDERS:
        raise ValueError(f"frame order {order!r} not one of {FRAME_ORDERS}")
    row, col = divmod(frame, cols)
    if order == "snake" and row % 2 == 1:
        col = cols - 1 - col
    return row, col


class CellIdsDigest:
    """SHA-256 of a cells table's ``cell_id`` column in row order (as int64), fed part by part.

    The extract stage records it in patches.zarr (``cell_ids_sha256``), so a reader can tell that a
    cells.parquet and a patches.zarr come from the same run: extract renames its outputs one after another,
    and a run killed between the renames would otherwise leave a new table beside old patches.

    Example
    -------
    >>> d = CellIdsDigest(); d.update([3, 7]); d.update([9])
    >>> d.hexdigest() == CellIdsDigest.of([3, 7, 9])
    True
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, cell_ids) -> None:
        self._hash.update(np.ascontiguousarray(np.asarray(cell_ids, dtype=np.int64)).tobytes())

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    @classmethod
    def of(cls, cell_ids) -> str:
        digest = cls()
        digest.update(cell_ids)
        return digest.hexdigest()


def model_id(path: str | os.PathLike) -> str:
    """The id of a model file: the first 12 hex digits of its SHA-256 (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]
