"""``ce``: cross-entropy on logits, with optional label smoothing (the "ls" trick, bot.md)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from reidbench.models.losses import id_loss
from reidbench.models.terms import LossTermEntry, TermContext


@dataclass(frozen=True)
class CEParams:
    label_smoothing: float = 0.0  # epsilon: target (1-eps)·onehot + eps/N

    def validate(self, where: str) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"{where}.label_smoothing={self.label_smoothing!r} is not valid: a value in [0, 1)")


class CrossEntropyTerm(nn.Module):
    def __init__(self, label_smoothing: float) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits, labels):
        return id_loss(logits, labels, self.label_smoothing)


def build(context: TermContext) -> nn.Module:
    return CrossEntropyTerm(context.params.label_smoothing)


TERM = LossTermEntry(name="ce", summary="cross-entropy identity loss, optional label smoothing",
                     build=build, params=CEParams, default_label="id", reads_logits=True)
