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
  Snakemake's own process counts too, so it is an upper bound); a job's forked workers (simulate's
  frame workers, threads.simulate) are listed apart: the sum of their peaks, an upper bound since pages
  shared with the job count in each;
- B/cell: bytes on disk of the stage's outputs per cell.

After the tile stage it prints the tile job's throughput, MB/s of raw frame pixels (frames x channels x
frame pixels x 2 bytes, over the job's wall time), next to a baseline measured right after it on the same
frames: a plain loop that reads each frame's channel TIFFs with tifffile and writes them into a zarr
array with tile's chunking and codec ((1, tile.size, tile.size) chunks, Blosc zstd at
tile.compression_level with bitshuffle, as hemoprofile.io.ome_zarr), one thread, no statistics, checks or
pyramid. ``--threads N`` gives every stage N threads (``threads:`` of each rule) and runs Snakemake
with ``--cores N``.

Then, for the second scale, the ratios the issue's targets ask for: peak RSS large/small (target <= 1.3)
and time per cell large/small (target <= 1.2). Work folders go under ``--work`` (one per scale), deleted
afterwards unless ``--keep``.

Usage::

    PYTHONPATH=src .venv/bin/python bench/scale.py --scales 1/64 1/16 --work /work/benchwork/scale
    PYTHONPATH=src .venv/bin/python bench/scale.py --scales 1/256 --threads 2   # smallest smoke run

The cohort stages train on every slide of the cohort, so classify and embed are measured as inference
only, with the models of a finished run (``--models-from results/scale``: its models/classifier_<task>.pt
for classify.tasks and models/embedder.pt): each is one process calling the package function with the
rule's arguments (classify_slide, embed_slide), measured like a job (wall is that process's, imports
included). Aggregate and report are not run here.

    PYTHONPATH=src .venv/bin/python bench/scale.py --scales 1/64 1/16 --models-from results/scale

Without a finished run, ``--untrained-models`` times the same inference with models that have the
config's architectures but were never trained: a random-weight CellNet per classify task (seed 0) and a
VAE trained for one epoch on 500 of the slide's own cells (the time of that training is not counted).
Their predictions mean nothing; the per-cell time and memory are those of the trained models, since the
networks and their inputs are the same.

On the full slide the tile baseline (a plain copy of all 2,304 frames) costs as long as tile itself;
``--baseline-frames N`` times it on the first N frames only (the figure is MB/s, so a sample suffices).
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
#: Inference stages, run only with --models-from (run_inference).
INFERENCE = ("classify", "embed")
RSS_TARGET, TIME_TARGET = 1.3, 1.2
#: The ``threads:`` keys --threads sets (every per-slide stage here).
THREADED = ("simulate", "tile", "preprocess", "segment", "extract")


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _job_watch(pid: int, stop: threading.Event, seen: dict, marker: str = ".snakemake/scripts/") -> None:
    """Poll the Snakemake process tree: each script job's VmHWM (KiB; the job is the descendant whose
    command line names Snakemake's script copy under .snakemake/scripts/) and CPU seconds. A job's
    forked worker processes (simulate's frame workers) have the same command line; they are told apart
    by their parent and marked ``worker``."""
    import psutil  # a Snakemake dependency

    root = psutil.Process(pid)
    while not stop.is_set():
        try:
            children = [root, *root.children(recursive=True)]
        except psutil.Error:
            children = []
        for child in children:
            try:
                if not any(marker in part for part in child.cmdline()):
                    continue
                status = Path(f"/proc/{child.pid}/status").read_text()
                cpu = child.cpu_times()
                parent = child.ppid()
            except (psutil.Error, OSError):
                continue
            hwm = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
            entry = seen.setdefault(child.pid, {"hwm_kib": 0, "own_s": 0.0, "cpu_s": 0.0,
                                                "worker": parent in seen})
            entry["hwm_kib"] = max(entry["hwm_kib"], hwm)
            entry["own_s"] = max(entry["own_s"], cpu.user + cpu.system)
            entry["cpu_s"] = max(entry["cpu_s"], cpu.user + cpu.system + cpu.children_user + cpu.children_system)
        stop.wait(0.2)


