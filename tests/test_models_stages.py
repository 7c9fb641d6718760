"""Backbone stages and block insertion (models/stages.py), checked against the known layouts."""

import copy

import pytest
import torch
from torch import nn

from reidbench.models.backbones import build_backbone
from reidbench.models.stages import (After, backbone_stages, insert_after, inserted_modules, stage_by_name)


@pytest.mark.parametrize("last_stride", [2, 1])
def test_resnet_stages_are_its_layers(last_stride):
    backbone, _ = build_backbone("resnet18", pretrained=False, last_stride=last_stride)
    stages = backbone_stages(backbone)
    assert [s.blocks for s in stages] == [(f"layer{i}.0", f"layer{i}.1") for i in range(1, 5)]
    assert [s.channels for s in stages] == [64, 128, 256, 512]


@pytest.mark.parametrize("last_stride", [2, 1])
def test_mobilenetv2_stages_follow_its_strides(last_stride):
    # torchvision's MobileNetV2 table: strided blocks at features 2, 4, 7, 14 (t,c,n,s rows);
    # features 11-13 (96 ch, stride 1) stay in the /16 stage, the 1x1 head conv (18) ends stage 4.
    backbone, _ = build_backbone("mobilenetv2", pretrained=False, last_stride=last_stride)
    stages = backbone_stages(backbone)
    assert [(s.blocks[0], s.blocks[-1]) for s in stages] == [
        ("features.2", "features.3"), ("features.4", "features.6"), ("features.7", "features.13"),
        ("features.14", "features.18")]
    assert [s.channels for s in stages] == [24, 32, 96, 1280]


def test_stage_names_accept_resnet_spelling_and_reject_others():
    backbone, _ = build_backbone("resnet18", pretrained=False)
    stages = backbone_stages(backbone)
    assert stage_by_name(stages, "layer3", "x").name == stage_by_name(stages, "stage3", "x").name == "stage3"
    with pytest.raises(ValueError, match="x='stage5' is not a stage"):
        stage_by_name(stages, "stage5", "x")


class Doubler(nn.Module):
    def forward(self, x):
        return 2 * x


def test_insert_after_runs_the_extra_on_the_block_output_and_survives_deepcopy():
    torch.manual_seed(0)
    backbone, _ = build_backbone("resnet18", pretrained=False)
    backbone.eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        # Expected: run the network by hand, doubling layer4's output; layer4 is the last module before pooling.
        expected = 2 * backbone(x)
    insert_after(backbone, "layer4.1", Doubler())
    with torch.no_grad():
        assert torch.allclose(backbone(x), expected)
        clone = copy.deepcopy(backbone)
        assert torch.allclose(clone(x), expected)
    assert isinstance(backbone.layer4[1], After)
    assert inserted_modules(backbone) == ["layer4.1.extra"]
    # The block's own parameters keep their names under .inner; stages still list the same blocks.
    assert "layer4.1.inner.conv1.weight" in dict(backbone.named_parameters())
    assert backbone_stages(backbone)[3].blocks == ("layer4.0", "layer4.1")
