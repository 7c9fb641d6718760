"""AGW's non-local block and its insertion after the last blocks of backbone stages.

The block (mangye16/ReID-Survey ``modeling/layer/non_local.py``, fast-reid ``layers/non_local.py``;
seed-systems.md §6) is the Non-local Neural Networks "dot product" form. For an input x (B×C×h×w)
with N = h·w positions and I intermediate channels:

    θ, φ, g = 1×1 convs C→I (with bias) of x, each flattened to B×N×I
    f = θ φᵀ / N            (B×N×N: pairwise dot products, divided by the number of positions)
    y = f g                  (B×N×I, reshaped to B×I×h×w)
    z = BN(W(y)) + x         (W: 1×1 conv I→C with bias; BN weight and bias initialised to 0)

With the BN's affine parameters at 0 the block is the identity when inserted, so a pretrained
backbone starts out computing exactly what it did. The convolutions keep PyTorch's default
initialisation, as in the reference (it loads ImageNet weights into the ResNet only).

Intermediate channels (``channels``):

- ``one`` (default, "as-published"): I = 1. Both reference codebases compute
  ``inter_channels = reduc_ratio // reduc_ratio``, i.e. 1; the AGW author called it accidental
  (ReID-Survey#7), fast-reid changed it to C/2 and reverted to 1 ("no performance gain",
  fast-reid#558, #256). The published AGW numbers were obtained with I = 1.
- ``half``: I = C/2, the Non-local paper's choice and fast-reid's short-lived fix.

Placement: ``counts`` gives, per stage (stage1 … stage4 of ``models/stages.py``), how many of the
stage's last blocks get a block after them — AGW's ``non_layers = [0, 2, 3, 0]`` puts one after
each of the last 2 blocks of ResNet ``layer2`` and the last 3 of ``layer3`` (the survey calls
those stages 3 and 4, counting the stem as stage 1). On MobileNetV2 the same counts mean the last
2 blocks of the stride-8 group (``features.5``, ``features.6``, 32 channels) and the last 3 of the
stride-16 group (``features.11`` … ``features.13``, 96 channels). A stage with fewer blocks than
asked gets one after each of its blocks (ResNet-18: layer3.0 and layer3.1 for the 3 asked); the
model info records the blocks each was inserted after (``nonlocal_after``).
"""

from __future__ import annotations

import torch
from torch import nn

from reidbench.models.stages import STAGE_NAMES, backbone_stages, insert_after

__all__ = ["AGW_COUNTS", "CHANNEL_CHOICES", "NonLocalBlock", "check_agw_options", "insert_non_local", "inter_channels"]

AGW_COUNTS = (0, 2, 3, 0)  # ReID-Survey resnet50_nl non_layers
CHANNEL_CHOICES = ("one", "half")


def inter_channels(channels: int, choice: str) -> int:
    """I for a block on a C-channel map: 1 (``one``, as published) or C/2 (``half``)."""
    if choice == "one":
        return 1
    if choice == "half":
        return max(1, channels // 2)
    raise ValueError(f"non-local channels={choice!r} is invalid; valid: {', '.join(CHANNEL_CHOICES)}")


class NonLocalBlock(nn.Module):
    """z = BN(W(f·g)) + x with f = θφᵀ/N (see the module doc); the identity at initialisation."""

    def __init__(self, channels: int, inter: int = 1) -> None:
        super().__init__()
        self.channels, self.inter = channels, inter
        # Created in the reference's order (g, W, theta, phi) so a seed gives the same draws.
        self.g = nn.Conv2d(channels, inter, kernel_size=1)
        self.W = nn.Sequential(nn.Conv2d(inter, channels, kernel_size=1), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)
        self.theta = nn.Conv2d(channels, inter, kernel_size=1)
        self.phi = nn.Conv2d(channels, inter, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        # flatten (not view): the input may be channels_last.
        g = self.g(x).flatten(2).transpose(1, 2)  # B×N×I
        theta = self.theta(x).flatten(2).transpose(1, 2)  # B×N×I
        phi = self.phi(x).flatten(2)  # B×I×N
        f = torch.matmul(theta, phi)
        f = f / f.shape[-1]
        y = torch.matmul(f, g).transpose(1, 2).reshape(batch, self.inter, height, width)
        return self.W(y) + x

    def extra_repr(self) -> str:
        return f"channels={self.channels}, inter={self.inter}"


def insert_non_local(backbone: nn.Module, counts: tuple[int, ...], channels: str = "one",
                     where: str = "model.nonlocal_layers") -> list[str]:
    """Insert a block after each of the last ``counts[i]`` blocks of stage i+1 (all of its blocks if it
    has fewer); returns the inserted modules' names.

    Call after loading pretrained weights. Each block's width is the output width of the block it
    follows (one probe forward, before any insertion).
    """
    from reidbench.models.stages import _output_widths

    if len(counts) != len(STAGE_NAMES) or any(isinstance(n, bool) or not isinstance(n, int) or n < 0
                                               for n in counts):
        raise ValueError(f"{where}={list(counts)} is invalid; valid: 4 integers >= 0, blocks per stage (AGW: "
                         f"{list(AGW_COUNTS)})")
    inter_channels(1, channels)  # validates the choice
    if not any(counts):
        return []  # nothing to insert: the backbone is not even probed
    stages = backbone_stages(backbone)
    targets: list[str] = []
    for stage, count in zip(stages, counts):
        # A stage shorter than asked (ResNet-18's 2-block layer3, timm's test ResNet) gets a block
        # after each of its blocks; the names returned (recorded in the model info) say where.
        targets.extend(stage.blocks[max(0, len(stage.blocks) - count):])
    if not targets:
        return []
    widths = _output_widths(backbone, targets)
    return [insert_after(backbone, name, NonLocalBlock(widths[name], inter_channels(widths[name], channels)))
            for name in targets]


def check_agw_options(params: object, where: str) -> None:
    """The AGW / fast-reid model options an architecture shares (bot, mgn): ``gem_learnable`` only
    with GeM, ``nonlocal_layers``, ``nonlocal_channels`` and ``classifier``; one-line errors."""
    from reidbench.models.heads import CLASSIFIERS

    pool = getattr(params, "pool")
    if getattr(params, "gem_learnable") and pool != "gem":
        raise ValueError(f"{where}.gem_learnable is only read with {where}.pool=gem, not {pool!r}; drop it")
    counts = list(getattr(params, "nonlocal_layers"))
    if len(counts) != 4 or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in counts):
        raise ValueError(f"{where}.nonlocal_layers={counts} is invalid; valid: 4 integers >= 0, blocks per "
                         f"stage (AGW: {list(AGW_COUNTS)})")
    channels = getattr(params, "nonlocal_channels")
    if channels not in CHANNEL_CHOICES:
        raise ValueError(f"{where}.nonlocal_channels={channels!r} is invalid; valid: {', '.join(CHANNEL_CHOICES)}")
    classifier = getattr(params, "classifier")
    if classifier not in CLASSIFIERS:
        raise ValueError(f"{where}.classifier={classifier!r} is invalid; valid: {', '.join(CLASSIFIERS)}")
