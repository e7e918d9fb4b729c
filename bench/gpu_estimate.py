"""Projected time of a full HDSCA slide segmented with Cellpose on one GPU and on N GPU shards (issue 16 §5).

No GPU here, so the projection is built from parts, each either measured in this run or quoted:

1. On a region of a real-size slide (a crop of its ``preprocessed.zarr``, ``--region`` px square, at
   the slide's real cell density), the project's ``segment_slide`` with the bundled Cellpose model runs
   on this CPU, and the time inside Cellpose is split by wrapping its functions: the network
   (``run_net``), flow following, mask assembly and the flow-error check (Cellpose 3.1 runs these three
   in torch on the model's device, so on a GPU node they move to the GPU), and hole filling / small-mask
   removal (``utils.fill_holes_and_remove_small_masks``: numpy/scipy, always on the CPU). The rest of
   the stage (reading windows, normalising, pasting and stitching, writing
   labels.zarr and its pyramid) is the stage's own time; the slide calibration on its tile sample is
   timed apart, as a fixed cost per slide.
2. The network's GPU speed is quoted, not measured: Cellpose's README ("Timing", v0.6) gives 0.31 s for
   one 1024 x 1024 image through one network on an Nvidia GTX 1080 Ti (diameter 30, no rescaling). That
   net is Cellpose's default width (nbase 32-64-128-256); the bundled model is half as wide, so the
   quote is scaled by the CPU-time ratio of the two widths measured here on the same input. A current
   GPU (A100, H100) is several times faster than a 1080 Ti, so this term is an upper bound there.
3. The shard stitch (``stitch_shards``: one CPU job after the GPU shards) is measured on the same region
   with the classical backend's shard outputs: the stitch reads block labels and does not depend on
   which backend made them.

Projection for the whole slide (its megapixels; per-MP rates from the region):
    one GPU = network at the quoted GPU rate + GPU-side post-processing + CPU-side post-processing
              + the stage's own time + the calibration
with the GPU-side post-processing between 0 (an infinitely fast GPU) and its time on this CPU (printed
as a range); N shards = one GPU / N + the stitch. Compared with the published mark: about 3 M cells
per slide detected in about 10 minutes (Schwab et al. 2024, arXiv 2410.02988).

    PYTHONPATH=src .venv/bin/python bench/gpu_estimate.py --slide /work/benchwork/scale/scale_1_1/results/P01_S1

Takes about 2-4 minutes per 2048² px region on this 2-core CPU (Cellpose on a CPU is slow: that is
the point of the GPU).
"""

from __future__ import annotations

import argparse
import collections
import functools
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from hemoprofile import io
from hemoprofile.config import validate_config
from hemoprofile.segment.cellpose_model import build_net
from hemoprofile.segment.shards import segment_shard, stitch_shards, write_shard_summary
from hemoprofile.segment.tiled import segment_slide

ROOT = Path(__file__).resolve().parents[1]
#: Cellpose README "Timing (v0.6)": DNN (1net, GPU, GTX 1080 Ti) 0.31 s for a 1024 x 1024 image.
QUOTED_GPU_NET_SECONDS, QUOTED_GPU_NET_MEGAPIXELS = 0.31, 1024 * 1024 / 1e6
DEFAULT_WIDTH_NBASE = [2, 32, 64, 128, 256]
#: the HDSCA slide: 96 x 24 frames of 1362 x 1004 px
HDSCA_MEGAPIXELS = 96 * 24 * 1362 * 1004 / 1e6
MARK_SECONDS, MARK_CELLS = 600.0, 3_000_000  # Schwab et al. 2024: ~3 M cells per slide in ~10 min

#: Cellpose functions timed: (module, attribute, part of the split)
TIMED = [("cellpose.models", "run_net", "network"),
         ("cellpose.dynamics", "follow_flows", "post, GPU-side"),
         ("cellpose.dynamics", "get_masks_torch", "post, GPU-side"),
         ("cellpose.dynamics", "remove_bad_flow_masks", "post, GPU-side"),
         ("cellpose.utils", "fill_holes_and_remove_small_masks", "post, CPU-side"),
         ("hemoprofile.segment.tiled", "calibrate_segmenter", "calibration")]


