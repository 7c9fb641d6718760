"""Part-aligned bilinear pooling (Suh et al., "Part-Aligned Bilinear Representations for Person
Re-identification", ECCV 2018): the backbone map pooled as the outer product of an appearance map
and a part map. docs/bilinear.md records every reading; the options below are its table.

For a backbone map x (B×C×h×w):

- the appearance stream A = act_a(BN(conv1×1(x))), ``appearance_dim`` maps;
- the part stream P: with ``bilinear_parts: learned``, act_p(BN(conv_k×k(x))), ``part_dim`` maps
  trained end to end (the paper starts this stream from OpenPose layers, which cannot be had
  offline: a deviation); with ``masks``, the chosen regions of the run's part masks
  (``data.masks``: oracle, stripes, folder; B×5×H×W in [0, 1]) area-averaged to h×w;
- z = (1 / hw) Σ_xy A_xy ⊗ P_xy, a Da×Dp matrix per image, flattened appearance-major (entry
  ``a·Dp + p``);
- f = L2-normalise(sign(z)·sqrt(|z| + eps)) (``bilinear_sqrt: false``: L2-normalise(z)).

The pooled feature is Da·Dp wide. Average or sum over locations give the same f: both the signed
square root and the L2 normalisation are positively homogeneous, so the 1/hw factor cancels (up
to eps). The outer product, the root and the normalisation are computed in float32 with autocast
off (sums of products over many entries lose precision in half precision).

The module is the ``pool`` of a bot head (``models/heads.py``) or SPReID's descriptor
(``models/architectures/spreid.py``); ``reads_masks`` tells the head to pass the batch's masks.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "BILINEAR_DEFAULTS", "BilinearOptions", "BILINEAR_FIELDS", "INITS", "MASK_REGIONS", "PART_ACTIVATIONS",
           "PART_SOURCES", "BilinearPool", "bilinear_pool", "build_bilinear", "changed_bilinear_options",
           "check_bilinear_options", "signed_sqrt"]

PART_SOURCES = ("learned", "masks")
ACTIVATIONS = ("none", "relu")  # the appearance stream
PART_ACTIVATIONS = ("none", "relu", "softmax", "sigmoid")  # learned part maps; softmax: over the part_dim maps
INITS = ("xavier", "kaiming")
MASK_REGIONS = ("foreground", "head", "upper", "lower", "shoes")  # channel order of data.masks (harness/data/masks.py)

@dataclass(frozen=True)
class BilinearOptions:
    """The bilinear options, flat in the model section of every architecture that offers
    ``pool: bilinear``: their params dataclasses inherit these fields and defaults."""

    bilinear_parts: str = "learned"
    appearance_dim: int = 512  # the authors' code: Inception-V1 4e (832) -> 1x1 conv -> 512
    part_dim: int = 128  # the authors' code: the pose stream's last conv -> 128
    part_kernel: int = 1  # 1x1 conv head on the backbone (the authors' code: 3x3 on OpenPose features)
    bilinear_regions: tuple[str, ...] = ("head", "upper", "lower", "shoes")  # foreground = their sum, left out
    bilinear_bn: bool = True  # BatchNorm2d(affine=False) after each stream's conv (the authors' code)
    appearance_activation: str = "none"
    part_activation: str = "none"
    bilinear_sqrt: bool = True
    bilinear_init: str = "xavier"
    bilinear_eps: float = 1e-8


BILINEAR_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(BilinearOptions)}
BILINEAR_FIELDS = tuple(BILINEAR_DEFAULTS)
_LEARNED_ONLY = ("part_dim", "part_kernel", "part_activation")
_MASKS_ONLY = ("bilinear_regions",)


def signed_sqrt(z: torch.Tensor, eps: float) -> torch.Tensor:
    """sign(z)·sqrt(|z| + eps): 0 stays 0 (sign 0, gradient 0); the gradient elsewhere is at most 1/(2√eps)."""
    return torch.sign(z) * torch.sqrt(z.abs() + eps)


def bilinear_pool(appearance: torch.Tensor, parts: torch.Tensor, sqrt: bool = True, eps: float = 1e-8
                  ) -> torch.Tensor:
    """B×Da×h×w, B×Dp×h×w → B×(Da·Dp): mean over locations of the outer products, signed root, L2 norm."""
    if appearance.shape[0] != parts.shape[0] or appearance.shape[-2:] != parts.shape[-2:]:
        raise ValueError(f"bilinear pooling: appearance {tuple(appearance.shape)} and parts {tuple(parts.shape)} "
                         "must share batch and spatial size")
    with torch.autocast(device_type=appearance.device.type, enabled=False):
        a, p = appearance.float(), parts.float()
        locations = a.shape[-2] * a.shape[-1]
        z = torch.einsum("bahw,bphw->bap", a, p).flatten(1) / locations
        if sqrt:
            z = signed_sqrt(z, eps)
        return nn.functional.normalize(z, dim=1)


def _conv(in_channels: int, out_channels: int, kernel: int, bn: bool, init: str) -> nn.Sequential:
    # No bias before a BN: the batch mean removes it (its gradient is exactly 0 in training).
    conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=not bn)
    if init == "xavier":  # the authors' code: xavier_uniform, bias 0
        nn.init.xavier_uniform_(conv.weight)
    else:  # torchvision's ResNet convs
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    layers: list[nn.Module] = [conv]
    if bn:
        layers.append(nn.BatchNorm2d(out_channels, affine=False))
    return nn.Sequential(*layers)


def _activate(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "relu":
        return torch.relu(x)
    if kind == "softmax":
        return torch.softmax(x, dim=1)
    if kind == "sigmoid":
        return torch.sigmoid(x)
    return x


class BilinearPool(nn.Module):
    """Backbone map (B×C×h×w) [+ part masks B×5×H×W] → B×(appearance_dim·part_dim), see the module doc."""

    def __init__(self, in_channels: int, *, bilinear_parts: str = "learned", appearance_dim: int = 512,
                 part_dim: int = 128, part_kernel: int = 1,
                 bilinear_regions: tuple[str, ...] = ("head", "upper", "lower", "shoes"), bilinear_bn: bool = True,
                 appearance_activation: str = "none", part_activation: str = "none", bilinear_sqrt: bool = True,
                 bilinear_init: str = "xavier", bilinear_eps: float = 1e-8) -> None:
        super().__init__()
        self.parts = bilinear_parts
        self.reads_masks = bilinear_parts == "masks"
        self.appearance_activation = appearance_activation
        self.part_activation = part_activation
        self.sqrt = bilinear_sqrt
        self.eps = bilinear_eps
        self.appearance = _conv(in_channels, appearance_dim, 1, bilinear_bn, bilinear_init)
        if self.reads_masks:
            self.regions = tuple(bilinear_regions)
            self.region_index = [MASK_REGIONS.index(r) for r in self.regions]
            part_dim = len(self.regions)
        else:
            self.part = _conv(in_channels, part_dim, part_kernel, bilinear_bn, bilinear_init)
        self.appearance_dim = appearance_dim
        self.part_dim = part_dim
        self.out_dim = appearance_dim * part_dim

    def part_maps(self, feature_map: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        """B×Dp×h×w part maps: learned from the map, or the chosen mask regions area-averaged to h×w."""
        if not self.reads_masks:
            return _activate(self.part(feature_map), self.part_activation)
        if masks is None:
            raise ValueError("model.bilinear_parts=masks: this model pools with part masks but none were given; set "
                             "data.masks (oracle, stripes or folder:PATH)")
        if masks.ndim != 4 or masks.shape[1] != len(MASK_REGIONS) or masks.shape[0] != feature_map.shape[0]:
            raise ValueError(f"model.bilinear_parts=masks: masks must be B x 5 x H x W for {feature_map.shape[0]} "
                             f"images, got {tuple(masks.shape)}")
        chosen = masks.to(device=feature_map.device, dtype=torch.float32)[:, self.region_index]
        # Area average: each map's mass per location is kept, as SPReID reduces its masks.
        return nn.functional.adaptive_avg_pool2d(chosen, tuple(feature_map.shape[-2:]))

    def forward(self, feature_map: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        appearance = _activate(self.appearance(feature_map), self.appearance_activation)
        pooled = bilinear_pool(appearance, self.part_maps(feature_map, masks), self.sqrt, self.eps)
        return pooled.to(feature_map.dtype)

    def extra_repr(self) -> str:
        return (f"parts={self.parts}, appearance_dim={self.appearance_dim}, part_dim={self.part_dim}, "
                f"out_dim={self.out_dim}, sqrt={self.sqrt}")


def _options(params: Any) -> dict[str, Any]:
    return {name: getattr(params, name) for name in BILINEAR_FIELDS}


def changed_bilinear_options(params: Any) -> dict[str, Any]:
    """The bilinear options of ``params`` that differ from their defaults (lists for tuples), for ``reid_info``."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in _options(params).items()
            if v != BILINEAR_DEFAULTS[k]}


