"""Exact module groups when new modules sit inside a pretrained backbone.

Module groups (``pretrained``, ``new``, ...) are lists of module-name prefixes: a stage or an
optimiser group matches the parameters ``<prefix>.*``. Once a trick inserts a block inside the
backbone (``backbone.layer4.2.extra``, models/stages.py) or swaps one of its activations for a
learnable one (``backbone.layer4.2.inner.act3``), ``("backbone",)`` would call those new
parameters pretrained. ``prefixes_excluding`` gives the smallest list of prefixes that covers
everything under a module except some submodules, so both groups stay exact.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from torch import nn

__all__ = ["module_names", "prefixes_excluding"]


def module_names(root: nn.Module, modules: Iterable[nn.Module]) -> list[str]:
    """Dotted names (relative to ``root``) of the given module objects, in the order given."""
    names = {id(m): n for n, m in root.named_modules()}
    out = []
    for module in modules:
        if id(module) not in names:
            raise ValueError(f"{type(module).__name__} is not a submodule of {type(root).__name__}")
        out.append(names[id(module)])
    return out


def prefixes_excluding(root: nn.Module, under: str, excluded: Sequence[str]) -> tuple[str, ...]:
    """Prefixes covering every parameter of ``root.<under>`` except those of the ``excluded`` modules.

    ``excluded`` are dotted names relative to ``root``. A module holding parameters of its own
    while one of its children is excluded cannot be written as prefixes: that is a ValueError.
    """
    def covered(name: str) -> bool:
        return any(e == name or e.startswith(name + ".") for e in excluded)

    def walk(name: str, module: nn.Module) -> list[str]:
        if name in excluded:
            return []
        if not covered(name):
            return [name] if any(True for _ in module.parameters()) else []
        if any(True for _ in module.parameters(recurse=False)):
            raise ValueError(f"{name} has parameters of its own beside the new module inside it; "
                             "its groups cannot be written as module prefixes")
        out: list[str] = []
        for child, sub in module.named_children():
            out.extend(walk(f"{name}.{child}", sub))
        return out

    return tuple(walk(under, root.get_submodule(under)))
