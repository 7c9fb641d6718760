"""The trick registry: one module per trick; BoT's six in the paper's order, then those of other systems.

Adding a trick = one new module exporting ``TRICK`` + one entry in ``REGISTRY``. Pure data: no
torch import, so ``reidbench tricks`` and ``--dry-run`` stay instant.

``PAPER_ORDER`` is the Bag of Tricks' six, in its Table 1 order (``ablate``'s default); the AGW /
fast-reid tricks follow them in ``REGISTRY`` (docs/agw.md).
"""

from __future__ import annotations

from typing import Iterable, Mapping

from reidbench.tricks import bnneck, center, ls, rea, stride, warmup
from reidbench.tricks import two_step
from reidbench.tricks import curriculum, fab, focal
from reidbench.tricks import autoaug, circle, cosine, freeze, gem, non_local, soft_margin, wrt
from reidbench.tricks.base import Trick

REGISTRY: tuple[Trick, ...] = (
    warmup.TRICK,
    rea.TRICK,
    ls.TRICK,
    stride.TRICK,
    bnneck.TRICK,
    center.TRICK,
    # Geng et al. (docs/geng.md)
    two_step.TRICK,
    # Mancs (docs/mancs.md)
    curriculum.TRICK,
    fab.TRICK,
    focal.TRICK,
    # AGW / fast-reid (docs/agw.md)
    gem.TRICK, non_local.TRICK, wrt.TRICK, soft_margin.TRICK, circle.TRICK, cosine.TRICK, freeze.TRICK, autoaug.TRICK,
)
# The Bag of Tricks paper's six, in its order (Table 1); the tricks after them come from other systems.
PAPER_ORDER: tuple[str, ...] = tuple(t.name for t in REGISTRY[:6])

_BY_NAME: dict[str, Trick] = {t.name: t for t in REGISTRY}
_ALIASES: dict[str, str] = {alias: t.name for t in REGISTRY for alias in (t.name, *t.aliases)}


def get_trick(name: str) -> Trick:
    key = name.strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"unknown trick {name!r}; valid: {', '.join(t.name for t in REGISTRY)}")
    return _BY_NAME[_ALIASES[key]]


def parse_trick_list(text: str | Iterable[str]) -> tuple[Trick, ...]:
    """``"bnneck,center"`` (or a list) → tricks; unknown or repeated names fail naming them."""
    items = [s for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    tricks = tuple(get_trick(s) for s in items)
    seen: set[str] = set()
    for t in tricks:
        if t.name in seen:
            raise ValueError(f"trick {t.name!r} is listed twice")
        seen.add(t.name)
    return tricks


def trick_versions(names: Iterable[str]) -> Mapping[str, int]:
    return {n: _BY_NAME[n].version for n in names if n in _BY_NAME}


__all__ = ["REGISTRY", "PAPER_ORDER", "Trick", "get_trick", "parse_trick_list", "trick_versions"]
