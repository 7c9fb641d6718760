"""``bce``: multi-label sigmoid identity loss, BCE against one-hot targets (Mancs' attention branch, seed 002 §3.5).

``L = −1/(B·C) Σ_i Σ_c [y_ic log q_ic + (1 − y_ic) log(1 − q_ic)]``, ``q = sigmoid(logits)``,
``y`` the one-hot identity: the seed's formula (which drops the leading minus sign), i.e.
``binary_cross_entropy_with_logits`` averaged over the batch and the C classes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from reidbench.models.terms import LossTermEntry, TermContext


def one_hot_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    targets = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets)


class OneHotBCETerm(nn.Module):
    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return one_hot_bce(logits, labels)


def build(context: TermContext) -> nn.Module:
    return OneHotBCETerm()


TERM = LossTermEntry(name="bce", summary="multi-label sigmoid BCE on logits with one-hot identity targets "
                                         "(Mancs' attention branch)", build=build, default_label="bce",
                     reads_logits=True)
