"""``verif``: Geng et al.'s pairwise verification head (docs/geng.md; seed-systems.md §3).

For pairs of images of the batch: both features → dropout → element-wise difference → FC (D → 2)
→ 2-way softmax → cross-entropy against "same identity" (class 1) / "different" (class 0). The
FC is this term's parameter, trained by the main optimiser (no ``own_optimizer``); PyTorch's
default ``nn.Linear`` init.

Pairs, exactly (``pair_indices``):

1. every unordered pair (i, j) with i < j in batch order is enumerated once; a pair is positive
   when the labels are equal. A P×K batch has P·K(K−1)/2 positives and K²·P(P−1)/2 negatives
   (32×4: 192 and 7936).
2. ``negatives`` N > 0 keeps N negatives drawn uniformly without replacement (fewer than N: all);
   0 keeps every one (the seed: "all positive and negative pairs").
3. ``balance: replicate`` (the seed: "replicate the positive pairs until there are as many as
   negatives"): with p positives and n > p negatives, every positive appears ⌊n/p⌋ times and
   n mod p of them, drawn without replacement, once more — exactly n positive samples. Never
   fewer than enumerated (p ≥ n: unchanged). ``none``: the pairs as enumerated.
4. the loss is the mean cross-entropy over all pair samples (replicated copies count as
   samples, and each draws its own dropout mask).

Dropout (``dropout``, rate ``dropout_rate``, inverted: kept values are scaled by 1/(1−rate)), in
training mode only:

- ``pairwise`` (the seed's pairwise-consistent dropout): one Bernoulli mask m per pair sample,
  applied to both members, ỹ_i = m⊙y_i, ỹ_j = m⊙y_j, so the difference compares the same units
  (computed as m⊙(y_i − y_j), which is the same);
- ``standard``: independent masks for the two members;
- ``none``.

Difference (``difference``): ``relu`` = max(ỹ_i − ỹ_j, 0) (the seed: "element-wise subtraction →
ReLU → FC"; i is the earlier image of the batch), ``abs`` = |ỹ_i − ỹ_j|, ``square`` = (ỹ_i − ỹ_j)².

Every random draw (negatives, the replication remainder, the masks, in this order) comes from
torch's global generator on the features' device, which the training loop seeds at every epoch
start (``seed_epoch``), so a resumed run replays them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from reidbench.models.terms import LossTermEntry, TermContext

DIFFERENCES = ("relu", "abs", "square")
DROPOUTS = ("none", "standard", "pairwise")
BALANCES = ("replicate", "none")


@dataclass(frozen=True)
class VerifParams:
    difference: str = "relu"  # relu | abs | square of the element-wise difference
    dropout: str = "pairwise"  # none | standard | pairwise (the same mask on both members of a pair)
    dropout_rate: float = 0.5  # not given by the seed: nn.Dropout's default rate (docs/geng.md)
    balance: str = "replicate"  # replicate positives up to the number of negatives | none
    negatives: int = 0  # 0: every negative pair of the batch; N > 0: N of them, drawn at random

    def validate(self, where: str) -> None:
        if self.difference not in DIFFERENCES:
            raise ValueError(f"{where}.difference={self.difference!r} is not valid: {', '.join(DIFFERENCES)}")
        if self.dropout not in DROPOUTS:
            raise ValueError(f"{where}.dropout={self.dropout!r} is not valid: {', '.join(DROPOUTS)}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"{where}.dropout_rate={self.dropout_rate!r} is not valid: a rate in [0, 1)")
        if self.dropout == "none" and self.dropout_rate != VerifParams.dropout_rate:
            # One spelling per model: a rate that is never read must not make another run hash.
            raise ValueError(f"{where}.dropout_rate={self.dropout_rate!r} is only read with {where}.dropout "
                             "standard or pairwise, not none; drop it")
        if self.balance not in BALANCES:
            raise ValueError(f"{where}.balance={self.balance!r} is not valid: {', '.join(BALANCES)}")
        if self.negatives < 0:
            raise ValueError(f"{where}.negatives={self.negatives!r} is not valid: an integer >= 0 (0 = all)")


def pair_indices(labels: torch.Tensor, negatives: int = 0, balance: str = "replicate"
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(first, second, same) of every pair sample of a batch with these ``labels`` (module doc, 1-3).

    ``first[k] < second[k]`` index the batch; ``same[k]`` is 1 for a positive pair, 0 otherwise.
    Positive samples come first.
    """
    n = labels.numel()
    device = labels.device
    first, second = torch.triu_indices(n, n, offset=1, device=device)
    same = labels[first] == labels[second]
    pos = same.nonzero().squeeze(1)
    neg = (~same).nonzero().squeeze(1)
    if 0 < negatives < neg.numel():
        neg = neg[torch.randperm(neg.numel(), device=device)[:negatives]]
    if balance == "replicate" and 0 < pos.numel() < neg.numel():
        copies, extra = divmod(neg.numel(), pos.numel())
        pos = torch.cat([pos.repeat(copies), pos[torch.randperm(pos.numel(), device=device)[:extra]]])
    chosen = torch.cat([pos, neg])
    target = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])
    return first[chosen], second[chosen], target


