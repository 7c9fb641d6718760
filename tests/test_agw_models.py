"""AGW / fast-reid model components against independent computations: GeM pooling, the non-local
block (identity at start, a hand-computed output), its placement, exact module groups, the cosine
classifier, and the bot / mgn options that use them (docs/agw.md)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from reidbench.harness.spec import ModelSpec
from reidbench.models.architectures import build_architecture
from reidbench.models.backbones import build_backbone
from reidbench.models.heads import BNNeckHead, CosineClassifier, PlainHead
from reidbench.models.non_local import NonLocalBlock, insert_non_local
from reidbench.models.pooling import GeneralizedMeanPooling, gem
from reidbench.models.stages import inserted_modules

AGW = (0, 2, 3, 0)


# --------------------------------------------------------------------------- GeM


def test_gem_with_p_1_is_average_pooling_and_large_p_approaches_max():
    torch.manual_seed(0)
    x = torch.rand(3, 5, 4, 2) + 0.1  # positive: the eps clamp does not act
    torch.testing.assert_close(gem(x, 1.0), x.mean(dim=(2, 3)))
    y = x + 0.4  # in [0.5, 1.5]: y**100 stays within float32 (GeM computes in float32)
    top = y.amax(dim=(2, 3))
    big, mid = gem(y, 100.0), gem(y, 10.0)
    assert torch.all(big <= top * (1 + 1e-6)) and torch.all(top - big < top - mid)
    # the mean of 8 values is at least max/8: gem >= max * (1/8)^(1/100) = 0.979 max
    torch.testing.assert_close(big, top, rtol=0.021, atol=0)


def test_gem_hand_value_and_clamp():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    assert gem(x, 3.0).item() == pytest.approx(25.0 ** (1 / 3))  # ((1 + 8 + 27 + 64) / 4) ** (1/3)
    zeros = torch.zeros(1, 1, 2, 2)
    assert gem(zeros, 3.0).item() == pytest.approx(1e-6, rel=1e-4)  # clamp(x, 1e-6): finite, not 0


def test_learnable_gem_has_one_trained_exponent_starting_at_3():
    pool = GeneralizedMeanPooling(3.0, learnable=True)
    assert [n for n, _ in pool.named_parameters()] == ["p"] and pool.p.shape == (1,) and pool.p.item() == 3.0
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    out = pool(x)
    assert out.item() == pytest.approx(25.0 ** (1 / 3))
    out.sum().backward()
    # d/dp (mean x^p)^(1/p) = f * (Σ x^p ln x / Σ x^p / p - ln(mean x^p) / p²)
    xs = [1.0, 2.0, 3.0, 4.0]
    s = sum(v ** 3 for v in xs)
    f = (s / 4) ** (1 / 3)
    expected = f * (sum(v ** 3 * math.log(v) for v in xs) / s / 3 - math.log(s / 4) / 9)
    assert pool.p.grad.item() == pytest.approx(expected, rel=1e-4)
    assert list(GeneralizedMeanPooling(3.0).parameters()) == []


def test_mgn_gem_pooling_is_bit_identical_to_its_former_inline_formula():
    from reidbench.models.architectures.mgn import pool_map

    torch.manual_seed(1)
    x = torch.randn(2, 8, 6, 4).relu()
    former = x.float().clamp(min=1e-6).pow(3.0).mean(dim=(2, 3)).pow(1.0 / 3.0).to(x.dtype)
    assert torch.equal(pool_map(x, "gem", 3.0), former)


# --------------------------------------------------------------------------- non-local block


def _identity_check(name: str, counts, expected_after):
    torch.manual_seed(0)
    backbone, _ = build_backbone(name, pretrained=False)
    backbone.eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        before = backbone(x)
    inserted = insert_non_local(backbone, counts)
    assert [n.rsplit(".extra", 1)[0] for n in inserted] == expected_after
    assert inserted_modules(backbone) == inserted
    with torch.no_grad():
        assert torch.equal(backbone(x), before), "zero-initialised BN: every block is the identity at start"
    # also in training mode (batch statistics): BN(...) = 0 * normalised + 0 exactly
    block = backbone.get_submodule(inserted[-1])
    block.train()
    features = torch.randn(2, block.channels, 4, 2)
    assert torch.equal(block(features), features)


def test_non_local_is_the_identity_at_start_on_resnet():
    # resnet34 has ResNet-50's [3, 4, 6, 3] blocks: AGW's places (layer2.2-3, layer3.3-5)
    _identity_check("resnet34", AGW, ["layer2.2", "layer2.3", "layer3.3", "layer3.4", "layer3.5"])


def test_non_local_is_the_identity_at_start_on_mobilenetv2():
    # stride-8 group features.4-6 (last 2: 5, 6), stride-16 group features.7-13 (last 3: 11-13)
    _identity_check("mobilenetv2", AGW, ["features.5", "features.6", "features.11", "features.12", "features.13"])


def test_a_stage_shorter_than_asked_gets_a_block_after_each_of_its_blocks():
    _identity_check("resnet18", AGW, ["layer2.0", "layer2.1", "layer3.0", "layer3.1"])


def test_non_local_output_by_hand_with_nonzero_bn():
    torch.manual_seed(3)
    block = NonLocalBlock(channels=2, inter=1)
    bn = block.W[1]
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -1.5]))
        bn.bias.copy_(torch.tensor([0.25, 0.1]))
        bn.running_mean.copy_(torch.tensor([0.3, -0.2]))
        bn.running_var.copy_(torch.tensor([2.0, 0.5]))
    block.eval()
    x = torch.randn(1, 2, 2, 3)  # 6 positions
    out = block(x)[0]
    block.requires_grad_(False)  # plain numbers below
    # Brute force over positions: θ_i = a_θ·x_i + b_θ (one inner channel), f_ij = θ_i φ_j / N, ...
    def conv(c, v):  # 1x1 conv with C inputs -> 1 output at one position
        return float((c.weight.detach().reshape(-1) * v).sum() + c.bias.detach())
    positions = [(r, q) for r in range(2) for q in range(3)]
    n = len(positions)
    vec = {p: x[0, :, p[0], p[1]] for p in positions}
    theta = {p: conv(block.theta, vec[p]) for p in positions}
    phi = {p: conv(block.phi, vec[p]) for p in positions}
    g = {p: conv(block.g, vec[p]) for p in positions}
    w_conv = block.W[0]
    for p in positions:
        y = sum(theta[p] * phi[q] / n * g[q] for q in positions)
        for c in range(2):
            wy = float(w_conv.weight[c, 0, 0, 0]) * y + float(w_conv.bias[c])
            normed = (wy - float(bn.running_mean[c])) / math.sqrt(float(bn.running_var[c]) + bn.eps)
            expected = float(bn.weight[c]) * normed + float(bn.bias[c]) + float(vec[p][c])
            assert out[c, p[0], p[1]].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_non_local_channels_one_as_published_or_half():
    backbone, _ = build_backbone("resnet34", pretrained=False)
    inserted = insert_non_local(backbone, AGW, "half")
    blocks = [backbone.get_submodule(n) for n in inserted]
    assert [(b.channels, b.inter) for b in blocks] == [(128, 64)] * 2 + [(256, 128)] * 3
    backbone, _ = build_backbone("resnet34", pretrained=False)
    blocks = [backbone.get_submodule(n) for n in insert_non_local(backbone, AGW)]
    assert {b.inter for b in blocks} == {1}
    with pytest.raises(ValueError, match="4 integers"):
        insert_non_local(backbone, (0, 2, 3))


def test_non_local_works_on_channels_last_input():
    block = NonLocalBlock(4, 2)
    x = torch.randn(2, 4, 3, 5)
    torch.testing.assert_close(block(x.contiguous(memory_format=torch.channels_last)), block(x))


# --------------------------------------------------------------------------- bot / mgn options


def _bot(**options) -> nn.Module:
    spec = ModelSpec(arch="bot", backbone="resnet18", pretrained=False, neck="bnneck",
                     options=tuple(sorted(options.items())))
    torch.manual_seed(0)
    return build_architecture(spec, 5)


def _names(net: nn.Module, groups) -> set[str]:
    return {f"{m}.{p}" for m in groups for p, _ in net.get_submodule(m).named_parameters()}


def test_bot_nonlocal_blocks_are_new_not_pretrained_and_groups_are_exact():
    net = _bot(nonlocal_layers=AGW)
    extra = {n for n, _ in net.named_parameters() if ".extra." in n}
    assert len(extra) == 4 * 10  # 4 blocks × (g, theta, phi, W's conv: weight + bias; W's BN: weight + bias)
    pretrained, new = _names(net, net.module_groups["pretrained"]), _names(net, net.module_groups["new"])
    assert extra <= new and not extra & pretrained
    assert not pretrained & new and pretrained | new == {n for n, _ in net.named_parameters()}
    assert extra <= _names(net, net.module_groups["backbone"])  # freezing 'backbone' freezes them (fast-reid)
    assert net.reid_info["nonlocal_after"] == ["layer2.0", "layer2.1", "layer3.0", "layer3.1"]
    assert net.reid_info["inserted"] == [f"backbone.{b}.extra" for b in net.reid_info["nonlocal_after"]]


def test_bot_default_options_build_the_same_weights_as_before():
    # The options' defaults: no pooling module, no inserted block, the linear classifier —
    # the same state dict as build_model with its former arguments.
    from reidbench.models.build import build_model

    net = _bot()
    torch.manual_seed(0)
    reference = build_model("resnet18", num_classes=5, neck="bnneck", pretrained=False)
    a, b = net.state_dict(), reference.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "options" not in net.reid_info and "nonlocal_after" not in net.reid_info


def test_bot_gem_and_nonlocal_and_cosine_outputs():
    net = _bot(pool="gem", gem_learnable=True, nonlocal_layers=AGW, classifier="cosine")
    net.train()
    out = net(torch.randn(4, 3, 64, 32))
    assert set(out) == {"f_t", "f_i", "cosine"}
    assert out["cosine"].shape == (4, 5) and out["cosine"].abs().max() <= 1 + 1e-6
    assert "head.pool.p" in _names(net, net.module_groups["new"])
    # the cosine classifier reads f_i (after the BNNeck), as the linear one does
    w = net.head.classifier.weight
    expected = nn.functional.normalize(out["f_i"]) @ nn.functional.normalize(w).t()
    torch.testing.assert_close(out["cosine"], expected)
    assert net.reid_info["options"]["pool"] == "gem"


def test_cosine_classifier_by_hand_on_both_heads():
    clf = CosineClassifier(3, 2)
    with torch.no_grad():
        clf.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    f = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 4.0]])
    expected = torch.tensor([[1.0, 1 / math.sqrt(2)], [0.0, 3 / 5 / math.sqrt(2)]])
    torch.testing.assert_close(clf(f), expected)
    plain = PlainHead(3, 2, classifier="cosine")
    assert plain.classifier.weight.shape == (2, 3) and "logits" not in plain(torch.rand(2, 3, 2, 2))
    assert set(BNNeckHead(3, 2, classifier="cosine")(torch.rand(2, 3, 2, 2))) == {"f_t", "f_i", "cosine"}


@pytest.mark.parametrize("bad,message", [
    ({"pool": "median"}, "model.pool='median' is invalid"),
    ({"gem_learnable": True}, "model.gem_learnable is only read with model.pool=gem"),
    ({"nonlocal_layers": (0, 2, 3)}, "model.nonlocal_layers=\\[0, 2, 3\\] is invalid"),
    ({"nonlocal_channels": "quarter"}, "model.nonlocal_channels='quarter' is invalid"),
    ({"classifier": "arc"}, "model.classifier='arc' is invalid"),
])
def test_bot_options_are_validated_in_one_line(bad, message):
    from reidbench.harness.spec import SpecError, spec_from_dict

    with pytest.raises(SpecError, match=message):
        spec_from_dict({"model": {"backbone": "resnet18", **{k: list(v) if isinstance(v, tuple) else v
                                                             for k, v in bad.items()}}})


def test_mgn_nonlocal_blocks_shared_in_the_trunk_and_copied_into_each_branch():
    spec = ModelSpec(arch="mgn", backbone="mobilenetv2", pretrained=False,
                     options=(("nonlocal_layers", AGW), ("reduction_dim", 8)))
    torch.manual_seed(0)
    net = build_architecture(spec, 4)
    blocks = [n for n, m in net.named_modules() if isinstance(m, NonLocalBlock)]
    trunk = [n for n in blocks if n.startswith("trunk.")]
    assert len(trunk) == 2 and len(blocks) == 2 + 3 * 3  # features.5-6 shared; 11-13 in each of 3 branches
    assert net.reid_info["nonlocal_after"] == ["features.5", "features.6", "features.11", "features.12",
                                               "features.13"]
    params = {n for n, _ in net.named_parameters()}
    pretrained, new = _names(net, net.module_groups["pretrained"]), _names(net, net.module_groups["new"])
    assert not pretrained & new and pretrained | new == params
    assert {n for n in params if ".extra." in n} <= new
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 96, 32))
    assert out["f_g"].shape == (2, 8)


def test_mgn_learnable_gem_has_one_exponent_per_pooled_vector_and_cosine_outputs():
    spec = ModelSpec(arch="mgn", backbone="timm:test_resnet", pretrained=False,
                     options=(("classifier", "cosine"), ("gem_learnable", True), ("pool", "gem"),
                              ("reduction_dim", 8)))
    torch.manual_seed(0)
    net = build_architecture(spec, 4)
    assert sorted(net.pools) == sorted(["g", "p2", "p3", "p2_1", "p2_2", "p3_1", "p3_2", "p3_3"])
    net.train()
    out = net(torch.randn(2, 3, 48, 16))
    cos = sorted(k for k in out if k.startswith("cosine_"))
    assert len(cos) == 8 and not any(k.startswith("logits") for k in out)
    assert all(out[k].abs().max() <= 1 + 1e-6 for k in cos)
    # with p at 3 the learnable pools give what the fixed-p path gives
    fixed = ModelSpec(arch="mgn", backbone="timm:test_resnet", pretrained=False,
                      options=(("pool", "gem"), ("reduction_dim", 8)))
    torch.manual_seed(0)
    ref = build_architecture(fixed, 4)
    maps = ref.branch_maps(torch.randn(2, 3, 48, 16))
    a, b = ref.pool_features(maps), net.pool_features(maps)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    assert "pools" in net.module_groups["new"]
