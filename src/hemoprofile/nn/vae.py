"""Convolutional variational autoencoder (VAE) and conditional VAE (cVAE) for single-cell patches.

Input (batch, channel, row, column) float in [0, 1] (patches.zarr after scaling), any channel count and
patch size; output: the posterior mean and log-variance of a ``latent_dim`` latent vector per cell, and
reconstruction logits (a Bernoulli likelihood per pixel: patches are [0, 1] intensities dominated by
exact zeros where extract masked the background, which a Bernoulli/BCE fits better than a Gaussian).

Encoder: a 3x3 stem, then one :class:`hemoprofile.nn.cnn.BasicBlock` per width with stride 2 (the classifier's
residual block), flattened to ``mu`` and ``logvar``. Decoder: a linear layer back to the smallest grid,
then per stage a nearest-neighbour upsampling and a 3x3 convolution with batch norm (upsampling + conv
avoids the checkerboard artefacts of transposed convolutions), and a 3x3 convolution to the channels.
A patch size that is not a multiple of ``2 ** len(widths)`` is zero-padded on the way in and the
reconstruction cropped on the way out.

Conditional VAE: with ``n_conditions > 0`` a one-hot condition (slide, batch or experimental condition)
enters the encoder (concatenated to the flattened features: q(z | x, c)) and the decoder (concatenated to
z, and as a per-stage feature-wise affine modulation, FiLM: p(x | z, c)). Why FiLM: the batch effect of
these slides is mostly a per-channel gain, which a per-condition scale and shift of the decoder's feature
maps can model directly, so the KL term has no reason to keep that information in z.

A model file (see :mod:`hemoprofile.embed`) stores :meth:`VAESpec.to_dict` next to the weights, so
:func:`build_vae` rebuilds the architecture with no other input.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hemoprofile.nn.cnn import BasicBlock


@dataclass(frozen=True)
class VAESpec:
    """Architecture of a :class:`ConvVAE`.

    Attributes
    ----------
    in_channels : image channels (4 for DAPI/CK/VIM/CD45, 3 for RGB).
    patch_size : edge P of the square input in pixels.
    latent_dim : size of the latent vector z.
    widths : channels of each encoder stage (each halves the resolution); the decoder mirrors them.
    n_conditions : number of condition categories (0: a plain VAE).
    """

    in_channels: int
    patch_size: int
    latent_dim: int = 16
    widths: tuple[int, ...] = (32, 64, 128)
    n_conditions: int = 0

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.in_channels < 1 or self.latent_dim < 1 or self.n_conditions < 0:
            raise ValueError(f"in_channels and latent_dim must be >= 1 and n_conditions >= 0, got {self}")
        if not self.widths:
            raise ValueError("widths must not be empty")
        if self.patch_size < 4:
            raise ValueError(f"patch_size must be at least 4 px, got {self.patch_size}")

    @property
    def grid(self) -> int:
        """Edge of the smallest feature map."""
        return math.ceil(self.patch_size / 2 ** len(self.widths))

    @property
    def padded_size(self) -> int:
        """Patch edge after zero-padding to a multiple of ``2 ** len(widths)``."""
        return self.grid * 2 ** len(self.widths)

    def to_dict(self) -> dict:
        """A plain dict (lists, ints) that ``torch.load(weights_only=True)`` and JSON accept."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VAESpec":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        return cls(**{**d, "widths": tuple(d["widths"])})