def _job_cpu(seen: dict) -> float:
    """CPU seconds of the jobs and their workers: each job's own + reaped children's time, or its own plus
    its workers' as last polled, whichever is larger (both undercount only what a 0.2 s poll missed)."""
    jobs = [j for j in seen.values() if not j["worker"]]
    workers = [j for j in seen.values() if j["worker"]]
    return max(sum(j["cpu_s"] for j in jobs), sum(j["own_s"] for j in jobs) + sum(w["own_s"] for w in workers))


def _measured(cmd: list[str], log: Path, marker: str = ".snakemake/scripts/") -> tuple[int, float, object, dict]:
    """Run ``cmd`` with its output appended to ``log``, polling the jobs in its tree whose command line
    holds ``marker``; return its exit code, wall seconds, wait4 rusage and the polled jobs."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    with open(log, "a") as handle:
        handle.write(f"\n$ {' '.join(cmd)}\n")
        handle.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
        seen: dict = {}
        stop = threading.Event()
        watcher = threading.Thread(target=_job_watch, args=(proc.pid, stop, seen, marker), daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        stop.set()
        watcher.join()
    return os.waitstatus_to_exitcode(status), time.perf_counter() - start, usage, seen


def _row(stage: str, wall: float, total: float, usage, seen: dict, targets: list[str]) -> dict:
    jobs = [j for j in seen.values() if not j["worker"]]
    workers = [j for j in seen.values() if j["worker"]]
    return {
        "stage": stage,
        "wall_s": wall,
        "snakemake_s": total,
        "job_cpu_s": _job_cpu(seen),
        "tree_cpu_s": usage.ru_utime + usage.ru_stime,
        "job_hwm_mib": max((j["hwm_kib"] for j in jobs), default=0) / 1024,
        "tree_maxrss_mib": usage.ru_maxrss / 1024,
        # forked workers: the sum of their peaks (an upper bound: pages shared with the job count in each)
        "workers_hwm_mib": sum(w["hwm_kib"] for w in workers) / 1024,
        "workers": len(workers),
        "bytes": sum(tree_bytes(Path(t)) for t in targets),
    }


def run_stage(stage: str, slide: str, results: Path, configfiles: list[Path], cores: int, log: Path) -> dict:
    rule, outputs = STAGES[stage]
    targets = [str(results / o.format(slide=slide)) for o in outputs]
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--configfile", *map(str, configfiles),
           "--allowed-rules", rule, "--", *targets]
    code, total, usage, seen = _measured(cmd, log)
    if code != 0:
        raise SystemExit(f"stage {stage} failed (exit {code}); see {log}")
    bench = results / "benchmarks" / stage / f"{slide}.tsv"  # the rules' benchmark: paths
    job_s = None
    if bench.exists():
        lines = bench.read_text().splitlines()
        job_s = float(lines[1].split("\t")[0]) if len(lines) > 1 else None
    return _row(stage, job_s if job_s is not None else total, total, usage, seen, targets)


#: Inference with already-trained models (--models-from): the rule's script body, as one process.
INFERENCE_CODE = {
    "classify": """
import sys, json
from hemoprofile.classify.inference import classify_slide
a = json.loads(sys.argv[1])
classify_slide(a["patches"], a["cells"], a["models"], a["out"], device=a["device"],
               mixed_precision=a["mixed_precision"], batch_size=a["batch_size"], tta=a["tta"],
               threads=a["threads"], progress=print)
""",
    "embed": """
import sys, json
from hemoprofile.embed.slide import embed_slide
a = json.loads(sys.argv[1])
embed_slide(a["model"], a["patches"], a["cells"], a["out"], slide=a["slide"], category=None,
            device=a["device"], mixed_precision=a["mixed_precision"], batch_size=a["batch_size"],
            threads=a["threads"], progress=print)
