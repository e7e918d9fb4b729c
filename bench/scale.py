"""Whole-slide scale benchmark (issue 16): every per-slide stage of the workflow on one real-size
synthetic slide (``synthetic.preset: hdsca``) at two scales, side by side.

Each stage is one Snakemake invocation whose only target is that stage's output for one slide (the
earlier stages are already built), so the stage runs exactly as in the workflow (its rule, its script,
its params) and nothing else is built. Per stage it prints:

- wall: seconds of the stage's job (the script process, from start to exit; Snakemake's own start-up
  and DAG building are not counted);
- us/cell: wall / cells of the slide (truth_cells.parquet rows);
- cpu: user + system seconds of the job (and its children), polled like the peak; on a shared machine
  this is the figure to compare, since wall time grows with other users' load;
- peak RSS: the job's VmHWM (polled every 0.2 s from /proc: a high-water mark, so a poll at any time
  holds the peak so far; only the last 0.2 s before exit can be missed); ``tree`` is
  resource.getrusage-style ru_maxrss of the whole Snakemake process tree from ``os.wait4`` (exact, but
  Snakemake's own process counts too, so it is an upper bound);
- B/cell: bytes on disk of the stage's outputs per cell.

Then, for the second scale, the ratios the issue's targets ask for: peak RSS large/small (target <= 1.3)
and time per cell large/small (target <= 1.2). Work folders go under ``--work`` (one per scale), deleted
afterwards unless ``--keep``.

Usage::

    PYTHONPATH=src .venv/bin/python bench/scale.py --scales 1/64 1/16 --work /work/benchwork/scale

The cohort stages (classify, embed, aggregate, report) train on every slide of the cohort and are not
run here yet: only per-slide stages are (simulate, tile, preprocess, segment, extract).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

#: Per-slide stages in chain order: stage -> (rule, output paths relative to the results folder).
STAGES = {
    "simulate": ("simulate_slide", ["synthetic/{slide}/frames", "synthetic/{slide}/truth_labels.zarr",
                                    "synthetic/{slide}/truth_cells.parquet"]),
    "tile": ("tile", ["{slide}/image.zarr"]),
    "preprocess": ("preprocess", ["{slide}/preprocessed.zarr"]),
    "segment": ("segment", ["{slide}/labels.zarr"]),
    "extract": ("extract", ["{slide}/cells.parquet", "{slide}/patches.zarr", "{slide}/clusters.parquet"]),
}
RSS_TARGET, TIME_TARGET = 1.3, 1.2


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _job_watch(pid: int, stop: threading.Event, seen: dict) -> None:
    """Poll the Snakemake process tree: each script job's VmHWM (KiB; the job is the descendant whose
    command line names Snakemake's script copy under .snakemake/scripts/)."""
    import psutil  # a Snakemake dependency

    root = psutil.Process(pid)
    while not stop.is_set():
        try:
            children = root.children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            try:
                if not any(".snakemake/scripts/" in part for part in child.cmdline()):
                    continue
                status = Path(f"/proc/{child.pid}/status").read_text()
                cpu = child.cpu_times()
            except (psutil.Error, OSError):
                continue
            hwm = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
            entry = seen.setdefault(child.pid, {"hwm_kib": 0, "cpu_s": 0.0})
            entry["hwm_kib"] = max(entry["hwm_kib"], hwm)
            entry["cpu_s"] = max(entry["cpu_s"], cpu.user + cpu.system + cpu.children_user + cpu.children_system)
        stop.wait(0.2)


def run_stage(stage: str, slide: str, results: Path, configfiles: list[Path], cores: int, log: Path) -> dict:
    rule, outputs = STAGES[stage]
    targets = [str(results / o.format(slide=slide)) for o in outputs]
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--configfile", *map(str, configfiles),
           "--allowed-rules", rule, "--", *targets]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    with open(log, "a") as handle:
        handle.write(f"\n$ {' '.join(cmd)}\n")
        handle.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
        seen: dict = {}
        stop = threading.Event()
        watcher = threading.Thread(target=_job_watch, args=(proc.pid, stop, seen), daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        watcher.join()
    total = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"stage {stage} failed (exit {proc.returncode}); see {log}")
    bench = results / "benchmarks" / stage / f"{slide}.tsv"  # the rules' benchmark: paths
    job_s = None
    if bench.exists():
        lines = bench.read_text().splitlines()
        job_s = float(lines[1].split("\t")[0]) if len(lines) > 1 else None
    jobs = list(seen.values())
    return {
        "stage": stage,
        "wall_s": job_s if job_s is not None else total,
        "snakemake_s": total,
        "job_cpu_s": sum(j["cpu_s"] for j in jobs),
        "tree_cpu_s": usage.ru_utime + usage.ru_stime,
        "job_hwm_mib": max((j["hwm_kib"] for j in jobs), default=0) / 1024,
        "tree_maxrss_mib": usage.ru_maxrss / 1024,
        "bytes": sum(tree_bytes(Path(t)) for t in targets),
    }


