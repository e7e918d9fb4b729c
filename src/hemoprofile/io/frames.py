"""HDSCA-style frame folders: file names of frames and their place on the frame grid.

An HDSCA scanner writes one single-channel image per frame and channel. Its convention numbers files
channel-major: with n frames, channel k's frame f (0-based) is file index k * n + f + 1, e.g.
Tile000001.tif ... Tile002304.tif for DAPI, Tile002305.tif ... for CK. ``frame_filename`` renders a
pattern with the fields {index}, {frame} (1-based frame number), {channel} (name) and {channel_index}.
"""

from __future__ import annotations

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
