"""Memory of the ctc_candidates stage on a 3 M-cell slide: hemoprofile.classify.candidates.candidate_table
(record batches, only the columns it needs) against a baseline in the same run that reads both tables
whole with pandas and filters. Each approach runs in its own subprocess; peak RSS from getrusage.

    nice -n 10 python bench/review_candidates.py --cells 3000000 --workdir /work/benchwork/review/bench

Writes a cells.parquet with every column extract writes (4 channels) and a predictions.parquet with three
tasks' columns, row groups of 65,536 rows; ~4 candidates per 1,000 cells score >= 0.9 (the demo's rate).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CHANNELS = ["DAPI", "CK", "VIM", "CD45"]
THRESHOLD = 0.9


def write_slide(workdir: Path, n: int, seed: int = 0) -> tuple[str, str]:
    from hemoprofile.io.tables import cells_schema

    schema = cells_schema(CHANNELS, "gate_label")
    cells_path, pred_path = workdir / "cells.parquet", workdir / "predictions.parquet"
    if cells_path.exists() and pq.read_metadata(cells_path).num_rows == n and pred_path.exists():
        return str(cells_path), str(pred_path)
    rng = np.random.default_rng(seed)
    block = 65536
    pred_fields = [("slide", pa.string()), ("cell_id", pa.int64())]
    for task, classes in (("lineage", ["lymphoid", "myeloid"]), ("immune5", ["T", "B", "NK", "granulocyte", "monocyte"]),
                          ("ctc", ["leukocyte", "CTC"])):
        pred_fields += [(f"p_{task}_{c}", pa.float32()) for c in classes]
        pred_fields += [(f"pred_{task}", pa.string()), (f"model_{task}", pa.string())]
    pred_schema = pa.schema(pred_fields)
    with pq.ParquetWriter(cells_path, schema) as cw, pq.ParquetWriter(pred_path, pred_schema) as pw:
        for start in range(0, n, block):
            m = min(block, n - start)
            ids = np.arange(start + 1, start + m + 1, dtype=np.int64)
            cols = {}
            for f in schema:
                if f.name == "slide":
                    cols[f.name] = pa.array(["S"] * m)
                elif f.name == "cell_id":
                    cols[f.name] = pa.array(ids)
                elif f.name == "gate_label":
                    cols[f.name] = pa.array(np.where(rng.random(m) < 0.004, "CTC", "leukocyte"))
                elif f.name == "cluster_id":
                    cols[f.name] = pa.array(np.where(rng.random(m) < 0.1, rng.integers(0, 10000, m), -1))
                elif pa.types.is_boolean(f.type):
                    cols[f.name] = pa.array(rng.random(m) < 0.01)
                else:
                    cols[f.name] = pa.array((rng.random(m) * 1000).astype(f.type.to_pandas_dtype()))
            cw.write_table(pa.table(cols, schema=schema))
            score = rng.beta(1, 30, m).astype(np.float32)
            hits = rng.random(m) < 0.004
            score[hits] = rng.uniform(THRESHOLD, 1, int(hits.sum()))
            pcols = {"slide": pa.array(["S"] * m), "cell_id": pa.array(ids)}
            for f in pred_schema:
                if f.name in pcols:
                    continue
                if f.name == "p_ctc_CTC":
                    pcols[f.name] = pa.array(score)
                elif f.name == "p_ctc_leukocyte":
                    pcols[f.name] = pa.array(1 - score)
                elif f.name.startswith("p_"):
                    pcols[f.name] = pa.array(rng.random(m).astype(np.float32))
                elif f.name == "pred_ctc":
                    pcols[f.name] = pa.array(np.where(score >= 0.5, "CTC", "leukocyte"))
                elif f.name.startswith("pred_"):
                    pcols[f.name] = pa.array(np.where(rng.random(m) < 0.5, "T", "granulocyte"))
                else:
                    pcols[f.name] = pa.array(["1b01a12a8f0e"] * m)
            pw.write_table(pa.table(pcols, schema=pred_schema))
    return str(cells_path), str(pred_path)


def run_candidate_table(cells: str, predictions: str) -> dict:
    from hemoprofile.classify.candidates import candidate_table

    table = candidate_table("S", cells, predictions, THRESHOLD)
    return {"candidates": len(table)}


def run_baseline(cells: str, predictions: str) -> dict:
    import pandas as pd

    c = pd.read_parquet(cells)
    p = pd.read_parquet(predictions)
    keep = (p["p_ctc_CTC"] >= THRESHOLD).to_numpy()
    table = c[keep].assign(p_ctc_CTC=p["p_ctc_CTC"][keep].to_numpy()).sort_values("p_ctc_CTC", ascending=False)
    return {"candidates": len(table)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=3_000_000)
    parser.add_argument("--workdir", default="/tmp/hemoprofile-bench-review")
    parser.add_argument("--child", choices=["candidate_table", "baseline"])
    parser.add_argument("--paths", nargs=2)
    args = parser.parse_args()
    if args.child:
        start = time.perf_counter()
        out = (run_candidate_table if args.child == "candidate_table" else run_baseline)(*args.paths)
        out["seconds"] = time.perf_counter() - start
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
        return
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    paths = write_slide(workdir, args.cells)
    sizes = {Path(p).name: os.path.getsize(p) / 1e6 for p in paths}
    print(f"slide: {args.cells:,} cells, {', '.join(f'{k} {v:.0f} MB' for k, v in sizes.items())} "
          f"(ready in {time.perf_counter() - t:.0f} s); threshold p_ctc_CTC >= {THRESHOLD}")
    for name in ("baseline", "candidate_table"):
        done = subprocess.run([sys.executable, __file__, "--child", name, "--paths", *paths], capture_output=True,
                              text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        label = "baseline (pandas, whole tables)" if name == "baseline" else "candidate_table (batches, columns)"
        print(f"  {label:38s} {r['candidates']:>7,} candidates  {r['seconds']:6.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB")


if __name__ == "__main__":
    main()
