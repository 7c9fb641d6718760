"""Optimisers by name, parameter groups, gradient clipping, and the reference's LR schedule.

The LR changes once per epoch, at its start: epoch t (1-based) trains at
``base_lr * lr_multiplier(t, ...)``. Other schedules live in :mod:`.schedules`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from reidbench.harness.train.schedules import step_decay

# --- the reference's schedule (kept: the runner and the pinned BoT values use it) ---------------


def lr_multiplier(
    epoch: int,
    milestones: Sequence[int],
    gamma: float = 0.1,
    warmup_epochs: int = 0,
    warmup_factor: float = 0.01,
) -> float:
    """LR multiplier for 1-based training epoch ``epoch``.

    ``w(t) * gamma ** (number of milestones <= t)`` with the reference's linear warmup
    ``w(t) = warmup_factor * (1 - t/W) + t/W`` for ``t < W`` and 1 afterwards. So with W=10 and
    milestones (40, 70), epoch 1 gets 0.109, epoch 10 gets 1, epoch 40 already 0.1.
    Same arithmetic as the ``multistep`` schedule in epochs.
    """
    if epoch < 1:
        raise ValueError(f"epoch={epoch} is not valid: epochs are 1-based")
    return step_decay(epoch, milestones, gamma, warmup_epochs, warmup_factor)


def build_epoch_scheduler(
    optimizer: torch.optim.Optimizer,
    milestones: Sequence[int],
    gamma: float,
    warmup_epochs: int,
    warmup_factor: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per epoch; its internal counter 0 corresponds to training epoch 1."""
    ms = tuple(milestones)

    def factor(index0: int) -> float:
        return lr_multiplier(index0 + 1, ms, gamma, warmup_epochs, warmup_factor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)


# --- optimisers ----------------------------------------------------------------------------------


def _check_betas(where: str, betas: tuple[float, float]) -> None:
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"{where}.betas={tuple(betas)!r} is not valid: two values in [0, 1)")


@dataclass(frozen=True)
class AdamParams:
    """Adam / AdamW options beyond lr and weight decay."""

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        _check_betas("adam", self.betas)
        if not self.eps > 0:
            raise ValueError(f"adam.eps={self.eps!r} is not valid: a value > 0")


@dataclass(frozen=True)
class SGDParams:
    """SGD options beyond lr and weight decay; dampening is always 0 (nesterov needs it)."""

    momentum: float = 0.9
    nesterov: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"sgd.momentum={self.momentum!r} is not valid: a value in [0, 1)")
        if self.nesterov and self.momentum == 0:
            raise ValueError(f"sgd.nesterov={self.nesterov!r} is not valid: nesterov needs momentum > 0")


def _adam(groups: list, lr: float, weight_decay: float, p: AdamParams) -> torch.optim.Optimizer:
    # Coupled L2: weight_decay * w is added to the gradient before Adam's normalisation (the reference).
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, betas=p.betas, eps=p.eps)


def _adamw(groups: list, lr: float, weight_decay: float, p: AdamParams) -> torch.optim.Optimizer:
    # Decoupled: w -= lr * weight_decay * w, outside the normalisation.
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=p.betas, eps=p.eps)


def _sgd(groups: list, lr: float, weight_decay: float, p: SGDParams) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, momentum=p.momentum,
                           dampening=0.0, nesterov=p.nesterov)


@dataclass(frozen=True)
class OptimizerEntry:
    """One named optimiser: a one-line ``summary``, its ``params`` dataclass (frozen, every field
    defaulted) and ``factory(param_groups, lr, weight_decay, params) -> Optimizer``."""

    summary: str
    params: type
    factory: Callable[[list, float, float, Any], torch.optim.Optimizer]

    def make_params(self, **params: Any) -> Any:
        """The params dataclass from keyword fields; an unknown field is a ValueError naming the valid ones."""
        valid = [f.name for f in dataclasses.fields(self.params)]
        for key in params:
            if key not in valid:
                raise ValueError(f"optimizer parameter {key!r} is not valid: {', '.join(valid)}")
        return self.params(**params)


