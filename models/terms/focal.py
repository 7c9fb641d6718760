"""``focal``: focal identity loss (Mancs, seed 002 §3.4), ``−mean_i (1 − p_i)^γ · log p_i``.

The seed writes ``p_i = Sigmoid_{c_i}(FC(f_cls(I_i)))``: the sigmoid of the *true class's* logit,
and the loss sums over the batch only (no term for the other classes). That is the default
(``probability: sigmoid``). The seed's prose calls it "an improved softmax loss", so
``probability: softmax`` takes ``p_i = softmax(logits_i)[c_i]`` instead; with γ = 0 that is
exactly cross-entropy (and the sigmoid reading is then ``−mean log σ(z_{i,c_i})``).

Note on the sigmoid reading: nothing in it pushes the other classes' logits down, so a classifier
can lower it by raising every logit; that is what the seed writes, and why softmax is an option.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from reidbench.models.terms import LossTermEntry, TermContext

PROBABILITIES = ("sigmoid", "softmax")


@dataclass(frozen=True)
class FocalParams:
    gamma: float = 2.0
    probability: str = "sigmoid"  # the seed's formula; softmax: the usual multi-class focal loss

    def validate(self, where: str) -> None:
        if not self.gamma >= 0:
            raise ValueError(f"{where}.gamma={self.gamma!r} is not valid: a number >= 0")
        if self.probability not in PROBABILITIES:
            raise ValueError(f"{where}.probability={self.probability!r} is not valid: {' or '.join(PROBABILITIES)}")


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0,
               probability: str = "sigmoid") -> torch.Tensor:
    """``−mean_i (1 − p_i)^γ log p_i``, p_i the true class's sigmoid or softmax probability."""
    if probability == "softmax":
        log_p = F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    elif probability == "sigmoid":
        log_p = F.logsigmoid(logits.gather(1, labels[:, None]).squeeze(1))
    else:
        raise ValueError(f"probability={probability!r} is not valid: {' or '.join(PROBABILITIES)}")
    one_minus_p = -torch.expm1(log_p)  # 1 − p without cancellation when p → 1
    return -(one_minus_p.pow(gamma) * log_p).mean()


class FocalTerm(nn.Module):
    def __init__(self, gamma: float, probability: str) -> None:
        super().__init__()
        self.gamma, self.probability = gamma, probability

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, labels, self.gamma, self.probability)


def build(context: TermContext) -> nn.Module:
    return FocalTerm(context.params.gamma, context.params.probability)


TERM = LossTermEntry(name="focal", summary="focal identity loss -(1-p)^gamma log p, p = true-class sigmoid "
                                           "(Mancs' formula) or softmax", build=build, params=FocalParams,
                     default_label="focal", reads_logits=True)
