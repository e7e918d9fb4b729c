"""Classifier model files: round trip with channels matched by name, float16 weights, clear errors."""

import numpy as np
import pytest
import torch

from hemoprofile.classify.checkpoints import load_classifier, save_classifier
from hemoprofile.classify.inference import channel_index, classifier_probabilities
from hemoprofile.nn.devices import pick_device

from helpers.classify_cohort import CHANNELS

torch.set_num_threads(1)


def test_saved_model_round_trip_and_missing_channel(tmp_path):
    from hemoprofile.nn.cnn import CellNetSpec, build_model

    torch.manual_seed(0)
    net = build_model(CellNetSpec(4, 2, 12, widths=(4,), blocks=(1,))).eval()
    path = tmp_path / "m.pt"
    mid = save_classifier(path, net, "ctc", ["leukocyte", "CTC"], CHANNELS, 12)
    clf = load_classifier(path)
    assert clf.model_id == mid and clf.channels == CHANNELS
    x = np.random.default_rng(0).integers(0, 255, (5, 4, 12, 12), dtype=np.uint8)
    dev = pick_device("cpu", False)
    with torch.no_grad():
        direct = torch.softmax(net(torch.from_numpy(x).float() / 255), 1).numpy()
    assert np.allclose(classifier_probabilities(clf, x, dev), direct, atol=1e-4)
    # channels in another order are matched by name; an absent channel is fed as zeros
    shuffled = x[:, [3, 2, 1, 0]]
    assert np.allclose(classifier_probabilities(clf, shuffled, dev, patch_channels=CHANNELS[::-1]), direct, atol=1e-4)
    dropped = classifier_probabilities(clf, x[:, :3], dev, patch_channels=CHANNELS[:3])
    x0 = x.copy()
    x0[:, 3] = 0
    with torch.no_grad():
        expect = torch.softmax(net(torch.from_numpy(x0).float() / 255), 1).numpy()
    assert np.allclose(dropped, expect, atol=1e-4)
    with pytest.raises(ValueError, match="none of the model's channels"):
        channel_index(CHANNELS, ["a", "b"], "x")


def test_half_weights_file_is_smaller_and_predicts_alike(tmp_path):
    from hemoprofile.nn.cnn import CellNetSpec, build_model

    torch.manual_seed(0)
    net = build_model(CellNetSpec(4, 3, 16, widths=(16, 32), blocks=(1, 1))).eval()
    args = ("immune", ["a", "b", "c"], CHANNELS, 16)
    save_classifier(tmp_path / "full.pt", net, *args)
    save_classifier(tmp_path / "half.pt", net, *args, half_weights=True)
    assert (tmp_path / "half.pt").stat().st_size < 0.7 * (tmp_path / "full.pt").stat().st_size
    full, half = load_classifier(tmp_path / "full.pt"), load_classifier(tmp_path / "half.pt")
    assert next(half.model.parameters()).dtype == torch.float32  # loaded back into float32
    assert "float16" in half.metadata["weights_dtype"]
    x = np.random.default_rng(1).integers(0, 255, (16, 4, 16, 16), dtype=np.uint8)
    dev = pick_device("cpu", False)
    p_full, p_half = classifier_probabilities(full, x, dev), classifier_probabilities(half, x, dev)
    assert not np.array_equal(p_full, p_half)  # the weights were rounded ...
    assert np.allclose(p_full, p_half, atol=5e-3)  # ... by about float16's precision


def test_clear_errors_name_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        load_classifier(tmp_path / "nothere.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.pt"):
        load_classifier(tmp_path / "bad.pt")
