"""The cohort report over real-size slides with their images (issue 16: "the report of a cohort of 3
full-size slides builds in < 2 min and stays < 30 MB").

bench/cohort_scale.py measures the report on generated tables without images. This one points every
slide of a small cohort at one finished slide's results folder (for example the one bench/scale.py
leaves with ``--keep``: image.zarr and labels.zarr with their pyramids, cells, predictions, clusters,
patches, embedding), so the report reads real image pyramids, label outlines and patches as it would
for that many slides of that size. In the same run, as the baseline, the same cohort's report without
images (tables only). Each build runs in a fresh Python process and prints its own wall time, peak RSS
(``ru_maxrss``) and the size of the HTML.

Usage::

    PYTHONPATH=src python bench/report_scale.py --slide-results /work/benchwork/scale/scale_1_4/results/P01_S1 \\
        --copies 3 --workdir /work/benchwork/report_scale
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: results/<slide>/ entries the report reads (report_inputs in workflow/rules/common.smk), by its key.
SLIDE_FILES = {"image": "image.zarr", "preprocessed": "preprocessed.zarr", "labels": "labels.zarr",
               "cells": "cells.parquet", "predictions": "predictions.parquet", "clusters": "clusters.parquet",
               "patches": "patches.zarr", "embedding": "embedding.parquet"}
IMAGE_KEYS = ("image", "preprocessed", "labels", "patches")

BUILD = """
import json, resource, sys, time
import pandas as pd
from hemoprofile.patients.aggregate import aggregate_patients, table_descriptions, write_patient_table
from hemoprofile.report import ReportInputs, build_report
paths, out, n = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
slides = [f"R{i + 1}" for i in range(n)]
files = {s: dict(paths) for s in slides}
conditions = ["control", "disease"] * n
samples = pd.DataFrame({"slide": slides, "patient": [f"P{s}" for s in slides], "condition": conditions[:n]})
table, _ = aggregate_patients(samples, files)
write_patient_table(table, table_descriptions(table), f"{out}/patients.parquet", f"{out}/patients_columns.tsv")
t = time.perf_counter()
result = build_report(ReportInputs(config={"results": out}, samples=samples, slides=files,
                                   patients=f"{out}/patients.parquet", patient_columns=f"{out}/patients_columns.tsv"),
                      f"{out}/report.html")
print(json.dumps({"seconds": time.perf_counter() - t, "bytes": result["bytes"],
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build(paths: dict, out: Path, copies: int) -> dict:
    """One report build in a fresh process: its seconds, HTML bytes and peak RSS (MB)."""
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-c", BUILD, json.dumps(paths), str(out), str(copies)],
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"report build failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slide-results", type=Path, required=True,
                        help="a finished slide's results folder (results/<slide>/)")
    parser.add_argument("--copies", type=int, default=3, help="slides in the cohort (all point at that folder)")
    parser.add_argument("--workdir", type=Path, required=True, help="where the reports are written")
    args = parser.parse_args()
    folder = args.slide_results
    paths = {key: str(folder / name) for key, name in SLIDE_FILES.items() if (folder / name).exists()}
    if "cells" not in paths or "predictions" not in paths:
        raise SystemExit(f"{folder}: needs at least cells.parquet and predictions.parquet")
    import pyarrow.parquet as pq

    n_cells = pq.read_metadata(paths["cells"]).num_rows
    print(f"slide {folder}: {n_cells:,} cells; files: {', '.join(sorted(paths))}")
    started = time.perf_counter()
    rows = [("with images", build(paths, args.workdir / "with_images", args.copies)),
            ("tables only (baseline)", build({k: v for k, v in paths.items() if k not in IMAGE_KEYS},
                                             args.workdir / "tables_only", args.copies))]
    print(f"\nreport of {args.copies} slides x {n_cells:,} cells ({args.copies * n_cells:,} cells)")
    print(f"{'':<24}{'build s':>9}{'size MB':>9}{'peak RSS MB':>13}")
    for name, r in rows:
        print(f"{name:<24}{r['seconds']:>9.1f}{r['bytes'] / 1e6:>9.2f}{r['rss_mb']:>13.0f}")
    print(f"target (issue 16, 3 full slides): < 120 s and < 30 MB; total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
