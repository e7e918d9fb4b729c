"""Benchmark suite: per-stage speed and memory at two slide sizes, the segment stage's overhead over plain
Cellpose, classification throughput against batch size, and the cost of a rerun after one classifier
parameter changes.

Slides are simulated with the demo config's settings (``config/config.yaml``: 256 px frames, 60 cells
per frame, one ``disease_a`` patient so CTCs occur) on an N x N frame grid, once per size, and cached in
``--workdir``. Every stage runs with the demo config's sections (cellpose segmentation with the bundled
model, 512 px tiles) through the same package function its workflow script calls
(``workflow/scripts/<stage>.py``), with the script's torch thread count (``--threads``, the rules'
``threads: 2``). Parts, chosen with ``--only`` (comma-separated; default all):

``memory``
    Each stage (tile, preprocess, segment, extract, classify, embed) runs on the small and on the large
    slide (default 6 x 6 and 12 x 12 frames = 1536² and 3072² px, 4x the area), each run in its own
    Python subprocess, so one stage's memory cannot hide another's. Its peak RSS is the child's
    ``VmHWM`` from ``/proc/self/status``, read when the stage function has returned. Not ``ru_maxrss``:
    Linux charges a child, at its exec, the high-water RSS of the address space it was forked or
    vforked from, i.e. the parent's (measured: tile, preprocess and extract runs all read the parent's
    360-380 MB, a tile run's own VmHWM being 73 MB); ``ru_maxrss`` from ``os.wait4`` goes to the logs.
    Printed per stage and size: wall time of the stage function (imports and interpreter start
    excluded), cells/s (the slide's extracted cells over that time, for every stage, so stages
    compare), megapixels/s, peak RSS and the child's RSS after its imports (the floor every run pays);
    then the peak RSS ratio large / small against the 1.2 bound (issue 9). Classify and
    embed use a lineage classifier and a VAE trained beforehand on the small slide (a few epochs: these
    figures are about speed and memory, not accuracy).
``segment-overhead``
    On one slide (``--overhead-slide``, default the small one), in one subprocess with the model loaded
    once (load time printed apart): a first project run records every ``model.eval`` call the segment
    stage makes (the exact (n, y, x, 2) batches and keyword arguments) and warms torch up; then,
    ``--repeats`` times, alternating: *project* = ``hemoprofile.segment.tiled.segment_slide`` (open the zarr,
    slide-wide calibration from 16 sampled tiles, read the halo windows, prepare the network input,
    ``model.eval`` on ``batch_tiles`` windows at a time, stitch, write labels.zarr), and *plain Cellpose*
    = the recorded ``CellposeModel.eval`` calls replayed back to back on arrays already in memory (same
    model, windows, batches, padding and settings; nothing read, prepared, stitched or written); odd
    repeats run the project first, even ones plain first. The ratio project / plain (best of each) is
    the segment stage's overhead (issue 3 target: <= 1.15). On a shared machine the two sides' eval
    times differ by more than that overhead from run to run, so the time the project run spends inside
    ``model.eval`` is recorded too: project / its own eval time compares two figures of one run, the
    steadier estimate of what the stage adds around Cellpose.
``classify-batch``
    ``hemoprofile.classify.inference.classify_slide`` (read patches.zarr block by block, infer, write parquet) on
    the large slide's patches with the lineage classifier at each ``--batch-sizes`` (cells/s, best of
    ``--repeats``, after one warm-up), beside a baseline: ``classifier_probabilities`` at batch 1024 on
    the same patches already in memory (no zarr read, no parquet write). Swept at each
    ``--batch-threads`` (default the rules' 2 and 1: on a loaded 2-core machine two torch threads wait
    on each other at every layer, which costs most at small batches).
``rerun``
    The workflow with Snakemake (``--cores 2``) in a fresh working directory on the tiny synthetic
    cohort of ``tests/tiny_workflow.py`` (7 slides): a full run from scratch, then ``classify.train.lr``
    changed (0.003 -> 0.001) and the workflow run again. Prints both wall times, the ratio, the
    rerun's jobs per rule (from its own job stats table) and the job seconds per rule of both runs
    (from the rules' benchmark files).

``os.getloadavg()`` is printed before and after each measurement: the machine may be shared.

Usage::

    nice .venv/bin/python bench/suite.py [--workdir /tmp/hemoprofile-bench-suite] [--frames 6 12]
        [--frame-size 256] [--threads 2] [--repeats 3] [--batch-sizes 64 256 1024 4096]
        [--batch-threads 2 1] [--overhead-slide small|large] [--train-epochs 3]
        [--only memory,segment-overhead,classify-batch,rerun]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PARTS = ("memory", "segment-overhead", "classify-batch", "rerun")
STAGES = ("tile", "preprocess", "segment", "extract", "classify", "embed")
RSS_BOUND = 1.2
OVERHEAD_TARGET = 1.15
#: The classifier task trained for the classify stage and the batch-size sweep.
TASK = "lineage"


# --- helpers shared by parent and children ----------------------------------------------------------


def _status_mb(key: str) -> float:
    """A /proc/self/status memory line (VmRSS, VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


DEFAULT_CONFIG = ROOT / "config" / "config.yaml"


def demo_config(path: str | os.PathLike = DEFAULT_CONFIG) -> dict:
    """A config file (default: the demo's, config/config.yaml), validated against the package's schema; a
    relative model path is taken relative to the repository (a bundled model, ``bundled:<name>``, is
    found in the package by the loader)."""
    import yaml

    from hemoprofile.config import validate_config
    from hemoprofile.models import is_bundled

    cfg = validate_config(yaml.safe_load(Path(path).read_text()))
    model = cfg["segment"]["model"]
    if not is_bundled(model) and not Path(model).is_absolute() and (ROOT / model).exists():
        cfg["segment"]["model"] = str(ROOT / model)
    return cfg


# --- children: one stage (or one measurement) per Python process -----------------------------------


def _child(job: dict) -> dict:
    """Run one job in this (child) process and return what it measured."""
    kind = job["kind"]
    if kind == "stage":
        return _child_stage(job)
    if kind == "train":
        return _child_train(job)
    if kind == "segment-overhead":
        return _child_segment_overhead(job)
    if kind == "classify-batch":
        return _child_classify_batch(job)
    raise ValueError(kind)


def _child_stage(job: dict) -> dict:
    """One stage through the function its workflow script calls, with the script's arguments."""
    stage, p, cfg, threads = job["stage"], job["paths"], job["config"], job["threads"]
    if stage == "tile":
        from hemoprofile.io.slide_sources import open_slide_source
        from hemoprofile.ingest.tile import tile_slide

        def run():
            with open_slide_source(p["frames"], "frames", p["channels"], pixel_size_um=p["pixel_size_um"],
                                   frame_rows=p["frame_rows"], frame_cols=p["frame_cols"],
                                   frame_pattern=cfg["frames"]["pattern"], frame_order=cfg["frames"]["order"]) as src:
                return tile_slide(src, p["image"], tile_size=cfg["tile"]["size"],
                                  compression_level=cfg["tile"]["compression_level"], progress=None)
    elif stage == "preprocess":
        from hemoprofile.preprocess.pipeline import preprocess_slide

        def run():
            return preprocess_slide(p["image"], p["pre"], cfg["preprocess"], seed=cfg["seed"], progress=None)
    elif stage == "segment":
        import cellpose.models  # noqa: F401  (imported lazily by the stage: counted in the floor, not the stage)
        import torch

        from hemoprofile.segment.tiled import segment_slide

        torch.set_num_threads(threads)

        def run():
            return segment_slide(p["pre"], p["labels"], cfg["segment"], seed=cfg["seed"], progress=None)
    elif stage == "extract":
        from hemoprofile.features.extract import extract_slide

        def run():
            return extract_slide(p["labels"], p["image"], p["pre"], p["cells"], p["patches"], p["clusters"],
                                 cfg["extract"], cfg["gating"], slide=p["slide"], progress=None)
    elif stage == "classify":
        from hemoprofile.classify.inference import classify_slide

        c = cfg["classify"]

        def run():
            return classify_slide(p["patches"], p["cells"], [p["classifier"]], p["predictions"], device=c["device"],
                                  mixed_precision=c["mixed_precision"], batch_size=c["batch_size"], tta=c["tta"],
                                  threads=threads, progress=None)
    elif stage == "embed":
        from hemoprofile.embed.slide import embed_slide

        e = cfg["embed"]

        def run():
            return embed_slide(p["embedder"], p["patches"], p["cells"], p["embedding"], slide=p["slide"],
                               category=None, device=e["device"], mixed_precision=e["mixed_precision"],
                               batch_size=e["batch_size"], threads=threads, progress=None)
    else:
        raise ValueError(stage)
    floor = _status_mb("VmRSS")
    t0 = time.perf_counter()
    summary = run()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "floor_mb": floor, "hwm_mb": _status_mb("VmHWM"),
            "summary": {k: v for k, v in (summary or {}).items() if isinstance(v, (int, float, str))}}


