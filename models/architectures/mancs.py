"""``mancs``: Mancs (Wang et al., ECCV 2018; seed-systems.md §2, seed note 002), as the seed note lays it out.

Layout. One shared backbone (ResNet-50 in the paper) with fully attentional blocks (FAB,
models/attention.py) after the last block of ``fab_stages`` and, with ``prelu``, a PReLU in
place of the ReLU of its last conv layer (models/activation.py). Its final map is pooled once
(``pool``: avg by default; the seed says "a pooling layer") into ``f_pooled`` and feeds three
task branches:

- rank branch: ``f_rank = Linear(f_pooled)`` (``rank_dim``) — the triplet term's input and the
  test feature ("the rank branch's feature generalises better", seed §3.7);
- classification branch: ``f_cls = Linear(f_pooled)`` (``cls_dim`` = 2048: "the 2048-d FC before
  the classification layer", seed §4.3), then ``logits = Linear(f_cls)`` (focal loss);
- attention branch (``fab_supervision``): ``f_att`` = the average-pooled ``F·M`` of every FAB,
  concatenated, and ``logits_att = Linear(f_att)`` (multi-label BCE, λ_att 0.2).

No BN, ReLU or dropout between the FCs (the seed names none). Every new layer has PyTorch's
default init. ``logits`` and ``logits_att`` exist in training mode only.

Options (``MancsParams``, written flat in the ``model`` section; defaults = the seed's reading):
``fab`` true, ``fab_stages`` [stage2, stage3, stage4] ("after several stages", reference [U]:
res3/res4/res5 = the last three), ``fab_reduction`` 16 (unstated; SE's r), ``fab_supervision``
true, ``prelu`` true, ``pool`` avg | max, ``rank_dim`` 2048 (unstated), ``cls_dim`` 2048.
The same ``fab*``/``prelu`` fields exist on ``bot`` (BotParams), so the ``fab`` trick and a
PReLU also run there. Generic model fields read: backbone, pretrained, weights_path, last_stride.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reidbench.models.architectures import Architecture

__all__ = ["ARCH", "Mancs", "MancsParams", "apply_backbone_options", "build", "check_fab_fields"]

STAGES = ("stage1", "stage2", "stage3", "stage4")
LAST_THREE = ("stage2", "stage3", "stage4")
POOLS = ("avg", "max")


def check_fab_fields(params: Any, where: str) -> None:
    """The FAB/PReLU fields shared by bot and mancs: valid values, and no FAB detail without a FAB."""
    stages = list(params.fab_stages)
    if not stages or any(s not in STAGES for s in stages) or stages != sorted(set(stages)):
        raise ValueError(f"{where}.fab_stages={stages} is invalid; valid: a non-empty increasing subset of "
                         f"{list(STAGES)} (stage4 = ResNet layer4)")
    if params.fab_reduction < 1:
        raise ValueError(f"{where}.fab_reduction={params.fab_reduction!r} is invalid; valid: an integer >= 1")
    if not params.fab:
        defaults = type(params)()
        for name in ("fab_stages", "fab_reduction", "fab_supervision"):
            if getattr(params, name) != getattr(defaults, name):
                raise ValueError(f"{where}.{name} is only read with {where}.fab=true; drop it or set fab: true")


def apply_backbone_options(backbone: nn.Module, params: Any) -> list[nn.Module]:
    """PReLU (first, on the plain backbone), then the FABs; returns the new modules (for ``new``)."""
    from reidbench.models.activation import replace_last_activation
    from reidbench.models.attention import insert_fabs

    new: list[nn.Module] = []
    if params.prelu:
        new.append(replace_last_activation(backbone)[1])
    if params.fab:
        new.extend(block for _, block, _ in insert_fabs(backbone, params.fab_stages, params.fab_reduction))
    return new


@dataclass(frozen=True)
class MancsParams:
    fab: bool = True
    fab_stages: tuple[str, ...] = LAST_THREE
    fab_reduction: int = 16
    fab_supervision: bool = True
    prelu: bool = True
    pool: str = "avg"
    rank_dim: int = 2048
    cls_dim: int = 2048

    def validate(self, where: str = "model") -> None:
        check_fab_fields(self, where)
        if self.pool not in POOLS:
            raise ValueError(f"{where}.pool={self.pool!r} is invalid; valid: {' or '.join(POOLS)}")
        for name in ("rank_dim", "cls_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{where}.{name}={getattr(self, name)!r} is invalid; valid: an integer >= 1")


class Mancs(nn.Module):
    """Backbone (+FABs, PReLU) → pool → rank FC / cls FC → classifier; + attention head (see the module doc)."""

    def __init__(self, backbone: nn.Module, channels: int, num_classes: int, params: MancsParams) -> None:
        super().__init__()
        from reidbench.models.attention import AttentionSupervision

        self.params = params
        self.backbone = backbone
        self.rank_fc = nn.Linear(channels, params.rank_dim)
        self.cls_fc = nn.Linear(channels, params.cls_dim)
        self.classifier = nn.Linear(params.cls_dim, num_classes)
        self.attention = AttentionSupervision(backbone, num_classes) if params.fab and params.fab_supervision else None
        self.feature_dims = {"f_pooled": channels, "f_rank": params.rank_dim, "f_cls": params.cls_dim}
        if self.attention is not None:
            self.feature_dims["f_att"] = self.attention.dim
        self.test_feature = "f_rank"

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feature_map = self.backbone(images)
        pooled = feature_map.mean(dim=(2, 3)) if self.params.pool == "avg" else feature_map.amax(dim=(2, 3))
        out = {"f_pooled": pooled, "f_rank": self.rank_fc(pooled), "f_cls": self.cls_fc(pooled)}
        if self.training:
            out["logits"] = self.classifier(out["f_cls"])
        if self.attention is not None:
            out.update(self.attention(self.backbone))
        return out


def exact_groups(net: nn.Module, new_in_backbone: list[nn.Module], heads: tuple[str, ...]
                 ) -> dict[str, tuple[str, ...]]:
    """``pretrained`` = the backbone minus the modules added inside it; ``new`` = those + the heads."""
    from reidbench.models.groups import module_names, prefixes_excluding

    inside = tuple(module_names(net, new_in_backbone))
    return {"backbone": ("backbone",), "head": heads, "pretrained": prefixes_excluding(net, "backbone", inside),
            "new": (*heads, *inside)}


def build(model: Any, num_classes: int) -> Mancs:
    from reidbench.models.architectures import arch_params
    from reidbench.models.backbones import build_backbone

    params: MancsParams = arch_params(model)
    backbone, channels = build_backbone(model.backbone, pretrained=model.pretrained, weights_path=model.weights_path,
                                        last_stride=model.last_stride)
    # After the pretrained weights are in: the wrapped names no longer match an ImageNet state dict.
    new = apply_backbone_options(backbone, params)
    net = Mancs(backbone, channels, num_classes, params)
    heads = ("rank_fc", "cls_fc", "classifier") + (("attention",) if net.attention is not None else ())
    net.module_groups = exact_groups(net, new, heads)
    info = backbone.reid_info
    net.reid_info = {
        "backbone": model.backbone, "source": info.get("source"), "pretrained_source": info.get("pretrained_source"),
        "pretrained_digest": info.get("pretrained_digest"),
        "last_stride": model.last_stride, "unstrided": info.get("unstrided", []),
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(params).items()},
        "inserted": [n for n in net.module_groups["new"] if n.startswith("backbone.")],
        "test_feature": "f_rank",
    }
    return net


ARCH = Architecture(name="mancs", summary="Mancs: backbone + FABs (+PReLU) → rank FC (f_rank, test) / 2048 cls FC "
                                          "(logits) / attention head (f_att, logits_att)",
                    build=build, params=MancsParams,
                    model_fields=("backbone", "pretrained", "weights_path", "last_stride"))
