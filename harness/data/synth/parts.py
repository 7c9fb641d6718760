"""Ground-truth human parsing for the synthetic generator: region labels and soft region masks.

The generator draws every person, so it knows which pixel belongs to which body region. A
:class:`LabelledDraw` stands in for ``ImageDraw.Draw`` while a person is drawn: every shape goes
to the picture as before and, with the same geometry, into a one-channel label image holding the
region code. Nothing else changes: the picture's pixels and every RNG draw are the same with or
without labels (``tests/test_synth_masks.py`` pins this).

Regions follow SPReID's grouping of the LIP labels (seed-systems.md §4.1): head (hat, hair,
glasses, face — and here the neck), upper body (upper clothes, coat, arms, hands), lower body
(trousers, shorts, skirt, legs), shoes; bags, backpacks and straps are background, as in LIP.
Every person drawn is labelled (passers-by too: a parser labels every person it sees); scene
occluders drawn in front are background.

Soft masks. Labels are drawn on the supersampled canvas and reduced like the picture: each output
pixel's value for a region is the fraction of its ``ss × ss`` canvas pixels with that label
(0, ¼, ½, ¾, 1 at the default ``ss = 2``). Foreground = 1 − background = the sum of the four
parts. Stored as uint8, value × 255, channels in ``REGIONS`` order.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw

BACKGROUND, HEAD, UPPER, LOWER, SHOES = 0, 1, 2, 3, 4
PARTS = ("head", "upper", "lower", "shoes")
REGIONS = ("foreground",) + PARTS  # channel order of every 5-map mask (files, loader, model)


class LabelledDraw:
    """``ImageDraw.Draw(img)`` that also draws into ``labels`` (an "L" image of the same size, or None).

    ``at(region)`` sets the code the next shapes are labelled with and returns the drawer, so a
    call reads ``d.at(SHOES).ellipse(box, fill=colour)``. Every ``ImageDraw`` method is forwarded
    with its own arguments; the label copy gets ``fill=region`` instead of the colour.
    """

    def __init__(self, img: Image.Image, labels: Image.Image | None = None) -> None:
        self.draw = ImageDraw.Draw(img)
        self.labels = ImageDraw.Draw(labels) if labels is not None else None
        self.region = BACKGROUND

    def at(self, region: int) -> "LabelledDraw":
        self.region = region
        return self

    def __getattr__(self, name: str) -> Callable[..., Any]:
        rgb = getattr(self.draw, name)
        if self.labels is None:
            return rgb
        label = getattr(self.labels, name)
        region = self.region

        def both(*args: Any, **kwargs: Any) -> None:
            rgb(*args, **kwargs)
            label(*args, **{**kwargs, "fill": region})

        return both


def new_label_image(size: tuple[int, int]) -> Image.Image:
    """An all-background label image of PIL ``size`` (width, height)."""
    return Image.new("L", size, BACKGROUND)


def soft_masks(labels: Image.Image, ss: int) -> np.ndarray:
    """uint8 ``5 × (H/ss) × (W/ss)`` region fractions (× 255) of a label image drawn at ``ss`` times the output size."""
    codes = np.asarray(labels, dtype=np.uint8)
    h, w = codes.shape[0] // ss, codes.shape[1] // ss
    blocks = codes[:h * ss, :w * ss].reshape(h, ss, w, ss)
    counts = np.stack([(blocks == code).sum(axis=(1, 3)) for code in (HEAD, UPPER, LOWER, SHOES)])
    parts = counts.astype(np.float64) / (ss * ss)
    foreground = parts.sum(axis=0, keepdims=True)
    return np.rint(np.concatenate([foreground, parts]) * 255).astype(np.uint8)