def merged_config(configfiles: list[Path]) -> dict:
    """config/config.yaml with ``configfiles`` merged over it key by key (Snakemake's own merge, as its
    --configfile does), validated."""
    from snakemake.utils import update_config

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for extra in configfiles:
        update_config(cfg, yaml.safe_load(extra.read_text()) or {})
    return validate_config(cfg)


def crop_region(slide: Path, out: Path, size: int) -> tuple[float, tuple[int, int]]:
    """Copy the centre ``size`` x ``size`` px of ``slide/preprocessed.zarr`` (tile-aligned) into ``out``;
    return the slide's megapixels and the crop's shape."""
    image = io.open_ome_zarr(slide / "preprocessed.zarr")
    array = image.array
    tile = int(array.chunks[-1])
    _, height, width = (int(s) for s in array.shape)
    size = min(size, height, width) // tile * tile
    y0 = (height - size) // 2 // tile * tile
    x0 = (width - size) // 2 // tile * tile
    region = io.create_ome_zarr_image(out, (array.shape[0], size, size), array.dtype, tile,
                                      list(image.channel_names), pixel_size_um=image.pixel_size_um, name="region")
    region[:] = np.asarray(array[:, y0:y0 + size, x0:x0 + size])
    return height * width / 1e6, (size, size)


class Timers:
    """Wall seconds spent in wrapped functions, summed per part (the wrapped functions do not call each other)."""

    def __init__(self):
        self.seconds = collections.Counter()
        self._saved = []

    def wrap(self, module_name: str, attribute: str, part: str) -> None:
        module = sys.modules[module_name]
        original = getattr(module, attribute)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - started

        setattr(module, attribute, timed)
        self._saved.append((module, attribute, original))

    def restore(self) -> None:
        for module, attribute, original in reversed(self._saved):
            setattr(module, attribute, original)
        self._saved.clear()


