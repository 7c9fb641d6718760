"""Architectures: a registry of model layouts (``model.arch``), each one module in this folder.

An architecture's ``build(model, num_classes)`` reads the ``model`` spec section (its builder is
the one place that does) and returns an ``nn.Module`` honouring the output contract:

- ``forward(images)`` returns a dict of named tensors: feature outputs (B×D) and, in training
  mode, logits (B×num_classes) — e.g. ``{"f_t", "f_i", "logits"}`` for ``bot``; a multi-branch
  model returns several (``f_g``, ``f_p2_1``, ``logits_g``, ...).
- ``feature_dims``: {feature output name: width}, so loss terms can size their parameters.
- ``test_feature``: the default test feature — one output name or a tuple concatenated in order.
- ``module_groups``: {group name: submodule names}; at least ``pretrained`` (initialised from
  ImageNet) and ``new`` (initialised here). Stages freeze groups and the optimiser gives groups
  their own learning rates by these names. Blocks inserted into the backbone with
  ``models/stages.insert_after`` are moved from ``pretrained`` to ``new`` here, for every
  architecture (``models/groups.py``).
- ``reid_info``: a plain dict describing what was built (recorded with the run).

An entry with ``needs_masks`` (``spreid``) pools with per-image part masks: its ``forward`` is
``forward(images, masks=None)`` with masks float B×5×H×W in [0, 1] (``harness/data/masks.py``),
and a spec choosing it must name a provider in ``data.masks``. An entry with ``masks_when`` pools
with them under some of its options only (``bot`` with ``pool: bilinear, bilinear_parts: masks``):
``masks_when(params)`` says whether a spec's options do. Every other model is called as
``forward(images)`` and a spec giving it masks is refused (it would ignore them).

An entry also declares which generic ``model`` fields its builder reads (``model_fields``): a trick
that changes one it ignores (BoT's ``bnneck`` sets ``model.neck``) is refused at plan time with
one line naming the architecture, instead of training a copy of the base under another name.

Adding one = a new module exporting ``ARCH`` + one line in ``_register_builtin``; a test or a user
module can call ``register_architecture(entry)`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from reidbench.models.registry import Registry


MODEL_FIELDS = ("backbone", "pretrained", "weights_path", "last_stride", "neck")


@dataclass(frozen=True)
class Architecture:
    name: str
    summary: str
    build: Callable[[Any, int], Any]  # (model spec section, number of training identities) -> nn.Module
    params: type | None = None  # the architecture's own options (written flat in the model section)
    # Generic model-section fields the builder reads (a trick changing another one does not apply).
    model_fields: tuple[str, ...] = MODEL_FIELDS
    needs_masks: bool = False  # forward(images, masks=...) with data.masks' part masks (module doc)
    # Pools with part masks under some options only: (its params dataclass) -> bool, and how those
    # options read in messages ("pool: bilinear, bilinear_parts: masks").
    masks_when: Callable[[Any], bool] | None = None
    masks_when_text: str = ""


def pools_with_masks(arch: str, model: Any = None) -> bool:
    """Whether ``model.arch`` (with the model section ``model``'s options, when given) reads ``data.masks``."""
    entry = ARCHITECTURES.get(arch)
    if entry.needs_masks:
        return True
    if entry.masks_when is None or model is None:
        return False
    return bool(entry.masks_when(arch_params(model)))


def check_masks_field(arch: str, masks: str, model: Any = None) -> None:
    """One-line error when ``model.arch`` and ``data.masks`` disagree (masks needed but absent, or ignored).

    ``model``: the model section, for architectures that read masks under some options only
    (``masks_when``); without it they are taken not to read masks.
    """
    entry = ARCHITECTURES.get(arch)
    needed = pools_with_masks(arch, model)
    if needed and not masks:
        who = f"model.arch={arch}" if entry.needs_masks else f"model.arch={arch} with {entry.masks_when_text}"
        raise ValueError(f"{who} pools with part masks: set data.masks to oracle (synthetic data), "
                         "stripes (any data; a deviation) or folder:PATH (your parser's output; docs/spreid.md)")
    if masks and not needed:
        users = ", ".join([n for n, e in ARCHITECTURES.items() if e.needs_masks]
                          + [f"{n} with {e.masks_when_text}" for n, e in ARCHITECTURES.items()
                             if not e.needs_masks and e.masks_when is not None]) or "none registered"
        raise ValueError(f"data.masks={masks!r} is only read by architectures that pool with part masks ({users}); "
                         f"model.arch={arch} would ignore it: drop data.masks")


def unread_model_fields(arch: str, changed: Any) -> list[str]:
    """Those of the ``changed`` model fields that architecture ``arch`` does not read."""
    return [f for f in changed if f not in ARCHITECTURES.get(arch).model_fields]


ARCHITECTURES: Registry[Architecture] = Registry("model.arch")


def register_architecture(entry: Architecture, *, replace: bool = False) -> Architecture:
    return ARCHITECTURES.register(entry.name, entry, replace=replace)


def arch_params(model: Any) -> Any:
    """The chosen architecture's parameter dataclass filled from ``model.options``."""
    from reidbench.models.registry import build_params

    return build_params(ARCHITECTURES.get(model.arch).params, dict(model.options), "model")


def build_architecture(model: Any, num_classes: int) -> Any:
    """Build ``model.arch`` and check the output contract (one-line error naming what is missing)."""
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be >= 1 (the number of training identities)")
    net = ARCHITECTURES.get(model.arch).build(model, num_classes)
    for attribute in ("feature_dims", "test_feature", "module_groups"):
        if not hasattr(net, attribute):
            raise ValueError(f"model.arch={model.arch!r}: the built module has no {attribute!r} "
                             "(see models/architectures/__init__.py for the contract)")
    test = (net.test_feature,) if isinstance(net.test_feature, str) else tuple(net.test_feature)
    unknown = [t for t in test if t not in net.feature_dims]
    if unknown:
        raise ValueError(f"model.arch={model.arch!r}: test feature {unknown[0]!r} is not among its feature "
                         f"outputs {sorted(net.feature_dims)}")
    if not hasattr(net, "reid_info"):
        net.reid_info = {}
    net.reid_info.setdefault("arch", model.arch)
    _separate_inserted(net)
    return net


def _separate_inserted(net: Any) -> None:
    """Blocks inserted into pretrained modules (``models/stages.insert_after``) belong to ``new``, not
    ``pretrained`` (``models/groups.py``); recorded in ``reid_info["inserted"]``."""
    from reidbench.models.groups import separate_inserted
    from reidbench.models.stages import inserted_modules

    inserted = inserted_modules(net)
    if inserted:
        net.module_groups = separate_inserted(net.module_groups, net, inserted)
        net.reid_info["inserted"] = list(inserted)


def _register_builtin() -> None:
    from reidbench.models.architectures import bot, mancs, mgn, spreid

    register_architecture(bot.ARCH)
    register_architecture(mgn.ARCH)
    register_architecture(mancs.ARCH)
    register_architecture(spreid.ARCH)


_register_builtin()

__all__ = ["ARCHITECTURES", "MODEL_FIELDS", "Architecture", "arch_params", "build_architecture", "check_masks_field",
           "pools_with_masks", "register_architecture", "unread_model_fields"]
