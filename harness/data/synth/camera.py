"""Camera model applied to a rendered crop: optics (resolution, blur), light and colour, noise."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from .domains import CameraSpec


@dataclass(frozen=True)
class Lighting:
    """Light on one image: the camera's response times a tracklet/image jitter."""

    gain: tuple[float, float, float]  # per channel, includes the colour cast
    gamma: float
    haze: float


def lighting_for(cam: CameraSpec, rng: np.random.Generator, spread: float = 1.0) -> Lighting:
    """The camera's light with a random jitter of relative size ``spread``."""
    g = cam.gain * float(rng.uniform(1 - 0.1 * spread, 1 + 0.1 * spread))
    gain = tuple(g * c * float(rng.uniform(1 - 0.04 * spread, 1 + 0.04 * spread)) for c in cam.cast)
    gamma = cam.gamma * float(rng.uniform(1 - 0.06 * spread, 1 + 0.06 * spread))
    haze = cam.haze * float(rng.uniform(1 - 0.3 * spread, 1 + 0.3 * spread))
    return Lighting(gain=gain, gamma=gamma, haze=haze)  # type: ignore[arg-type]


def combine(a: Lighting, b: Lighting, cam: CameraSpec) -> Lighting:
    """Compose two jittered lightings around the same camera (tracklet jitter x image jitter)."""
    gain = tuple(ga * gb / (cam.gain * c) for ga, gb, c in zip(a.gain, b.gain, cam.cast))
    gamma = a.gamma * b.gamma / cam.gamma
    return Lighting(gain=gain, gamma=gamma, haze=(a.haze + b.haze) / 2)  # type: ignore[arg-type]


_LEVELS = np.arange(256, dtype=np.float64) / 255.0
_CHANNEL_OFFSETS = np.array([0, 256, 512], dtype=np.intp)


def _lut(light: Lighting) -> np.ndarray:
    """Concatenated per-channel response curves (768 float32 values, 0-255 units)."""
    curve = _LEVELS ** light.gamma
    return np.concatenate([255.0 * g * curve + light.haze for g in light.gain]).astype(np.float32)


@lru_cache(maxsize=8)
def _noise_bank(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Fixed standard-normal fields twice the crop size; each image uses a random window of them.

    Far cheaper than drawing fresh normals per image, and as good to the eye and to a network.
    """
    w, h = size
    rng = np.random.Generator(np.random.PCG64(20240611))
    colour = rng.standard_normal((2 * h, 2 * w, 3), dtype=np.float32)
    luma = rng.standard_normal((2 * h, 2 * w, 1), dtype=np.float32)
    return colour, luma


def _binomial_pass(x: np.ndarray) -> np.ndarray:
    """One [1, 2, 1] / 4 pass along both image axes (adds variance 0.5 px^2 per axis)."""
    p = np.concatenate([x[:1], x, x[-1:]], axis=0)
    x = 0.25 * (p[:-2] + p[2:]) + 0.5 * p[1:-1]
    p = np.concatenate([x[:, :1], x, x[:, -1:]], axis=1)
    return 0.25 * (p[:, :-2] + p[:, 2:]) + 0.5 * p[:, 1:-1]


def gaussian_blur(x: np.ndarray, sigma_px: float) -> np.ndarray:
    """Approximate Gaussian blur of an (h, w, c) float array by repeated binomial passes.

    ``n`` passes give variance ``n / 2``; the fractional last pass is blended in linearly.
    """
    passes = 2.0 * sigma_px * sigma_px
    whole = int(passes)
    for _ in range(whole):
        x = _binomial_pass(x)
    frac = passes - whole
    if frac > 0.05:
        x = (1.0 - frac) * x + frac * _binomial_pass(x)
    return x


def apply_camera(img: Image.Image, cam: CameraSpec, light: Lighting, rng: np.random.Generator) -> Image.Image:
    """Degrade a clean crop (already at output size) the way camera ``cam`` would."""
    w, h = img.size
    res = float(rng.uniform(*cam.resolution))
    if res < 0.95:  # fewer sensor pixels on the person: resample down and up again
        small = (max(4, int(round(w * res))), max(8, int(round(h * res))))
        img = img.resize(small, Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BILINEAR)
    idx = np.asarray(img).astype(np.intp) + _CHANNEL_OFFSETS
    x = _lut(light).take(idx)  # light, colour cast, gamma and haze in one table look-up
    x = gaussian_blur(x, float(rng.uniform(*cam.blur_px)) * (w / 64.0))  # radii given for 64-pixel-wide crops
    colour, luma = _noise_bank((w, h))
    oy, ox = int(rng.integers(h)), int(rng.integers(w))
    x += colour[oy:oy + h, ox:ox + w] * (0.5 * cam.noise_std) + luma[oy:oy + h, ox:ox + w] * cam.noise_std
    if rng.random() < 0.3:  # a soft shadow or light fall-off across the crop
        vertical = rng.random() < 0.5
        ramp = np.linspace(float(rng.uniform(-30, 10)), float(rng.uniform(-10, 20)), h if vertical else w,
                           dtype=np.float32)
        x += ramp[:, None, None] if vertical else ramp[None, :, None]
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8), "RGB")
