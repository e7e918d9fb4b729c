"""Peak memory of writing one slide's AnnData file (hemoprofile.export.write_cells_h5ad, as the workflow's
export_slide_h5ad rule does) from a generated slide of N cells, printed beside the size of that slide's
tables in memory.

The tables are generated with the workflow's schemas (tests/helpers/cell_tables.py: cells.parquet as
extract writes it, predictions.parquet with two tasks, embedding.parquet with a 16-d latent space), in
row groups of 65,536 rows; no images are needed. Each measurement runs in a fresh Python process and
reports that process's own peak RSS (``VmHWM`` from /proc/self/status) and its RSS after the imports:

* ``load``: pandas.read_parquet of the tables, and their in-memory size (``memory_usage(deep=True)``):
  what holding the slide once costs;
* ``write``: the streamed export of the same files to one .h5ad, which must stay well below that.

The written file is then opened with ``anndata.read_h5ad(backed="r")`` and its shape checked.

Usage::

    python bench/anndata.py                                  # 3,000,000 cells in /tmp/hemoprofile-bench-anndata
    python bench/anndata.py --cells 300000 --workdir /scratch/me/bench --chunk-rows 16384 --compression lzf
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This file is named like the anndata package: keep its folder off the import path, so `import anndata`
# (here and in hemoprofile.export) finds the package, not this script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

SLIDE = "BENCH_S1"


def _status_mb(key: str) -> float:
    """A /proc/self/status memory line (VmRSS, VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _paths(folder: Path) -> dict[str, Path]:
    return {name: folder / f"{name}.parquet" for name in ("cells", "predictions", "embedding")}


def child_load(folder: Path) -> dict:
    import pandas as pd
    floor = _status_mb("VmRSS")
    sizes = {}
    tables = {}
    for name, path in _paths(folder).items():
        tables[name] = pd.read_parquet(path)
        sizes[name] = tables[name].memory_usage(deep=True).sum() / 1e6
    return {"floor_mb": floor, "peak_mb": _status_mb("VmHWM"), "table_mb": sizes,
            "columns": {k: t.shape[1] for k, t in tables.items()}}


def child_write(folder: Path, out: Path, chunk_rows: int, compression: str | None) -> dict:
    from hemoprofile.export import SlideInputs, write_cells_h5ad
    floor = _status_mb("VmRSS")
    paths = _paths(folder)
    start = time.perf_counter()
    summary = write_cells_h5ad([SlideInputs(SLIDE, paths["cells"], paths["predictions"], paths["embedding"],
                                            {"patient": "P1", "condition": "control"})],
                               out, chunk_rows=chunk_rows, compression=compression)
    return {"floor_mb": floor, "peak_mb": _status_mb("VmHWM"), "seconds": time.perf_counter() - start,
            "summary": summary}


def run_child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], check=False, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: python bench/anndata.py --cells 3000000 --workdir /tmp/hp-anndata")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hemoprofile-bench-anndata"),
                        help="folder for the generated tables and the .h5ad (default: %(default)s)")
    parser.add_argument("--cells", type=int, default=3_000_000, help="cells of the slide (default: %(default)s)")
    parser.add_argument("--chunk-rows", type=int, default=65536, help="the export's chunk (default: %(default)s)")
    parser.add_argument("--compression", default="gzip", help="gzip, lzf or none (default: %(default)s)")
    parser.add_argument("--latent-dim", type=int, default=16, help="latent columns z_i (default: %(default)s)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        mode, folder = args.child[0], Path(args.child[1])
        if mode == "load":
            result = child_load(folder)
        else:
            compression = None if args.child[4] == "none" else args.child[4]
            result = child_write(folder, Path(args.child[2]), int(args.child[3]), compression)
        print(json.dumps(result))
        return

    import pyarrow.parquet as pq
    from helpers.cell_tables import write_cell_tables

    folder = args.workdir / SLIDE
    paths = _paths(folder)
    if all(p.exists() for p in paths.values()) and pq.ParquetFile(paths["cells"]).metadata.num_rows == args.cells and \
            len([c for c in pq.read_schema(paths["embedding"]).names if c.startswith("z_")]) == args.latent_dim:
        print(f"reusing the tables in {folder}")
    else:
        start = time.perf_counter()
        write_cell_tables(folder, SLIDE, args.cells, latent_dim=args.latent_dim, chunk_rows=65536)
        print(f"generated {args.cells:,} cells in {folder} in {time.perf_counter() - start:.0f} s")
    on_disk = {k: p.stat().st_size / 1e6 for k, p in paths.items()}
    out = args.workdir / f"{SLIDE}.h5ad"

    load = run_child("load", str(folder))
    write = run_child("write", str(folder), str(out), str(args.chunk_rows), args.compression)

    import anndata
    backed = anndata.read_h5ad(out, backed="r")
    assert backed.shape == (args.cells, write["summary"]["n_vars"]), backed.shape
    assert set(backed.obsm) == {"spatial", "X_latent", "X_map"}, set(backed.obsm)
    backed.file.close()

    print(f"machine: {os.cpu_count()} logical cores; load average {os.getloadavg()[0]:.1f}; "
          f"chunk {args.chunk_rows:,} rows, compression {args.compression}")
    cols = load["columns"]
    print(f"slide: {args.cells:,} cells; cells.parquet {cols['cells']} columns, predictions {cols['predictions']}, "
          f"embedding {cols['embedding']}; parquet on disk "
          + ", ".join(f"{k} {v:.0f} MB" for k, v in on_disk.items()))
    cells_mb = load["table_mb"]["cells"]
    all_mb = sum(load["table_mb"].values())
    print()
    print(f"{'':44s}{'MB':>10s}")
    print(f"{'cells table in memory (pandas, deep)':44s}{cells_mb:10.0f}")
    print(f"{'all three tables in memory (pandas, deep)':44s}{all_mb:10.0f}")
    print(f"{'  peak RSS of reading them (after imports)':44s}{load['peak_mb']:10.0f}   ({load['floor_mb']:.0f})")
    print(f"{'peak RSS of the streamed .h5ad export':44s}{write['peak_mb']:10.0f}   "
          f"({write['floor_mb']:.0f} after imports; {write['seconds']:.0f} s; "
          f"file {out.stat().st_size / 1e6:.0f} MB, {write['summary']['n_obs']:,} x {write['summary']['n_vars']})")
    print(f"export peak RSS / cells table in memory: {write['peak_mb'] / cells_mb:.2f}; "
          f"/ all three tables: {write['peak_mb'] / all_mb:.2f}")


if __name__ == "__main__":
    main()
