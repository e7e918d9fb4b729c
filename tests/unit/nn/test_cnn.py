"""CellNet: shapes for any channel count and patch size, spec round trip, weight EMA."""

import pytest
import torch

from hemoprofile.nn.cnn import CellNetSpec, WeightEMA, build_model, count_parameters

torch.set_num_threads(1)


@pytest.mark.parametrize("channels,size", [(1, 16), (4, 32), (3, 96)])
def test_any_channels_and_patch_size(channels, size):
    net = build_model(CellNetSpec(in_channels=channels, n_classes=5, patch_size=size, widths=(4, 8), blocks=(1, 1)))
    assert net(torch.rand(2, channels, size, size)).shape == (2, 5)


def test_stem_stride_follows_patch_size():
    assert CellNetSpec(4, 2, patch_size=32).effective_stem_stride == 1
    assert CellNetSpec(3, 8, patch_size=96).effective_stem_stride == 2
    assert CellNetSpec(3, 8, patch_size=96, stem_stride=1).effective_stem_stride == 1


def test_default_size_is_compact():
    # the documented default: about 1.2 M parameters
    assert 1.1e6 < count_parameters(build_model(CellNetSpec(3, 8, 96))) < 1.3e6


def test_spec_round_trip_rebuilds_same_outputs():
    spec = CellNetSpec(2, 3, 16, widths=(4, 8), blocks=(1, 2), dropout=0.0)
    a = build_model(spec).eval()
    b = build_model(CellNetSpec.from_dict(spec.to_dict())).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(3, 2, 16, 16)
    assert torch.equal(a(x), b(x))


def test_bad_spec_is_rejected():
    with pytest.raises(ValueError):
        CellNetSpec(4, 2, widths=(8, 16), blocks=(1,))
    with pytest.raises(ValueError):
        CellNetSpec(0, 2)


def test_weight_ema_moves_towards_model():
    net = build_model(CellNetSpec(1, 2, 16, widths=(4,), blocks=(1,)))
    ema = WeightEMA(net, decay=0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    before = [p.clone() for p in ema.model.parameters()]
    for _ in range(50):
        ema.update(net)
    after = list(ema.model.parameters())
    target = list(net.parameters())
    assert all(torch.allclose(a, t, atol=1e-4) for a, t in zip(after, target))
    assert not all(torch.equal(a, b) for a, b in zip(after, before))


def test_fused_batchnorm_gives_the_same_outputs():
    from hemoprofile.nn.cnn import fuse_batchnorm

    torch.manual_seed(0)
    net = build_model(CellNetSpec(3, 4, 32, widths=(4, 8, 16), blocks=(1, 2, 1)))
    net.train()
    for _ in range(3):  # give the batch norms non-trivial statistics
        net(torch.rand(8, 3, 32, 32) * 2)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    net.eval()
    x = torch.rand(5, 3, 32, 32)
    fused = fuse_batchnorm(net)
    assert torch.allclose(net(x), fused(x), atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())


def test_input_statistics_standardise_and_are_saved():
    spec = CellNetSpec(2, 2, 16, widths=(4,), blocks=(1,))
    net = build_model(spec).eval()
    net.set_input_statistics([0.1, 0.2], [0.05, 0.0])
    assert torch.allclose(net.input_std, torch.tensor([0.05, 1e-3]))
    other = build_model(spec).eval()
    other.load_state_dict(net.state_dict())
    x = torch.rand(3, 2, 16, 16)
    assert torch.equal(other(x), net(x)) and torch.equal(other.input_mean, torch.tensor([0.1, 0.2]))
