"""``circle``: fast-reid's circle-softmax identity loss on a cosine classifier's similarities.

It reads a model's ``cosine`` output(s) — cos(f, w_k) for every training identity k, produced
by a head built with ``model.classifier: cosine`` — and needs the labels, which is why the
margins live in a loss term and not in the model. With s = ``scale`` (64) and m = ``margin``
(0.35), for a sample of identity y and a similarity s_k to class k (fast-reid
``layers/circle_softmax.py``, the ``CircleSoftmax`` of its SBS config; seed-systems.md §6):

    α_p = [1 + m − s_y]₊,  α_n = [s_k + m]₊   (both computed on detached similarities)
    logit_y = s·α_p·(s_y − (1 − m)),   logit_k = s·α_n·(s_k − m)  for k ≠ y

then cross-entropy with label smoothing ε (``label_smoothing``; the ``circle`` trick carries the
replaced ``ce`` term's ε over, 0.1 on a base with ``ls``). reidbench's smoothing is BoT's
(1 − ε)·onehot + ε/N (``models/losses.id_loss``); fast-reid's own is 1 − ε on the target and
ε/(N − 1) elsewhere — a difference of ε/N on the target, 0.00013 for Market's 751 identities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from reidbench.models.losses import id_loss
from reidbench.models.terms import LossTermEntry, TermContext

__all__ = ["CircleParams", "CircleSoftmaxTerm", "TERM", "circle_logits"]


@dataclass(frozen=True)
class CircleParams:
    scale: float = 64.0  # fast-reid MODEL.HEADS.SCALE (SBS)
    margin: float = 0.35  # fast-reid MODEL.HEADS.MARGIN (SBS)
    label_smoothing: float = 0.0

    def validate(self, where: str) -> None:
        if not self.scale > 0:
            raise ValueError(f"{where}.scale={self.scale!r} is not valid: a value > 0")
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"{where}.margin={self.margin!r} is not valid: a value in [0, 1)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"{where}.label_smoothing={self.label_smoothing!r} is not valid: a value in [0, 1)")


def circle_logits(cosine: torch.Tensor, labels: torch.Tensor, scale: float, margin: float) -> torch.Tensor:
    """B×N circle-softmax logits from B×N cosine similarities (module doc)."""
    alpha_p = torch.clamp_min(-cosine.detach() + 1 + margin, 0.0)
    alpha_n = torch.clamp_min(cosine.detach() + margin, 0.0)
    s_p = scale * alpha_p * (cosine - (1 - margin))
    s_n = scale * alpha_n * (cosine - margin)
    target = F.one_hot(labels, num_classes=cosine.shape[1]).to(cosine.dtype)
    return target * s_p + (1.0 - target) * s_n


class CircleSoftmaxTerm(nn.Module):
    def __init__(self, scale: float, margin: float, label_smoothing: float) -> None:
        super().__init__()
        self.scale, self.margin, self.label_smoothing = scale, margin, label_smoothing

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return id_loss(circle_logits(cosine, labels, self.scale, self.margin), labels, self.label_smoothing)


def build(context: TermContext) -> nn.Module:
    p = context.params
    return CircleSoftmaxTerm(p.scale, p.margin, p.label_smoothing)


TERM = LossTermEntry(name="circle", summary="circle-softmax identity loss (s=64, m=0.35) on a cosine classifier's "
                                            "similarities (reads cosine outputs)",
                     build=build, params=CircleParams, default_label="id", reads_logits=True)
