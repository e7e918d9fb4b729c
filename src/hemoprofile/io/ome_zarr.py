"""OME-Zarr (zarr v3, NGFF 0.5) images and label images: create, open, and the metadata hemoprofile relies on.

Layout of an image written here (``image.zarr``, ``preprocessed.zarr``)::

    image.zarr/            zarr v3 group, attributes["ome"] = NGFF 0.5 multiscales + omero channels
        0/                 array (c, y, x), chunks (1, tile, tile), Blosc-zstd compressed

A label image (``labels.zarr``, ``truth_labels.zarr``) is the same with axes (y, x), an integer dtype and
``attributes["ome"]["image-label"]`` set, so napari and other OME-Zarr readers show it as labels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from hemoprofile.vocabulary import channel_colour_hex

NGFF_VERSION = "0.5"


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
            "color": channel_colour_hex(str(ch)),
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
