"""Batch augmentations for cell patches: dihedral flips/rotations, random crops, intensity and blur
jitter, and channel dropout.

All functions take a float batch (batch, channel, row, column) in [0, 1] and a ``torch.Generator``, and
return a new tensor (the input is never modified), so a training run is reproducible from its seed.
They work per sample on whole batches (grouped by transform) because a Python loop per cell would cost
more than the network on a CPU.

Why these: cells have no preferred orientation (8 dihedral transforms are exact symmetries), stain
intensity and focus vary between slides and scanners (gain/offset/gamma and blur jitter), and a panel
may lack a channel at test time that the training slides had (channel dropout zeroes channels, which is
also how a classifier is shown a channel absent at inference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hemoprofile.nn.settings import settings_from_mapping


def _rand(gen: torch.Generator | None, *shape, device=None) -> torch.Tensor:
    return torch.rand(*shape, generator=gen, device=device)


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Apply dihedral transform ``k`` (0-7): ``k % 4`` quarter turns, then a horizontal flip when ``k >= 4``."""
    out = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(out, dims=(-1,)) if k >= 4 else out


def random_dihedral(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Apply one of the 8 flips/90-degree rotations, drawn independently per sample.

    Example
    -------
    >>> x = torch.rand(16, 2, 8, 8)
    >>> random_dihedral(x).shape
    torch.Size([16, 2, 8, 8])
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"dihedral transforms need square patches, got {tuple(x.shape[-2:])}")
    k = torch.randint(0, 8, (x.shape[0],), generator=gen)
    out = torch.empty_like(x)
    for t in range(8):
        idx = torch.nonzero(k == t).flatten()
        if idx.numel():
            out[idx] = dihedral(x[idx], t)
    return out


def random_crop(x: torch.Tensor, size: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Crop a ``size`` x ``size`` window at a random offset per sample (a random translation)."""
    h, w = x.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"crop size {size} larger than the patch {h}x{w}")
    if size == h and size == w:
        return x.clone()
    oy = torch.randint(0, h - size + 1, (x.shape[0],), generator=gen).tolist()
    ox = torch.randint(0, w - size + 1, (x.shape[0],), generator=gen).tolist()
    # per-sample views stacked once: cheaper than a gather with index tensors, on any dtype
    return torch.stack([x[i, :, y:y + size, c:c + size] for i, (y, c) in enumerate(zip(oy, ox))])


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Crop the central ``size`` x ``size`` window (the evaluation counterpart of :func:`random_crop`)."""
    h, w = x.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"crop size {size} larger than the patch {h}x{w}")
    y0, x0 = (h - size) // 2, (w - size) // 2
    return x[..., y0:y0 + size, x0:x0 + size]


def intensity_jitter(
    x: torch.Tensor,
    gen: torch.Generator | None = None,
    gain: float = 0.1,
    offset: float = 0.03,
    gamma: float = 0.0,
) -> torch.Tensor:
    """Per sample and channel: raise to ``exp(± gamma)``, multiply by ``1 ± gain``, add ``± offset``; clip to [0, 1]."""
    b, c = x.shape[:2]
    g = 1 + gain * (2 * _rand(gen, b, c, 1, 1) - 1)
    o = offset * (2 * _rand(gen, b, c, 1, 1) - 1)
    out = x.clamp(0, 1)
    if gamma > 0:  # pow is the costly part; skipped when not asked for
        out = out.pow(torch.exp(gamma * (2 * _rand(gen, b, c, 1, 1) - 1)))
    return out.mul(g).add_(o).clamp_(0, 1)


def _gaussian_kernels(sigmas: torch.Tensor, radius: int) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    s = sigmas.clamp_min(1e-3)[:, None]
    k = torch.exp(-0.5 * (t[None, :] / s) ** 2)
    return k / k.sum(1, keepdim=True)


