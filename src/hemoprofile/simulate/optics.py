"""Optics and camera: a slide's batch gain and background, uneven illumination, blur, shot and read
noise, and the conversion of a frame's stain signal into uint16 camera counts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hemoprofile.simulate.settings import CHANNELS, Settings

#: Relative background per channel (autofluorescence and filter bleed-through differ between channels).
BACKGROUND_FACTOR = {"DAPI": 1.0, "CK": 0.8, "VIM": 0.9, "CD45": 1.15}


@dataclass(frozen=True)
class SlideOptics:
    gain: np.ndarray  # per channel: the slide's batch gain on the stain signal
    background: np.ndarray  # per channel background level (ADU) including the batch multiplier
    vignette_centre: tuple[float, float]  # relative offset of the optical axis from the frame centre
    vignette_strength: float


def _illumination(rng, s: Settings, optics: SlideOptics) -> np.ndarray:
    """Smooth multiplicative illumination of one frame: the slide's vignetting times a per-frame
    low-frequency variation (uneven sample thickness, lamp drift)."""
    y = (np.arange(s.frame_h) + 0.5) / s.frame_h - 0.5 - optics.vignette_centre[0]
    x = (np.arange(s.frame_w) + 0.5) / s.frame_w - 0.5 - optics.vignette_centre[1]
    r2 = (y[:, None] ** 2 + x[None, :] ** 2) / 0.5
    field = 1.0 - optics.vignette_strength * r2
    waves = np.zeros_like(field)
    for _ in range(3):
        fy, fx = rng.uniform(-1.0, 1.0, 2)  # at most one cycle per frame: low frequency only
        waves += np.cos(2 * np.pi * (fy * y[:, None] + fx * x[None, :]) + rng.uniform(0, 2 * np.pi))
    field *= 1.0 + 0.4 * s.illumination * waves / 3.0
    return np.clip(field, 0.2, None)


def apply_optics(rng, s: Settings, optics: SlideOptics, signal: np.ndarray) -> np.ndarray:
    """Camera image (channel, y, x) uint16 from the noise-free stain signal of one frame."""
    illumination = _illumination(rng, s, optics)
    image = np.empty(signal.shape, np.uint16)
    for c in range(signal.shape[0]):
        blurred = ndimage.gaussian_filter(signal[c], s.blur_sigma, truncate=3.0) if s.blur_sigma > 0 else signal[c]
        channel_light = illumination * rng.lognormal(0.0, 0.02)  # filter cubes differ slightly
        expected = (blurred * optics.gain[c] + optics.background[c]) * channel_light
        photons = rng.poisson(np.clip(expected, 0, None) * s.photons_per_unit)
        adu = photons / s.photons_per_unit + rng.normal(0.0, s.read_noise, expected.shape) + s.offset
        image[c] = np.clip(np.rint(adu), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    return image


def slide_optics(rng, s: Settings) -> SlideOptics:
    n = len(CHANNELS)
    gain = rng.lognormal(0.0, s.batch_effect, n) if s.batch_effect > 0 else np.ones(n)
    background_batch = rng.lognormal(0.0, s.batch_effect, n) if s.batch_effect > 0 else np.ones(n)
    background = s.background * np.array([BACKGROUND_FACTOR[c] for c in CHANNELS]) * background_batch
    centre = tuple(rng.normal(0.0, 0.08, 2))
    strength = s.illumination * rng.uniform(0.6, 1.0)
    return SlideOptics(gain, background, centre, strength)
