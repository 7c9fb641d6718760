"""The stages and blocks of a backbone, and inserting new modules after them.

Several tricks put new blocks inside a pretrained backbone: Mancs' attention blocks after the
last stages, AGW's non-local blocks after the last blocks of stages 3 and 4. They are written for a
ResNet (``layer1`` … ``layer4``); this module gives every registered backbone the same vocabulary,
so the same trick runs on the cpu profile's MobileNetV2 or EfficientNet-Lite0:

- a **block** is a residual block (``layer3.5``; ``features.7`` of MobileNetV2; ``blocks.3.1`` of a
  timm EfficientNet) — the unit a trick inserts after;
- a **stage** is a run of blocks at one resolution. A new stage starts at a block that
  down-samples (it holds a strided conv or pool, or a conv the *last stride* trick unstrided).
  The last four are ``stage1`` … ``stage4`` — ResNet's ``layer1`` … ``layer4`` exactly; for
  MobileNetV2 the /4, /8, /16 and /32 groups (``stage4`` ends with the 1×1 head conv, so its
  width is the backbone's output width).

Insertion wraps the block in place (``After``): its own parameters keep their names under
``.inner`` and the new module sits at ``.extra``. That is deep-copy safe (MGN copies its branches)
and checkpoints like any module. Insert *after* loading pretrained weights: the wrapped names no
longer match an ImageNet state dict.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["After", "StageInfo", "backbone_blocks", "backbone_stages", "insert_after", "inserted_modules", "probe_forward", "stage_by_name"]

STAGE_NAMES = ("stage1", "stage2", "stage3", "stage4")
RESNET_LAYERS = ("layer1", "layer2", "layer3", "layer4")
# Probe image side: small, yet a stride-32 network keeps a 2×2 map at the end.
PROBE_SIZE_PX = 64


@dataclass(frozen=True)
class StageInfo:
    name: str  # stage1 … stage4
    blocks: tuple[str, ...]  # dotted module names within the backbone, in forward order
    channels: int  # width of the stage's output map


class After(nn.Module):
    """``extra(inner(x))``: a block followed by an inserted module."""

    def __init__(self, inner: nn.Module, extra: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extra(self.inner(x))


def _unwrap(module: nn.Module) -> nn.Module:
    while isinstance(module, After):
        module = module.inner
    return module


def backbone_blocks(backbone: nn.Module) -> list[str]:
    """The backbone's blocks in forward order (dotted names); a one-line error for an unknown layout."""
    if all(hasattr(backbone, layer) for layer in RESNET_LAYERS):
        return [f"{layer}.{i}" for layer in RESNET_LAYERS for i in range(len(getattr(backbone, layer)))]
    features = getattr(backbone, "features", None)
    if isinstance(features, nn.Sequential):  # torchvision MobileNetV2: features.0 is the stem conv
        return [f"features.{i}" for i in range(1, len(features))]
    blocks = getattr(backbone, "blocks", None)
    if isinstance(blocks, nn.Sequential):  # timm EfficientNet / MobileNet family: blocks.<stage>.<block>
        return [f"blocks.{i}.{j}" for i, stage in enumerate(blocks) for j in range(len(stage))]
    raise ValueError(f"cannot find the blocks of backbone {type(backbone).__name__}: known layouts are timm "
                     "ResNets (layer1..layer4), torchvision MobileNetV2 (features) and timm EfficientNets (blocks)")


def _downsamples(block: nn.Module, unstrided: set[str], prefix: str) -> bool:
    for name, module in _unwrap(block).named_modules():
        full = f"{prefix}.{name}" if name else prefix
        if full in unstrided or full.replace(".inner", "") in unstrided:
            return True
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            stride = module.stride if isinstance(module.stride, tuple) else (module.stride, module.stride)
            if any(s > 1 for s in stride):
                return True
    return False


def backbone_stages(backbone: nn.Module) -> list[StageInfo]:
    """``stage1`` … ``stage4`` of ``backbone`` with their blocks and output widths.

    Reads ``backbone.reid_info["unstrided"]`` (set by ``build_backbone``) so a backbone built with
    last stride 1 keeps its four stages.
    """
    names = backbone_blocks(backbone)
    if all(hasattr(backbone, layer) for layer in RESNET_LAYERS):
        groups = [[n for n in names if n.split(".")[0] == layer] for layer in RESNET_LAYERS]
    else:
        unstrided = set((getattr(backbone, "reid_info", None) or {}).get("unstrided", []))
        groups = []
        for name in names:
            if not groups or _downsamples(backbone.get_submodule(name), unstrided, name):
                groups.append([name])
            else:
                groups[-1].append(name)
        if len(groups) < len(STAGE_NAMES):
            raise ValueError(f"backbone {type(backbone).__name__} has {len(groups)} resolution stages; 4 are needed")
        groups = groups[-len(STAGE_NAMES):]
    widths = _output_widths(backbone, [g[-1] for g in groups])
    return [StageInfo(name=stage, blocks=tuple(group), channels=widths[group[-1]])
            for stage, group in zip(STAGE_NAMES, groups)]


def _output_widths(backbone: nn.Module, names: list[str]) -> dict[str, int]:
    """Channels of each named block's output, from one small eval-mode forward (BN statistics untouched)."""
    widths: dict[str, int] = {}

    def record(key: str):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:  # None: output unchanged
            widths.setdefault(key, int(output.shape[1]))
        return hook

    probe_forward(backbone, [backbone.get_submodule(n).register_forward_hook(record(n)) for n in names])
    return widths


def probe_forward(backbone: nn.Module, handles: list) -> None:
    """One small eval-mode, no-grad forward (BatchNorm statistics untouched), then remove ``handles``."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            parameter = next(backbone.parameters())
            backbone(parameter.new_zeros(1, 3, PROBE_SIZE_PX, PROBE_SIZE_PX))
    finally:
        for handle in handles:
            handle.remove()
        backbone.train(was_training)


def stage_by_name(stages: list[StageInfo], name: str, where: str) -> StageInfo:
    """The stage called ``name`` (``stage3``; ``layer3`` is accepted as its ResNet name)."""
    key = f"stage{name[len('layer'):]}" if name.startswith("layer") else name
    for stage in stages:
        if stage.name == key:
            return stage
    raise ValueError(f"{where}={name!r} is not a stage; valid: {', '.join(STAGE_NAMES)} (or layer1..layer4)")


def insert_after(backbone: nn.Module, block: str, extra: nn.Module) -> str:
    """Wrap ``block`` so ``extra`` runs on its output; returns the inserted module's dotted name."""
    parent_name, _, child = block.rpartition(".")
    parent = backbone.get_submodule(parent_name) if parent_name else backbone
    inner = backbone.get_submodule(block)
    wrapped = After(inner, extra)
    if isinstance(parent, nn.Sequential) and child.isdigit():
        parent[int(child)] = wrapped
    else:
        setattr(parent, child, wrapped)
    return f"{block}.extra"


def inserted_modules(root: nn.Module) -> list[str]:
    """Dotted names (relative to ``root``) of every module inserted with ``insert_after``."""
    return [f"{name}.extra" if name else "extra" for name, module in root.named_modules() if isinstance(module, After)]