def blur_jitter(
    x: torch.Tensor, gen: torch.Generator | None = None, max_sigma: float = 1.0, p: float = 0.5
) -> torch.Tensor:
    """Gaussian-blur a random fraction ``p`` of the samples with sigma uniform in (0, ``max_sigma``] px (defocus)."""
    if max_sigma <= 0 or p <= 0:
        return x.clone()
    b, c, h, w = x.shape
    chosen = _rand(gen, b) < p
    sigmas = _rand(gen, b) * max_sigma
    out = x.clone()
    idx = torch.nonzero(chosen).flatten()
    if not idx.numel():
        return out
    radius = max(1, math.ceil(2 * max_sigma))
    k = _gaussian_kernels(sigmas[idx], radius).to(x.dtype)  # (n, K)
    k = k.repeat_interleave(c, 0)  # one kernel per (sample, channel) group
    n = idx.numel()
    v = x[idx].reshape(1, n * c, h, w)
    v = F.pad(v, (radius, radius, radius, radius), mode="replicate")
    v = F.conv2d(v, k[:, None, :, None], groups=n * c)  # along rows
    v = F.conv2d(v, k[:, None, None, :], groups=n * c)  # along columns
    out[idx] = v.reshape(n, c, h, w)
    return out


def channel_dropout(x: torch.Tensor, gen: torch.Generator | None = None, p: float = 0.1) -> torch.Tensor:
    """Zero each channel of each sample with probability ``p``, never all channels of a sample.

    A model trained this way still works when a channel is absent at test time and given as zeros.
    """
    if p <= 0 or x.shape[1] < 2:
        return x.clone()
    b, c = x.shape[:2]
    drop = _rand(gen, b, c) < p
    all_dropped = drop.all(1)
    if all_dropped.any():  # keep one random channel of those samples
        keep = torch.randint(0, c, (b,), generator=gen)
        drop[all_dropped, keep[all_dropped]] = False
    return x * (~drop).to(x.dtype)[:, :, None, None]


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations a training run applies (all off gives the identity, bar an optional crop).

    Attributes
    ----------
    dihedral : random flips and 90-degree rotations.
    crop : output edge of a random crop (``None``: no crop); patches larger than ``crop`` by a few
        pixels give random translations.
    gain, offset, gamma : intensity jitter amplitudes (0 disables each).
    blur_sigma, blur_p : maximum blur sigma in pixels and the fraction of samples blurred.
    channel_dropout : probability of zeroing each channel.
    """

    dihedral: bool = True
    crop: int | None = None
    gain: float = 0.1
    offset: float = 0.03
    gamma: float = 0.0
    blur_sigma: float = 0.7
    blur_p: float = 0.3
    channel_dropout: float = 0.0

    @classmethod
    def from_dict(cls, d: dict | None) -> "AugmentConfig":
        """Build from a config mapping; unknown keys raise ``ValueError`` naming them."""
        return settings_from_mapping(cls, d, "augmentation")


def to_unit_float(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Stored patches (a tensor, or a numpy array as read from patches.zarr) as float32 in [0, 1]:
    uint8 / 255, 16-bit / 65535, floats as they are.

    Example
    -------
    >>> to_unit_float(np.array([0, 255], np.uint8)).tolist(), to_unit_float(np.array([65535], np.uint16)).tolist()
    ([0.0, 1.0], [1.0])
    """
    if isinstance(x, np.ndarray) and x.dtype == np.uint16:
        x = x.astype(np.int32)  # torch has limited uint16 support
    x = torch.as_tensor(x)
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if x.dtype in (torch.int16, torch.uint16, torch.int32):
        return x.float().div_(65535.0)
    return x.float()


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None = None) -> torch.Tensor:
    """Apply the augmentations of ``cfg`` to a batch, in the order crop, dihedral, blur, intensity, dropout.

    ``x`` may be stored patches (uint8 / uint16) or float in [0, 1]; the result is float32 in [0, 1].
    Crops and flips run before the conversion to float, on a quarter of the bytes.

    Example
    -------
    >>> x = torch.rand(8, 4, 36, 36)
    >>> augment_batch(x, AugmentConfig(crop=32, channel_dropout=0.2), torch.Generator().manual_seed(0)).shape
    torch.Size([8, 4, 32, 32])
    """
    out = random_crop(x, cfg.crop, gen) if cfg.crop else x
    if cfg.dihedral:
        out = random_dihedral(out, gen)
    out = to_unit_float(out)
    if cfg.blur_sigma > 0 and cfg.blur_p > 0:
        out = blur_jitter(out, gen, cfg.blur_sigma, cfg.blur_p)
    if cfg.gain > 0 or cfg.offset > 0 or cfg.gamma > 0:
        out = intensity_jitter(out, gen, cfg.gain, cfg.offset, cfg.gamma)
    if cfg.channel_dropout > 0:
        out = channel_dropout(out, gen, cfg.channel_dropout)
    return out if out is not x else x.clone()
