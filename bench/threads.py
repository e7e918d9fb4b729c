"""Speed-up of 2 threads over 1 per stage on the same synthetic slide (issue 16, section 3).

Builds one synthetic slide in --workdir (an OME-TIFF of 4 uint16 channels with disc-shaped cells, its
label image, a random-weight CellNet classifier and a VAE embedder trained for one epoch), then runs
tile, preprocess, segment (the config's backend: classical), extract, classify and embed at each thread
count, in this process, one after the other, and prints wall time per thread count, the speed-up,
whether the outputs are byte-identical (chunk files and parquet files; zarr.json is left out, it records
run times) and the cores kept busy (CPU time of this process and its reaped worker processes over wall
time: near 2 with 2 threads means the work ran in parallel and a missing speed-up is other jobs' load;
near 1 means it was serialised). Settings are those of config/config.yaml. Extract measures the drawn
label image, not segment's output, so its cells are the same at every thread count by construction.

    PYTHONPATH=src .venv/bin/python bench/threads.py --size 2048 --tile 256 --cells 3000

Prints the load average before and after: on a shared machine the speed-up is depressed by other jobs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
import yaml

from hemoprofile import io
from hemoprofile.classify.checkpoints import save_classifier
from hemoprofile.classify.inference import classify_slide
from hemoprofile.config import validate_config
from hemoprofile.embed.sample import EmbedSlide
from hemoprofile.embed.slide import embed_slide
from hemoprofile.embed.training import train_embedder
from hemoprofile.features.extract import extract_slide
from hemoprofile.ingest.tile import tile_slide
from hemoprofile.io.slide_sources import open_slide_source
from hemoprofile.nn.cnn import CellNet, CellNetSpec
from hemoprofile.preprocess.pipeline import preprocess_slide
from hemoprofile.segment.tiled import segment_slide

CHANNELS = ["DAPI", "CK", "VIM", "CD45"]
ROOT = Path(__file__).resolve().parents[1]


def synthetic_slide(size: int, n_cells: int, seed: int = 0):
    """(image (4, size, size) uint16, labels (size, size) uint32): non-overlapping discs on noise."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.uint32)
    image = rng.normal(400, 40, (4, size, size)).clip(0, 65535).astype(np.uint16)
    yy, xx = np.mgrid[-9:10, -9:10]
    next_id = 1
    for _ in range(n_cells * 3):
        if next_id > n_cells:
            break
        cy, cx = rng.integers(10, size - 10, 2)
        r = rng.uniform(4, 9)
        disc = yy**2 + xx**2 <= r * r
        window = labels[cy - 9:cy + 10, cx - 9:cx + 10]
        if window[disc].any():
            continue
        window[disc] = next_id
        image[:, cy - 9:cy + 10, cx - 9:cx + 10][:, disc] += rng.integers(300, 4000, (4, 1)).astype(np.uint16)
        next_id += 1
    return image, labels