def _child_train(job: dict) -> dict:
    """Train the lineage classifier and the VAE on one slide, as the workflow's training rules do."""
    from hemoprofile.classify.labels import SlideInput
    from hemoprofile.classify.training import train_classifier
    from hemoprofile.embed.sample import EmbedSlide
    from hemoprofile.embed.training import train_embedder

    p, cfg, threads = job["paths"], job["config"], job["threads"]
    t0 = time.perf_counter()
    classify_cfg = {k: v for k, v in cfg["classify"].items() if k not in ("tasks", "models", "batch_size")}
    classify_cfg["train"] = {**classify_cfg["train"], "epochs": job["epochs"]}
    metrics = train_classifier([SlideInput(p["slide"], p["cells"], p["patches"], truth_labels=p["truth_labels"])],
                               TASK, p["classifier"], p["classifier"] + ".metrics.json", classify_cfg,
                               seed=cfg["seed"], truth_cells=p["truth_cells"], threads=threads, progress=None)
    t1 = time.perf_counter()
    embed_cfg = {k: v for k, v in cfg["embed"].items() if k not in ("batch_size", "figures")}
    embed_cfg["train"] = {**embed_cfg["train"], "epochs": job["epochs"]}
    train_embedder([EmbedSlide(p["slide"], p["cells"], p["patches"], patient="P01", condition="disease_a")],
                   p["embedder"], p["embedder"] + ".metrics.json", embed_cfg, seed=cfg["seed"], threads=threads,
                   progress=None)
    return {"classifier_seconds": t1 - t0, "embedder_seconds": time.perf_counter() - t1,
            "classifier_test_accuracy": metrics.get("test", {}).get("accuracy")}


