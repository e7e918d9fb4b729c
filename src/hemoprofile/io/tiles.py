"""The tile grid of a slide: tiles in row-major order and their windows grown by a halo."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple


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
