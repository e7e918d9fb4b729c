"""Blocks of a slide computed on several threads and handed back in block order (:func:`ordered_map`).

Every stage that walks a slide block by block (tile, preprocess, extract, classify and embed inference)
uses this to spread its blocks over the threads its rule is given (``threads:`` in the Snakefile,
``snakemake.threads`` passed on as ``threads=``), without changing a byte of its output:

* blocks are computed in parallel but their results come back **in block order**, so the caller writes
  zarr chunks, parquet row groups and running reductions (min, max, counts, cluster pairs) exactly as
  the one-thread loop does; each block's own computation is the same code on the same input;
* at most ``2 x threads`` blocks are in flight (submitted and not yet consumed), so memory is bounded by a
  few blocks whatever the slide's size, and a slow block never lets the others pile up.

Why threads, and why this and not a whole dask graph
----------------------------------------------------
The per-block work is numpy / scipy / scikit-image array code, Blosc/zstd (de)compression in zarr's codecs
and torch kernels: all release the GIL for their heavy parts, so threads run them in parallel without the
pickling and memory copies of processes, and the zarr arrays, open files and loaded models are shared.
A ``dask.compute`` over every block of a slide (dask's threaded scheduler) keeps each finished block's
result until the end, and results of ragged size (cell tables, patches) cannot be ``da.store``-d into a
zarr array in order; batching the graph into windows would put a barrier after each window. A
``concurrent.futures`` pool fed block by block with a window of futures is the bounded, ordered form of
the same threaded map; no scheduling logic is written here (the pool decides which thread runs what).

The exception is work that holds the GIL: the slide simulator renders ~1,300 cells per frame with many
small numpy calls each, and on a thread pool two frames took longer than on one thread (bench/
simulate_threads.py). ``processes=True`` runs the same bounded, ordered map on forked worker processes.
Preprocess, segment (classical), extract, classify and embed use it too: on an idle 2-core machine
their threads kept only 1.05-1.57 cores busy (bench/threads.py at 917a368: scikit-image's CLAHE,
per-cell morphology, the Python around torch and the parent's own writing hold the GIL for much of
each block), while forked workers run
each block's Python and C alike in parallel, and the parent's in-order writing overlaps with them.

A forked worker inherits the caller's memory, so ``fn`` itself is never pickled: it is parked in a
module-level table before the pool forks and looked up there by the worker (:func:`_call_parked`); a
closure over open zarr arrays, a calibrated segmenter or per-process chunk caches works as it does on a
thread. Only the items and the results cross the process boundary (pickled). zarr resets its I/O loop
and lock in a forked child (``zarr.core.sync.reset_resources_after_fork``), so workers read and write
zarr arrays opened before the fork.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
import multiprocessing
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Block functions of running process maps, by key: set before the pool forks, so every worker
#: inherits the entry (the function is never pickled).
_PARKED: dict[int, Callable] = {}


def _call_parked(key: int, item):
    """Run in a forked worker: the parked function of map ``key`` on one item."""
    return _PARKED[key](item)


def resolve_threads(threads: int | None) -> int:
    """The number of threads to use: ``None`` or 0 means 1; a negative number is an error."""
    n = 1 if threads is None else int(threads)
    if n < 0:
        raise ValueError(f"threads must be >= 1 (or 0/None for 1), got {threads}")
    return max(1, n)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int | None = 1,
                in_flight: int | None = None, processes: bool = False) -> Iterator[R]:
    """Yield ``fn(item)`` for each of ``items`` in their order, computing up to ``threads`` at a time.

    Parameters
    ----------
    fn : the per-block function; it must not depend on which thread runs it or on the order blocks
        finish (read shared inputs, return a new result, write nothing shared).
    items : the blocks (consumed lazily, as room in the window frees up).
    threads : worker threads; 1 (or None) runs ``fn`` in the calling thread, exactly the plain loop.
    in_flight : most blocks submitted and not yet yielded (default ``2 * threads``): bounds memory.
    processes : run the blocks in ``threads`` forked worker processes instead of threads, for per-block
        work that holds the GIL (many small numpy calls driven from Python, as the slide simulator's
        per-cell rendering). The items and the results must then be picklable; ``fn`` need not be (any
        closure: it is inherited through the fork, see the module doc) and sees a fork-time copy of the
        caller's memory, so what it changes outside its result is lost (files it writes are not).
        Processes are forked (not spawned): a spawned worker re-runs the ``__main__`` module, which for a
        Snakemake script is the job itself.

    Yields
    ------
    The results, in the order of ``items``. An exception raised by ``fn`` is raised here, at its block's
    turn; blocks not yet started are then cancelled.

    Example
    -------
    >>> list(ordered_map(lambda x: x * x, range(5), threads=2))
    [0, 1, 4, 9, 16]
    """
    n = resolve_threads(threads)
    if n == 1:
        for item in items:
            yield fn(item)
        return
    limit = max(n, int(in_flight) if in_flight else 2 * n)
    window: deque[Future] = deque()
    pool: Executor
    if processes:
        key = id(window)  # unique while this map runs (its window lives as long)
        _PARKED[key] = fn  # before the pool forks its workers: they inherit it
        pool = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("fork"))
        submit = functools.partial(pool.submit, _call_parked, key)
    else:
        key = None
        pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="hemoprofile-block")
        submit = functools.partial(pool.submit, fn)
    try:
        with pool:
            try:
                for item in items:
                    window.append(submit(item))
                    if len(window) >= limit:
                        yield window.popleft().result()
                while window:
                    yield window.popleft().result()
            finally:
                for future in window:
                    future.cancel()
    finally:
        _PARKED.pop(key, None)
