"""``center``: center loss with the reference's own centre optimiser (bot.md "center").

The centres are the term's own parameters, stepped by a plain SGD (lr 0.5, no momentum, no
decay, no schedule) after their gradient is divided by the term's weight β, so with lr 0.5 the
update is c_k ← c_k + (1/B)·Σ_{y_b=k}(f_b − c_k), independent of β (see ``losses.center_sgd_step``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from reidbench.models.losses import CenterLoss, build_center_optimizer
from reidbench.models.terms import LossTermEntry, OwnOptimizer, TermContext


@dataclass(frozen=True)
class CenterParams:
    lr: float = 0.5  # the centres' own SGD learning rate

    def validate(self, where: str) -> None:
        if not self.lr > 0:
            raise ValueError(f"{where}.lr={self.lr!r} is not valid: a value > 0")


class CenterTerm(CenterLoss):
    def __init__(self, num_classes: int, feat_dim: int, lr: float, weight: float) -> None:
        super().__init__(num_classes, feat_dim)
        self.lr, self.weight = lr, weight

    def own_optimizer(self) -> OwnOptimizer:
        optimizer = build_center_optimizer(self, lr=self.lr)

        def undo_weight() -> None:
            # The total loss holds β·CenterLoss: divide β out so the centre step does not depend on it.
            for parameter in self.parameters():
                if parameter.grad is not None:
                    parameter.grad.mul_(1.0 / self.weight)

        return OwnOptimizer(optimizer=optimizer, before_step=undo_weight)


def build(context: TermContext) -> nn.Module:
    if context.input_dim is None:
        raise ValueError("loss term center needs a feature output with a known width (e.g. reads: f_t)")
    if not context.weight > 0:
        raise ValueError("loss term center needs weight > 0 (its centre step divides by it)")
    return CenterTerm(context.num_classes, context.input_dim, context.params.lr, context.weight)


TERM = LossTermEntry(name="center", summary="center loss, centres stepped by their own SGD (lr 0.5) independent of the weight",
                     build=build, params=CenterParams)
