"""Cohort scale (issue 16 §5): peak memory and time of the patient aggregation for 1, 5 and 20 slides of
3 M cells, beside the aggregation of commit 49fae87 (the whole cohort's cells in one table) on 5 slides,
and the cohort report's build time and size for 3 slides of 3 M cells.

One set of tables is generated with the workflow's schemas (tests/helpers/cell_tables.py: cells.parquet
as extract writes it, predictions.parquet with the immune6 and ctc tasks, embedding.parquet with an 8-d
latent space; one cell in five in a two-cell cluster), plus the clusters.parquet the report reads; every
slide of the cohort points at those same files, so setting up 20 slides costs one. Slides are paired
into patients (2 per patient). Each measurement runs in a fresh Python process and reports its own peak
RSS (``ru_maxrss``) and wall time.

The report is given the slides' tables, patients.parquet and its glossary; no images (a 3 M-cell slide's
image.zarr is ~25 GB and its patches.zarr ~25 GB), so its QC cards and rare-event galleries say "no
image": the figures measure what the report reads per cell, not the thumbnails (those come from the
image pyramid, issue 16 §2).

With ``--report-slide DIR`` (a real slide's results folder, e.g. the full slide of bench/scale.py
--keep) only the report is built, for 3 slides that all point at DIR's files, images included
(image.zarr with its pyramid, labels.zarr, patches.zarr): the thumbnails and galleries a real cohort's
report makes, at full size.

Usage::

    nice -n 10 python bench/cohort_scale.py                      # tables in /tmp/hemoprofile-bench-cohort
    python bench/cohort_scale.py --cells 300000 --workdir /scratch/me/cohort --no-baseline
    python bench/cohort_scale.py --report-slide /work/benchwork/scale/scale_1_1/results/P01_S1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

BASELINE_COMMIT = "49fae87"
MEMORY_CAP_GB = 16  # the baseline holds the cohort's cells: cap it rather than let it take the machine

AGGREGATE = """
import json, resource, sys, time
import pandas as pd
sys.path.insert(0, sys.argv[4])
folder, n, module = sys.argv[1], int(sys.argv[2]), sys.argv[3]
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[5]) << 30, resource.RLIM_INFINITY))
agg = __import__(module, fromlist=["aggregate_patients"])
slides = [f"S{i:03d}" for i in range(n)]
files = {s: {k: f"{folder}/{k}.parquet" for k in ("cells", "predictions", "embedding")} for s in slides}
samples = pd.DataFrame({"slide": slides, "patient": [f"P{i // 2:03d}" for i in range(n)], "condition": "x"})
t = time.perf_counter()
try:
    table, _ = agg.aggregate_patients(samples, files)
    shape = list(table.shape)
except MemoryError:
    shape = None