def _child_segment_overhead(job: dict) -> dict:
    """The segment stage against the same ``CellposeModel.eval`` calls replayed on their own."""
    import numpy as np
    import torch

    from hemoprofile.nn.devices import pick_device
    from hemoprofile.segment.cellpose_model import load_cellpose_model
    from hemoprofile.segment.segmenter import build_segmenter
    from hemoprofile.segment.settings import segment_settings
    from hemoprofile.segment.tiled import segment_slide

    p, threads = job["paths"], job["threads"]
    torch.set_num_threads(threads)
    cfg = segment_settings(job["config"]["segment"])
    t0 = time.perf_counter()
    model = load_cellpose_model(cfg["model"], pick_device(cfg["device"]).device)
    load_seconds = time.perf_counter() - t0

    calls: list[tuple[np.ndarray, dict]] = []
    in_eval = [0.0]
    plain_eval = type(model).eval

    def recording_eval(self, x, **kwargs):
        calls.append((np.array(x, copy=True), dict(kwargs)))
        return plain_eval(self, x, **kwargs)

    def timed_eval(self, x, **kwargs):
        t = time.perf_counter()
        try:
            return plain_eval(self, x, **kwargs)
        finally:
            in_eval[0] += time.perf_counter() - t

    labels = str(Path(p["work"]) / "labels_overhead.zarr")

    def project() -> float:
        t = time.perf_counter()
        segment_slide(p["pre"], labels, cfg, seed=job["config"]["seed"], segmenter=build_segmenter(cfg, model=model),
                      progress=None)
        return time.perf_counter() - t

    model.eval = recording_eval.__get__(model)  # capture run, also the warm-up
    project()
    model.eval = timed_eval.__get__(model)

    def plain() -> float:
        t = time.perf_counter()
        for x, kwargs in calls:
            plain_eval(model, x, **kwargs)
        return time.perf_counter() - t

    rows = []
    for _ in range(job["repeats"]):
        load_before = _load()
        in_eval[0] = 0.0
        if len(rows) % 2 == 0:
            t_project = project()
            t_plain = plain()
        else:
            t_plain = plain()
            t_project = project()
        t_in_eval = in_eval[0]
        rows.append({"project_s": t_project, "project_in_eval_s": t_in_eval, "plain_s": t_plain,
                     "ratio": t_project / t_plain, "load_before": load_before, "load_after": _load()})
    windows = sum(len(x) if x.ndim == 4 else 1 for x, _ in calls)
    shapes = sorted({tuple(x.shape) for x, _ in calls})
    kwargs = {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v)) for k, v in calls[0][1].items()}
    return {"load_seconds": load_seconds, "eval_calls": len(calls), "windows": windows, "batch_shapes": shapes,
            "eval_kwargs": kwargs, "rows": rows, "device": str(model.device)}


