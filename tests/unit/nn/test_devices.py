"""Device selection: auto falls back to the CPU, cuda without a GPU is a clear error, choice is logged."""

import logging

import pytest
import torch

from hemoprofile.nn.devices import pick_device


def test_auto_picks_cuda_when_present_else_cpu(caplog):
    with caplog.at_level(logging.INFO, logger="hemoprofile.nn.devices"):
        choice = pick_device("auto")
    assert choice.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert "device:" in caplog.text


def test_cpu_without_mixed_precision_is_float32():
    choice = pick_device("cpu", mixed_precision=False)
    assert choice.amp_dtype is None
    with choice.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_cpu_bf16_can_be_forced(monkeypatch):
    monkeypatch.setenv("HEMOPROFILE_CPU_BF16", "1")
    assert pick_device("cpu").amp_dtype == torch.bfloat16
    monkeypatch.setenv("HEMOPROFILE_CPU_BF16", "0")
    assert pick_device("cpu").amp_dtype is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where there is no GPU")
def test_cuda_requested_without_gpu_is_an_error():
    with pytest.raises(ValueError, match="no CUDA"):
        pick_device("cuda")


def test_unknown_device_is_an_error():
    with pytest.raises(ValueError, match="tpu"):
        pick_device("tpu")