def cpu_seconds() -> float:
    """CPU seconds of this process and its reaped children (the stages' forked workers are joined, so
    reaped, before each stage returns)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def same_outputs(a: Path, b: Path) -> bool:
    """Whether two output files/folders hold the same bytes (zarr.json excepted: it records run times)."""
    if a.is_file():
        return a.read_bytes() == b.read_bytes()
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "zarr.json")
    return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != "zarr.json") and \
        all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="slide edge in px (default 2048)")
    parser.add_argument("--tile", type=int, default=256, help="tile (chunk) edge in px (default 256)")
    parser.add_argument("--cells", type=int, default=3000, help="cells drawn on the slide (default 3000)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hemoprofile-bench-threads"))
    args = parser.parse_args(argv)
    cfg = validate_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    image, labels = synthetic_slide(args.size, args.cells)
    tifffile.imwrite(work / "slide.ome.tif", image, ome=True, metadata={"axes": "CYX"}, tile=(256, 256),
                     compression="zlib")
    io.create_ome_zarr_labels(work / "labels.zarr", labels.shape, args.tile, pixel_size_um=0.65)[:] = labels
    n_labelled = int(len(np.unique(labels)) - 1)
    del image, labels

    def run_tile(out, t):
        with open_slide_source(work / "slide.ome.tif", "ome-tiff", CHANNELS, pixel_size_um=0.65) as source:
            tile_slide(source, out / "image.zarr", args.tile, cfg["tile"]["compression_level"], progress=None,
                       threads=t)
        return out / "image.zarr"

    def run_preprocess(out, t):
        preprocess_slide(ref / "image.zarr", out / "preprocessed.zarr", cfg["preprocess"], progress=None, threads=t)
        return out / "preprocessed.zarr"

    def run_segment(out, t):
        segment_slide(ref / "preprocessed.zarr", out / "labels.zarr", cfg["segment"], progress=None, threads=t)
        return out / "labels.zarr"

    def run_extract(out, t):
        extract_slide(work / "labels.zarr", ref / "image.zarr", ref / "preprocessed.zarr", out / "cells.parquet",
                      out / "patches.zarr", out / "clusters.parquet", cfg["extract"], cfg["gating"], slide="S1",
                      progress=None, threads=t)
        return out / "patches.zarr"

    def run_classify(out, t):
        classify_slide(ref / "patches.zarr", ref / "cells.parquet", [str(work / "classifier.pt")],
                       out / "predictions.parquet", device="cpu", mixed_precision=False, threads=t)
        return out / "predictions.parquet"

    def run_embed(out, t):
        embed_slide(work / "embedder.pt", ref / "patches.zarr", ref / "cells.parquet", out / "embedding.parquet",
                    device="cpu", mixed_precision=False, threads=t)
        return out / "embedding.parquet"

    def prepare_models():
        torch.manual_seed(0)
        model = CellNet(CellNetSpec(4, 3, patch_size=int(cfg["extract"]["patch_size"]))).eval()
        save_classifier(work / "classifier.pt", model, "lineage", ["lymphoid", "myeloid", "CTC"], CHANNELS,
                        int(cfg["extract"]["patch_size"]))
        train_embedder([EmbedSlide("S1", str(ref / "cells.parquet"), str(ref / "patches.zarr"))], work / "embedder.pt",
                       work / "embedder.json", {**cfg["embed"], "cells_per_slide": 500, "device": "cpu",
                                                "train": {"epochs": 1}, "cluster": {"k": 4}}, progress=None,
                       threads=2)

    load0 = os.getloadavg()
    print(f"{os.cpu_count()} logical cores; torch {torch.__version__}; slide {args.size}² px x 4 channels, tile "
          f"{args.tile}, {n_labelled} cells; load average (1/5/15 min) at start: "
          f"{'/'.join(f'{v:.1f}' for v in load0)}")
    print(f"{'stage':<11}" + "".join(f"{f'{t} thr (s)':>12}" for t in args.threads) + f"{'speed-up':>10}  identical  cores busy (CPU s / wall s)")
    ref = work / f"t{args.threads[0]}"
    stages = [("tile", run_tile), ("preprocess", run_preprocess), ("segment", run_segment), ("extract", run_extract),
              ("classify", run_classify), ("embed", run_embed)]
    for name, run in stages:
        if name == "classify":
            prepare_models()
        seconds, outputs, busy = [], [], []
        for t in args.threads:
            out = work / f"t{t}"
            out.mkdir(exist_ok=True)
            start, cpu = time.perf_counter(), cpu_seconds()
            outputs.append(run(out, t))
            seconds.append(time.perf_counter() - start)
            busy.append((cpu_seconds() - cpu) / seconds[-1])
        identical = all(same_outputs(outputs[0], o) for o in outputs[1:])
        print(f"{name:<11}" + "".join(f"{s:>12.2f}" for s in seconds) + f"{seconds[0] / seconds[-1]:>9.2f}x  "
              f"{'yes' if identical else 'NO':>9}  " + " / ".join(f"{b:.2f}" for b in busy), flush=True)
    print(f"load average at end: {'/'.join(f'{v:.1f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
