"""``bot``: backbone → global pooling → plain or BNNeck head (the Bag of Tricks model).

Outputs ``f_t`` (pooled, what the metric losses see), ``f_i`` (after the BNNeck; equal to f_t
with the plain head) and, in training, ``logits``. The test feature is ``f_i`` with the BNNeck,
``f_t`` without, as the reference evaluates.

Options (``BotParams``, written flat in the ``model`` section). Every default builds the BoT model
exactly as before the options existed — same modules, same weights for a seed, same hashes — so no
stored run changes.

Geng et al. (docs/geng.md):

- ``dropout``: standard dropout with this rate between the feature and the identity classifier
  (f_t with the plain head, f_i with the BNNeck); only the logits see it.

Mancs' blocks (models/architectures/mancs.py, docs/mancs.md):

- ``fab`` (false): fully attentional blocks after the last block of ``fab_stages`` (stage2..4),
  channel reduction ``fab_reduction`` (16); with ``fab_supervision`` (true) the model also
  outputs ``f_att`` and, in training, ``logits_att`` (the attention branch; a ``bce`` term reads it).
- ``prelu`` (false): PReLU in place of the backbone's last ReLU.

AGW / fast-reid (docs/agw.md):

- ``pool`` avg (BoT) | max | gem; ``gem_p`` 3.0 and ``gem_learnable`` false (AGW: true, p starts
  at 3 and is trained; fast-reid's AGW config: fixed) are read with ``pool: gem`` only.
- ``nonlocal_layers`` [0, 0, 0, 0]: non-local blocks after the last n blocks of stage1..stage4
  (AGW: [0, 2, 3, 0]); ``nonlocal_channels`` one (as published) | half (C/2)
  (``models/non_local.py``). Inserted after the ImageNet weights are loaded; they are in the
  ``new`` module group.
- ``classifier`` linear (BoT) | cosine: the head outputs ``cosine`` instead of ``logits``, for
  the ``circle`` loss term (fast-reid's circle softmax).

The reference code's reading (reid-strong-baseline; docs/bot-reference.md has every detail compared):

- ``stem_relu`` (true): the ReLU after the stem BatchNorm of a ResNet backbone. The reference's
  ResNet has none (its ``modeling/backbones/resnet.py`` leaves it commented out), so
  ``experiments/bot.yaml``'s ``paper`` profile sets false; timm's standard stem is the default.
  False on a non-ResNet backbone is refused with one line when the model is built.

Part-aligned bilinear pooling (Suh et al., ECCV 2018; ``models/bilinear.py``, docs/bilinear.md):

- ``pool: bilinear``: f_t = L2(signed sqrt(mean over locations of appearance ⊗ part)), width
  ``appearance_dim × part_dim``; the head (plain or BNNeck) takes it as it takes any pooled feature.
  Its options (``bilinear_parts`` learned | masks, ``appearance_dim``, ``part_dim``, ``part_kernel``,
  ``bilinear_regions``, ``bilinear_bn``, ``appearance_activation``, ``part_activation``,
  ``bilinear_sqrt``, ``bilinear_init``, ``bilinear_eps``) are read with ``pool: bilinear`` only.
  With ``bilinear_parts: masks`` the model pools with ``data.masks``' part masks
  (``forward(images, masks)``), and a spec must name a provider; otherwise it must not.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from reidbench.models.architectures import Architecture
from reidbench.models.bilinear import BilinearOptions
from reidbench.models.architectures.mancs import LAST_THREE, apply_backbone_options, check_fab_fields, exact_groups
from reidbench.models.build import ReidModel

__all__ = ["ARCH", "BotParams", "build"]


@dataclass(frozen=True)
class BotParams(BilinearOptions):
    # --- Geng et al. ---
    dropout: float = 0.0  # rate of the standard dropout before the identity classifier (0 = none)
    # --- Mancs ---
    fab: bool = False
    fab_stages: tuple[str, ...] = LAST_THREE
    fab_reduction: int = 16
    fab_supervision: bool = True
    prelu: bool = False
    # --- AGW / fast-reid ---
    pool: str = "avg"
    gem_p: float = 3.0
    gem_learnable: bool = False
    nonlocal_layers: tuple[int, ...] = (0, 0, 0, 0)
    nonlocal_channels: str = "one"
    classifier: str = "linear"
    # --- reference reading (reid-strong-baseline) ---
    stem_relu: bool = True  # false: no ReLU after the ResNet stem's BatchNorm, as the reference's resnet.py
    # --- end of the reference reading ---

    # the bilinear options (pool: bilinear only) are inherited from models/bilinear.BilinearOptions

    def validate(self, where: str = "model") -> None:
        from reidbench.models.non_local import check_agw_options
        from reidbench.models.pooling import POOLS

        # --- Geng et al. ---
        if isinstance(self.dropout, bool) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{where}.dropout={self.dropout!r} is invalid; valid: a rate in [0, 1)")
        # --- Mancs ---
        check_fab_fields(self, where)
        # --- AGW / fast-reid ---
        if self.pool not in POOLS:
            raise ValueError(f"{where}.pool={self.pool!r} is invalid; valid: {', '.join(POOLS)}")
        if not self.gem_p > 0:
            raise ValueError(f"{where}.gem_p={self.gem_p!r} is invalid; valid: a number > 0")
        if self.pool != "gem" and self.gem_p != BotParams.gem_p:
            raise ValueError(f"{where}.gem_p is only read with {where}.pool=gem, not {self.pool!r}; drop it")
        check_agw_options(self, where)
        # --- bilinear pooling (Suh et al.) ---
        from reidbench.models.bilinear import check_bilinear_options

        check_bilinear_options(self, where, active=self.pool == "bilinear")
        # --- end bilinear pooling ---

    @property
    def reads_masks(self) -> bool:
        """Pools with data.masks' part masks (bilinear pooling with mask parts)."""
        return self.pool == "bilinear" and self.bilinear_parts == "masks"