OPTIMIZERS: dict[str, OptimizerEntry] = {
    "adam": OptimizerEntry("Adam with coupled L2 weight decay (the BoT reference)", AdamParams, _adam),
    "adamw": OptimizerEntry("Adam with decoupled weight decay (AdamW)", AdamParams, _adamw),
    "sgd": OptimizerEntry("SGD with momentum, optional nesterov, dampening 0", SGDParams, _sgd),
}


def get_optimizer(name: str) -> OptimizerEntry:
    """The entry for ``name``; a miss is a ValueError listing the registered names."""
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"optim.name={name!r} is not valid: {' or '.join(OPTIMIZERS)}") from None


def build_optimizer(
    params: Iterable[nn.Parameter] | Iterable[dict],
    name: str,
    base_lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    **options: Any,
) -> torch.optim.Optimizer:
    """The optimiser ``name`` (adam: coupled L2, as the reference; adamw; sgd).

    ``params`` is either plain parameters — those with ``requires_grad`` only, as before — or
    the group dicts of :func:`param_groups`, passed as they are (frozen parameters included, so
    a later stage can unfreeze them). ``base_lr`` and ``weight_decay`` are the defaults for groups
    that carry no ``lr`` / ``weight_decay``. ``betas`` reaches only optimisers that have them
    (the spec always carries it; sgd ignores it). ``options`` are the other fields of the
    optimiser's params dataclass (``eps``; ``momentum``, ``nesterov``).
    """
    entry = get_optimizer(name)
    if not base_lr > 0:
        raise ValueError(f"optim.base_lr={base_lr!r} is not valid: a value > 0")
    if weight_decay < 0:
        raise ValueError(f"optim.weight_decay={weight_decay!r} is not valid: a value >= 0")
    if "betas" in {f.name for f in dataclasses.fields(entry.params)}:
        options = {"betas": tuple(betas), **options}
    settings = entry.make_params(**options)
    items = list(params)
    dicts = sum(isinstance(g, dict) for g in items)
    if dicts and dicts != len(items):
        raise ValueError("params is not valid: either all parameters or all group dicts, not a mix")
    if dicts:
        groups = items
    else:
        groups = [p for p in items if p.requires_grad]
    return entry.factory(groups, base_lr, weight_decay, settings)


# --- parameter groups ----------------------------------------------------------------------------


def module_patterns(*module_names: str) -> tuple[str, ...]:
    """Globs for every parameter under the named submodules: ``"backbone"`` -> ``"backbone.*"``."""
    return tuple(f"{m}.*" for m in module_names)


@dataclass(frozen=True)
class GroupRule:
    """Parameters whose name matches any of ``patterns`` (fnmatch globs, case-sensitive) train at
    ``base_lr * lr_scale`` with ``weight_decay`` (None: inherit the optimiser's)."""

    patterns: tuple[str, ...]
    lr_scale: float = 1.0
    weight_decay: float | None = None
    name: str = ""  # the group's name; "" names it by its patterns

    def __post_init__(self) -> None:
        # A bare string would otherwise be iterated as single-character globs.
        pats = (self.patterns,) if isinstance(self.patterns, str) else tuple(self.patterns)
        object.__setattr__(self, "patterns", pats)
        if not pats or not all(isinstance(p, str) and p for p in pats):
            raise ValueError(f"rule.patterns={pats!r} is not valid: one or more non-empty glob strings")
        if not self.lr_scale >= 0:
            raise ValueError(f"rule.lr_scale={self.lr_scale!r} is not valid: a value >= 0")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise ValueError(f"rule.weight_decay={self.weight_decay!r} is not valid: a value >= 0 or None (inherit)")

    @property
    def group_name(self) -> str:
        return self.name or "|".join(self.patterns)


