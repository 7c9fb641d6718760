"""Persistent appearance of one synthetic person, drawn once from an identity-seeded RNG.

Colours come from the domain's small palettes on purpose: many identities share their upper and
lower colours and differ only in details (texture, logo, bag, shoes, hair, hat, glasses), so a
colour histogram alone cannot tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .domains import RGB, DomainSpec

PATTERNS = ("plain", "stripes", "checks", "dots")
HAIR_STYLES = ("short", "long", "bun", "bald")
CARRY_KINDS = ("none", "backpack", "shoulder_bag", "handbag")
LOGO_SHAPES = ("circle", "square", "triangle", "bar")


@dataclass(frozen=True)
class Texture:
    """A garment fill: a base colour and, unless plain, a pattern in a second colour."""

    pattern: str
    colour: RGB
    second: RGB
    period: float  # pattern period as a fraction of the person's height


@dataclass(frozen=True)
class Identity:
    height: float  # body height relative to the camera's nominal person height
    width: float  # body width factor (1 = average build)
    skin: RGB
    hair: RGB
    hair_style: str
    upper: Texture
    long_sleeves: bool
    coat: bool  # upper garment reaches mid-thigh
    lower: Texture
    lower_style: str  # "trousers" | "shorts" | "skirt"
    shoes: RGB
    logo: RGB | None  # chest logo, visible from the front only
    logo_shape: str
    hat: RGB | None
    glasses: bool
    carry: str  # one of CARRY_KINDS
    carry_colour: RGB
    carry_side: int  # +1: the person's right side, -1: left


def _pick(rng: np.random.Generator, options: tuple, weights: tuple[float, ...] | None = None):
    if weights is None:
        return options[int(rng.integers(len(options)))]
    p = np.asarray(weights, dtype=float)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def _colour_weights(n: int, skew: float) -> tuple[float, ...]:
    # A skewed palette: the first colours are common (black, white, jeans...), which produces
    # many identities with the same dominant colours.
    return tuple(1.0 / (1.0 + skew * i) for i in range(n))


def _texture(rng: np.random.Generator, base: RGB, seconds: tuple[RGB, ...],
             pattern_weights: tuple[float, ...]) -> Texture:
    pattern = _pick(rng, PATTERNS, pattern_weights)
    second = base
    if pattern != "plain":
        candidates = tuple(c for c in seconds if sum(abs(a - b) for a, b in zip(c, base)) > 90) or seconds
        second = _pick(rng, candidates)
    period = float(rng.uniform(0.05, 0.085)) if pattern != "dots" else float(rng.uniform(0.06, 0.095))
    return Texture(pattern=pattern, colour=base, second=second, period=period)


def sample_identity(domain: DomainSpec, rng: np.random.Generator) -> Identity:
    """Draw one person's persistent attributes from ``rng`` and the domain's palettes."""
    upper_base = _pick(rng, domain.upper_colours, _colour_weights(len(domain.upper_colours), domain.palette_skew))
    lower_base = _pick(rng, domain.lower_colours, _colour_weights(len(domain.lower_colours), domain.palette_skew))
    seconds = domain.accent_colours + domain.upper_colours
    upper = _texture(rng, upper_base, seconds, domain.upper_pattern_weights)
    lower = _texture(rng, lower_base, seconds, (0.85, 0.05, 0.07, 0.03))
    u = rng.random()
    if u < domain.skirt_prob:
        lower_style = "skirt"
    elif u < domain.skirt_prob + domain.shorts_prob:
        lower_style = "shorts"
    else:
        lower_style = "trousers"
    hair_style = _pick(rng, HAIR_STYLES, (0.45, 0.3, 0.12, 0.13))
    carry = _pick(rng, CARRY_KINDS, (0.4, 0.25, 0.22, 0.13))
    shoes = _pick(rng, ((30, 30, 30), (60, 50, 45), (235, 235, 235)) + domain.accent_colours,
                  (3.0, 1.5, 1.5) + (0.4,) * len(domain.accent_colours))
    return Identity(
        height=float(rng.uniform(0.9, 1.04)),
        width=float(rng.uniform(0.82, 1.22)),
        skin=_pick(rng, domain.skin_tones),
        hair=_pick(rng, domain.hair_colours, (3, 2, 1.5, 1, 0.6)),
        hair_style=hair_style,
        upper=upper,
        long_sleeves=bool(rng.random() >= domain.short_sleeve_prob),
        coat=bool(rng.random() < domain.coat_prob),
        lower=lower,
        lower_style=lower_style,
        shoes=shoes,
        logo=_pick(rng, domain.accent_colours) if rng.random() < 0.4 else None,
        logo_shape=_pick(rng, LOGO_SHAPES),
        hat=_pick(rng, domain.accent_colours + domain.hair_colours[:2]) if rng.random() < 0.14 else None,
        glasses=bool(rng.random() < 0.2),
        carry=carry,
        carry_colour=_pick(rng, domain.accent_colours + domain.lower_colours[:3]),
        carry_side=1 if rng.random() < 0.5 else -1,
    )