def scale_tag(scale: str) -> str:
    fraction = Fraction(scale.replace(" ", ""))
    return f"{fraction.numerator}_{fraction.denominator}"


def run_scale(scale: str, args) -> dict:
    from hemoprofile.config import load_config
    from hemoprofile.simulate import plan_cohort
    from hemoprofile.simulate.settings import read_settings

    work = Path(args.work) / f"scale_{scale_tag(scale)}"
    results = work / "results"
    work.mkdir(parents=True, exist_ok=True)
    overlay = work / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"results": str(results), "synthetic": {"scale": scale}}))
    configfiles = [ROOT / args.config, overlay]
    merged = load_config(ROOT / "config" / "config.yaml")
    for extra in configfiles:
        merged = _merge(merged, yaml.safe_load(extra.read_text()))
    s = read_settings(merged["synthetic"])
    slide = args.slide or str(plan_cohort(merged["synthetic"], results / "synthetic").iloc[0]["slide"])
    print(f"\n== scale {scale}: {s.rows} x {s.cols} frames of {s.frame_h} x {s.frame_w} px, slide {slide}, "
          f"work {work}", flush=True)
    rows = []
    n_cells = None
    for stage in args.stages:
        row = run_stage(stage, slide, results, configfiles, args.cores, work / "snakemake.log")
        if n_cells is None:
            import pyarrow.parquet as pq

            n_cells = pq.ParquetFile(results / "synthetic" / slide / "truth_cells.parquet").metadata.num_rows
        row["us_per_cell"] = row["wall_s"] / n_cells * 1e6
        row["cpu_us_per_cell"] = row["job_cpu_s"] / n_cells * 1e6
        row["bytes_per_cell"] = row["bytes"] / n_cells
        rows.append(row)
        print(f"  {stage:<11} wall {row['wall_s']:8.1f} s  {row['us_per_cell']:8.1f} us/cell  "
              f"cpu {row['job_cpu_s']:8.1f} s  {row['cpu_us_per_cell']:8.1f} us/cell  "
              f"job peak {row['job_hwm_mib']:7.0f} MiB  tree {row['tree_maxrss_mib']:7.0f} MiB  "
              f"{row['bytes_per_cell']:8.0f} B/cell", flush=True)
    summary = {"scale": scale, "frames": s.n_frames, "cells": n_cells, "slide": slide, "stages": rows}
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    if not args.keep:
        shutil.rmtree(results, ignore_errors=True)
    return summary


def _merge(base: dict, extra: dict | None) -> dict:
    out = dict(base)
    for key, value in (extra or {}).items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def print_table(small: dict, large: dict) -> None:
    a_s, b_s = small["scale"], large["scale"]
    print(f"\n{'stage':<11} | {'wall s':>15} | {'CPU us/cell':>15} | {'job peak MiB':>15} | {'B/cell':>15} | "
          f"{'RSS ratio':>9} | {'CPU/cell ratio':>14} | {'wall/cell ratio':>15}")
    print(f"{'':<11} | " + " | ".join(f"{a_s:>7} {b_s:>7}" for _ in range(4))
          + f" | {'<= ' + str(RSS_TARGET):>9} | {'<= ' + str(TIME_TARGET):>14} | {'<= ' + str(TIME_TARGET):>15}")
    for a, b in zip(small["stages"], large["stages"]):
        rss = b["job_hwm_mib"] / a["job_hwm_mib"] if a["job_hwm_mib"] else float("nan")
        cpu = b["cpu_us_per_cell"] / a["cpu_us_per_cell"] if a["cpu_us_per_cell"] else float("nan")
        wall = b["us_per_cell"] / a["us_per_cell"]
        print(f"{a['stage']:<11} | {a['wall_s']:7.1f} {b['wall_s']:7.1f} | {a['cpu_us_per_cell']:7.1f} "
              f"{b['cpu_us_per_cell']:7.1f} | {a['job_hwm_mib']:7.0f} {b['job_hwm_mib']:7.0f} | "
              f"{a['bytes_per_cell']:7.0f} {b['bytes_per_cell']:7.0f} | {rss:9.2f} | {cpu:14.2f} | {wall:15.2f}")
    print(f"cells: {small['cells']} ({small['frames']} frames) vs {large['cells']} ({large['frames']} frames)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", nargs="+", default=["1/64", "1/16"],
                        help="one or two slide scales (fractions of the 2,304-frame slide); the second is "
                             "compared with the first")
    parser.add_argument("--work", default="/work/benchwork/scale", help="work folder (outside the repository)")
    parser.add_argument("--config", default="config/scale.yaml", help="config layered on config/config.yaml")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    parser.add_argument("--slide", default="", help="slide to run (default: the plan's first)")
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the work folders' results")
    args = parser.parse_args(argv)
    if len(args.scales) > 2:
        parser.error("give one or two scales")
    stages = [s for s in STAGES if s in args.stages]  # chain order
    args.stages = stages
    summaries = [run_scale(scale, args) for scale in args.scales]
    if len(summaries) == 2:
        print_table(*summaries)


if __name__ == "__main__":
    main()
