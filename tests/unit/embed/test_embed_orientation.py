"""hemoprofile.embed.orientation: elongated cells come out horizontal, mirror twins map to the same
oriented patch, angles from a cells table or from the patch itself; the embed stage applies it."""

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.embed_slides import TINY, two_slides

from hemoprofile.embed.model_files import load_embedder
from hemoprofile.embed.orientation import maybe_orient, orient_patches, patch_angles
from hemoprofile.embed.sample import load_sample
from hemoprofile.embed.slide import embed_slide
from hemoprofile.embed.training import train_embedder

torch.set_num_threads(1)
CHANNELS = ["DAPI", "CK"]


def ellipse_cell(size=32, angle_deg=0.0, a=10.0, b=4.0, bump=True, dtype=np.uint8):
    """One (1, 2, P, P) patch: an elliptic cell (CK) with an elliptic nucleus (DAPI) along ``angle_deg``
    (x = column, y = row, towards +y), with a bright bump at one end of the nucleus and one side (so the
    third moments along both axes are non-zero: a cell with no mirror symmetry)."""
    c = (size - 1) / 2
    yy, xx = np.mgrid[:size, :size] - c
    t = np.radians(angle_deg)
    u = xx * np.cos(t) + yy * np.sin(t)
    v = -xx * np.sin(t) + yy * np.cos(t)
    cell = (u / (a + 3)) ** 2 + (v / (b + 3)) ** 2 <= 1
    nucleus = ((u / a) ** 2 + (v / b) ** 2 <= 1).astype(np.float32) * 0.6
    if bump:
        nucleus += 0.3 * np.exp(-((u - 0.6 * a) ** 2 + (v - 0.3 * b) ** 2) / 3.0) * (nucleus > 0)
    patch = np.stack([nucleus, cell * 0.3])[None]
    return np.rint(np.clip(patch, 0, 1) * 255).astype(dtype)


def _var_xy(patch):
    w = patch[0, 0].astype(np.float64)
    yy, xx = np.mgrid[: w.shape[0], : w.shape[1]]
    cy, cx = (w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()
    return (w * (xx - cx) ** 2).sum() / w.sum(), (w * (yy - cy) ** 2).sum() / w.sum()


@pytest.mark.parametrize("seed", range(5))
def test_elongated_cell_at_a_random_angle_comes_out_horizontal(seed):
    angle = float(np.random.default_rng(seed).uniform(-90, 90))
    patch = ellipse_cell(angle_deg=angle)
    assert patch_angles(patch, CHANNELS)[0] == pytest.approx(angle, abs=3.0)  # the bump tilts it a little
    for given in (None, np.array([angle])):  # angle from the patch itself, or from a cells table
        out = orient_patches(patch, CHANNELS, given)
        assert out.dtype == patch.dtype and out.shape == patch.shape
        assert abs(patch_angles(out, CHANNELS)[0]) < 3.0
        var_x, var_y = _var_xy(out)
        assert var_x > 3 * var_y


@pytest.mark.parametrize("seed", range(4))
def test_mirror_and_rotated_twins_map_to_the_same_oriented_patch(seed):
    angle = float(np.random.default_rng(seed).uniform(-90, 90))
    patch = ellipse_cell(angle_deg=angle)
    reference = orient_patches(patch, CHANNELS)
    twins = [patch[..., ::-1], patch[..., ::-1, :], patch.transpose(0, 1, 3, 2), np.rot90(patch, 1, (-2, -1)),
             np.rot90(patch, 2, (-2, -1))]
    for twin in twins:
        out = orient_patches(np.ascontiguousarray(twin), CHANNELS)
        diff = np.abs(out.astype(int) - reference.astype(int))
        assert diff.mean() < 1.0 and diff.max() <= 40  # the same patch up to bilinear resampling
    # twins given their (mirrored) table angles agree too
    out = orient_patches(np.ascontiguousarray(patch[..., ::-1]), CHANNELS, np.array([-angle]))
    assert np.abs(out.astype(int) - orient_patches(patch, CHANNELS, np.array([angle])).astype(int)).mean() < 1.0
    # the sign rule: third central moments of the canonical nucleus along x and y are >= 0
    w = reference[0, 0].astype(float)
    yy, xx = np.mgrid[:32, :32]
    dx, dy = xx - (w * xx).sum() / w.sum(), yy - (w * yy).sum() / w.sum()
    assert (w * dx**3).sum() > 0 and (w * dy**3).sum() > 0


def test_brightfield_crops_use_the_dark_nucleus_and_none_leaves_patches_alone():
    patch = ellipse_cell(angle_deg=30.0)
    rgb = np.repeat(255 - patch[:, :1], 3, axis=1)  # a dark elongated nucleus on a bright background
    assert patch_angles(rgb, ["R", "G", "B"])[0] == pytest.approx(30.0, abs=2.0)
    assert abs(patch_angles(orient_patches(rgb, ["R", "G", "B"]), ["R", "G", "B"])[0]) < 2.0
    assert maybe_orient(patch, "none", CHANNELS) is patch
    with pytest.raises(ValueError, match="orientation"):
        maybe_orient(patch, "upright", CHANNELS)
    assert orient_patches(patch[:0], CHANNELS).shape == (0, 2, 32, 32)


def test_embed_stage_orients_in_training_and_embedding_alike(tmp_path):
    slides = two_slides(tmp_path / "slides")
    cfg = {**TINY, "orientation": "major_axis"}
    train_embedder(slides, tmp_path / "m.pt", tmp_path / "m.json", cfg, seed=1, threads=1, progress=None)
    emb = load_embedder(tmp_path / "m.pt")
    assert emb.orientation == "major_axis"
    sample = load_sample(slides[:1], 1000, orientation="major_axis")
    plain = load_sample(slides[:1], 1000)
    assert not np.array_equal(sample.patches, plain.patches)
    embed_slide(emb, slides[0].patches, slides[0].cells, tmp_path / "e.parquet", device="cpu", threads=1,
                progress=None)
    from hemoprofile.embed.training import encode
    z = pd.read_parquet(tmp_path / "e.parquet")[[f"z_{i}" for i in range(3)]].to_numpy()
    np.testing.assert_allclose(z, encode(emb.model, sample.patches), atol=1e-5)