def _child_classify_batch(job: dict) -> dict:
    """classify_slide at several batch sizes, and the in-memory inference baseline."""
    import numpy as np

    from hemoprofile.classify.checkpoints import load_classifier
    from hemoprofile.classify.inference import channel_index, classifier_probabilities, classify_slide
    from hemoprofile.io.patches import open_patch_array
    from hemoprofile.nn.devices import pick_device

    p, c, threads = job["paths"], job["config"]["classify"], job["threads"]
    out = str(Path(p["work"]) / "predictions_batch.parquet")

    def stage(batch_size: int) -> dict:
        return classify_slide(p["patches"], p["cells"], [p["classifier"]], out, device=c["device"],
                              mixed_precision=c["mixed_precision"], batch_size=batch_size, tta=c["tta"],
                              threads=threads, progress=None)

    warm = stage(256)
    rows = []
    for batch_size in job["batch_sizes"]:
        load_before = _load()
        runs = [stage(batch_size) for _ in range(job["repeats"])]
        rows.append({"batch_size": batch_size, "cells_per_second": max(r["cells_per_second"] for r in runs),
                     "all": [r["cells_per_second"] for r in runs], "load_before": load_before, "load_after": _load()})
    clf = load_classifier(p["classifier"])
    array, channels, _ = open_patch_array(p["patches"])
    patches = np.asarray(array[:])
    dev = pick_device(c["device"], c["mixed_precision"], threads=threads)
    index = channel_index(clf.channels, channels)
    load_before = _load()
    rates = []
    for _ in range(job["repeats"]):
        t = time.perf_counter()
        classifier_probabilities(clf, patches, dev, 1024, c["tta"], index=index)
        rates.append(len(patches) / (time.perf_counter() - t))
    baseline = {"batch_size": 1024, "cells_per_second": max(rates), "all": rates, "load_before": load_before,
                "load_after": _load()}
    return {"n_cells": warm["n_cells"], "device": warm["device"], "patch_shape": list(patches.shape),
            "patch_chunks": list(array.chunks), "rows": rows, "baseline": baseline}


