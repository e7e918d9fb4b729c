"""Draw docs/synthetic_frame.png: one frame of a synthetic slide with its ground truth.

Simulates, into a temporary folder, the first slide of the repository's config (config/config.yaml,
section ``synthetic``) that holds a CTC, and draws its frame with the most CTCs (clusters first).

    .venv/bin/python docs/make_synthetic_figure.py
"""

import tempfile
from pathlib import Path

import pandas as pd

from hemoprofile import simulate
from hemoprofile.config import load_config

REPO = Path(__file__).resolve().parents[1]
OUT_PNG = REPO / "docs" / "synthetic_frame.png"


def main() -> None:
    config = load_config(REPO / "config" / "config.yaml")
    cfg = config["synthetic"]
    with tempfile.TemporaryDirectory() as tmp:
        plan = simulate.plan_cohort(cfg, tmp)
        with_ctcs = [c for c, spec in cfg["conditions"].items() if spec["ctc_per_million"] > 0]
        for _, sample in plan[plan["condition"].isin(with_ctcs)].iterrows():
            simulate.simulate_slide(cfg, sample, tmp, config["frames"]["pattern"], config["frames"]["order"])
            truth = pd.read_parquet(Path(sample["path"]).parent / "truth_cells.parquet")
            ctcs = truth[truth["cell_type"] == "CTC"]
            if len(ctcs):
                break
        else:
            raise SystemExit("no simulated slide holds a CTC; raise ctc_per_million or ctc_enrichment in the config")
        score = ctcs.groupby("frame")["cluster_id"].agg(lambda ids: (ids >= 0).sum() * 10 + len(ids))
        frame = int(score.idxmax())
        simulate.render_frame_overlay(sample, frame, OUT_PNG, config["frames"]["pattern"], config["frames"]["order"])
    print(f"wrote {OUT_PNG} (slide {sample['slide']}, frame {frame}, {OUT_PNG.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