""",
}
INFERENCE_MARKER = "#hemoprofile-bench-inference"


def run_inference(stage: str, slide: str, results: Path, merged: dict, models: Path, threads: int,
                  log: Path) -> dict:
    """classify or embed of one slide with the trained models under ``models`` (a finished run's
    results/models), in one measured process: the same package call and arguments as the rule's script,
    without Snakemake (which would want to retrain the models of the bench's one-slide cohort)."""
    slide_dir = results / slide
    args = {"patches": str(slide_dir / "patches.zarr"), "cells": str(slide_dir / "cells.parquet"),
            "threads": threads}
    if stage == "classify":
        section = merged["classify"]
        given = section.get("models") or {}
        paths = [Path(given[t]) if given.get(t) else models / f"classifier_{t}.pt" for t in section["tasks"]]
        out = slide_dir / "predictions.parquet"
        args.update(models=[str(p) for p in paths], device=section["device"],
                    mixed_precision=section["mixed_precision"], batch_size=section["batch_size"], tta=section["tta"])
    else:
        section = merged["embed"]
        if section.get("condition_on", "none") != "none":
            raise SystemExit("bench/scale.py embeds with embed.condition_on: none only")
        paths = [models / "embedder.pt"]
        out = slide_dir / "embedding.parquet"
        args.update(model=str(paths[0]), slide=slide, device=section["device"],
                    mixed_precision=section["mixed_precision"], batch_size=section["batch_size"])
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise SystemExit(f"--models-from: missing {', '.join(missing)}")
    args["out"] = str(out)
    cmd = [sys.executable, "-c", INFERENCE_CODE[stage] + INFERENCE_MARKER, json.dumps(args)]
    code, total, usage, seen = _measured(cmd, log, marker=INFERENCE_MARKER)
    if code != 0:
        raise SystemExit(f"stage {stage} failed (exit {code}); see {log}")
    return _row(stage, total, total, usage, seen, [str(out)])


def write_untrained_models(merged: dict, slide: str, results: Path, models: Path, threads: int) -> None:
    """models/classifier_<task>.pt (random weights) and models/embedder.pt (one epoch on 500 of the slide's
    cells) with the config's architectures: see the module docstring."""
    import torch

    from hemoprofile.classify.checkpoints import save_classifier
    from hemoprofile.classify.training import spec_from_config
    from hemoprofile.embed.sample import EmbedSlide
    from hemoprofile.embed.training import train_embedder
    from hemoprofile.io.patches import open_patch_array
    from hemoprofile.nn.cnn import CellNet
    from hemoprofile.vocabulary import task_classes

    models.mkdir(parents=True, exist_ok=True)
    patches = results / slide / "patches.zarr"
    array, channels, _ = open_patch_array(patches)
    n_channels, patch_size = int(array.shape[1]), int(array.shape[-1])
    section = merged["classify"]
    crop = section.get("augment", {}).get("crop") or patch_size
    torch.manual_seed(0)
    for task in section["tasks"]:
        classes = task_classes(task)
        model = CellNet(spec_from_config(section, n_channels, len(classes), int(crop))).eval()
        save_classifier(models / f"classifier_{task}.pt", model, task, classes, channels, patch_size,
                        input_size=int(crop))
    cfg = {**merged["embed"], "cells_per_slide": 500, "device": "cpu",
           "train": {**merged["embed"]["train"], "epochs": 1}}
    train_embedder([EmbedSlide(slide, str(results / slide / "cells.parquet"), str(patches))], models / "embedder.pt",
                   models / "embedder.json", cfg, threads=threads, progress=None)


def tile_baseline(merged: dict, frames_dir: Path, s, work: Path, max_frames: int = 0) -> dict:
    """The plain tifffile read + zarr write of the slide's frames (see the module docstring): seconds
    and raw bytes read."""
    import numpy as np
    import tifffile
    import zarr
    from zarr.codecs import BloscCodec, BloscShuffle

    from hemoprofile.io import frame_filename, frame_grid_position
    from hemoprofile.simulate.settings import CHANNELS

    pattern, order = merged["frames"]["pattern"], merged["frames"]["order"]
    size, level = int(merged["tile"]["size"]), int(merged["tile"]["compression_level"])
    out = work / "baseline.zarr"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    array = zarr.create_array(
        str(out), shape=(len(CHANNELS), s.rows * s.frame_h, s.cols * s.frame_w), chunks=(1, size, size),
        dtype="uint16", fill_value=0,
        compressors=(BloscCodec(cname="zstd", clevel=level, shuffle=BloscShuffle.bitshuffle),),
    )
    raw = 0
    for f in range(min(s.n_frames, max_frames) if max_frames else s.n_frames):
        row, col = frame_grid_position(f, s.rows, s.cols, order)
        y0, x0 = row * s.frame_h, col * s.frame_w
        for c, channel in enumerate(CHANNELS):
            pixels = tifffile.imread(frames_dir / frame_filename(pattern, f, c, channel, s.n_frames))
            array[c, y0:y0 + s.frame_h, x0:x0 + s.frame_w] = pixels
            raw += pixels.nbytes
    seconds = time.perf_counter() - start
    stored = tree_bytes(out)
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, "raw_bytes": raw, "stored_bytes": stored, "mb_s": raw / seconds / 1e6,
            "frames": f + 1}