def run_child(job: dict, log_path: Path) -> dict:
    """Run ``job`` in a fresh Python process; return its result plus its own peak RSS (os.wait4)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    load_before = _load()
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job, default=str)]
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    text = log_path.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"{job['kind']} {job.get('stage', '')} failed (exit {proc.returncode}), log "
                           f"{log_path}:\n{text[-4000:]}")
    result = json.loads([line for line in text.splitlines() if line.startswith("RESULT ")][-1][len("RESULT "):])
    # the child's own high-water mark; ru_maxrss includes the parent's RSS inherited at fork (see above)
    result.update(peak_rss_mb=result["hwm_mb"], ru_maxrss_mb=usage.ru_maxrss / 1024, child_wall_s=wall,
                  load_before=load_before, load_after=_load())
    with open(log_path, "a") as log:
        log.write(f"peak RSS (VmHWM) {result['hwm_mb']:.0f} MB; ru_maxrss {usage.ru_maxrss / 1024:.0f} MB\n")
    return result


# --- the parent: slides, parts, tables -------------------------------------------------------------


def prepare_slide(workdir: Path, n: int, frame_size: int, cfg: dict) -> dict:
    """Simulate one slide of n x n frames (cached) and return the paths every stage uses."""
    from hemoprofile import simulate

    s = copy.deepcopy(cfg["synthetic"])
    s["frame"] = {"height": frame_size, "width": frame_size}
    s["grid"] = {"rows": n, "cols": n}
    s["conditions"] = {"disease_a": {**s["conditions"]["disease_a"], "patients": 1, "blind_patients": 0}}
    out = workdir / f"slide_{n}x{n}_{frame_size}px"
    plan = simulate.plan_cohort(s, out / "synthetic")
    sample = plan.iloc[0]
    syn = out / "synthetic" / sample["slide"]
    if not (syn / "truth_cells.parquet").exists():
        t0 = time.perf_counter()
        summary = simulate.simulate_slide(s, sample, out / "synthetic")
        print(f"simulated {n}x{n} frames of {frame_size} px: {summary['n_cells']} cells in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    models = workdir / "models"
    return {
        "name": f"{n}x{n}", "slide": str(sample["slide"]), "work": str(out), "frames": str(sample["path"]),
        "channels": str(sample["channels"]).split(","), "pixel_size_um": float(sample["pixel_size_um"]),
        "frame_rows": n, "frame_cols": n, "megapixels": (n * frame_size) ** 2 / 1e6,
        "side_px": n * frame_size, "truth_cells": str(syn / "truth_cells.parquet"),
        "truth_labels": str(syn / "truth_labels.zarr"),
        "image": str(out / "image.zarr"), "pre": str(out / "preprocessed.zarr"), "labels": str(out / "labels.zarr"),
        "cells": str(out / "cells.parquet"), "patches": str(out / "patches.zarr"),
        "clusters": str(out / "clusters.parquet"), "predictions": str(out / "predictions.parquet"),
        "embedding": str(out / "embedding.parquet"),
        "classifier": str(models / f"classifier_{TASK}.pt"), "embedder": str(models / "embedder.pt"),
    }


#: The output of each stage that a later part needs (made without measuring when missing).
_STAGE_OUTPUT = {"tile": "image", "preprocess": "pre", "segment": "labels", "extract": "cells",
                 "classify": "predictions", "embed": "embedding"}


class Suite:
    def __init__(self, args, cfg: dict):
        self.args, self.cfg = args, cfg
        self.workdir = Path(args.workdir)
        self.logs = self.workdir / "logs"

    def job(self, kind: str, slide: dict, **extra) -> dict:
        return {"kind": kind, "paths": slide, "config": self.cfg, "threads": self.args.threads, **extra}

    def stage(self, stage: str, slide: dict) -> dict:
        return run_child(self.job("stage", slide, stage=stage), self.logs / f"{slide['name']}_{stage}.log")

    def ensure(self, slide: dict, upto: str, models_from: dict) -> None:
        """Make the outputs up to ``upto`` (and the trained models) where missing, without reporting."""
        for stage in STAGES[: STAGES.index(upto) + 1]:
            if stage in ("classify", "embed"):
                self.ensure_models(models_from)
            if not Path(slide[_STAGE_OUTPUT[stage]]).exists():
                print(f"  (making {slide['name']} {stage} output)", flush=True)
                self.stage(stage, slide)

    def ensure_models(self, small: dict) -> None:
        if Path(small["classifier"]).exists() and Path(small["embedder"]).exists():
            return
        self.ensure(small, "extract", small)
        Path(small["classifier"]).parent.mkdir(parents=True, exist_ok=True)
        r = run_child(self.job("train", small, epochs=self.args.train_epochs), self.logs / "train.log")
        print(f"trained on the {small['name']} slide ({self.args.train_epochs} epochs): {TASK} classifier "
              f"{r['classifier_seconds']:.0f} s (held-out accuracy {r['classifier_test_accuracy']}), VAE "
              f"{r['embedder_seconds']:.0f} s", flush=True)

    # --- parts ---

    def memory(self, small: dict, large: dict) -> dict:
        print(f"\n== memory and speed per stage: {small['name']} frames ({small['side_px']}² px, "
              f"{small['megapixels']:.2f} MP) vs {large['name']} ({large['side_px']}² px, "
              f"{large['megapixels']:.2f} MP); "
              f"each stage in its own subprocess, torch threads {self.args.threads} ==", flush=True)
        results = {}
        for slide in (small, large):
            for stage in STAGES:
                if stage == "classify":
                    self.ensure_models(small)
                r = self.stage(stage, slide)
                results[(slide["name"], stage)] = r
                print(f"  {slide['name']:>6s} {stage:10s} {r['seconds']:7.1f} s  peak RSS {r['peak_rss_mb']:6.0f} MB"
                      f"  (load {r['load_before']} -> {r['load_after']})", flush=True)
        import pyarrow.parquet as pq

        for slide in (small, large):
            slide["n_cells"] = pq.read_metadata(slide["cells"]).num_rows
        head = (f"  {'stage':10s} | {'size':>6s} {'cells':>6s} {'s':>7s} {'cells/s':>8s} {'MP/s':>7s} "
                f"{'peak MB':>8s} {'floor MB':>8s} | load 1/5/15 min before -> after")
        print("\n" + head + "\n  " + "-" * (len(head) - 2))
        for stage in STAGES:
            for slide in (small, large):
                r = results[(slide["name"], stage)]
                print(f"  {stage:10s} | {slide['name']:>6s} {slide['n_cells']:6d} {r['seconds']:7.2f} "
                      f"{slide['n_cells'] / r['seconds']:8.0f} {slide['megapixels'] / r['seconds']:7.3f} "
                      f"{r['peak_rss_mb']:8.0f} {r['floor_mb']:8.0f} | {r['load_before']} -> {r['load_after']}")
        area = large["megapixels"] / small["megapixels"]
        print(f"\n  peak RSS ratio {large['name']} / {small['name']} ({area:.0f}x the pixels, "
              f"{large['n_cells'] / small['n_cells']:.1f}x the cells; bound {RSS_BOUND}):")
        print(f"  {'stage':10s} {'small MB':>9s} {'large MB':>9s} {'ratio':>6s} {'bound':>6s}  "
              f"{'above floor: small':>18s} {'large':>6s}")
        ratios = {}
        for stage in STAGES:
            a, b = results[(small["name"], stage)], results[(large["name"], stage)]
            ratio = b["peak_rss_mb"] / a["peak_rss_mb"]
            ratios[stage] = ratio
            print(f"  {stage:10s} {a['peak_rss_mb']:9.0f} {b['peak_rss_mb']:9.0f} {ratio:6.3f} "
                  f"{'ok' if ratio <= RSS_BOUND else 'OVER':>6s}  {a['peak_rss_mb'] - a['floor_mb']:18.0f} "
                  f"{b['peak_rss_mb'] - b['floor_mb']:6.0f}")
        return ratios

    def segment_overhead(self, slide: dict, small: dict) -> dict:
        self.ensure(slide, "preprocess", small)
        print(f"\n== segment stage vs plain CellposeModel.eval on the same windows: {slide['name']} slide "
              f"({slide['megapixels']:.2f} MP), torch threads {self.args.threads}, {self.args.repeats} repeats ==",
              flush=True)
        r = run_child(self.job("segment-overhead", slide, repeats=self.args.repeats),
                      self.logs / f"{slide['name']}_segment_overhead.log")
        seg = self.cfg["segment"]
        print(f"  model {Path(seg['model']).name} on {r['device']}, loaded in {r['load_seconds']:.2f} s (not "
              f"counted); {r['eval_calls']} eval calls over {r['windows']} windows (tile {self.cfg['tile']['size']} px "
              f"+ halo, batch_tiles {seg['batch_tiles']}); batch shapes {r['batch_shapes']}")
        print(f"  eval settings (both sides): {r['eval_kwargs']}")
        print(f"  {'repeat':>6s} {'project s':>10s} {'(in eval)':>10s} {'plain s':>8s} {'project/plain':>13s} "
              f"{'project/own eval':>16s}  load before -> after")
        for i, row in enumerate(r["rows"], 1):
            print(f"  {i:6d} {row['project_s']:10.2f} {row['project_in_eval_s']:10.2f} {row['plain_s']:8.2f} "
                  f"{row['ratio']:13.3f} {row['project_s'] / row['project_in_eval_s']:16.3f}  "
                  f"{row['load_before']} -> {row['load_after']}")
        best = min(x["project_s"] for x in r["rows"]) / min(x["plain_s"] for x in r["rows"])
        median = statistics.median(x["ratio"] for x in r["rows"])
        own = statistics.median(x["project_s"] / x["project_in_eval_s"] for x in r["rows"])
        print(f"  ratio project / plain: best-of {best:.3f}, median of repeats {median:.3f}; project / its own eval "
              f"time: median {own:.3f} (target <= {OVERHEAD_TARGET}: "
              f"{'met' if max(best, own) <= OVERHEAD_TARGET else 'NOT met'})")
        return {"best": best, "median": median, "own_eval": own}

    def classify_batch(self, slide: dict, small: dict) -> dict:
        self.ensure(slide, "extract", small)
        self.ensure_models(small)
        threads = list(dict.fromkeys(self.args.batch_threads))
        print(f"\n== classification throughput vs batch size: classify_slide on the {slide['name']} slide's patches, "
              f"{TASK} classifier, torch threads {' and '.join(map(str, threads))}, cells/s best of "
              f"{self.args.repeats} (all repeats in brackets) ==", flush=True)
        runs = {}
        for n in threads:
            job = {**self.job("classify-batch", slide, batch_sizes=self.args.batch_sizes, repeats=self.args.repeats),
                   "threads": n}
            runs[n] = run_child(job, self.logs / f"{slide['name']}_classify_batch_{n}threads.log")
        first = runs[threads[0]]
        print(f"  {first['n_cells']} cells, patches {first['patch_shape']} stored in chunks {first['patch_chunks']}; "
              + "; ".join(r["device"] for r in runs.values()))
        print("  " + f"{'batch':>7s}" + "".join(
            f" | {f'{n} thread(s): cells/s (repeats)':34s} {'load before -> after':25s}" for n in threads))
        rows = [(row["batch_size"], [runs[n]["rows"][i] for n in threads]) for i, row in enumerate(first["rows"])]
        rows.append(("in memory", [runs[n]["baseline"] for n in threads]))
        for label, cells in rows:
            line = f"  {label if isinstance(label, int) else 'mem1024':>7}"
            for c in cells:
                figures = f"{c['cells_per_second']:6.0f} ({' '.join(f'{x:.0f}' for x in c['all'])})"
                line += f" | {figures:34s} {c['load_before'] + ' -> ' + c['load_after']:25s}"
            print(line)
        print("  mem1024 = baseline: classifier_probabilities at batch 1024 on the patches already in memory "
              "(no zarr read, no parquet write)")
        return {n: {row["batch_size"]: row["cells_per_second"] for row in r["rows"]} for n, r in runs.items()}

    def rerun(self) -> dict:
        import yaml

        sys.path.insert(0, str(ROOT / "tests"))
        from helpers.tiny_workflow import TINY_CONFIG, TINY_SLIDES

        wd = self.workdir / "rerun"
        if wd.exists():
            shutil.rmtree(wd)
        (wd / "config").mkdir(parents=True)
        config = copy.deepcopy(TINY_CONFIG)
        (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))
        snakemake = str(Path(sys.executable).with_name("snakemake"))
        command = [snakemake, "-s", str(ROOT / "Snakefile"), "-d", str(wd), "--cores", "2"]
        print(f"\n== rerun after one classifier parameter vs a full run: tiny cohort of tests/tiny_workflow.py "
              f"({len(TINY_SLIDES)} slides), in {wd} ==\n  {' '.join(command)}", flush=True)

        def run(tag: str) -> tuple[float, dict, dict, str, str]:
            load_before = _load()
            t0, wall0 = time.perf_counter(), time.time()
            proc = subprocess.run(command, capture_output=True, text=True, cwd=wd)
            seconds = time.perf_counter() - t0
            self.logs.mkdir(parents=True, exist_ok=True)
            (self.logs / f"rerun_{tag}.log").write_text(proc.stdout + proc.stderr)
            if proc.returncode != 0:
                raise RuntimeError(f"snakemake ({tag}) failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
            output = proc.stdout + proc.stderr
            return seconds, job_stats(output), rule_seconds(wd / "results", wall0), load_before, _load()

        full, full_jobs, full_rules, l0, l1 = run("full")
        print(f"  full run:  {full:6.1f} s, {sum(full_jobs.values())} jobs  (load {l0} -> {l1})", flush=True)
        lr = float(config.get("classify", {}).get("train", {}).get("lr", 0.003))
        config["classify"]["train"]["lr"] = lr / 3
        (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))
        again, jobs, rules, l0, l1 = run("rerun")
        print(f"  rerun after classify.train.lr {lr:g} -> {lr / 3:g}: {again:6.1f} s, {sum(jobs.values())} jobs  "
              f"(load {l0} -> {l1})")
        print(f"  ratio rerun / full: {again / full:.3f}")
        print("  rerun jobs: " + ", ".join(f"{rule} {n}" for rule, n in jobs.items()))
        print("  full-run jobs: " + ", ".join(f"{rule} {n}" for rule, n in full_jobs.items()))
        print("  job seconds per rule (sum of the rules' benchmark files; jobs of 2 cores overlap, rules without "
              "a benchmark file are not listed):")
        print(f"    {'rule':20s} {'full run':>9s} {'rerun':>7s}")
        for rule in full_rules:
            print(f"    {rule:20s} {full_rules[rule]:9.1f} {rules.get(rule, 0.0):7.1f}")
        return {"full_s": full, "rerun_s": again, "ratio": again / full, "jobs": jobs}


def job_stats(output: str) -> dict:
    """Rule -> job count from a Snakemake run's 'Job stats' table (the first one printed)."""
    if "Job stats:" not in output:
        return {}
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)\s*$", table, re.M) if rule not in ("total", "job")}