def network_width_ratio(shape: tuple[int, int], repeats: int = 3) -> float:
    """CPU time of the bundled model's width over Cellpose's default width, random weights, same input."""
    from cellpose.core import run_net

    from hemoprofile.segment.cellpose_model import load_cellpose_model, model_file
    bundled = load_cellpose_model(model_file("bundled:hemoprofile_cellpose"), device=torch.device("cpu")).net
    default = build_net(DEFAULT_WIDTH_NBASE, 15.0).eval()
    x = np.random.default_rng(0).random((1, *shape, 2), dtype=np.float32)
    best = {}
    for name, net in (("bundled", bundled), ("default", default)):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            with torch.no_grad():
                run_net(net, x)
            times.append(time.perf_counter() - started)
        best[name] = min(times)
    return best["bundled"] / best["default"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slide", type=Path, required=True, help="a real-size slide's results folder (preprocessed.zarr)")
    parser.add_argument("--configfile", type=Path, nargs="*", default=[ROOT / "config" / "scale.yaml"])
    parser.add_argument("--region", type=int, default=2048, help="edge of the square region in px (default 2048)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--full-slide-megapixels", type=float, default=None,
                        help="project to this many MP (default: the slide's own area, or the HDSCA slide's "
                             f"{HDSCA_MEGAPIXELS:.0f} MP when the slide is smaller)")
    args = parser.parse_args(argv)
    if not (args.slide / "preprocessed.zarr").exists():
        sys.exit(f"{args.slide / 'preprocessed.zarr'}: missing (run the slide through preprocess first)")
    torch.set_num_threads(args.torch_threads)
    cfg = merged_config(args.configfile)
    work = Path(tempfile.mkdtemp(prefix="gpu-estimate-"))
    try:
        slide_mp, shape = crop_region(args.slide, work / "region.zarr", args.region)
        region_mp = shape[0] * shape[1] / 1e6
        project_mp = args.full_slide_megapixels or max(slide_mp, HDSCA_MEGAPIXELS)

        import cellpose.dynamics  # noqa: F401  (modules the timers patch)
        import cellpose.models  # noqa: F401
        import cellpose.utils  # noqa: F401
        timers = Timers()
        for module, attribute, part in TIMED:
            timers.wrap(module, attribute, part)
        cellpose_cfg = {**cfg["segment"], "backend": "cellpose", "device": "cpu", "shards": 1}
        started = time.perf_counter()
        try:
            summary = segment_slide(work / "region.zarr", work / "cellpose.zarr", cellpose_cfg, progress=None)
        finally:
            timers.restore()
        stage_seconds = time.perf_counter() - started
        n_cells = int(summary.get("n_objects", 0))

        classical_cfg = {**cfg["segment"], "backend": "classical", "shards": args.shards}
        summaries = []
        for shard in range(args.shards):
            s = segment_shard(work / "region.zarr", work / f"shard{shard}.blocks", shard, args.shards, classical_cfg,
                              progress=None)
            write_shard_summary(s, work / f"shard{shard}.json")
            summaries.append(work / f"shard{shard}.json")
        started = time.perf_counter()
        stitch_shards(work / "region.zarr", work / "stitched.zarr", summaries, classical_cfg, progress=None)
        stitch_seconds = time.perf_counter() - started
        ratio = network_width_ratio((min(shape[0], 588), min(shape[1], 588)))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    parts = timers.seconds
    calibration = parts.pop("calibration", 0.0)  # a fixed cost per slide (its tile sample), not per MP
    own = stage_seconds - sum(parts.values()) - calibration
    per_mp = {k: v / region_mp for k, v in parts.items()}
    quoted_net = QUOTED_GPU_NET_SECONDS / QUOTED_GPU_NET_MEGAPIXELS * ratio  # s/MP of the bundled width
    gpu_side, cpu_side = per_mp.get("post, GPU-side", 0.0), per_mp.get("post, CPU-side", 0.0)
    low = (quoted_net + cpu_side + own / region_mp) * project_mp + calibration
    high = low + gpu_side * project_mp
    stitch = stitch_seconds / region_mp * project_mp
    cells_full = n_cells / region_mp * project_mp

    print(f"== Cellpose GPU projection: region {shape[0]}x{shape[1]} px ({region_mp:.2f} MP) of {args.slide}, "
          f"{n_cells} cells ({n_cells / region_mp:.0f}/MP), bundled model, torch threads {args.torch_threads} ==")
    print(f"{'part':<26} {'region s':>9} {'s/MP here':>10}  where it runs on a GPU node")
    for part in ("network", "post, GPU-side", "post, CPU-side"):
        print(f"{part:<26} {parts.get(part, 0.0):>9.1f} {per_mp.get(part, 0.0):>10.3f}  "
              + {"network": "GPU", "post, GPU-side": "GPU (torch on the model's device)",
                 "post, CPU-side": "CPU (numpy/scipy)"}[part])
    print(f"{'stage own time':<26} {own:>9.1f} {own / region_mp:>10.3f}  CPU (read, normalise, paste, write, pyramid)")
    print(f"{'calibration (once/slide)':<26} {calibration:>9.1f} {'':>10}  CPU (input percentiles on the tile sample)")
    print(f"{'segment stage, total':<26} {stage_seconds:>9.1f} {stage_seconds / region_mp:>10.3f}")
    print(f"{'stitch of ' + str(args.shards) + ' shards':<26} {stitch_seconds:>9.1f} {stitch_seconds / region_mp:>10.3f}  "
          "CPU (one job after the shards)")
    print(f"network width: bundled / Cellpose default CPU time {ratio:.2f} -> quoted GPU network rate "
          f"{QUOTED_GPU_NET_SECONDS} s per 1024² (GTX 1080 Ti, Cellpose README) x {ratio:.2f} = {quoted_net:.3f} s/MP")
    print(f"projected slide: {project_mp:.0f} MP, ~{cells_full / 1e6:.2f} M cells at the region's density")
    print(f"  this CPU (2 cores), Cellpose    {stage_seconds / region_mp * project_mp / 60:8.1f} min")
    print(f"  one GPU                         {low / 60:8.1f} - {high / 60:.1f} min  "
          f"(GPU-side post-processing free .. at this CPU's speed)")
    print(f"  {args.shards} GPU shards + stitch          {(low / args.shards + stitch) / 60:8.1f} - "
          f"{(high / args.shards + stitch) / 60:.1f} min  (stitch {stitch / 60:.1f} min)")
    print(f"  published mark                  {MARK_SECONDS / 60:8.1f} min for ~{MARK_CELLS / 1e6:.0f} M cells "
          "(Schwab et al. 2024)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