print(json.dumps({"seconds": time.perf_counter() - t, "shape": shape,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

REPORT = """
import json, os, resource, sys, time
import pandas as pd
from hemoprofile.patients.aggregate import aggregate_patients, table_descriptions, write_patient_table
from hemoprofile.report import ReportInputs, build_report
folder, out, files = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
slides = ["R1", "R2", "R3"]
paths = {s: {k: f"{folder}/{name}" for k, name in files.items()} for s in slides}
samples = pd.DataFrame({"slide": slides, "patient": ["PA", "PB", "PC"], "condition": ["control", "disease", "disease"]})
table, _ = aggregate_patients(samples, paths)
write_patient_table(table, table_descriptions(table), f"{out}/patients.parquet", f"{out}/patients_columns.tsv")
t = time.perf_counter()
result = build_report(ReportInputs(config={"results": out}, samples=samples, slides=paths,
                                   patients=f"{out}/patients.parquet", patient_columns=f"{out}/patients_columns.tsv"),
                      f"{out}/report.html")
print(json.dumps({"seconds": time.perf_counter() - t, "bytes": result["bytes"],
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_tables(folder: Path, n_cells: int) -> None:
    """The one set of tables every slide points at, plus clusters.parquet (as extract writes it)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from helpers.cell_tables import write_cell_tables

    from hemoprofile.vocabulary import LEUKOCYTE_TYPES

    write_cell_tables(folder, "S", n_cells, tasks={"immune6": list(LEUKOCYTE_TYPES), "ctc": ["leukocyte", "CTC"]},
                      cell_pairs=True, chunk_rows=262144)
    cells = pq.read_table(folder / "cells.parquet", columns=["cell_id", "cluster_id", "bbox_y0", "bbox_x0",
                                                             "bbox_y1", "bbox_x1"]).to_pandas()
    cells = cells[cells["cluster_id"] >= 0]
    groups = cells.groupby("cluster_id")
    clusters = pa.table({
        "cluster_id": groups.size().index.to_numpy(np.int64), "size": groups.size().to_numpy(np.int64),
        "cell_ids": pa.array([list(v) for v in groups["cell_id"].agg(list)], pa.list_(pa.int64())),
        "bbox_y0": groups["bbox_y0"].min().to_numpy(), "bbox_x0": groups["bbox_x0"].min().to_numpy(),
        "bbox_y1": groups["bbox_y1"].max().to_numpy(), "bbox_x1": groups["bbox_x1"].max().to_numpy()})
    pq.write_table(clusters, folder / "clusters.parquet")
    (folder / "n_cells").write_text(str(n_cells))


def run(code: str, *args) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"rc {done.returncode}",
                "seconds": time.perf_counter() - started, "rss_mb": float("nan")}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=3_000_000, help="cells per slide (one table)")
    parser.add_argument("--slides", type=int, nargs="+", default=[1, 5, 20], help="cohort sizes to aggregate")
    parser.add_argument("--baseline-slides", type=int, default=5, help="cohort size for the 49fae87 baseline")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "hemoprofile-bench-cohort")
    parser.add_argument("--report-slide", type=Path, default=None,
                        help="only build the report, of 3 slides pointing at this slide folder's files and images")
    args = parser.parse_args()
    if args.report_slide:
        report_of_slide(args.report_slide, args.workdir / "report")
        return
    folder = args.workdir / "tables"
    marker = folder / "n_cells"
    if marker.exists() and marker.read_text() == str(args.cells):
        print(f"reusing the tables in {folder}")
    else:
        started = time.perf_counter()
        write_tables(folder, args.cells)
        print(f"generated one slide of {args.cells:,} cells in {folder} in {time.perf_counter() - started:.0f} s")
    baseline_dir = args.workdir / "baseline"
    baseline_dir.mkdir(parents=True, exist_ok=True)
    source = subprocess.run(["git", "-C", str(ROOT), "show",
                             f"{BASELINE_COMMIT}:src/hemoprofile/patients/aggregate.py"],
                            capture_output=True, text=True, check=True).stdout
    (baseline_dir / "aggregate_49fae87.py").write_text(source)

    rows = []
    for n in args.slides:
        rows.append(("this commit", n, run(AGGREGATE, folder, n, "hemoprofile.patients.aggregate", baseline_dir,
                                           MEMORY_CAP_GB)))
    if not args.no_baseline:
        rows.append((f"{BASELINE_COMMIT} (baseline)", args.baseline_slides,
                     run(AGGREGATE, folder, args.baseline_slides, "aggregate_49fae87", baseline_dir, MEMORY_CAP_GB)))
    print(f"\naggregate_patients, slides of {args.cells:,} cells, 2 slides per patient "
          f"(fresh process each; address space capped at {MEMORY_CAP_GB} GB)")
    print(f"{'implementation':<22}{'slides':>7}{'cells':>14}{'peak RSS MB':>13}{'wall s':>9}{'s / M cells':>13}")
    for name, n, r in rows:
        cells = n * args.cells
        note = f"  {r['error']}" if "error" in r else ""
        print(f"{name:<22}{n:>7}{cells:>14,}{r['rss_mb']:>13.0f}{r['seconds']:>9.1f}"
              f"{r['seconds'] / (cells / 1e6):>13.2f}{note}")

    out = args.workdir / "report"
    out.mkdir(exist_ok=True)
    r = run(REPORT, folder, out, json.dumps({k: f"{k}.parquet" for k in ("cells", "predictions", "embedding",
                                                                        "clusters")}))
    print(f"\nreport of 3 slides x {args.cells:,} cells (tables only, no images)")
    print_report(r)


#: A slide folder's files the report reads (ReportInputs.slides keys -> names in results/<slide>/).
SLIDE_FILES = {"image": "image.zarr", "preprocessed": "preprocessed.zarr", "labels": "labels.zarr",
               "cells": "cells.parquet", "predictions": "predictions.parquet", "clusters": "clusters.parquet",
               "patches": "patches.zarr", "embedding": "embedding.parquet"}


def report_of_slide(slide_dir: Path, out: Path) -> None:
    """The report of 3 slides that are all ``slide_dir`` (its images included), timed in a fresh process."""
    import pyarrow.parquet as pq

    files = {k: name for k, name in SLIDE_FILES.items() if (slide_dir / name).exists()}
    if "cells" not in files:
        raise SystemExit(f"{slide_dir}: no cells.parquet")
    out.mkdir(parents=True, exist_ok=True)
    cells = pq.ParquetFile(slide_dir / "cells.parquet").metadata.num_rows
    r = run(REPORT, slide_dir, out, json.dumps(files))
    print(f"report of 3 slides x {cells:,} cells, each {slide_dir} ({', '.join(files.values())})")
    print_report(r)


def print_report(r: dict) -> None:
    if "error" in r:
        print(f"failed: {r['error']}")
    else:
        print(f"{'build s':>8}{'size MB':>9}{'peak RSS MB':>13}\n{r['seconds']:>8.1f}{r['bytes'] / 1e6:>9.2f}"
              f"{r['rss_mb']:>13.0f}")
        print("targets (issue 16): aggregation of 20 slides < 4096 MB; report < 120 s and < 30 MB")


if __name__ == "__main__":
    main()
