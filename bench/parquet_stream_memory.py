"""Memory of reading a whole-slide cells table (issue 16): pyarrow's pre-buffering against the package's
streamed readers, side by side in one run.

Writes a cells.parquet-like table of ``--rows`` rows (default 3 M, one HDSCA slide; the real schema's
column count: slide, cell_id and 43 float32 features, row groups of 16,384 rows as extract writes them)
into ``--work``, then measures each way of reading it in a fresh Python process (peak RSS from
``ru_maxrss``; the process's RSS after imports is printed as the base):

- ``iter_batches, pre_buffer on``: ``pq.ParquetFile(path).iter_batches()`` over every column (pyarrow's
  default; what extract's second pass and gating's sampling did before 79c00a9);
- ``iter_batches, pre_buffer off``: :func:`hemoprofile.io.tables.open_parquet_stream`, the same loop;
- ``read_cells slide+cell_id``: the DataFrame classify and embed built before (``pd.read_parquet`` of two
  columns, the slide name one Python string per row);
- ``read_cell_keys``: :func:`hemoprofile.io.tables.read_cell_keys`, what they read now.

Usage::

    PYTHONPATH=src .venv/bin/python bench/parquet_stream_memory.py --work /work/benchwork/pq --rows 3000000 190000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

READERS = {
    "iter_batches, pre_buffer on": """
import pyarrow.parquet as pq
for batch in pq.ParquetFile(PATH).iter_batches(batch_size=16384):
    pass
""",
    "iter_batches, pre_buffer off": """
from hemoprofile.io.tables import open_parquet_stream
for batch in open_parquet_stream(PATH).iter_batches(batch_size=16384):
    pass
""",
    "read_cells slide+cell_id": """
from hemoprofile.io.tables import read_cells
cells = read_cells(PATH, ["slide", "cell_id"])
""",
    "read_cell_keys": """
from hemoprofile.io.tables import read_cell_keys
keys = read_cell_keys(PATH)
""",
}

MEASURE = """
import json, resource, sys
import numpy, pandas, pyarrow.parquet, hemoprofile.io.tables  # imported before the base is taken
def rss():
    return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) / 1024
base = rss()
PATH = sys.argv[1]
{body}
print(json.dumps({{"base_mib": base, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def write_table(path: Path, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("slide", pa.string()), ("cell_id", pa.int64())] +
                       [(f"feature_{i}", pa.float32()) for i in range(43)])
    rng = np.random.default_rng(0)
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 16384):
            n = min(16384, rows - start)
            columns = [pa.array(["P01_S1"] * n), pa.array(np.arange(start + 1, start + n + 1, dtype=np.int64))]
            columns += [pa.array(rng.random(n, dtype=np.float32)) for _ in range(43)]
            writer.write_table(pa.table(columns, schema=schema), row_group_size=16384)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="folder for the generated tables (outside the repository)")
    parser.add_argument("--rows", type=int, nargs="+", default=[3_000_000, 190_000])
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    for rows in args.rows:
        path = work / f"cells_{rows}.parquet"
        if not path.exists():
            write_table(path, rows)
        for name, body in READERS.items():
            out = subprocess.run([sys.executable, "-c", MEASURE.format(body=body), str(path)], check=True,
                                 capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "src")}).stdout
            results[(rows, name)] = json.loads(out.strip().splitlines()[-1])
    print(f"{'reader':<30}" + "".join(" | " + f"{rows:,} rows: peak (over base)".rjust(32) for rows in args.rows))
    for name in READERS:
        cells = [results[(rows, name)] for rows in args.rows]
        print(f"{name:<30}" + "".join(" | " + f"{c['peak_mib']:.0f} MiB ({c['peak_mib'] - c['base_mib']:+.0f})".rjust(32)
                                      for c in cells))


if __name__ == "__main__":
    main()