def _dropout_mask(like: torch.Tensor, rate: float) -> torch.Tensor:
    """Inverted-dropout multipliers shaped like ``like``: 1/(1−rate) with probability 1−rate, else 0.

    ``rand < keep`` is a Bernoulli(keep) draw; it is used rather than ``bernoulli_`` because on CPU
    it is about twice as fast, and this mask (pair samples × feature width, 20 M entries for a
    32×4 batch of 1280-d features) dominated the term's time.
    """
    keep = 1.0 - rate
    return (torch.rand_like(like) < keep).to(like.dtype).mul_(1.0 / keep)


def pair_dropout(a: torch.Tensor, b: torch.Tensor, kind: str, rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverted dropout on the two members of each pair (row k of ``a`` and ``b``): one mask for
    both (``pairwise``), one each (``standard``) or none."""
    if kind == "none" or rate == 0.0:
        return a, b
    mask = _dropout_mask(a, rate)
    if kind == "pairwise":
        return a * mask, b * mask
    if kind == "standard":
        return a * mask, b * _dropout_mask(b, rate)
    raise ValueError(f"dropout={kind!r} is not valid: {', '.join(DROPOUTS)}")


def pair_difference(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    return difference_of(a - b, kind)


def difference_of(delta: torch.Tensor, kind: str) -> torch.Tensor:
    """The ``difference`` option applied to ỹ_i − ỹ_j."""
    if kind == "relu":
        return torch.relu(delta)
    if kind == "abs":
        return delta.abs()
    if kind == "square":
        return delta.pow(2)
    raise ValueError(f"difference={kind!r} is not valid: {', '.join(DIFFERENCES)}")


class VerificationTerm(nn.Module):
    def __init__(self, feat_dim: int, params: VerifParams) -> None:
        super().__init__()
        self.fc = nn.Linear(feat_dim, 2)
        self.params = params

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        p = self.params
        first, second, target = pair_indices(labels, p.negatives, p.balance)
        dropout = p.dropout if self.training and p.dropout_rate > 0 else "none"
        if dropout == "standard":  # two masks: the members must be masked apart
            a, b = pair_dropout(features[first], features[second], "standard", p.dropout_rate)
            delta = a - b
        else:
            # one mask m (or none) on both members: m⊙y_i − m⊙y_j = m⊙(y_i − y_j), one pass less
            # over the pair samples × width tensors (the term's whole cost)
            delta = features[first] - features[second]
            if dropout == "pairwise":
                delta = delta * _dropout_mask(delta, p.dropout_rate)
        logits = self.fc(difference_of(delta, p.difference))
        return F.cross_entropy(logits, target)


def build(context: TermContext) -> nn.Module:
    if context.input_dim is None:
        raise ValueError("loss term verif needs a feature output with a known width (e.g. reads: f_t)")
    return VerificationTerm(context.input_dim, context.params)


TERM = LossTermEntry(name="verif", summary="Geng et al.'s verification head: pair difference -> FC -> 2-way "
                                           "softmax CE, positives replicated, pairwise-consistent dropout",
                     build=build, params=VerifParams)
