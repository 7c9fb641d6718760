"""Global pooling of a B×C×h×w map to B×C: average, max and generalised-mean (GeM) pooling.

(``bot``'s fourth ``pool``, ``bilinear``, is part-aligned bilinear pooling: it has parameters, needs
the backbone's channel count and is ``Da·Dp`` wide, so it lives in ``models/bilinear.py``.)

GeM (Radenović et al. 2018; AGW and fast-reid, seed-systems.md §6) pools each channel as

    f = (mean over the h×w positions of clamp(x, eps)^p)^(1/p)

so p = 1 is average pooling and p → ∞ tends to max pooling. The clamp keeps x^p and its
gradient defined at 0 (ReLU maps are often exactly 0). AGW's ``GeneralizedMeanPoolingP`` learns
p (one scalar per pooling layer, initialised at 3, trained with weight decay like every other
parameter); fast-reid's AGW config uses a fixed p = 3, its SBS and MGN configs the learnable one.
GeM is computed in float32: x^p overflows half precision under autocast.

``bot`` pools with ``GlobalPool`` (its default ``avg`` is the head's ``adaptive_avg_pool2d``,
unchanged); ``mgn`` uses ``gem`` for its fixed-p pooling and ``GeneralizedMeanPooling`` for a
learnable p, one per pooled vector as fast-reid's MGN heads.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GEM_EPS", "POOLS", "GeneralizedMeanPooling", "GlobalPool", "build_pool", "gem"]

POOLS = ("avg", "max", "gem", "bilinear")  # bot's model.pool values
GEM_EPS = 1e-6  # AGW's and fast-reid's clamp


def gem(feature_map: torch.Tensor, p: float | torch.Tensor, eps: float = GEM_EPS) -> torch.Tensor:
    """B×C×h×w → B×C generalised mean over h×w with exponent ``p`` (a number or a 1-element tensor)."""
    x = feature_map.float().clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
    return x.to(feature_map.dtype)


class GeneralizedMeanPooling(nn.Module):
    """GeM with a fixed exponent (a plain float, no state) or a learnable one (parameter ``p``, shape 1)."""

    def __init__(self, p: float = 3.0, learnable: bool = False, eps: float = GEM_EPS) -> None:
        super().__init__()
        if not p > 0:
            raise ValueError(f"GeM exponent p={p!r} must be > 0")
        self.eps = eps
        self.learnable = learnable
        if learnable:
            self.p = nn.Parameter(torch.full((1,), float(p)))
        else:
            self.p = float(p)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return gem(feature_map, self.p, self.eps)

    def extra_repr(self) -> str:
        p = float(self.p.detach()) if self.learnable else self.p
        return f"p={p:.4g}, learnable={self.learnable}, eps={self.eps}"


class GlobalPool(nn.Module):
    """``avg`` (``adaptive_avg_pool2d``, the BoT head's) or ``max`` pooling over h×w; no parameters."""

    def __init__(self, kind: str = "avg") -> None:
        super().__init__()
        if kind not in ("avg", "max"):
            raise ValueError(f"pool={kind!r} is invalid here; valid: avg, max (gem: GeneralizedMeanPooling)")
        self.kind = kind

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        if self.kind == "avg":
            return nn.functional.adaptive_avg_pool2d(feature_map, 1).flatten(1)
        return feature_map.amax(dim=(2, 3))

    def extra_repr(self) -> str:
        return self.kind


def build_pool(kind: str, gem_p: float = 3.0, gem_learnable: bool = False) -> nn.Module:
    """The pooling module for ``kind`` (``avg``, ``max`` or ``gem``; ``bilinear``: ``models/bilinear.py``)."""
    if kind == "bilinear":
        raise ValueError("pool='bilinear' is built by models.bilinear.build_bilinear (it needs the backbone's channels)")
    if kind == "gem":
        return GeneralizedMeanPooling(gem_p, learnable=gem_learnable)
    if kind in ("avg", "max"):
        return GlobalPool(kind)
    raise ValueError(f"pool={kind!r} is invalid; valid: {', '.join(POOLS[:3])}")
