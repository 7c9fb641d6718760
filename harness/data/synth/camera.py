"""Camera model applied to a rendered crop: optics (resolution, blur), light and colour, noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

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
    return Lighting(gain=gain, gamma=a.gamma * b.gamma / cam.gamma, haze=(a.haze + b.haze) / 2)  # type: ignore[arg-type]


_LEVELS = np.arange(256, dtype=np.float64) / 255.0


def _lut(light: Lighting) -> list[int]:
    curve = _LEVELS ** light.gamma
    out: list[int] = []
    for g in light.gain:
        out.extend(np.clip(255.0 * g * curve + light.haze, 0, 255).round().astype(np.uint8).tolist())
    return out


def apply_camera(img: Image.Image, cam: CameraSpec, light: Lighting, rng: np.random.Generator) -> Image.Image:
    """Degrade a clean crop (already at output size) the way camera ``cam`` would."""
    w, h = img.size
    res = float(rng.uniform(*cam.resolution))
    if res < 0.98:
        small = (max(4, int(round(w * res))), max(8, int(round(h * res))))
        img = img.resize(small, Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BILINEAR)
    blur = float(rng.uniform(*cam.blur_px)) * (w / 64.0)  # radii are specified for 64-pixel-wide crops
    if blur > 0.15:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    img = img.point(_lut(light))
    arr = np.asarray(img, dtype=np.int16)
    noise = rng.normal(0.0, cam.noise_std, size=(h, w, 1)) + rng.normal(0.0, cam.noise_std * 0.5, size=(h, w, 3))
    if rng.random() < 0.3:  # a soft shadow or light fall-off across the crop
        vertical = rng.random() < 0.5
        ramp = np.linspace(float(rng.uniform(-30, 10)), float(rng.uniform(-10, 20)), h if vertical else w)
        noise = noise + (ramp[:, None, None] if vertical else ramp[None, :, None])
    out = np.clip(arr + noise.astype(np.int16), 0, 255).astype(np.uint8)
    return Image.fromarray(out, "RGB")
