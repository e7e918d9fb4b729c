"""Speed-up of 2 workers over 1 for the slide simulator (issue 16), on one real-size (``hdsca``) slide.

Simulates the same slide with ``threads=1`` and ``threads=2`` (frames rendered on forked worker
processes, written in frame order; hemoprofile.simulate.slide), checks that every output file is byte
for byte the same, and prints wall time, CPU time (this process and its workers) and the cores kept busy
(CPU / wall). For comparison, the same frames rendered on a plain thread pool (the rendering is many
small numpy calls per cell, which hold the GIL, so threads do not run it in parallel): frame rendering
only, no writing.

    PYTHONPATH=src .venv/bin/python bench/simulate_threads.py --scale 1/256 --work /work/benchwork/simthreads

Prints the load average before and after: on a shared machine the speed-up is depressed by other jobs.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hemoprofile.config import validate_config  # noqa: E402
from hemoprofile.io import ordered_map  # noqa: E402
from hemoprofile.simulate import plan_cohort, simulate_slide  # noqa: E402
from hemoprofile.simulate.cohort import composition_of  # noqa: E402
from hemoprofile.simulate.frame import simulate_frame  # noqa: E402
from hemoprofile.simulate.optics import slide_optics  # noqa: E402
from hemoprofile.simulate.settings import read_settings  # noqa: E402


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # worker processes, once joined
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn):
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn()
    return result, time.perf_counter() - wall, cpu_seconds() - cpu


def tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _frame(f, s, composition, optics):
    return len(simulate_frame(np.random.default_rng([s.seed, 3, 0, f]), s, composition, 0, optics, 1, 0).cells)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="1/256", help="slide scale of the hdsca preset (1/256: 6 x 2 frames)")
    parser.add_argument("--work", default="/work/benchwork/simthreads")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    cfg = validate_config({"synthetic": {"enabled": True, "preset": "hdsca", "scale": args.scale}})["synthetic"]
    s = read_settings(cfg)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    print(f"hdsca {args.scale}: {s.rows} x {s.cols} frames of {s.frame_h} x {s.frame_w} px; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    runs = {}
    for n in (1, args.threads):
        out = work / f"t{n}"
        sample = plan_cohort(cfg, out).iloc[0]
        summary, wall, cpu = timed(lambda: simulate_slide(cfg, sample.to_dict(), out, threads=n))
        runs[n] = (out / summary["slide"], summary, wall, cpu)
        print(f"simulate_slide threads={n}: wall {wall:6.1f} s  cpu {cpu:6.1f} s  cores {cpu / wall:4.2f}  "
              f"{summary['n_cells']} cells, {wall / summary['n_cells'] * 1e3:.2f} ms/cell", flush=True)
    (dir1, _, wall1, _), (dirn, _, walln, _) = runs[1], runs[args.threads]
    identical = tree(dir1) == tree(dirn)
    print(f"speed-up {args.threads} workers / 1: {wall1 / walln:.2f}x; outputs byte-identical: {identical}")

    composition = composition_of(s, "control", 1)
    optics = slide_optics(np.random.default_rng(0), s)
    render = functools.partial(_frame, s=s, composition=composition, optics=optics)
    frames = range(min(s.n_frames, 2 * args.threads))
    for label, processes in (("threads", False), ("processes", True)):
        for n in (1, args.threads):
            _, wall, cpu = timed(lambda: list(ordered_map(render, frames, n, processes=processes)))
            print(f"render {len(frames)} frames on {n} {label}: wall {wall:6.1f} s  cpu {cpu:6.1f} s  "
                  f"cores {cpu / wall:4.2f}", flush=True)
    print(f"load {os.getloadavg()[0]:.2f}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if not identical:
        raise SystemExit("outputs differ between 1 and N workers")


if __name__ == "__main__":
    main()
