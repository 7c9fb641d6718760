"""Module groups made exact when new modules were inserted into pretrained ones.

An architecture's ``module_groups`` are module-name prefixes (``harness/train/build.py`` turns
``backbone`` into the glob ``backbone.*``). A block inserted inside a pretrained backbone with
``models/stages.insert_after`` (AGW's non-local blocks, Mancs' attention blocks) would therefore
count as ``pretrained``: a stage that freezes ``pretrained`` would freeze it, an optimiser group
``{match: [new], lr_scale: 10}`` would miss it. ``separate_inserted`` rewrites ``pretrained`` as
the smallest list of submodules that covers every pretrained parameter and none of the inserted
ones, and adds the inserted modules to ``new``. Other groups (``backbone``, MGN's ``trunk`` and
``branches``) keep their prefixes and so still contain the inserted blocks — freezing
``backbone`` freezes everything inside it, as fast-reid's ``FREEZE_LAYERS: [backbone]`` does.

``prefixes_excluding`` (the same cover, for one module) and ``module_names`` serve architectures
that replace a backbone module in place (Mancs' PReLU) and so must write both groups themselves.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from torch import nn

__all__ = ["cover_excluding", "module_names", "prefixes_excluding", "separate_inserted"]


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def cover_excluding(root: nn.Module, prefixes: Sequence[str], excluded: Sequence[str]) -> tuple[str, ...]:
    """Submodule names covering every parameter under ``prefixes`` except those under ``excluded``.

    A module that contains no excluded module is kept whole; one that does is replaced by its
    children (recursively). Modules without parameters are left out.
    """
    out: list[str] = []

    def visit(name: str) -> None:
        if any(_under(name, e) for e in excluded):
            return  # an inserted module (or inside one)
        module = root.get_submodule(name)
        if not any(_under(e, name) for e in excluded):
            if any(True for _ in module.parameters()):
                out.append(name)
            return
        if any(True for _ in module.parameters(recurse=False)):
            raise ValueError(f"module {name!r} holds parameters of its own and an inserted module; "
                             "its parameters cannot be named by submodules")
        for child, _ in module.named_children():
            visit(f"{name}.{child}")

    for prefix in prefixes:
        visit(prefix)
    return tuple(out)


def separate_inserted(groups: Mapping[str, Sequence[str]], root: nn.Module,
                      inserted: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``groups`` with the ``inserted`` modules moved from ``pretrained`` to ``new`` (see the module doc)."""
    out = {k: tuple(v) for k, v in groups.items()}
    if not inserted:
        return out
    out["pretrained"] = cover_excluding(root, out.get("pretrained", ()), inserted)
    new = list(out.get("new", ()))
    new.extend(m for m in inserted if not any(_under(m, n) for n in new))
    out["new"] = tuple(new)
    return out


def prefixes_excluding(root: nn.Module, under: str, excluded: Sequence[str]) -> tuple[str, ...]:
    """Prefixes covering every parameter of ``root.<under>`` except those of the ``excluded`` modules."""
    return cover_excluding(root, (under,), excluded)


def module_names(root: nn.Module, modules: Iterable[nn.Module]) -> list[str]:
    """Dotted names (relative to ``root``) of the given module objects, in the order given."""
    names = {id(m): n for n, m in root.named_modules()}
    out = []
    for module in modules:
        if id(module) not in names:
            raise ValueError(f"{type(module).__name__} is not a submodule of {type(root).__name__}")
        out.append(names[id(module)])
    return out
