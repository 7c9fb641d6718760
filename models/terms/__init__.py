"""Loss terms: a registry of kinds (``loss.terms[].kind``), each one module in this folder.

A kind = a parameter dataclass (its defaults are what a spec may leave out) + a ``build(context)``
returning an ``nn.Module`` whose ``forward(x, labels)`` maps ONE model output (features or
logits) and the identity labels to a scalar loss. The objective (``models/objective.py``)
resolves which outputs a term reads, combines several, and applies the weight.

A term that owns parameters with an optimiser of their own (center loss's centres) exposes
``own_optimizer() -> OwnOptimizer``; its parameters then never go into the model's optimiser, and
the training loop steps it without knowing what it is. Other term parameters (the verification
head's FC) are trained by the main optimiser with the model's. A term may also
read the training progress (``context.progress``: epoch, fraction of the run), e.g. a curriculum.

Adding a kind = one new module exporting ``TERM`` + one line in ``_BUILTIN`` below; a test or a
user module can instead call ``register_loss_term(entry)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from reidbench.models.registry import Registry


@dataclass
class TrainProgress:
    """Where training is; the loop updates it, terms and samplers read it."""

    epoch: int = 0  # 1-based epoch being trained (0 before training)
    max_epochs: int = 1
    step: int = 0  # optimiser steps taken in this epoch
    steps_per_epoch: int = 0
    # schedule.granularity: "step" = every phase, curricula included, follows the fractional epochs
    # elapsed at each step (``elapsed``); "epoch" = a phase may change once per epoch.
    granularity: str = "epoch"
    # Optimizer steps of the whole run so far (a resumed run continues the count from its checkpoint):
    # the global step of per-step logs. Epochs may differ in length, so it is not (epoch - 1) * steps_per_epoch + step.
    optimizer_steps: int = 0

    @property
    def elapsed(self) -> float:
        """Epochs elapsed at the start of the current step, fractional: (epoch - 1) + step / steps_per_epoch."""
        return max(0, self.epoch - 1) + (self.step / self.steps_per_epoch if self.steps_per_epoch else 0.0)

    @property
    def fraction(self) -> float:
        """Fraction of the run completed, in [0, 1]."""
        return min(1.0, self.elapsed / max(1, self.max_epochs))


@dataclass(frozen=True)
class TermContext:
    """What a term's builder gets: plain values, never the spec."""

    params: Any  # the kind's parameter dataclass instance (None when it has none)
    weight: float
    num_classes: int
    input_dim: int | None  # width of the features it reads (None for logits or unknown)
    progress: TrainProgress = field(default_factory=TrainProgress)


@dataclass(frozen=True)
class OwnOptimizer:
    """A term's private optimiser; ``before_step`` runs after backward (and unscaling), before the step."""

    optimizer: Any
    before_step: Callable[[], None] | None = None


@dataclass(frozen=True)
class LossTermEntry:
    name: str
    summary: str
    build: Callable[[TermContext], Any]
    params: type | None = None
    default_label: str = ""  # the loss value's name in logs/curves (default: the kind's name)
    reads_logits: bool = False  # True: reads logits (input_dim is not needed)


LOSS_TERMS: Registry[LossTermEntry] = Registry("loss.terms[].kind")


def register_loss_term(entry: LossTermEntry, *, replace: bool = False) -> LossTermEntry:
    return LOSS_TERMS.register(entry.name, entry, replace=replace)


def _register_builtin() -> None:
    from reidbench.models.terms import bce, ce, center, circle, curriculum, focal, triplet, verif

    for module in (ce, triplet, center, focal, bce, curriculum, verif, circle):
        register_loss_term(module.TERM)


_register_builtin()

__all__ = ["LOSS_TERMS", "LossTermEntry", "OwnOptimizer", "TermContext", "TrainProgress", "register_loss_term"]
