"""CTC candidates of a finished synthetic run against ground truth, side by side in the same run: the
candidate threshold of calibrate_ctc (results/models/ctc_calibration.json), the classifier's own
decision (p_ctc_CTC >= 0.5, pred_ctc) and the CK+ CD45- DAPI+ gate. Objects on no true cell count as
non-CTC. Over every slide, so training patients are in-sample (the honest held-out figures are in the
calibration JSON's "test" block).

    python bench/ctc_candidates_demo.py --results results
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from hemoprofile.classify.calibration import read_calibration
from hemoprofile.io.tables import read_cells
from hemoprofile.io.truth import truth_cell_types


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results")
    parser.add_argument("--calibration", help="default: <results>/models/ctc_calibration.json")
    args = parser.parse_args()
    r = args.results
    threshold = read_calibration(args.calibration or f"{r}/models/ctc_calibration.json")["threshold"]
    sheet = pd.read_csv(f"{r}/synthetic/samples.tsv", sep="\t")
    truth = read_cells(f"{r}/synthetic/truth_cells.parquet", ["slide", "cell_id", "cell_type"])
    rows = []
    for slide in sheet["slide"]:
        cells = read_cells(f"{r}/{slide}/cells.parquet", ["slide", "cell_id", "y", "x", "gate_label"])
        ctc = truth_cell_types(cells, f"{r}/synthetic/{slide}/truth_labels.zarr", truth, slide) == "CTC"
        p = pd.read_parquet(f"{r}/{slide}/predictions.parquet", columns=["p_ctc_CTC"])["p_ctc_CTC"].to_numpy()
        for name, flag in ((f"calibrate_ctc threshold ({threshold:.4f})", p >= threshold),
                           ("p_ctc_CTC >= 0.5 (pred_ctc)", p >= 0.5),
                           ("CK+ CD45- DAPI+ gate", (cells["gate_label"] == "CTC").to_numpy())):
            rows.append({"rule": name, "objects": len(ctc), "ctc": int(ctc.sum()), "flagged": int(flag.sum()),
                         "true": int((flag & ctc).sum()), "false": int((flag & ~ctc).sum())})
    table = pd.DataFrame(rows).groupby("rule", sort=False).sum()
    table["recall"] = table["true"] / table["ctc"]
    table["false_per_million_non_ctc"] = table["false"] / (table["objects"] - table["ctc"]) * 1e6
    print(f"{len(sheet)} slides of {r}")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
