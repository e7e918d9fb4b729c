"""ready_for_inference converts a model once and then leaves it alone (threads share it read-only)."""

import pytest
import torch

from hemoprofile.nn.cnn import CellNet, CellNetSpec
from hemoprofile.nn.devices import ready_for_inference


def test_a_prepared_model_is_not_converted_again(monkeypatch):
    model = CellNet(CellNetSpec(4, 3, patch_size=32)).train()
    ready_for_inference(model, torch.device("cpu"), channels_last=True)
    assert not model.training
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)

    def no_conversion(*args, **kwargs):
        raise AssertionError("Module.to called on a model already in place")
    monkeypatch.setattr(model, "to", no_conversion)
    assert ready_for_inference(model, torch.device("cpu"), channels_last=True) is model
    assert ready_for_inference(model, torch.device("cpu")) is model
    with pytest.raises(AssertionError, match="already in place"):  # a model not laid out yet is converted
        fresh = CellNet(CellNetSpec(4, 3, patch_size=32))
        monkeypatch.setattr(fresh, "to", no_conversion)
        ready_for_inference(fresh, torch.device("cpu"), channels_last=True)