class _UpStage(nn.Module):
    """Upsample x2, 3x3 conv, batch norm, optional FiLM by the condition, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, n_conditions: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.film = nn.Linear(n_conditions, 2 * out_ch) if n_conditions else None
        if self.film is not None:
            # start as the identity modulation: the cVAE begins where the VAE does
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        x = self.bn(self.conv(F.interpolate(x, scale_factor=2, mode="nearest")))
        if self.film is not None and c is not None:
            scale, shift = self.film(c).chunk(2, dim=1)
            x = x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        return F.relu(x)


class ConvVAE(nn.Module):
    """Convolutional (conditional) VAE; see the module docstring.

    ``forward(x, c)`` returns ``(logits, mu, logvar)``; ``c`` is a (batch, n_conditions) one-hot (or any
    weights summing to 1, e.g. uniform for an unknown category) and must be given when ``n_conditions > 0``.
    """

    def __init__(self, spec: VAESpec):
        super().__init__()
        self.spec = spec
        w, g, k = spec.widths, spec.grid, spec.n_conditions
        self.stem = nn.Sequential(nn.Conv2d(spec.in_channels, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]),
                                  nn.ReLU(inplace=True))
        blocks, in_ch = [], w[0]
        for width in w:
            blocks.append(BasicBlock(in_ch, width, stride=2))
            in_ch = width
        self.encoder = nn.Sequential(*blocks)
        flat = w[-1] * g * g
        self.fc_mu = nn.Linear(flat + k, spec.latent_dim)
        self.fc_logvar = nn.Linear(flat + k, spec.latent_dim)
        self.fc_decode = nn.Linear(spec.latent_dim + k, flat)
        outs = [w[max(i - 1, 0)] for i in range(len(w) - 1, -1, -1)]
        ins = [w[-1], *outs[:-1]]
        self.up = nn.ModuleList(_UpStage(a, b, k) for a, b in zip(ins, outs))
        self.head = nn.Conv2d(outs[-1], spec.in_channels, 3, 1, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _check_condition(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor | None:
        k = self.spec.n_conditions
        if k == 0:
            return None
        if c is None or c.shape != (x.shape[0], k):
            raise ValueError(f"a conditional VAE with {k} conditions needs c of shape ({x.shape[0]}, {k}), "
                             f"got {None if c is None else tuple(c.shape)}")
        return c.to(dtype=x.dtype)

    def encode(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each (batch, latent_dim)."""
        c = self._check_condition(x, c)
        pad = self.spec.padded_size - x.shape[-1]
        if pad:
            x = F.pad(x, (0, pad, 0, pad))
        h = torch.flatten(self.encoder(self.stem(x)), 1)
        if c is not None:
            h = torch.cat([h, c], dim=1)
        return self.fc_mu(h), self.fc_logvar(h).clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction logits (batch, channel, P, P); ``sigmoid`` gives [0, 1] intensities."""
        c = self._check_condition(z, c)
        h = torch.cat([z, c], dim=1) if c is not None else z
        g = self.spec.grid
        h = F.relu(self.fc_decode(h)).view(z.shape[0], self.spec.widths[-1], g, g)
        for stage in self.up:
            h = stage(h, c)
        p = self.spec.patch_size
        return self.head(h)[..., :p, :p]

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None):
        mu, logvar = self.encode(x, c)
        if self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        else:
            z = mu
        return self.decode(z, c), mu, logvar


def build_vae(spec: VAESpec | dict) -> ConvVAE:
    """Build a :class:`ConvVAE` from a spec or its dict form.

    Example
    -------
    >>> vae = build_vae(VAESpec(in_channels=4, patch_size=32, latent_dim=8, widths=(8, 16)))
    >>> logits, mu, logvar = vae(torch.zeros(2, 4, 32, 32))
    >>> tuple(logits.shape), tuple(mu.shape)
    ((2, 4, 32, 32), (2, 8))
    """
    if isinstance(spec, dict):
        spec = VAESpec.from_dict(spec)
    return ConvVAE(spec)


def vae_loss(logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The beta-VAE loss per cell: ``recon + beta * KL`` (both summed over pixels / latent units).

    Parameters
    ----------
    logits : decoder output (batch, C, P, P).
    x : target patches in [0, 1], same shape.
    mu, logvar : posterior parameters (batch, latent_dim).
    beta : weight of the KL term (beta > 1 favours disentangled, smoother latents; < 1 sharper
        reconstructions).

    Returns
    -------
    (loss, recon, kl): batch means of the total, the Bernoulli negative log-likelihood and the KL
    divergence to N(0, I).

    Example
    -------
    >>> x = torch.full((2, 1, 4, 4), 0.5)
    >>> loss, recon, kl = vae_loss(torch.zeros_like(x), x, torch.zeros(2, 3), torch.zeros(2, 3))
    >>> round(float(kl), 6), round(float(recon), 3)
    (0.0, 11.09)
    """
    recon = F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none").flatten(1).sum(1)
    kl = 0.5 * (mu.float() ** 2 + logvar.float().exp() - 1.0 - logvar.float()).sum(1)
    return (recon + float(beta) * kl).mean(), recon.mean(), kl.mean()