def is_bias_or_norm(name: str, param: nn.Parameter) -> bool:
    """Biases and normalisation-layer affine parameters, told apart by name and shape alone:
    a name ending in ``bias`` or a tensor of at most one dimension (BN/LN/GN weights are 1-D,
    conv and linear weights are not) — timm's rule, which needs no module types."""
    return name == "bias" or name.endswith(".bias") or param.ndim <= 1


def param_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    rules: Sequence[GroupRule],
    base_lr: float,
    weight_decay: float,
    no_decay_bias_bn: bool = False,
) -> list[dict]:
    """Optimiser parameter groups: each parameter goes to the first rule whose glob matches its
    name, the rest to a ``"default"`` group (lr_scale 1).

    Every group carries ``params``, ``lr = base_lr * lr_scale`` (LambdaLR multiplies each group's
    initial lr, so the scale holds through the schedule), ``weight_decay``, ``lr_scale`` and
    ``name``. Parameters with ``requires_grad=False`` stay in: their grad stays None and torch
    optimisers skip them, and a later stage may unfreeze them. Empty groups are dropped. With
    ``no_decay_bias_bn`` (fast-reid's habit), each group's biases and norm parameters
    (:func:`is_bias_or_norm`) move to a ``"<name>/no_decay"`` group with weight decay 0.
    """
    if not base_lr > 0:
        raise ValueError(f"optim.base_lr={base_lr!r} is not valid: a value > 0")
    if weight_decay < 0:
        raise ValueError(f"optim.weight_decay={weight_decay!r} is not valid: a value >= 0")
    rules = list(rules)
    names = [r.group_name for r in rules]
    if "default" in names or len(set(names)) != len(names):
        raise ValueError(f"rule names={names!r} are not valid: distinct, and not 'default'")
    specs = [(r.group_name, r.lr_scale, weight_decay if r.weight_decay is None else r.weight_decay)
             for r in rules] + [("default", 1.0, weight_decay)]
    decay: list[list[nn.Parameter]] = [[] for _ in specs]
    no_decay: list[list[nn.Parameter]] = [[] for _ in specs]
    for pname, param in named_parameters:
        index = next((i for i, r in enumerate(rules) if any(fnmatchcase(pname, g) for g in r.patterns)),
                     len(rules))
        (no_decay if no_decay_bias_bn and is_bias_or_norm(pname, param) else decay)[index].append(param)
    groups = []
    for (gname, scale, wd), dparams, nparams in zip(specs, decay, no_decay):
        for suffix, members, group_wd in (("", dparams, wd), ("/no_decay", nparams, 0.0)):
            if members:
                groups.append({"params": members, "lr": base_lr * scale, "weight_decay": group_wd,
                               "lr_scale": scale, "name": gname + suffix})
    return groups


# --- gradient clipping ---------------------------------------------------------------------------


def clip_gradients(
    parameters: Iterable[nn.Parameter],
    max_norm: float | None,
    norm_type: float = 2.0,
    scaler: Any = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> float | None:
    """Clip the gradients' total ``norm_type`` norm to ``max_norm``; returns the norm before
    clipping, or None when ``max_norm`` is None (disabled).

    With an enabled ``torch.amp.GradScaler`` the gradients are still scaled, so the scaler first
    unscales ``optimizer``'s gradients (``scaler.step`` then knows not to do it again); without
    that, clipping would compare ``scale * g`` to ``max_norm``. Call between backward and step.
    """
    if max_norm is None:
        return None
    if not max_norm > 0:
        raise ValueError(f"max_norm={max_norm!r} is not valid: a value > 0 or None (no clipping)")
    if scaler is not None and scaler.is_enabled():
        if optimizer is None:
            raise ValueError("optimizer=None is not valid with a GradScaler: pass the optimizer to unscale")
        scaler.unscale_(optimizer)
    total = torch.nn.utils.clip_grad_norm_(list(parameters), max_norm, norm_type=norm_type)
    return float(total)
