"""Losses with the BoT reference semantics (bot.md "Other semantics" and "center").

- ``id_loss``: cross-entropy with optional label smoothing (the "ls" trick).
- ``TripletLoss``: batch-hard triplet on un-normalised features, Euclidean (not squared) distance;
  with ``mining="weighted"`` AGW's weighted regularised triplet (``weighted_example_mining``).
- ``CenterLoss``: squared distance to learnable class centres, with the reference's separate
  centre optimiser (``build_center_optimizer`` + ``center_sgd_step``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "CenterLoss",
    "TripletLoss",
    "build_center_optimizer",
    "center_sgd_step",
    "euclidean_distances",
    "id_loss",
    "WRT_WEIGHTS",
    "exact_softmax_weights",
    "softmax_weights",
    "weighted_example_mining",
]


def id_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy against (1−ε)·onehot + ε/N targets; ε=0 is plain cross-entropy."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1)")
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def euclidean_distances(features: torch.Tensor) -> torch.Tensor:
    """B×B matrix sqrt(clamp(‖a‖² + ‖b‖² − 2a·b, min=1e-12)), as the reference computes it.

    The clamp keeps sqrt's gradient finite; it also makes an item's distance to itself ≈ 1e-6.
    Half-precision features (autocast) are promoted to float32: ‖a‖²+‖b‖²−2a·b cancels badly
    in float16 and would overflow for un-normalised 2048-d features.
    """
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    squared_norms = features.pow(2).sum(dim=1)
    squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * features @ features.t()
    return squared.clamp(min=1e-12).sqrt()


def softmax_weights(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """AGW's / fast-reid's ``softmax_weights``: a softmax of ``values`` over the entries where ``mask`` is 1.

    Exactly the reference's arithmetic, quirks included: the shift is the row maximum of
    ``values * mask`` (the masked-out entries count as 0 there, so for negated distances the shift
    is 0, not the largest kept value) and the normaliser gets ``+ 1e-6``. With un-normalised
    features and large distances (exp(−d) summed over the negatives below ~1e-5, i.e. d ≳ 15) the
    negative weights therefore sum to noticeably less than 1 — as in the published code.
    """
    max_v = torch.max(values * mask, dim=1, keepdim=True)[0]
    diff = values - max_v
    z = torch.sum(torch.exp(diff) * mask, dim=1, keepdim=True) + 1e-6
    return torch.exp(diff) * mask / z


def exact_softmax_weights(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A true softmax of ``values`` over the entries where ``mask`` is 1 (the masked-out entries get
    weight 0 and every row with a kept entry sums to exactly 1; a row without one is all zeros).

    This is what ``softmax_weights`` is meant to compute. It differs from the reference whenever
    the reference's shift (the maximum of ``values * mask``) is not the maximum of the kept values,
    i.e. for the negatives' −d_an: there the reference's weights sum to Σ exp(−d_an) / (Σ exp(−d_an)
    + 1e-6), which vanishes once the negatives are ≳ 15 apart.
    """
    keep = mask.bool()
    logits = values.masked_fill(~keep, float("-inf"))
    # a row with nothing kept would be softmax of all −inf = NaN: give it zeros instead
    has_any = keep.any(dim=1, keepdim=True)
    weights = torch.softmax(logits.masked_fill(~has_any, 0.0), dim=1)
    return weights * keep.to(weights.dtype)


# How WRT's softmax weights are computed: "reference" reproduces AGW's / fast-reid's
# ``softmax_weights`` (quirk included, the default: the published numbers come from it); "exact"
# is a true masked softmax. See docs/agw.md.
WRT_WEIGHTS = {"reference": softmax_weights, "exact": exact_softmax_weights}


