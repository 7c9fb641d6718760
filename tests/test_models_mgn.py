"""``model.arch: mgn``: outputs per branch subset, hand-computed stripes, branch copies, map sizes,
parameter counts from layer shapes, option validation and the MobileNetV2 / EfficientNet splits.

Expectations are written out here (names, orders, stripe rows, shapes from the backbones' known
strides and widths), never read back from the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from reidbench.harness.spec import ModelSpec
from reidbench.models.architectures import build_architecture
from reidbench.models.architectures.mgn import stripe_bounds
from reidbench.models.backbones import build_backbone

TINY = "timm:test_resnet"
NUM_CLASSES = 3

# Reduced features of each branch subset, in the documented test-feature order (globals, then parts).
REDUCED = {
    ("g", "p2", "p3"): ["f_g", "f_p2", "f_p3", "f_p2_1", "f_p2_2", "f_p3_1", "f_p3_2", "f_p3_3"],
    ("g",): ["f_g"],
    ("p2",): ["f_p2", "f_p2_1", "f_p2_2"],
    ("p3",): ["f_p3", "f_p3_1", "f_p3_2", "f_p3_3"],
    ("g", "p2"): ["f_g", "f_p2", "f_p2_1", "f_p2_2"],
    ("p2", "p3"): ["f_p2", "f_p3", "f_p2_1", "f_p2_2", "f_p3_1", "f_p3_2", "f_p3_3"],
}


def _spec(backbone: str = TINY, last_stride: int = 2, neck: str = "plain", **options) -> ModelSpec:
    return ModelSpec(arch="mgn", backbone=backbone, pretrained=False, last_stride=last_stride, neck=neck,
                     options=tuple(sorted(options.items())))


def _build(backbone: str = TINY, last_stride: int = 2, neck: str = "plain", **options):
    torch.manual_seed(0)
    return build_architecture(_spec(backbone, last_stride, neck, **options), NUM_CLASSES)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def tiny_channels() -> int:
    return build_backbone(TINY)[1]


# --------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("branches", list(REDUCED), ids="+".join)
@pytest.mark.parametrize("size", [(48, 16), (64, 32)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_output_names_and_shapes_per_branch_subset(branches, size, tiny_channels):
    d = 16
    net = _build(branches=branches, reduction_dim=d)
    reduced = REDUCED[branches]
    pooled = [f"f_{b}_pooled" for b in branches]
    logits = ["logits_" + name[2:] for name in reduced]
    images = torch.randn(2, 3, *size)
    for mode in ("train", "eval"):
        net.train(mode == "train")
        with torch.no_grad():
            out = net(images)
        expected = set(reduced) | set(pooled) | (set(logits) if mode == "train" else set())
        assert set(out) == expected, mode
        for name in reduced:
            assert tuple(out[name].shape) == (2, d)
        for name in pooled:
            assert tuple(out[name].shape) == (2, tiny_channels)
        for name in logits if mode == "train" else ():
            assert tuple(out[name].shape) == (2, NUM_CLASSES)
    assert net.feature_dims == {**{n: d for n in reduced}, **{n: tiny_channels for n in pooled}}
    assert tuple(net.test_feature) == tuple(reduced)


@pytest.mark.parametrize("branches,reduced_count", [(("g", "p2", "p3"), 8), (("g",), 1), (("g", "p2"), 4),
                                                    (("p2", "p3"), 7), (("p3",), 4)])
def test_test_feature_width_is_reduction_dim_times_reduced_features(branches, reduced_count):
    d = 8
    net = _build(branches=branches, reduction_dim=d).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 48, 16))
    joined = torch.cat([out[name] for name in net.test_feature], dim=1)
    assert joined.shape == (2, reduced_count * d)


def test_default_is_the_paper_layout_with_a_2048_wide_test_feature_at_256():
    net = _build()  # defaults: all three branches, reduction 256
    assert len(net.test_feature) == 8 and sum(net.feature_dims[n] for n in net.test_feature) == 2048


# --------------------------------------------------------------------------- stripes


@pytest.mark.parametrize("height,count,expected", [
    (24, 3, [(0, 8), (8, 16), (16, 24)]),
    (16, 3, [(0, 6), (6, 11), (11, 16)]),   # 16 = 6 + 5 + 5: the first 16 % 3 = 1 stripe gets the extra row
    (5, 3, [(0, 2), (2, 4), (4, 5)]),
    (7, 2, [(0, 4), (4, 7)]),
    (3, 3, [(0, 1), (1, 2), (2, 3)]),
    (2, 3, [(0, 1), (0, 1), (1, 2)]),       # fewer rows than stripes: stripe i takes row i*h//n
    (1, 2, [(0, 1), (0, 1)]),
])
def test_stripe_bounds_by_hand(height, count, expected):
    assert stripe_bounds(height, count) == expected


def _row_index_map(height: int, width: int, channels: int = 2) -> torch.Tensor:
    # value = 10·row + column + 100·channel, so a pooled value says which rows and columns it saw
    rows = torch.arange(height, dtype=torch.float32)[:, None] * 10
    cols = torch.arange(width, dtype=torch.float32)[None, :]
    chan = torch.arange(channels, dtype=torch.float32)[:, None, None] * 100
    return (rows + cols + chan).expand(1, channels, height, width).clone()


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_model_pooling_of_a_known_map_matches_stripes_by_hand(pool):
    net = _build(pool=pool)
    m = _row_index_map(7, 2)  # 7 rows: p2 stripes rows 0-3 | 4-6; p3 stripes rows 0-2 | 3-4 | 5-6
    got = net.pool_features({"g": m, "p2": m, "p3": m})
    if pool == "max":  # last row of the stripe, last column
        by_hand = {"g": 61, "p2": 61, "p3": 61, "p2_1": 31, "p2_2": 61, "p3_1": 21, "p3_2": 41, "p3_3": 61}
    else:  # mean row ×10 + mean column 0.5
        by_hand = {"g": 30.5, "p2": 30.5, "p3": 30.5, "p2_1": 15.5, "p2_2": 50.5, "p3_1": 10.5, "p3_2": 35.5,
                   "p3_3": 55.5}
    assert set(got) == set(by_hand)
    for key, value in by_hand.items():
        assert torch.allclose(got[key], torch.tensor([[float(value), value + 100.0]])), key


def test_gem_pooling_of_a_known_map_by_hand():
    net = _build(pool="gem", gem_p=2.0)
    m = torch.tensor([1.0, 3.0, 2.0, 4.0]).reshape(1, 1, 4, 1)  # p2 stripes: rows {1, 3} and {2, 4}
    got = net.pool_features({"p2": m})
    assert got["p2_1"].item() == pytest.approx(math.sqrt((1 + 9) / 2))
    assert got["p2_2"].item() == pytest.approx(math.sqrt((4 + 16) / 2))
    assert got["p2"].item() == pytest.approx(math.sqrt((1 + 9 + 4 + 16) / 4))


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_pooled_globals_are_the_pooled_branch_maps(pool):
    net = _build(pool=pool).eval()
    images = torch.randn(2, 3, 48, 16)
    with torch.no_grad():
        maps = net.branch_maps(images)
        out = net(images)
    for b, m in maps.items():
        expected = m.amax(dim=(2, 3)) if pool == "max" else m.mean(dim=(2, 3))
        assert torch.allclose(out[f"f_{b}_pooled"], expected, atol=1e-6)


# --------------------------------------------------------------------------- branches


def test_branch_copies_start_identical_but_are_separate_parameters():
    net = _build()
    states = {b: net.branches[b].state_dict() for b in ("g", "p2", "p3")}
    assert states["g"].keys() == states["p2"].keys() == states["p3"].keys()
    for key in states["g"]:
        assert torch.equal(states["g"][key], states["p2"][key]) and torch.equal(states["g"][key], states["p3"][key])
    g, p2, p3 = (dict(net.branches[b].named_parameters()) for b in ("g", "p2", "p3"))
    for key in g:
        assert g[key].data_ptr() != p2[key].data_ptr() != p3[key].data_ptr() != g[key].data_ptr()
    before = {key: (p2[key].detach().clone(), p3[key].detach().clone()) for key in g}
    with torch.no_grad():
        for param in g.values():
            param.add_(1.0)
    for key in g:
        assert torch.equal(p2[key], before[key][0]) and torch.equal(p3[key], before[key][1])
    # a loss on the global branch alone gives no gradient to the part branches
    net.train()
    net(torch.randn(2, 3, 48, 16))["logits_g"].sum().backward()
    assert any(p.grad is not None for p in g.values())
    assert all(p.grad is None for p in (*p2.values(), *p3.values()))


@pytest.mark.parametrize("size", [(48, 16), (64, 32)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_part_branch_maps_are_twice_the_global_one(size):
    net = _build().eval()
    with torch.no_grad():
        maps = net.branch_maps(torch.randn(2, 3, *size))
    h, w = size
    # ResNet output stride 32 for the global branch (each stride-2 step rounds up), 16 for the parts
    assert tuple(maps["g"].shape[-2:]) == (math.ceil(h / 32), math.ceil(w / 32))
    for part in ("p2", "p3"):
        assert tuple(maps[part].shape[-2:]) == (h // 16, w // 16)
    if h % 32 == 0 and w % 32 == 0:
        assert tuple(maps["p2"].shape[-2:]) == (2 * maps["g"].shape[-2], 2 * maps["g"].shape[-1])


def test_last_stride_1_gives_the_global_branch_the_part_map_size():
    # BoT's "stride" trick on MGN: the global branch loses its last down-sampling (fast-reid's LAST_STRIDE 1).
    net = _build(last_stride=1).eval()
    with torch.no_grad():
        maps = net.branch_maps(torch.randn(2, 3, 64, 32))
    assert tuple(maps["g"].shape[-2:]) == tuple(maps["p2"].shape[-2:]) == (4, 2)


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenetv2", "efficientnet_lite0"])
def test_trunk_plus_branch_is_the_backbone_forward(backbone):
    # The same seed builds the same backbone weights: the global branch must be the plain backbone
    # (last stride 2) and the part branches the backbone with last stride 1.
    images = torch.randn(2, 3, 64, 32)
    net = _build(backbone, reduction_dim=8).eval()
    torch.manual_seed(0)
    plain, _ = build_backbone(backbone)
    torch.manual_seed(0)
    unstrided, _ = build_backbone(backbone, last_stride=1)
    with torch.no_grad():
        maps = net.branch_maps(images)
        assert torch.allclose(maps["g"], plain.eval()(images), atol=1e-5)
        assert torch.allclose(maps["p2"], unstrided.eval()(images), atol=1e-5)
        assert torch.allclose(maps["p3"], maps["p2"], atol=1e-6)


# --------------------------------------------------------------------------- parameter count


def _reduction(c: int, d: int) -> int:
    return c * d + 2 * d  # 1×1 conv without bias + BN weight and bias


def _classifier(inputs: int, k: int) -> int:
    return inputs * k + k  # Linear with bias


@pytest.mark.parametrize("options,copies,reductions,ce_pooled,ce_reduced", [
    ({}, 3, 8, 3, 5),
    ({"shared_reduction": True}, 3, 1, 3, 5),
    ({"ce_on": "reduced"}, 3, 8, 0, 8),
    ({"branches": ("g",)}, 1, 1, 1, 0),
    ({"branches": ("p2",)}, 1, 3, 1, 2),
    ({"branches": ("g", "p3")}, 2, 5, 2, 3),
], ids=["paper", "shared", "ce-reduced", "g", "p2", "g+p3"])
def test_parameter_count_from_layer_shapes(options, copies, reductions, ce_pooled, ce_reduced):
    d, k = 32, NUM_CLASSES
    net = _build("resnet18", reduction_dim=d, **options)
    backbone, c = build_backbone("resnet18")
    copied_stages = _count(backbone.layer3[1:]) + _count(backbone.layer4)  # res_conv4_2… and res_conv5
    pretrained = _count(backbone) + (copies - 1) * copied_stages
    new = reductions * _reduction(c, d) + ce_pooled * _classifier(c, k) + ce_reduced * _classifier(d, k)
    assert _count(net) == pretrained + new
    assert sum(_count(net.get_submodule(m)) for m in net.module_groups["pretrained"]) == pretrained
    assert sum(_count(net.get_submodule(m)) for m in net.module_groups["new"]) == new


def test_module_groups():
    groups = _build().module_groups
    assert set(groups["pretrained"]) == set(groups["trunk"]) | set(groups["branches"])
    assert set(groups["new"]) == set(groups["reductions"]) | set(groups["necks"]) | set(groups["classifiers"])


# --------------------------------------------------------------------------- options


def test_reduction_relu_option():
    images = torch.randn(4, 3, 48, 16)
    for relu in (True, False):
        net = _build(reduction_relu=relu, reduction_dim=16).train()
        with torch.no_grad():
            out = net(images)
        least = min(float(out[name].min()) for name in net.test_feature)
        assert (least >= 0) if relu else (least < 0)  # train-mode BN output has zero mean: some are negative


def test_spec_options_are_recorded_in_reid_info():
    net = _build(pool="avg", branches=("g", "p2"))
    info = net.reid_info
    assert info["arch"] == "mgn" and info["backbone"] == TINY
    assert info["options"]["pool"] == "avg" and info["branches"] == ["g", "p2"]
    assert info["split"]["trunk"][-1] == "layer3[0]" and info["split"]["branch"] == ["layer3[1:]", "layer4"]


@pytest.mark.parametrize("options,field", [
    ({"branches": ("g", "x")}, "model.branches"),
    ({"branches": ()}, "model.branches"),
    ({"branches": ("g", "g")}, "model.branches"),
    ({"branches": ("p3", "g")}, "model.branches"),
    ({"ce_on": "logits"}, "model.ce_on"),
    ({"pool": "min"}, "model.pool"),
    ({"pool": "gem", "gem_p": 0.0}, "model.gem_p"),
    ({"gem_p": 4.0}, "model.gem_p"),  # only read with pool: gem
    ({"reduction_dim": 0}, "model.reduction_dim"),
    ({"global_stride": 1}, "model.global_stride"),  # not an option: the global branch's stride is model.last_stride
    ({"reduction_relu": "yes"}, "model.reduction_relu"),
    ({"stripes": 4}, "model.stripes"),
])
def test_invalid_options_fail_in_one_line(options, field):
    with pytest.raises(ValueError) as error:
        build_architecture(_spec(**options), NUM_CLASSES)
    message = str(error.value)
    assert field in message and "\n" not in message


# --------------------------------------------------------------------------- BNNeck on MGN


@pytest.mark.parametrize("ce_on", ["pooled", "reduced"])
def test_bnneck_parameter_count_from_layer_shapes(ce_on):
    d, k = 32, NUM_CLASSES
    plain = _build("resnet18", reduction_dim=d, ce_on=ce_on)
    neck = _build("resnet18", neck="bnneck", reduction_dim=d, ce_on=ce_on)
    c = build_backbone("resnet18")[1]
    # + one BN (weight, bias) per reduced feature, + one per pooled global when the globals' CE reads
    # the pooled vectors; - the 8 classifier biases.
    pooled_bns = 3 * 2 * c if ce_on == "pooled" else 0
    assert _count(neck) == _count(plain) + 8 * 2 * d + pooled_bns - 8 * k
    assert all(m.bias is None for m in neck.classifiers.values())
    frozen = [n for n, p in neck.named_parameters() if not p.requires_grad]
    assert len(frozen) == 8 + (3 if ce_on == "pooled" else 0) and all(n.endswith(".bias") for n in frozen)
    assert sum(_count(neck.get_submodule(m)) for m in neck.module_groups["new"]) + sum(
        _count(neck.get_submodule(m)) for m in neck.module_groups["pretrained"]) == _count(neck)


def test_bnneck_outputs_classifier_inputs_and_test_feature():
    net = _build(neck="bnneck", reduction_dim=16, ce_on="reduced").train()
    images = torch.randn(6, 3, 48, 16)
    out = net(images)
    keys = ["g", "p2", "p3", "p2_1", "p2_2", "p3_1", "p3_2", "p3_3"]
    assert net.test_feature == tuple(f"f_{k}_bn" for k in keys)
    for k in keys:
        # train mode, bias 0 and weight 1: each BN'd feature has zero mean and unit (biased) variance
        bn = out[f"f_{k}_bn"].detach()
        assert torch.allclose(bn, torch.nn.functional.batch_norm(out[f"f_{k}"].detach(), None, None, training=True),
                              atol=1e-4)
        # the classifier reads the BN'd feature, bias-free
        assert torch.allclose(out[f"logits_{k}"], bn @ net.classifiers[k].weight.T, atol=1e-5)


def test_bnneck_with_pooled_globals_normalises_the_pooled_vector_for_the_classifier():
    net = _build(neck="bnneck", reduction_dim=16).train()
    out = net(torch.randn(6, 3, 48, 16))
    pooled = out["f_g_pooled"].detach()
    expected = torch.nn.functional.batch_norm(pooled, None, None, training=True) @ net.classifiers["g"].weight.T
    assert torch.allclose(out["logits_g"], expected, atol=1e-5)


def test_unsplittable_backbone_names_the_supported_ones():
    with pytest.raises(ValueError, match="mobilenetv3_small_050.*mobilenetv2.*efficientnet_lite0") as error:
        build_architecture(_spec("timm:mobilenetv3_small_050"), NUM_CLASSES)
    assert "\n" not in str(error.value)


# --------------------------------------------------------------------------- cpu-profile trunks


@pytest.mark.parametrize("backbone,trunk_channels,channels,split", [
    # MobileNetV2: features[7] ends the 64-ch stride-16 entry; features[18] is the 1280-ch head conv
    ("mobilenetv2", 64, 1280, (["features[0:8]"], ["features[8:]"])),
    # EfficientNet-Lite0: blocks[3][0] is the 80-ch stride-16 entry; conv_head is 1280-ch
    ("efficientnet_lite0", 80, 1280,
     (["conv_stem", "bn1", "blocks[0:3]", "blocks.3[0]"], ["blocks.3[1:]", "blocks[4:]", "conv_head", "bn2"])),
])
def test_cpu_profile_trunk_split_and_shapes(backbone, trunk_channels, channels, split):
    d = 16
    net = _build(backbone, reduction_dim=d)
    images = torch.randn(2, 3, 64, 32)
    net.eval()
    with torch.no_grad():
        shared = net.trunk(images)
        maps = net.branch_maps(images)
        out = net(images)
    assert tuple(shared.shape) == (2, trunk_channels, 4, 2)  # stride 16
    assert tuple(maps["g"].shape) == (2, channels, 2, 1)  # stride 32
    assert tuple(maps["p2"].shape) == tuple(maps["p3"].shape) == (2, channels, 4, 2)
    assert (net.reid_info["split"]["trunk"], net.reid_info["split"]["branch"]) == split
    for name, dim in net.feature_dims.items():
        assert tuple(out[name].shape) == (2, dim)
    assert sum(net.feature_dims[n] for n in net.test_feature) == 8 * d
    assert all(net.feature_dims[f"f_{b}_pooled"] == channels for b in ("g", "p2", "p3"))


def test_every_branch_starts_from_the_pretrained_weights():
    try:
        backbone, _ = build_backbone("mobilenetv2", pretrained=True)
    except (ValueError, FileNotFoundError) as error:  # no offline ImageNet copy on this machine
        pytest.skip(str(error))
    torch.manual_seed(0)
    net = build_architecture(ModelSpec(arch="mgn", backbone="mobilenetv2", pretrained=True), NUM_CLASSES)
    reference = backbone.state_dict()
    trunk = net.trunk.state_dict()
    assert trunk and all(torch.equal(v, reference[k]) for k, v in trunk.items())  # keys: features.0 … features.7
    for b in ("g", "p2", "p3"):
        branch = net.branches[b].state_dict()  # keys: features.8 … features.18
        assert branch and all(torch.equal(v, reference[k]) for k, v in branch.items())
    assert len(trunk) + len(net.branches["g"].state_dict()) == len(reference)
