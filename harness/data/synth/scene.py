"""Camera backgrounds (drawn once per camera and cached) and occluders drawn in front of people."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .domains import RGB, get_domain
from .parts import BACKGROUND, LabelledDraw
from .seeding import pick, rng_for

SCENES_PER_CAMERA = 3
SCENE_WIDTH_FACTOR = 1.8  # scenes are wider than a crop so a tracklet can pan across them


def _jitter(rng: np.random.Generator, colour: RGB, amount: int) -> RGB:
    shifted = (int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)
    return tuple(shifted)  # type: ignore[return-value]


@lru_cache(maxsize=64)
def camera_scene(domain_name: str, seed: int, cam: int, scene: int, size: tuple[int, int]) -> Image.Image:
    """Background ``scene`` of camera ``cam`` (1-based), ``SCENE_WIDTH_FACTOR`` times wider than ``size``.

    Returned image is shared through the cache: crop it, never draw on it.
    """
    domain = get_domain(domain_name)
    spec = domain.cameras[cam - 1]
    rng = rng_for(seed, domain_name, "scene", cam, scene)
    w, h = int(size[0] * SCENE_WIDTH_FACTOR), size[1]
    wall = _jitter(rng, spec.wall_colours[scene % len(spec.wall_colours)], 10)
    ground = _jitter(rng, spec.ground_colours[scene % len(spec.ground_colours)], 10)
    horizon = int(h * rng.uniform(*spec.horizon))
    img = Image.new("RGB", (w, h), wall)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, horizon, w, h), fill=ground)
    unit = h / 100.0
    # wall furniture: windows, doors, signs, poles, bushes
    kinds = ("windows", "door", "sign", "pole", "bush", "block")
    for _ in range(int(rng.integers(3, 7))):
        kind = kinds[int(rng.integers(len(kinds)))]
        x = float(rng.uniform(0, w))
        colour = _jitter(rng, domain.object_colours[int(rng.integers(len(domain.object_colours)))], 20)
        if kind == "windows" and horizon > 20 * unit:
            win = tuple(int(c * 0.7) for c in wall)
            for wy in np.arange(4 * unit, horizon - 8 * unit, 14 * unit):
                for wx in np.arange(x, min(w, x + 60 * unit), 16 * unit):
                    draw.rectangle((wx, wy, wx + 9 * unit, wy + 8 * unit), fill=win)
        elif kind == "door":
            draw.rectangle((x, horizon - 30 * unit, x + 16 * unit, horizon), fill=_jitter(rng, wall, 40))
        elif kind == "sign":
            sy = float(rng.uniform(0, max(1.0, horizon - 10 * unit)))
            draw.rectangle((x, sy, x + rng.uniform(8, 22) * unit, sy + rng.uniform(5, 12) * unit), fill=colour)
        elif kind == "pole":
            draw.rectangle((x, 0, x + 2.5 * unit, horizon + 6 * unit), fill=_jitter(rng, (90, 90, 95), 30))
        elif kind == "bush":
            r = float(rng.uniform(6, 14)) * unit
            draw.ellipse((x - r, horizon - r, x + r, horizon + r * 0.4), fill=_jitter(rng, (50, 110, 50), 25))
        else:
            bw, bh = rng.uniform(10, 30) * unit, rng.uniform(8, 25) * unit
            draw.rectangle((x, horizon - bh, x + bw, horizon + 2 * unit), fill=colour)
    # ground: paving lines
    line_colour = _jitter(rng, tuple(min(255, int(c * 1.15)) for c in ground), 5)  # type: ignore[arg-type]
    for gy in np.arange(horizon + 6 * unit, h, float(rng.uniform(8, 16)) * unit):
        draw.line([(0, gy), (w, gy)], fill=line_colour, width=max(1, int(unit * 0.6)))
    arr = np.asarray(img, dtype=np.float32)
    # light falls off towards one side; plus a fixed grain
    ramp = np.linspace(1.0 + rng.uniform(-0.12, 0.12), 1.0 + rng.uniform(-0.12, 0.12), w, dtype=np.float32)
    arr = arr * ramp[None, :, None] + rng.normal(0.0, 4.0, size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def draw_occluder(img: Image.Image, kind: str, rng: np.random.Generator, colours: tuple[RGB, ...],
                  labels: Image.Image | None = None) -> None:
    """Draw a scene object in front of the person: a pole, a bin or car part, a bush or a sign.

    With ``labels`` (a parsing label image, see ``parts``) the object is also drawn there as
    background, covering the person's labels as it covers the person.
    """
    draw = LabelledDraw(img, labels).at(BACKGROUND)
    w, h = img.size
    colour = _jitter(rng, colours[int(rng.integers(len(colours)))], 20)
    if kind == "pole":
        x = float(rng.uniform(0.05, 0.85)) * w
        draw.rectangle((x, 0, x + rng.uniform(0.06, 0.16) * w, h), fill=_jitter(rng, (80, 80, 86), 30))
    elif kind == "low":  # bench, bin, car bonnet: hides the legs
        top = float(rng.uniform(0.62, 0.82)) * h
        x0 = float(rng.uniform(-0.5, 0.4)) * w
        draw.rectangle((x0, top, x0 + rng.uniform(0.6, 1.4) * w, h), fill=colour)
    elif kind == "bush":
        r = float(rng.uniform(0.25, 0.5)) * w
        x = pick(rng, (0.0, 1.0)) * w + float(rng.uniform(-0.1, 0.1)) * w
        draw.ellipse((x - r, h - r * 1.6, x + r, h + r), fill=_jitter(rng, (50, 110, 50), 25))
    else:  # sign or board at the side
        x = pick(rng, (-0.15, 0.75)) * w
        y0 = float(rng.uniform(0.0, 0.6)) * h
        draw.rectangle((x, y0, x + rng.uniform(0.3, 0.45) * w, y0 + rng.uniform(0.12, 0.3) * h), fill=colour)
