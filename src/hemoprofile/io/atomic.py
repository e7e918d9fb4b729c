"""Atomic writes: an output appears under its final name only once it is complete."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


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
