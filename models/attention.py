"""Mancs' fully attentional blocks (FAB) and their deep supervision (seed-systems.md §2, seed 002).

FAB. ``M = sigmoid(conv1x1(ReLU(conv1x1(F))))``: an SE block without the global pooling, so the
mask M has F's shape (channel and spatial attention at once); the block outputs ``F·M + F``. The
first conv reduces the channels by ``reduction`` (at least one channel is kept), the second
restores them; both have a bias and PyTorch's default init (the seed gives neither).

Placement. ``insert_fabs`` puts one block after the *last* block of each chosen stage
(models/stages.py: ``stage1`` … ``stage4`` = ResNet ``layer1`` … ``layer4``; the same on
MobileNetV2 and EfficientNet-Lite0), after the pretrained weights are loaded.

Deep supervision. The seed pools "the attention maps (the feature maps multiplied by the
attention mask)", i.e. ``F·M`` of every block, averages each over its positions, concatenates
them (``f_att``) and feeds a multi-label sigmoid identity classifier (``logits_att``) trained with
BCE against one-hot targets (the ``bce`` loss term). The classifier is part of the model (every
classifier here is; a loss term reads its logits). A FAB keeps its last ``F·M`` for that head
while ``keep_attended`` is set; ``AttentionSupervision.forward`` takes it (and drops the block's
reference, so no graph outlives the step). f_att is an output in eval mode too (a feature one
may evaluate); logits_att only in training.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["AttentionSupervision", "FullyAttentionalBlock", "fabs_of", "insert_fabs"]


class FullyAttentionalBlock(nn.Module):
    """``F ↦ F·M + F`` with ``M = sigmoid(expand(ReLU(reduce(F))))`` (1×1 convs, no pooling)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"FullyAttentionalBlock: channels={channels} and reduction={reduction} must be >= 1")
        hidden = max(1, channels // reduction)
        self.reduce = nn.Conv2d(channels, hidden, kernel_size=1)
        self.expand = nn.Conv2d(hidden, channels, kernel_size=1)
        self.keep_attended = False
        self.attended: torch.Tensor | None = None

    def mask(self, feature_map: torch.Tensor) -> torch.Tensor:
        """M, the same shape as the input."""
        return torch.sigmoid(self.expand(F.relu(self.reduce(feature_map))))

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        attended = feature_map * self.mask(feature_map)
        if self.keep_attended:
            self.attended = attended
        return attended + feature_map

    def take_attended(self) -> torch.Tensor:
        """The last forward's ``F·M`` (for the deep supervision head), forgotten once taken."""
        if self.attended is None:
            raise RuntimeError("FullyAttentionalBlock: no attended map kept (keep_attended off, or no forward yet)")
        attended, self.attended = self.attended, None
        return attended


def insert_fabs(backbone: nn.Module, stages: Sequence[str], reduction: int, where: str = "model.fab_stages"
                ) -> list[tuple[str, FullyAttentionalBlock, int]]:
    """One FAB after the last block of each stage in ``stages``: [(inserted module name, block, channels)]."""
    from reidbench.models.stages import backbone_stages, insert_after, stage_by_name

    infos = backbone_stages(backbone)
    chosen = [stage_by_name(infos, s, where) for s in stages]
    inserted = []
    for stage in chosen:
        block = FullyAttentionalBlock(stage.channels, reduction)
        name = insert_after(backbone, stage.blocks[-1], block)
        inserted.append((name, block, stage.channels))
    return inserted


def fabs_of(backbone: nn.Module) -> list[FullyAttentionalBlock]:
    """The FABs inside ``backbone`` in registration order (= forward order for the supported layouts)."""
    return [m for m in backbone.modules() if isinstance(m, FullyAttentionalBlock)]


class AttentionSupervision(nn.Module):
    """``f_att`` = concat of the average-pooled ``F·M`` of each FAB; ``logits_att`` = Linear(f_att) in training.

    The blocks live in the backbone; ``forward(backbone)`` finds them there (so a deep copy of
    the model needs no bookkeeping) and takes the maps they kept.
    """

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        blocks = fabs_of(backbone)
        if not blocks:
            raise ValueError("attention supervision needs at least one fully attentional block")
        for block in blocks:
            block.keep_attended = True
        self.dim = int(sum(b.expand.out_channels for b in blocks))
        self.classifier = nn.Linear(self.dim, num_classes)

    def forward(self, backbone: nn.Module) -> dict[str, torch.Tensor]:
        pooled = [block.take_attended().mean(dim=(2, 3)) for block in fabs_of(backbone)]
        out = {"f_att": torch.cat(pooled, dim=1)}
        if self.training:
            out["logits_att"] = self.classifier(out["f_att"])
        return out
