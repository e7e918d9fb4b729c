"""Augmentations: exact symmetries, seeded reproducibility, ranges, channel dropout never empties a cell;
stored patches to float in [0, 1]."""

import numpy as np
import pytest
import torch

from hemoprofile.nn.augment import (
    AugmentConfig,
    augment_batch,
    blur_jitter,
    centre_crop,
    channel_dropout,
    dihedral,
    intensity_jitter,
    random_crop,
    random_dihedral,
    to_unit_float,
)

torch.set_num_threads(1)


def test_dihedral_group_has_eight_distinct_elements_and_inverses():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    outs = {tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}
    assert len(outs) == 8
    for k in range(4):  # quarter turns undo each other
        assert torch.equal(dihedral(dihedral(x, k), (4 - k) % 4), x)


def test_random_dihedral_only_permutes_pixels():
    x = torch.rand(32, 2, 8, 8)
    y = random_dihedral(x, torch.Generator().manual_seed(0))
    assert torch.equal(torch.sort(x.flatten(1)).values, torch.sort(y.flatten(1)).values)
    assert not torch.equal(x, y)


def test_seeded_and_input_untouched():
    x = torch.rand(16, 4, 20, 20)
    keep = x.clone()
    cfg = AugmentConfig(crop=16, channel_dropout=0.3)
    a = augment_batch(x, cfg, torch.Generator().manual_seed(3))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(x, keep)
    assert a.shape == (16, 4, 16, 16) and a.min() >= 0 and a.max() <= 1


def test_random_crop_is_a_window_and_centre_crop_is_central():
    x = torch.arange(36.0).reshape(1, 1, 6, 6).repeat(8, 1, 1, 1)
    crops = random_crop(x, 4, torch.Generator().manual_seed(0))
    for c in crops:
        y0, x0 = divmod(int(c[0, 0, 0]), 6)
        assert torch.equal(c[0], x[0, 0, y0:y0 + 4, x0:x0 + 4])
    assert torch.equal(centre_crop(x, 2)[0, 0], torch.tensor([[14.0, 15.0], [20.0, 21.0]]))
    with pytest.raises(ValueError):
        random_crop(x, 7)


def test_intensity_jitter_is_bounded():
    x = torch.full((64, 3, 4, 4), 0.5)
    y = intensity_jitter(x, torch.Generator().manual_seed(0), gain=0.1, offset=0.0, gamma=0.0)
    assert y.min() >= 0.45 - 1e-6 and y.max() <= 0.55 + 1e-6 and y.std() > 0


def test_blur_keeps_flat_images_and_spreads_a_point():
    flat = torch.full((4, 2, 9, 9), 0.3)
    assert torch.allclose(blur_jitter(flat, torch.Generator().manual_seed(0), 1.0, 1.0), flat, atol=1e-6)
    point = torch.zeros(4, 1, 9, 9)
    point[:, :, 4, 4] = 1
    out = blur_jitter(point, torch.Generator().manual_seed(0), 1.0, 1.0)
    assert (out[:, 0, 4, 4] < 1).all() and torch.allclose(out.sum((1, 2, 3)), torch.ones(4), atol=1e-5)


def test_channel_dropout_zeroes_whole_channels_but_never_all():
    x = torch.rand(500, 3, 4, 4) + 0.1
    y = channel_dropout(x, torch.Generator().manual_seed(0), p=0.9)
    kept = y.flatten(2).amax(2) > 0  # (cells, channels)
    assert kept.any(1).all()
    assert (~kept).any()
    assert torch.equal(y[kept], x[kept])


def test_unknown_config_key_named():
    with pytest.raises(ValueError, match="rotate"):
        AugmentConfig.from_dict({"rotate": True})


@pytest.mark.parametrize("dtype,scale", [(np.uint8, 255.0), (np.uint16, 65535.0), (np.float32, 1.0)])
def test_to_unit_float_numpy_and_torch_alike(dtype, scale):
    x = (np.random.default_rng(0).random((3, 2, 4, 4)) * scale).astype(dtype)
    got = to_unit_float(x)
    assert got.dtype == torch.float32
    assert torch.equal(got, torch.from_numpy(x.astype(np.float32) / np.float32(scale)))
    if dtype != np.uint16:  # numpy uint16 goes through int32 (torch's uint16 support is limited)
        assert torch.equal(to_unit_float(torch.from_numpy(x)), got)