def check_bilinear_options(params: Any, where: str, active: bool, pool_field: str = "pool") -> None:
    """One-line errors: valid values, and no option that nothing reads.

    ``active``: the architecture pools with ``bilinear`` (``{where}.{pool_field}``); every bilinear
    option set without it is refused, as are the learned-part options with mask parts and the other
    way round.
    """
    values = _options(params)
    pool = getattr(params, pool_field)
    if not active:
        for name, value in values.items():
            if value != BILINEAR_DEFAULTS[name]:
                raise ValueError(f"{where}.{name} is only read with {where}.{pool_field}=bilinear, not {pool!r}; "
                                 "drop it")
        return
    parts = values["bilinear_parts"]
    if parts not in PART_SOURCES:
        raise ValueError(f"{where}.bilinear_parts={parts!r} is invalid; valid: {', '.join(PART_SOURCES)}")
    for name in ("appearance_dim", "part_dim"):
        if isinstance(values[name], bool) or not isinstance(values[name], int) or values[name] < 1:
            raise ValueError(f"{where}.{name}={values[name]!r} is invalid; valid: an integer >= 1")
    kernel = values["part_kernel"]
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"{where}.part_kernel={kernel!r} is invalid; valid: an odd integer >= 1 (1: 1x1 conv)")
    regions = list(values["bilinear_regions"])
    if not regions or any(r not in MASK_REGIONS for r in regions) or len(set(regions)) != len(regions):
        raise ValueError(f"{where}.bilinear_regions={regions} is invalid; valid: a non-empty subset of "
                         f"{list(MASK_REGIONS)} without repeats")
    if regions != [r for r in MASK_REGIONS if r in regions]:
        raise ValueError(f"{where}.bilinear_regions={regions} must keep the order {list(MASK_REGIONS)}")
    for name, valid in (("appearance_activation", ACTIVATIONS), ("part_activation", PART_ACTIVATIONS),
                        ("bilinear_init", INITS)):
        if values[name] not in valid:
            raise ValueError(f"{where}.{name}={values[name]!r} is invalid; valid: {', '.join(valid)}")
    if isinstance(values["bilinear_eps"], bool) or not values["bilinear_eps"] > 0:
        raise ValueError(f"{where}.bilinear_eps={values['bilinear_eps']!r} is invalid; valid: a number > 0")
    unread = _MASKS_ONLY if parts == "learned" else _LEARNED_ONLY
    other = "masks" if parts == "learned" else "learned"
    for name in unread:
        if values[name] != BILINEAR_DEFAULTS[name]:
            raise ValueError(f"{where}.{name} is only read with {where}.bilinear_parts={other}, not {parts!r}; "
                             "drop it")


def build_bilinear(params: Any, in_channels: int) -> BilinearPool:
    """The pooling module for an architecture's params (fields ``BILINEAR_FIELDS``) on a C-channel map."""
    return BilinearPool(in_channels, **_options(params))
