"""``triplet``: batch-hard triplet loss with a margin or the soft margin (bot.md)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from reidbench.models.losses import TripletLoss
from reidbench.models.terms import LossTermEntry, TermContext


@dataclass(frozen=True)
class TripletParams:
    margin: float | None = 0.3  # None = soft margin log(1 + exp(d_ap - d_an))

    def validate(self, where: str) -> None:
        if self.margin is not None and self.margin < 0:
            raise ValueError(f"{where}.margin={self.margin!r} is not valid: a value >= 0 or null (soft margin)")


def build(context: TermContext) -> nn.Module:
    return TripletLoss(margin=context.params.margin)


TERM = LossTermEntry(name="triplet", summary="batch-hard triplet on un-normalised features, Euclidean distance",
                     build=build, params=TripletParams)