def weighted_example_mining(distances: torch.Tensor, same_label: torch.Tensor, weights: str = "reference"
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ w_ap·d_ap, Σ w_an·d_an) per anchor: softmax weights of d_ap over its positives (itself
    included, as the reference's mask is) and of −d_an over its negatives (AGW's WRT).

    ``weights`` names the softmax (``WRT_WEIGHTS``): the reference's arithmetic or the exact one.
    """
    if weights not in WRT_WEIGHTS:
        raise ValueError(f"triplet weights={weights!r} is invalid; valid: {', '.join(WRT_WEIGHTS)}")
    softmax = WRT_WEIGHTS[weights]
    is_pos = same_label.to(distances.dtype)
    is_neg = (~same_label).to(distances.dtype)
    dist_ap = distances * is_pos
    dist_an = distances * is_neg
    weights_ap = softmax(dist_ap, is_pos)
    weights_an = softmax(-dist_an, is_neg)
    return (dist_ap * weights_ap).sum(dim=1), (dist_an * weights_an).sum(dim=1)


MINING = ("hard", "weighted")


class TripletLoss(nn.Module):
    """Batch-hard (or AGW's weighted) triplet loss.

    For each anchor: hardest positive = max distance over items with its label, the anchor itself
    included (so an identity seen once gets d_ap ≈ 1e-6); hardest negative = min distance over
    other labels. With a margin m: mean(relu(d_ap − d_an + m)); with ``margin=None``: the soft
    margin mean(softplus(d_ap − d_an)). An anchor without any negative contributes 0.
    Selection uses masks (masked_fill + max/min), so gradients flow to the chosen pairs.

    ``mining="weighted"`` replaces the hardest positive and negative by softmax-weighted averages
    (``weighted_example_mining``); with ``margin=None`` that is AGW's weighted regularised triplet
    (WRT), SoftMargin(Σ w_an·d_an − Σ w_ap·d_ap), which has no margin parameter. ``weights``
    picks the reference's softmax arithmetic or the exact one (``WRT_WEIGHTS``; weighted only).
    """

    def __init__(self, margin: float | None = 0.3, mining: str = "hard", weights: str = "reference") -> None:
        super().__init__()
        if margin is not None and margin < 0:
            raise ValueError(f"triplet margin={margin} must be ≥ 0 or None (soft margin)")
        if mining not in MINING:
            raise ValueError(f"triplet mining={mining!r} is invalid; valid: {', '.join(MINING)}")
        if weights not in WRT_WEIGHTS:
            raise ValueError(f"triplet weights={weights!r} is invalid; valid: {', '.join(WRT_WEIGHTS)}")
        self.margin = margin
        self.mining = mining
        self.weights = weights

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        distances = euclidean_distances(features)
        same_label = labels[:, None] == labels[None, :]
        if self.mining == "weighted":
            hardest_positive, hardest_negative = weighted_example_mining(distances, same_label, self.weights)
        else:
            hardest_positive = distances.masked_fill(~same_label, float("-inf")).max(dim=1).values
            hardest_negative = distances.masked_fill(same_label, float("inf")).min(dim=1).values
        gap = hardest_positive - hardest_negative
        if self.margin is None:
            return F.softplus(gap).mean()
        return F.relu(gap + self.margin).mean()


class CenterLoss(nn.Module):
    """mean over the batch of ‖f_b − c_{y_b}‖² (no ½), centres c ~ N(0, 1) of shape N×D."""

    def __init__(self, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (features - self.centers[labels]).pow(2).sum(dim=1).mean()


def build_center_optimizer(center_loss: CenterLoss, lr: float = 0.5) -> torch.optim.SGD:
    """The centres' own optimiser: plain SGD (no momentum, no decay) that no LR schedule touches."""
    return torch.optim.SGD(center_loss.parameters(), lr=lr, momentum=0.0, weight_decay=0.0)


def center_sgd_step(center_loss: CenterLoss, optimizer: torch.optim.Optimizer, center_weight: float) -> None:
    """Step the centres as the reference does: undo the loss weight β on their gradient first.

    The total loss contains β·CenterLoss, so after ``backward()`` the centres' gradient is
    β·(−2/B)·Σ_{y_b=k}(f_b − c_k). Multiplying it by 1/β and stepping plain SGD with lr 0.5 gives
    c_k ← c_k + (1/B)·Σ_{y_b=k}(f_b − c_k), independent of β. Call after ``backward()``; the
    caller zeroes the gradients as for any optimiser. The centres must not also be in the model's
    optimiser, or they would be stepped twice.
    """
    if center_weight <= 0:
        raise ValueError(f"center_weight={center_weight} must be > 0")
    for parameter in center_loss.parameters():
        if parameter.grad is not None:
            parameter.grad.mul_(1.0 / center_weight)
    optimizer.step()
