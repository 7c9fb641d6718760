"""Stable RNG streams: every random draw is keyed by (seed, domain, purpose, numbers...).

Keys never depend on iteration order, the number of identities generated or Python's hash
randomisation, so any single image can be re-rendered alone and comes out identical.
"""

from __future__ import annotations

import zlib

import numpy as np


def stable_code(text: str) -> int:
    """A 32-bit code for a string that is the same in every process (unlike ``hash``)."""
    return zlib.crc32(text.encode("utf-8"))


def rng_for(seed: int, domain: str, purpose: str, *numbers: int) -> np.random.Generator:
    """A generator for one purpose, e.g. ``rng_for(0, "A", "image", pid, cam, index)``."""
    entropy = [int(seed) % 2**32, stable_code(domain), stable_code(purpose)]
    entropy += [int(n) % 2**32 for n in numbers]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def pick_index(rng: np.random.Generator, weights: tuple[float, ...]) -> int:
    """Index drawn with probability proportional to ``weights`` (faster than ``rng.choice`` for a few)."""
    r = rng.random() * sum(weights)
    for i, w in enumerate(weights):
        r -= w
        if r < 0:
            return i
    return len(weights) - 1


def pick(rng: np.random.Generator, options: tuple):
    """One of ``options``, uniformly."""
    return options[int(rng.integers(len(options)))]


def random_sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0
