"""Cellpose model files: the fp16 state dict + JSON sidecar contract, loading small nets, errors."""

import json

import pytest
from helpers.segment_images import CHANNELS, disc_cells

from hemoprofile.segment.cellpose_model import (
    build_net,
    load_cellpose_model,
    load_net,
    missing_model_message,
    read_sidecar,
    save_model_fp16,
    sidecar_path,
    write_sidecar,
)
from hemoprofile.segment.segmenter import build_segmenter, segment_image


def test_model_file_with_fp16_weights_and_small_net_loads_and_runs(tmp_path):
    import torch
    from cellpose.resnet_torch import CPnet

    nbase = [2, 8, 16, 32, 64]  # a small net: last width 64, not Cellpose's 256
    net = CPnet(nbase, 3, sz=3, diam_mean=12.0)
    path = tmp_path / "tiny.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}, path)
    sidecar_path(path).write_text(json.dumps({"nbase": nbase, "diam_mean": 12.0, "nchan": 2}))
    assert sidecar_path(path).name == "tiny.pt.json"
    model = load_cellpose_model(path, "cpu")
    assert model.nbase == nbase and model.diam_mean == pytest.approx(12.0)
    assert all(p.dtype == torch.float32 for p in model.net.parameters())
    image, _ = disc_cells(shape=(48, 48), n=3)
    labels = segment_image(image, CHANNELS, {"backend": "cellpose", "diameter": 12.0},
                           segmenter=build_segmenter({"backend": "cellpose"}, model=model))
    assert labels.shape == (48, 48)
    # without a sidecar the widths come from the weights; nbase without the input count is accepted
    sidecar_path(path).write_text(json.dumps({"nbase": nbase[1:], "diam_mean": 12.0, "nchan": 2}))
    assert load_cellpose_model(path, "cpu").nbase == nbase
    sidecar_path(path).unlink()
    assert load_cellpose_model(path, "cpu").nbase == nbase


def test_missing_model_file_error_names_the_path_and_the_ways_out(tmp_path):
    missing = tmp_path / "models" / "nothing.pt"
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt.*backend: classical"):
        build_segmenter({"backend": "cellpose", "model": str(missing), "device": "cpu"})
    not_a_model = tmp_path / "junk.pt"
    not_a_model.write_text("junk")
    with pytest.raises(ValueError, match="junk.pt"):
        load_cellpose_model(not_a_model, "cpu")


def test_missing_model_error_names_the_resolved_path_of_a_relative_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = missing_model_message("models/none.pt")
    assert "'models/none.pt'" in message and str(tmp_path / "models" / "none.pt") in message


def test_sidecar_json_round_trip(tmp_path):
    meta = {"nbase": [2, 16, 32, 64, 128], "diam_mean": 15.0, "nchan": 2, "diameter_estimator": {"factor": 1.2}}
    path = write_sidecar(tmp_path / "m.pt", meta)
    assert path.name == "m.pt.json"
    assert read_sidecar(tmp_path / "m.pt") == meta
    with pytest.raises(ValueError, match="nbase"):
        write_sidecar(tmp_path / "x.pt", {"diam_mean": 1, "nchan": 2})
    with pytest.raises(FileNotFoundError):
        read_sidecar(tmp_path / "missing.pt")


@pytest.mark.slow  # imports torch and cellpose (several seconds on a loaded machine)
def test_sidecar_round_trip_fp16(tmp_path):
    import torch

    torch.manual_seed(0)
    net = build_net([2, 8, 16, 32, 256], diam_mean=17.0)
    path = tmp_path / "m.pt"
    meta = save_model_fp16(net, path, {"note": "test"})
    assert sidecar_path(path) == tmp_path / "m.pt.json"
    side = read_sidecar(path)
    assert side["nbase"] == [2, 8, 16, 32, 256] and side["nchan"] == 2 and side["diam_mean"] == 17.0
    assert side["note"] == "test" and side == json.loads(json.dumps(meta))
    state = torch.load(path, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    loaded, _ = load_net(path)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v.half().float() if v.is_floating_point() else v)


@pytest.mark.slow  # imports cellpose.models
def test_model_file_loads_with_pipeline_loader(tmp_path):
    import torch

    net = build_net([2, 8, 16, 32, 64], diam_mean=17.0)  # last width != 256: the loader pads styles
    path = tmp_path / "m.pt"
    save_model_fp16(net, path, {})
    model = load_cellpose_model(path, torch.device("cpu"))
    assert list(model.nbase) == [2, 8, 16, 32, 64] and model.diam_mean == 17.0
