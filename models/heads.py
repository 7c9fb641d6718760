"""Heads: global pooling of the backbone map, then the identity classifier.

Both heads return named outputs: ``f_t`` (the pooled feature the metric losses see), ``f_i`` (the
feature used at inference) and, in training mode, ``logits`` for the ID loss. In eval mode the
classifier is skipped, since retrieval only needs features.

``dropout`` > 0 puts standard (inverted) dropout between the feature and the classifier (Geng et
al.'s "basenet → dropout → fc → softmax"); it touches only the logits, never f_t/f_i. At 0 no
module with a random draw is added, so the parameters, the state dict and the random stream are
those of before.

Two options for AGW / fast-reid (default: the BoT head, unchanged):

- ``pool``: the pooling module (``models/pooling.py``; default global average pooling; AGW: GeM;
  part-aligned bilinear pooling, ``models/bilinear.py``). A pool with ``reads_masks`` (bilinear
  pooling with mask parts) gets the batch's part masks: ``head(feature_map, masks=...)``.
- ``classifier="cosine"``: a ``CosineClassifier`` replaces the linear one and the head outputs
  ``cosine`` (cos(f, w_k) for every identity k, B×N) instead of ``logits``; the ``circle`` loss
  term turns those into circle-softmax logits (it needs the labels, which the model never sees).
  It reads what the linear classifier would: f_i (after the BNNeck) or, with the plain head, f_t.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["BNNeckHead", "CLASSIFIERS", "CosineClassifier", "HEADS", "PlainHead", "build_head",
           "global_average_pool", "head_class"]

CLASSIFIERS = ("linear", "cosine")


def global_average_pool(feature_map: torch.Tensor) -> torch.Tensor:
    """B×C×h×w → B×C."""
    return nn.functional.adaptive_avg_pool2d(feature_map, 1).flatten(1)


def _dropout(rate: float) -> nn.Module:
    """Dropout before a classifier; the identity (no random draw at all) at rate 0."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout={rate!r} is not valid: a rate in [0, 1)")
    return nn.Dropout(rate) if rate > 0 else nn.Identity()


class CosineClassifier(nn.Module):
    """cos(f, w_k) = f·w_k / (‖f‖‖w_k‖) for every class k (fast-reid's ``CircleSoftmax`` similarity).

    Weight N×D, no bias, initialised as fast-reid does (``kaiming_uniform_(a=√5)``, which is also
    ``nn.Linear``'s default).
    """

    output = "cosine"

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(nn.functional.normalize(feature), nn.functional.normalize(self.weight))


def _check_classifier(classifier: str) -> None:
    if classifier not in CLASSIFIERS:
        raise ValueError(f"model.classifier={classifier!r} is invalid; valid: {', '.join(CLASSIFIERS)}")


class PlainHead(nn.Module):
    """Baseline head: pooled f → Linear with bias; f is both f_t and f_i.

    The classifier keeps PyTorch's default init, as the BoT reference does without BNNeck.
    ``pool`` replaces global average pooling; ``classifier="cosine"`` outputs ``cosine`` instead
    of ``logits`` (module doc).
    """

    def __init__(self, in_dim: int, num_classes: int, pool: nn.Module | None = None,
                 classifier: str = "linear", dropout: float = 0.0) -> None:
        super().__init__()
        _check_classifier(classifier)
        self.dropout = _dropout(dropout)
        if pool is not None:
            self.pool = pool
        self.output = "logits" if classifier == "linear" else CosineClassifier.output
        self.classifier = nn.Linear(in_dim, num_classes) if classifier == "linear" else CosineClassifier(in_dim,
                                                                                                        num_classes)

    def _pool(self, feature_map: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        pool = getattr(self, "pool", None)
        if getattr(pool, "reads_masks", False):
            return pool(feature_map, masks)
        if masks is not None:  # spec loading refuses data.masks for such a model; a direct call gets this
            raise ValueError("this head does not pool with part masks: drop data.masks (or use model.pool=bilinear "
                             "with model.bilinear_parts=masks)")
        return global_average_pool(feature_map) if pool is None else pool(feature_map)

    def forward(self, feature_map: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        feature = self._pool(feature_map, masks)
        out = {"f_t": feature, "f_i": feature}
        if self.training:
            out[self.output] = self.classifier(self.dropout(feature))
        return out


class BNNeckHead(nn.Module):
    """BNNeck (bot.md "bnneck"): f_t → BatchNorm1d (bias frozen at 0) → f_i → Linear, no bias.

    The frozen BN bias keeps f_i centred so that the ID loss's hyperplanes pass through the
    origin, which suits the cosine ranking used at inference. Classifier init N(0, 0.001²).
    """

    def __init__(self, in_dim: int, num_classes: int, pool: nn.Module | None = None,
                 classifier: str = "linear", dropout: float = 0.0) -> None:
        super().__init__()
        _check_classifier(classifier)
        self.dropout = _dropout(dropout)
        if pool is not None:
            self.pool = pool
        self.bottleneck = nn.BatchNorm1d(in_dim)
        nn.init.ones_(self.bottleneck.weight)
        nn.init.zeros_(self.bottleneck.bias)
        self.bottleneck.bias.requires_grad_(False)
        if classifier == "linear":
            self.output = "logits"
            self.classifier = nn.Linear(in_dim, num_classes, bias=False)
            nn.init.normal_(self.classifier.weight, mean=0.0, std=0.001)
        else:  # reads f_i, as fast-reid's cls_layer reads the BN feature
            self.output = CosineClassifier.output
            self.classifier = CosineClassifier(in_dim, num_classes)

    _pool = PlainHead._pool

    def forward(self, feature_map: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        f_t = self._pool(feature_map, masks)
        f_i = self.bottleneck(f_t)
        out = {"f_t": f_t, "f_i": f_i}
        if self.training:
            out[self.output] = self.classifier(self.dropout(f_i))
        return out


HEADS: dict[str, type[nn.Module]] = {"plain": PlainHead, "bnneck": BNNeckHead}


def head_class(neck: str) -> type[nn.Module]:
    """The head class registered as ``neck``; ``ValueError`` listing the valid names otherwise."""
    if neck not in HEADS:
        raise ValueError(f"model.neck={neck!r} is unknown; valid: {', '.join(sorted(HEADS))}")
    return HEADS[neck]


def build_head(neck: str, in_dim: int, num_classes: int, *, pool: nn.Module | None = None,
               classifier: str = "linear", dropout: float = 0.0) -> nn.Module:
    """Head for ``model.neck`` (``"plain"`` or ``"bnneck"``); ``pool`` None = global average pooling."""
    cls = head_class(neck)
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be ≥ 1 (the number of training identities)")
    return cls(in_dim, num_classes, pool=pool, classifier=classifier, dropout=dropout)