def scale_tag(scale: str) -> str:
    fraction = Fraction(scale.replace(" ", ""))
    return f"{fraction.numerator}_{fraction.denominator}"


def run_scale(scale: str, args) -> dict:
    from hemoprofile.config import load_config
    from hemoprofile.simulate import plan_cohort
    from hemoprofile.simulate.settings import CHANNELS, read_settings

    work = Path(args.work) / f"scale_{scale_tag(scale)}"
    results = work / "results"
    work.mkdir(parents=True, exist_ok=True)
    overlay = work / "overlay.yaml"
    layer = {"results": str(results), "synthetic": {"scale": scale}}
    if args.threads:
        layer["threads"] = dict.fromkeys((*THREADED, *INFERENCE), args.threads)
    overlay.write_text(yaml.safe_dump(layer))
    configfiles = [ROOT / args.config, overlay]
    merged = load_config(ROOT / "config" / "config.yaml")
    for extra in configfiles:
        merged = _merge(merged, yaml.safe_load(extra.read_text()))
    s = read_settings(merged["synthetic"])
    slide = args.slide or str(plan_cohort(merged["synthetic"], results / "synthetic").iloc[0]["slide"])
    print(f"\n== scale {scale}: {s.rows} x {s.cols} frames of {s.frame_h} x {s.frame_w} px, slide {slide}, "
          f"threads {args.threads or 'from the config'}, cores {args.threads or args.cores}, work {work}", flush=True)
    rows = []
    n_cells = None
    for stage in args.stages:
        if stage in INFERENCE:
            threads = args.threads or int(merged["threads"][stage])
            models = Path(args.models_from) / "models" if args.models_from else work / "untrained_models"
            if not args.models_from and not (models / "embedder.pt").exists():
                print(f"  writing untrained models to {models} (not timed)", flush=True)
                write_untrained_models(merged, slide, results, models, threads)
            row = run_inference(stage, slide, results, merged, models, threads, work / "snakemake.log")
        else:
            row = run_stage(stage, slide, results, configfiles, args.threads or args.cores, work / "snakemake.log")
        if n_cells is None:
            import pyarrow.parquet as pq

            n_cells = pq.ParquetFile(results / "synthetic" / slide / "truth_cells.parquet").metadata.num_rows
        row["us_per_cell"] = row["wall_s"] / n_cells * 1e6
        row["cpu_us_per_cell"] = row["job_cpu_s"] / n_cells * 1e6
        row["bytes_per_cell"] = row["bytes"] / n_cells
        rows.append(row)
        if stage == "tile":
            frames_dir = results / "synthetic" / slide / "frames"
            raw = s.n_frames * len(CHANNELS) * s.frame_h * s.frame_w * 2
            row["tile_mb_s"] = raw / row["wall_s"] / 1e6
            row["baseline"] = tile_baseline(merged, frames_dir, s, work, args.baseline_frames)
        print(f"  {stage:<11} wall {row['wall_s']:8.1f} s  {row['us_per_cell']:8.1f} us/cell  "
              f"cpu {row['job_cpu_s']:8.1f} s  {row['cpu_us_per_cell']:8.1f} us/cell  "
              f"job peak {row['job_hwm_mib']:7.0f} MiB  tree {row['tree_maxrss_mib']:7.0f} MiB  "
              f"{row['bytes_per_cell']:8.0f} B/cell"
              + (f"  + {row['workers']} workers' peaks {row['workers_hwm_mib']:.0f} MiB" if row["workers"] else ""),
              flush=True)
        if stage == "tile":
            base = row["baseline"]
            print(f"  {'':<11} tile job {row['tile_mb_s']:6.1f} MB/s of raw frames  vs  plain tifffile read + "
                  f"zarr write {base['mb_s']:6.1f} MB/s ({base['frames']} frames, {base['seconds']:.1f} s, "
                  f"{base['raw_bytes'] / 1e6:.0f} MB raw -> {base['stored_bytes'] / 1e6:.0f} MB stored)", flush=True)
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
    tiles = [next((r for r in x["stages"] if r["stage"] == "tile"), None) for x in (small, large)]
    if all(tiles):
        a, b = tiles
        print(f"tile MB/s of raw frames: tile job {a['tile_mb_s']:.1f} {b['tile_mb_s']:.1f} | plain tifffile read "
              f"+ zarr write {a['baseline']['mb_s']:.1f} {b['baseline']['mb_s']:.1f} ({a_s} {b_s})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", nargs="+", default=["1/64", "1/16"],
                        help="one or two slide scales (fractions of the 2,304-frame slide); the second is "
                             "compared with the first")
    parser.add_argument("--work", default="/work/benchwork/scale", help="work folder (outside the repository)")
    parser.add_argument("--config", default="config/scale.yaml", help="config layered on config/config.yaml")
    parser.add_argument("--stages", nargs="+", default=None, choices=[*STAGES, *INFERENCE],
                        help="stages to run (default: the per-slide stages, + classify and embed with --models-from)")
    parser.add_argument("--models-from", default="",
                        help="a finished run's results folder: classify and embed this slide with its "
                             "models/classifier_<task>.pt and models/embedder.pt (inference only)")
    parser.add_argument("--slide", default="", help="slide to run (default: the plan's first)")
    parser.add_argument("--cores", type=int, default=1, help="Snakemake --cores (--threads sets it too)")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads of every stage (threads.simulate, .tile, .preprocess, .segment, .extract) "
                             "and Snakemake --cores; default: the config's threads and --cores")
    parser.add_argument("--untrained-models", action="store_true",
                        help="classify and embed with untrained models of the config's architectures (timing "
                             "only; see the module docstring) instead of --models-from")
    parser.add_argument("--baseline-frames", type=int, default=0,
                        help="time the plain tile baseline on the first N frames only (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the work folders' results")
    args = parser.parse_args(argv)
    if len(args.scales) > 2:
        parser.error("give one or two scales")
    if args.stages is None:
        args.stages = [*STAGES, *(INFERENCE if args.models_from or args.untrained_models else ())]
    if any(s in INFERENCE for s in args.stages) and not (args.models_from or args.untrained_models):
        parser.error("classify and embed need --models-from <results folder of a finished run> or --untrained-models")
    if args.models_from and args.untrained_models:
        parser.error("give --models-from or --untrained-models, not both")
    args.stages = [s for s in (*STAGES, *INFERENCE) if s in args.stages]  # chain order
    summaries = [run_scale(scale, args) for scale in args.scales]
    if len(summaries) == 2:
        print_table(*summaries)


if __name__ == "__main__":
    main()
