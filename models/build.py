"""``build_model``: backbone + head from plain arguments (the spec builder calls it)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from reidbench.models.backbones import build_backbone
from reidbench.models.heads import build_head, head_class

__all__ = ["ReidModel", "build_model"]


class ReidModel(nn.Module):
    """Backbone → head. ``forward`` returns {"f_t", "f_i"} and, in training, "logits".

    ``feat_dim`` is the width of f_t/f_i; ``reid_info`` describes what was built (backbone name,
    library, stem ReLU, last stride, unstrided modules, pretrained source, neck) for the DB.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, feat_dim: int, reid_info: dict[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.feat_dim = feat_dim
        self.reid_info = reid_info

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        # ``masks``: part masks for a head whose pool reads them (bilinear pooling with mask parts).
        feature_map = self.backbone(images)
        return self.head(feature_map) if masks is None else self.head(feature_map, masks=masks)


def build_model(
    backbone: str,
    num_classes: int,
    neck: str = "plain",
    last_stride: int = 2,
    pretrained: bool = True,
    weights_path: str | None = None,
    *,
    stem_relu: bool = True,
    dropout: float = 0.0,
    pool: nn.Module | Callable[[int], nn.Module] | None = None,
    classifier: str = "linear",
) -> ReidModel:
    """Build a ReidModel.

    ``backbone``: a name in ``BACKBONES`` or ``"timm:<name>"``; ``num_classes``: training
    identities; ``neck``: ``"plain"`` or ``"bnneck"``; ``last_stride``: 2, or 1 for the "stride"
    trick; ``pretrained``/``weights_path``: ImageNet start (offline, see ``pretrained.py``);
    ``stem_relu=False`` reproduces the reference ResNet stem without ReLU; ``dropout``: standard
    dropout before the identity classifier (0 = none, the default); ``pool`` (None: global average
    pooling) and ``classifier`` (``linear`` or ``cosine``) are the head's (``heads.py``). ``pool`` may
    also be a factory ``channels -> module`` (bilinear pooling needs the backbone's channel count);
    a module with ``out_dim`` sets the feature width (else the backbone's channels).
    """
    head_class(neck)  # fail on a bad neck name before the (slow) backbone build
    net, feat_dim = build_backbone(backbone, pretrained=pretrained, weights_path=weights_path,
                                   last_stride=last_stride, stem_relu=stem_relu)
    if pool is not None and not isinstance(pool, nn.Module):
        pool = pool(feat_dim)
    feat_dim = getattr(pool, "out_dim", feat_dim)
    head = build_head(neck, feat_dim, num_classes, pool=pool, classifier=classifier, dropout=dropout)
    reid_info = dict(net.reid_info)
    reid_info["neck"] = neck
    return ReidModel(net, head, feat_dim, reid_info)
