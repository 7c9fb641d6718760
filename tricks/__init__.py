"""The trick registry: one module per trick; BoT's six in the paper's order, then those of other systems.

Adding a trick = one new module exporting ``TRICK`` + one line in ``_register_builtin`` — or, from
outside the package (a user's module, a test file), ``register_trick(my_trick)``, like every other
registry (architectures, loss terms, samplers, schedules, optimisers). Pure data: no torch import,
so ``reidbench tricks`` and ``--dry-run`` stay instant.

``PAPER_ORDER`` is the Bag of Tricks' six, in its Table 1 order (``ablate``'s default); the other
systems' tricks follow them (docs/geng.md, docs/mancs.md, docs/agw.md). ``registered_tricks()``
lists every trick in registration order.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from reidbench.tricks.base import Trick

_TRICKS: dict[str, Trick] = {}  # name → trick, in registration order
_ALIASES: dict[str, str] = {}  # every accepted spelling (names included) → name


def register_trick(trick: Trick, *, replace: bool = False) -> Trick:
    """Add ``trick`` to the registry; a name or alias already taken is a ValueError (unless ``replace``)."""
    if not isinstance(trick, Trick):
        raise ValueError(f"register_trick expects a Trick, got {type(trick).__name__}")
    if not trick.name or trick.name != trick.name.strip().lower() or "," in trick.name:
        raise ValueError(f"trick name {trick.name!r} is not valid: lower case, no spaces or commas")
    if trick.name in _TRICKS and not replace and _TRICKS[trick.name] is not trick:
        raise ValueError(f"trick {trick.name!r} is already registered; pass replace=True to override it")
    for spelling in (trick.name, *trick.aliases):
        owner = _ALIASES.get(spelling)
        if owner is not None and owner != trick.name:
            raise ValueError(f"trick {trick.name!r}: {spelling!r} already names trick {owner!r}")
    if trick.name in _TRICKS:
        unregister_trick(trick.name)
    _TRICKS[trick.name] = trick
    for spelling in (trick.name, *trick.aliases):
        _ALIASES[spelling] = trick.name
    return trick


def unregister_trick(name: str) -> None:
    """Remove a trick (tests that register toys clean up with this)."""
    trick = _TRICKS.pop(name, None)
    if trick is not None:
        for spelling in (trick.name, *trick.aliases):
            _ALIASES.pop(spelling, None)


def registered_tricks() -> tuple[Trick, ...]:
    """Every registered trick, in registration order (BoT's six first)."""
    return tuple(_TRICKS.values())


def find_trick(name: str) -> Trick | None:
    """The trick registered under ``name`` (exact name), or None."""
    return _TRICKS.get(name)


def get_trick(name: str) -> Trick:
    key = name.strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"unknown trick {name!r}; valid: {', '.join(_TRICKS)}")
    return _TRICKS[_ALIASES[key]]


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
    return {n: _TRICKS[n].version for n in names if n in _TRICKS}


def _register_builtin() -> None:
    from reidbench.tricks import (autoaug, bnneck, center, circle, cosine, curriculum, fab, focal, freeze, gem, ls,
                                  non_local, rea, soft_margin, stride, two_step, warmup, wrt)

    for module in (warmup, rea, ls, stride, bnneck, center,  # BoT, in Table 1's order
                   two_step,  # Geng et al. (docs/geng.md)
                   curriculum, fab, focal,  # Mancs (docs/mancs.md)
                   gem, non_local, wrt, soft_margin, circle, cosine, freeze, autoaug):  # AGW / fast-reid (docs/agw.md)
        register_trick(module.TRICK)


_register_builtin()

# The Bag of Tricks paper's six, in its order (Table 1); the tricks after them come from other systems.
PAPER_ORDER: tuple[str, ...] = ("warmup", "rea", "ls", "stride", "bnneck", "center")

__all__ = ["PAPER_ORDER", "Trick", "find_trick", "get_trick", "parse_trick_list", "register_trick",
           "registered_tricks", "trick_versions", "unregister_trick"]
