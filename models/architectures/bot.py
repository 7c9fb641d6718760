"""``bot``: backbone → global average pooling → plain or BNNeck head (the Bag of Tricks model).

Outputs ``f_t`` (pooled, what the metric losses see), ``f_i`` (after the BNNeck; equal to f_t
with the plain head) and, in training, ``logits``. The test feature is ``f_i`` with the BNNeck,
``f_t`` without, as the reference evaluates.

Options (``BotParams``, written flat in the ``model`` section). Every default builds the BoT model
exactly as before the options existed — same modules, same weights for a seed, same hashes — so no
stored run changes.

- ``dropout`` (Geng et al., docs/geng.md): standard dropout with this rate between the feature and
  the identity classifier (f_t with the plain head, f_i with the BNNeck); only the logits see it.

Mancs' blocks (models/architectures/mancs.py, docs/mancs.md), usable on bot:

- ``fab`` (false): fully attentional blocks after the last block of ``fab_stages`` (stage2..4),
  channel reduction ``fab_reduction`` (16); with ``fab_supervision`` (true) the model also
  outputs ``f_att`` and, in training, ``logits_att`` (the attention branch; a ``bce`` term reads it).
- ``prelu`` (false): PReLU in place of the backbone's last ReLU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from reidbench.models.architectures import Architecture
from reidbench.models.architectures.mancs import LAST_THREE, apply_backbone_options, check_fab_fields, exact_groups
from reidbench.models.build import ReidModel


@dataclass(frozen=True)
class BotParams:
    # --- Geng et al. ---
    dropout: float = 0.0  # rate of the standard dropout before the identity classifier (0 = none)
    # --- Mancs ---
    fab: bool = False
    fab_stages: tuple[str, ...] = LAST_THREE
    fab_reduction: int = 16
    fab_supervision: bool = True
    prelu: bool = False

    def validate(self, where: str = "model") -> None:
        if isinstance(self.dropout, bool) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{where}.dropout={self.dropout!r} is invalid; valid: a rate in [0, 1)")
        check_fab_fields(self, where)


class AttentiveReidModel(ReidModel):
    """ReidModel + the FABs' deep-supervision head: adds ``f_att`` (and ``logits_att`` in training)."""

    def __init__(self, net: ReidModel, attention: Any) -> None:
        super().__init__(net.backbone, net.head, net.feat_dim, net.reid_info)
        self.attention = attention

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.head(self.backbone(images))
        out.update(self.attention(self.backbone))
        return out


def build(model: Any, num_classes: int):
    from reidbench.models.architectures import arch_params
    from reidbench.models.attention import AttentionSupervision
    from reidbench.models.build import build_model

    params: BotParams = arch_params(model)
    net = build_model(model.backbone, num_classes=num_classes, neck=model.neck, last_stride=model.last_stride,
                      pretrained=model.pretrained, weights_path=model.weights_path, dropout=params.dropout)
    # Inserted after the pretrained weights are loaded (and after the head, so the head's init is unchanged).
    new = apply_backbone_options(net.backbone, params)
    heads: tuple[str, ...] = ("head",)
    if params.fab and params.fab_supervision:
        net = AttentiveReidModel(net, AttentionSupervision(net.backbone, num_classes))
        heads = ("head", "attention")
    net.feature_dims = {"f_t": net.feat_dim, "f_i": net.feat_dim}
    if params.fab and params.fab_supervision:
        net.feature_dims["f_att"] = net.attention.dim
    net.test_feature = "f_i" if model.neck == "bnneck" else "f_t"
    if new or heads != ("head",):
        net.module_groups = exact_groups(net, new, heads)
        inserted = [n for n in net.module_groups["new"] if n.startswith("backbone.")]
        net.reid_info = {**net.reid_info, "inserted": inserted}
    else:
        net.module_groups = {"backbone": ("backbone",), "head": ("head",), "pretrained": ("backbone",),
                             "new": ("head",)}
    if params.dropout:  # recorded only when set, so the stored description of a BoT model is unchanged
        net.reid_info["classifier_dropout"] = params.dropout
    return net


ARCH = Architecture(name="bot", summary="backbone + global average pooling + plain or BNNeck head (f_t, f_i, logits)",
                    build=build, params=BotParams)