def rule_seconds(results: Path, since: float) -> dict:
    """Rule -> summed job wall time (s) from the benchmark files written after ``since`` (epoch s)."""
    import pandas as pd

    out: dict[str, float] = {}
    bench = results / "benchmarks"
    for path in sorted(bench.rglob("*.tsv")):
        if path.stat().st_mtime < since:
            continue
        rule = path.relative_to(bench).parts[0].removesuffix(".tsv")
        out[rule] = out.get(rule, 0.0) + float(pd.read_csv(path, sep="\t")["s"].sum())
    return out


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    mem = next((int(line.split()[1]) / 1024 ** 2 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), float("nan"))
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} logical cores, {mem:.1f} GiB RAM, {gpu}; torch {torch.__version__}"


def main(argv=None) -> int:
    """Run the parts asked for (command-line arguments as in the module docstring); return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/hemoprofile-bench-suite")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="config whose sections the stages run with (default: the demo's config/config.yaml)")
    parser.add_argument("--frames", type=int, nargs=2, default=[6, 12], metavar=("SMALL", "LARGE"),
                        help="frames per side of the small and the large slide")
    parser.add_argument("--frame-size", type=int, default=256, help="frame edge in pixels")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the rules' threads: 2)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the segment-overhead and batch timings")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--batch-threads", type=int, nargs="+", default=None,
                        help="torch thread counts of the batch-size sweep (default: --threads and 1)")
    parser.add_argument("--overhead-slide", choices=("small", "large"), default="small")
    parser.add_argument("--train-epochs", type=int, default=3, help="epochs of the classifier and VAE trained for "
                        "the classify and embed stages")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts among {', '.join(PARTS)}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = _child(json.loads(args.child))
        result.setdefault("hwm_mb", _status_mb("VmHWM"))
        print("RESULT " + json.dumps(result, default=float), flush=True)
        return 0
    if args.batch_threads is None:
        args.batch_threads = [args.threads, 1]
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose among {', '.join(PARTS)}")

    started = time.perf_counter()
    print(f"machine: {machine()}")
    print(f"load average (1/5/15 min) at start: {_load()}; parts: {', '.join(parts)}; workdir {args.workdir}",
          flush=True)
    cfg = demo_config(args.config)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    suite = Suite(args, cfg)
    small = large = None
    if any(p != "rerun" for p in parts):
        small = prepare_slide(workdir, args.frames[0], args.frame_size, cfg)
        large = prepare_slide(workdir, args.frames[1], args.frame_size, cfg)
    if "memory" in parts:
        suite.memory(small, large)
    if "segment-overhead" in parts:
        suite.segment_overhead(small if args.overhead_slide == "small" else large, small)
    if "classify-batch" in parts:
        suite.classify_batch(large, small)
    if "rerun" in parts:
        suite.rerun()
    print(f"\nsuite done in {time.perf_counter() - started:.0f} s; load average at end: {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
