"""``spreid``: SPReID, human semantic parsing for person re-identification (Kalayeh et al., CVPR 2018).

Layout (seed-systems.md §4.1, from the official Chainer code ``emrahbasaran/SPReID`` ``modelx.py``):

- a backbone maps the image to a C-channel map ``x`` (Inception-V3, C = 2048, in the paper);
- ``f_global`` = global average pool of ``x``;
- ``x`` is bilinearly resized to the resolution of the parsing maps, and each of the five soft
  region maps p_r (foreground, head, upper body, lower body, shoes; ``harness/data/masks.py``)
  pools it by a probability-weighted average: ``f_r = Σ_px p_r(px)·x(px) / Σ_px p_r(px)``;
- ``f_fg`` = f_foreground; ``f_parts`` = element-wise max of the four body-part features;
- the feature ``f`` = [f_fg, f_parts, f_global] (3 × C), fed to one linear classifier with bias
  (the code's 1×1 conv 6144 → ids) trained with softmax cross-entropy, and used as is at test
  time (the test feature is ``f``; the harness then L2-normalises it as for every architecture,
  ``eval.normalize``). No triplet loss in the original; add a ``triplet`` term reading ``f`` in
  the spec to have one.

The masks arrive with the images (``forward(images, masks)``, float B×5×H×W in [0, 1], at the
input resolution, transformed with the image). The "parsing-map resolution" is the input size
divided by ``mask_stride`` (16: the output stride of the code's dilated Inception-V3 parser): the
masks are area-averaged down to it and the backbone map bilinearly resized (up) to it.

Choices where the Chainer code is silent or cannot apply here, each a named option:

- ``eps`` (1e-6): the code divides by Σp unguarded, so a region absent from an image (no shoes in
  a legs-cut crop, a background-only distractor) gives NaN. Here the divisor is ``max(Σp, eps)``:
  a region with Σp = 0 gives a zero vector (its numerator is 0 too), and 0 < Σp < eps scales
  the average down towards zero continuously. Backbone maps are non-negative (they end in a
  ReLU/ReLU6), so a zero vector never wins the element-wise max over the parts: a missing part
  simply drops out of ``f_parts``; a missing foreground gives ``f_fg`` = 0.
- ``align_corners`` (true): Chainer v3's ``F.resize_images`` samples ``linspace(0, in − 1, out)``,
  which is PyTorch's ``align_corners=True`` (reidbench's reading of that function).
- ``features``: which of [foreground, parts, global] make ``f`` (always in that order): the
  ablation global only / + foreground / + parts / all three (``experiments/spreid.yaml``).
  ``f_fg``, ``f_parts`` and ``f_global`` are outputs whatever is chosen (``eval.feature`` can
  score any of them); only the chosen ones reach the classifier.
- classifier init: LeCun normal N(0, 1/fan_in), bias 0 (Chainer's default initialisers).

``pool`` (region): ``bilinear`` replaces the descriptor ``f`` by part-aligned bilinear pooling of
the backbone map (Suh et al., ECCV 2018; ``models/bilinear.py``, docs/bilinear.md), with its parts
learned (``bilinear_parts: learned``) or taken from the same masks (``masks``); ``f`` is then
``appearance_dim × part_dim`` wide and ``features`` is not read (refused when set). ``f_fg``,
``f_parts`` and ``f_global`` are still outputs. The bilinear options are read with ``pool:
bilinear`` only.

Outputs: ``f_fg``, ``f_parts``, ``f_global`` (C each), ``f`` (the chosen ones concatenated) and,
in training, ``logits``. Module groups: ``backbone`` (= ``pretrained``) and ``head`` (= ``new``:
the classifier), so stages and LR groups written for ``bot`` apply. Reads ``model.backbone``,
``pretrained``, ``weights_path`` and ``last_stride``; not ``neck`` (BNNeck is not SPReID's).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reidbench.models.architectures import Architecture
from reidbench.models.bilinear import BilinearOptions

__all__ = ["ARCH", "FEATURES", "SPReID", "SPReIDParams", "build", "region_features"]

FEATURES = ("foreground", "parts", "global")  # the order of f's pieces (the code's concatenation)
OUTPUT_OF = {"foreground": "f_fg", "parts": "f_parts", "global": "f_global"}
NUM_MAPS = 5  # foreground, head, upper, lower, shoes


POOLS = ("region", "bilinear")  # region: SPReID's [f_fg, f_parts, f_global]; bilinear: models/bilinear.py


@dataclass(frozen=True)
class SPReIDParams(BilinearOptions):
    features: tuple[str, ...] = FEATURES
    mask_stride: int = 16
    eps: float = 1e-6
    align_corners: bool = True
    pool: str = "region"  # the descriptor f; the bilinear options (pool: bilinear only) are inherited

    def validate(self, where: str = "model") -> None:
        chosen = list(self.features)
        if not chosen or any(f not in FEATURES for f in chosen) or len(set(chosen)) != len(chosen):
            raise ValueError(f"{where}.features={chosen} is invalid; valid: a non-empty subset of {list(FEATURES)} "
                             "without repeats")
        if chosen != [f for f in FEATURES if f in chosen]:
            raise ValueError(f"{where}.features={chosen} must keep the order {list(FEATURES)}")
        if self.mask_stride < 1:
            raise ValueError(f"{where}.mask_stride={self.mask_stride!r} is invalid; valid: an integer >= 1")
        if not self.eps > 0:
            raise ValueError(f"{where}.eps={self.eps!r} is invalid; valid: a number > 0")
        # --- bilinear pooling (Suh et al.) ---
        from reidbench.models.bilinear import check_bilinear_options

        if self.pool not in POOLS:
            raise ValueError(f"{where}.pool={self.pool!r} is invalid; valid: {', '.join(POOLS)}")
        if self.pool == "bilinear" and tuple(chosen) != FEATURES:
            raise ValueError(f"{where}.features is only read with {where}.pool=region (the concatenated "
                             "descriptor), not 'bilinear'; drop it")
        check_bilinear_options(self, where, active=self.pool == "bilinear")

    @property
    def uses_masks(self) -> bool:
        """``f`` cannot be computed without masks."""
        if self.pool == "bilinear":
            return self.bilinear_parts == "masks"
        return any(f != "global" for f in self.features)


def region_features(feature_map: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6,
                    align_corners: bool = True) -> torch.Tensor:
    """B×C×h×w map, B×R×H×W soft maps → B×R×C: ``Σ p·x / max(Σ p, eps)`` per region, x resized to H×W.

    The map is bilinearly resized to the masks' resolution first (as SPReID resizes its map to the
    parsing map's). Computed in float32: sums over many positions lose precision in half precision.
    """
    with torch.autocast(device_type=feature_map.device.type, enabled=False):
        x = feature_map.float()
        p = masks.float()
        if tuple(x.shape[-2:]) != tuple(p.shape[-2:]):
            x = nn.functional.interpolate(x, size=tuple(p.shape[-2:]), mode="bilinear", align_corners=align_corners)
        weighted = torch.einsum("brhw,bchw->brc", p, x)
        mass = p.sum(dim=(2, 3)).clamp_min(eps)
        return weighted / mass.unsqueeze(-1)


class SPReID(nn.Module):
    """Backbone → [f_fg, f_parts, f_global] → linear classifier (see the module doc)."""

    def __init__(self, backbone: nn.Module, channels: int, num_classes: int, params: SPReIDParams) -> None:
        super().__init__()
        self.backbone = backbone
        self.params = params
        self.channels = channels
        if params.pool == "bilinear":
            from reidbench.models.bilinear import build_bilinear

            bilinear = build_bilinear(params, channels)
            dim = bilinear.out_dim
            self.head = nn.ModuleDict({"bilinear": bilinear, "classifier": nn.Linear(dim, num_classes, bias=True)})
        else:
            dim = channels * len(params.features)
            self.head = nn.ModuleDict({"classifier": nn.Linear(dim, num_classes, bias=True)})
        classifier = self.head["classifier"]
        nn.init.normal_(classifier.weight, mean=0.0, std=dim ** -0.5)  # LeCun normal, Chainer's default
        nn.init.zeros_(classifier.bias)
        self.feature_dims = {"f_fg": channels, "f_parts": channels, "f_global": channels, "f": dim}
        self.test_feature = "f"

    def pooled(self, images: torch.Tensor, masks: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """{f_fg, f_parts, f_global}; the mask features are zero when masks are not given and not needed."""
        return self._pooled(self.backbone(images), masks)

    def _pooled(self, x: torch.Tensor, masks: torch.Tensor | None) -> dict[str, torch.Tensor]:
        f_global = x.mean(dim=(2, 3))
        if masks is None:
            if self.params.uses_masks:
                raise ValueError("model.arch=spreid: this model pools with part masks but none were given; set "
                                 "data.masks (oracle, stripes or folder:PATH)")
            zeros = torch.zeros_like(f_global)
            return {"f_fg": zeros, "f_parts": zeros, "f_global": f_global}
        if masks.ndim != 4 or masks.shape[1] != NUM_MAPS or masks.shape[0] != x.shape[0]:
            raise ValueError(f"model.arch=spreid: masks must be B x 5 x H x W for {x.shape[0]} images, got "
                             f"{tuple(masks.shape)}")
        masks = masks.to(device=x.device)
        stride = self.params.mask_stride
        if stride > 1:  # area average: a soft map's mass per position is kept
            size = (max(1, round(masks.shape[-2] / stride)), max(1, round(masks.shape[-1] / stride)))
            masks = nn.functional.adaptive_avg_pool2d(masks.float(), size)
        regions = region_features(x, masks, self.params.eps, self.params.align_corners)
        return {"f_fg": regions[:, 0].to(f_global.dtype), "f_parts": regions[:, 1:].amax(dim=1).to(f_global.dtype),
                "f_global": f_global}

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        x = self.backbone(images)
        out = self._pooled(x, masks)
        if self.params.pool == "bilinear":
            out["f"] = self.head["bilinear"](x, masks).to(out["f_global"].dtype)
        else:
            out["f"] = torch.cat([out[OUTPUT_OF[name]] for name in self.params.features], dim=1)
        if self.training:
            out["logits"] = self.head["classifier"](out["f"])
        return out


def build(model: Any, num_classes: int) -> SPReID:
    from reidbench.models.architectures import arch_params
    from reidbench.models.backbones import build_backbone
    from reidbench.models.bilinear import BILINEAR_FIELDS, changed_bilinear_options

    params: SPReIDParams = arch_params(model)
    backbone, channels = build_backbone(model.backbone, pretrained=model.pretrained, weights_path=model.weights_path,
                                        last_stride=model.last_stride)
    net = SPReID(backbone, channels, num_classes, params)
    net.module_groups = {"backbone": ("backbone",), "head": ("head",), "pretrained": ("backbone",), "new": ("head",)}
    info = backbone.reid_info
    net.reid_info = {
        "backbone": model.backbone,
        "source": info.get("source"),
        "pretrained_source": info.get("pretrained_source"),
        "pretrained_digest": info.get("pretrained_digest"),
        "last_stride": model.last_stride,
        "unstrided": info.get("unstrided", []),
        # The bilinear options only when pooling with them, so a region model's record is as before.
        "options": {**{k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(params).items()
                       if k not in ("pool", *BILINEAR_FIELDS) and not (k == "features" and params.pool == "bilinear")},
                    **({"pool": "bilinear", **changed_bilinear_options(params)} if params.pool == "bilinear" else {})},
        "feature": ["bilinear"] if params.pool == "bilinear" else [OUTPUT_OF[f] for f in params.features],
        "test_feature": "f",
    }
    return net


ARCH = Architecture(name="spreid", summary="SPReID: backbone map pooled by 5 part masks (data.masks); "
                                           "[foreground, max over parts, GAP] -> f, softmax CE (f_fg, f_parts, "
                                           "f_global, f, logits); pool: bilinear (Suh) makes f part-aligned "
                                           "bilinear",
                    build=build, params=SPReIDParams,
                    model_fields=("backbone", "pretrained", "weights_path", "last_stride"), needs_masks=True)
