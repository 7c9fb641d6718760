"""``triplet``: batch-hard triplet loss with a margin or the soft margin (bot.md).

``mining: weighted`` (with ``margin: null``) is AGW's weighted regularised triplet, the ``wrt``
trick (docs/agw.md); the ``soft-margin`` trick sets ``margin: null`` with hard mining (fast-reid).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from reidbench.models.losses import TripletLoss
from reidbench.models.terms import LossTermEntry, TermContext


@dataclass(frozen=True)
class TripletParams:
    margin: float | None = 0.3  # None = soft margin log(1 + exp(d_ap - d_an))
    # --- AGW / fast-reid ---
    mining: str = "hard"  # hard (batch-hard) | weighted (softmax-weighted positives/negatives: AGW's WRT)
    # weighted mining's softmax: reference (AGW's / fast-reid's softmax_weights, quirk included:
    # negative weights vanish for far negatives) | exact (a true masked softmax); docs/agw.md
    weights: str = "reference"

    def validate(self, where: str) -> None:
        from reidbench.models.losses import MINING, WRT_WEIGHTS

        if self.margin is not None and self.margin < 0:
            raise ValueError(f"{where}.margin={self.margin!r} is not valid: a value >= 0 or null (soft margin)")
        if self.mining not in MINING:
            raise ValueError(f"{where}.mining={self.mining!r} is not valid: {' or '.join(MINING)}")
        if self.weights not in WRT_WEIGHTS:
            raise ValueError(f"{where}.weights={self.weights!r} is not valid: {' or '.join(WRT_WEIGHTS)}")
        if self.weights != "reference" and self.mining != "weighted":
            raise ValueError(f"{where}.weights={self.weights!r} needs mining: weighted (hard mining has no weights)")


def build(context: TermContext) -> nn.Module:
    return TripletLoss(margin=context.params.margin, mining=context.params.mining,
                       weights=context.params.weights)


TERM = LossTermEntry(name="triplet", summary="batch-hard (or AGW's weighted) triplet on un-normalised features, Euclidean distance",
                     build=build, params=TripletParams)