class AttentiveReidModel(ReidModel):
    """ReidModel + the FABs' deep-supervision head: adds ``f_att`` (and ``logits_att`` in training)."""

    def __init__(self, net: ReidModel, attention: Any) -> None:
        super().__init__(net.backbone, net.head, net.feat_dim, net.reid_info)
        self.attention = attention

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = super().forward(images, masks)
        out.update(self.attention(self.backbone))
        return out


def build(model: Any, num_classes: int):
    from reidbench.models.architectures import arch_params
    from reidbench.models.attention import AttentionSupervision
    from reidbench.models.bilinear import build_bilinear, changed_bilinear_options
    from reidbench.models.build import build_model
    from reidbench.models.non_local import insert_non_local
    from reidbench.models.pooling import build_pool

    params: BotParams = arch_params(model)
    defaults = BotParams()
    # None keeps the head's original average pooling (so a default spec builds the same module tree).
    if params.pool == "bilinear":  # --- bilinear pooling (Suh et al.): built on the backbone's channels ---
        pool = functools.partial(build_bilinear, params)
    else:
        pool = None if params.pool == "avg" else build_pool(params.pool, params.gem_p, params.gem_learnable)
    net = build_model(model.backbone, num_classes=num_classes, neck=model.neck, last_stride=model.last_stride,
                      pretrained=model.pretrained, weights_path=model.weights_path, pool=pool,
                      classifier=params.classifier, dropout=params.dropout, stem_relu=params.stem_relu)
    # Blocks go in after the ImageNet weights are in (build_backbone loaded them) and after the head,
    # so the head's initial weights do not depend on whether blocks are inserted: non-local blocks
    # (inside stages) first, then Mancs' FABs (after stages) and PReLU.
    inserted = insert_non_local(net.backbone, tuple(params.nonlocal_layers), params.nonlocal_channels)
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
        # Mancs' groups; non-local blocks are moved to `new` by build_architecture (models/groups.py).
        net.module_groups = exact_groups(net, new, heads)
        net.reid_info = {**net.reid_info,
                         "inserted": [n for n in net.module_groups["new"] if n.startswith("backbone.")]}
    else:
        net.module_groups = {"backbone": ("backbone",), "head": ("head",), "pretrained": ("backbone",),
                             "new": ("head",)}
    # Recorded only when set, so the stored description of a BoT model is unchanged.
    if params.dropout:
        net.reid_info["classifier_dropout"] = params.dropout
    changed = {k: getattr(params, k) for k in ("pool", "gem_p", "gem_learnable", "nonlocal_channels", "classifier")
               if getattr(params, k) != getattr(defaults, k)}
    changed.update(changed_bilinear_options(params))  # --- bilinear pooling (Suh et al.) ---
    if changed or inserted:
        net.reid_info["options"] = {**changed, **({"nonlocal_layers": list(params.nonlocal_layers)} if inserted else {})}
    if inserted:
        net.reid_info["nonlocal_after"] = [name.rsplit(".extra", 1)[0] for name in inserted]
    return net


def _reads_masks(params: BotParams) -> bool:  # --- bilinear pooling (Suh et al.) ---
    return params.reads_masks


ARCH = Architecture(name="bot", summary="backbone + global pooling + plain or BNNeck head (f_t, f_i, logits); "
                                        "options: dropout (Geng), FAB/PReLU (Mancs), GeM, non-local, cosine (AGW), "
                                        "stem_relu (the reference's ResNet stem), part-aligned bilinear pooling (Suh)",
                    build=build, params=BotParams,
                    # --- bilinear pooling (Suh et al.): mask parts read data.masks ---
                    masks_when=_reads_masks, masks_when_text="pool: bilinear, bilinear_parts: masks")
