"""hemoprofile.embed.maps: cohort_figures writes every PNG and the cohort metrics; composites."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.embed_slides import TINY, two_slides

from hemoprofile.embed.maps import FIGURE_KEYS, cohort_figures, composite
from hemoprofile.embed.slide import embed_slide
from hemoprofile.embed.training import train_embedder

torch.set_num_threads(1)


def test_composite_stretches_fluorescence_channels():
    x = np.zeros((1, 2, 4, 4), np.float32)
    x[0, 0, 1, 1] = 0.2  # a dim channel still reaches full brightness after the stretch
    rgb = composite(x, ["DAPI", "unknown"])
    assert rgb.shape == (1, 4, 4, 3) and rgb.max() == pytest.approx(1.0) and rgb[0, 0, 0].max() == 0


@pytest.mark.slow
def test_cohort_figures_write_pngs_and_metrics(tmp_path):
    slides = two_slides(tmp_path / "slides")
    train_embedder(slides, tmp_path / "m.pt", tmp_path / "m.json", {**TINY, "train": {"epochs": 1}}, progress=None)
    paths = []
    for item in slides:
        paths.append(str(tmp_path / f"{item.slide}.parquet"))
        embed_slide(tmp_path / "m.pt", item.patches, item.cells, paths[-1], device="cpu", progress=None)
    outputs = {k: str(tmp_path / "fig" / f"{k}.png") for k in ("cluster", "slide", "condition", "label",
                                                                 "prediction", "reconstructions")}
    outputs["metrics"] = str(tmp_path / "fig" / "metrics.json")
    metrics = cohort_figures(tmp_path / "m.pt", paths, slides, outputs, embed_cfg={"figures": {"reconstructions": 3}})
    for key, path in outputs.items():
        data = open(path, "rb").read()
        assert data[:4] == (b"\x89PNG" if key != "metrics" else data[:4]), key
    assert metrics["n_cells"] == 80 and metrics["label"]["n_labelled"] == 80
    assert json.loads(open(outputs["metrics"]).read())["batch"]["n_batches"] == 2
    with pytest.raises(ValueError, match="unknown figure output"):
        cohort_figures(tmp_path / "m.pt", paths, slides, {"nope": str(tmp_path / "x.png")})
    assert set(FIGURE_KEYS) >= {"cluster", "slide", "reconstructions"}


def test_map_predictions_reads_only_the_cells_on_the_map(tmp_path):
    from types import SimpleNamespace

    from hemoprofile.embed.maps import map_predictions

    paths = []
    for slide in ("A", "B"):
        path = tmp_path / f"{slide}.parquet"
        pd.DataFrame({"slide": slide, "cell_id": np.arange(1, 101), "p_ctc_CTC": 0.5,
                      "pred_ctc": [f"{slide}{i}" for i in range(1, 101)]}).to_parquet(path)
        paths.append(str(path))
    items = [SimpleNamespace(slide="A"), SimpleNamespace(slide="B"), SimpleNamespace(slide="C")]
    frame = pd.DataFrame({"slide": ["B", "A", "A", "C"], "cell_id": [7, 3, 99, 1]})
    preds = map_predictions(frame, items, paths + [str(tmp_path / "missing.parquet")])
    assert preds["pred_ctc"].tolist()[:3] == ["B7", "A3", "A99"] and pd.isna(preds["pred_ctc"].iloc[3])
    assert list(preds.columns) == ["slide", "cell_id", "pred_ctc"]
    assert map_predictions(frame, items, None) is None
