"""The training objective as named, weighted loss terms (id, triplet, center)."""

from __future__ import annotations

import torch
from torch import nn

from reidbench.models.losses import CenterLoss, TripletLoss, id_loss


class BotObjective(nn.Module):
    """Sum of terms the reference uses. The ID loss sees the logits (from f_i with BNNeck, f
    without); the triplet and center losses see f_t, the feature before the BNNeck."""

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        id_weight: float = 1.0,
        label_smoothing: float = 0.0,
        triplet_weight: float = 1.0,
        triplet_margin: float | None = 0.3,
        center_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.id_weight = id_weight
        self.label_smoothing = label_smoothing
        self.triplet_weight = triplet_weight
        self.center_weight = center_weight
        self.triplet = TripletLoss(margin=triplet_margin) if triplet_weight > 0 else None
        self.center_loss = CenterLoss(num_classes, feat_dim) if center_weight > 0 else None

    def forward(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        if self.id_weight > 0:
            terms["id"] = self.id_weight * id_loss(outputs["logits"], labels, self.label_smoothing)
        if self.triplet is not None:
            terms["triplet"] = self.triplet_weight * self.triplet(outputs["f_t"], labels)
        if self.center_loss is not None:
            terms["center"] = self.center_weight * self.center_loss(outputs["f_t"], labels)
        return terms
