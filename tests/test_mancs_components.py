"""Mancs' components against independent computations: FAB, its deep supervision, PReLU, focal, BCE,
curriculum sampling, the random resized crop, and the tricks that switch them on."""

from __future__ import annotations

import fnmatch
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from reidbench.harness.spec import ModelSpec, SpecError, load_spec_file, spec_from_dict
from reidbench.harness.train.build import module_globs
from reidbench.models.architectures import build_architecture
from reidbench.models.attention import FullyAttentionalBlock
from reidbench.models.stages import After
from reidbench.models.terms import TrainProgress
from reidbench.models.terms.bce import one_hot_bce
from reidbench.models.terms.curriculum import (CurriculumTripletLoss, CurriculumTripletParams, draw_triplets,
                                               effective_bounds, mu_fraction_sigma)
from reidbench.models.terms.focal import focal_loss
from reidbench.tricks import get_trick, parse_trick_list

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _bot(backbone: str = "resnet18", **options) -> nn.Module:
    torch.manual_seed(0)
    spec = ModelSpec(arch="bot", backbone=backbone, pretrained=False, options=tuple(sorted(options.items())))
    return build_architecture(spec, 5)


# --------------------------------------------------------------------------- FAB


def test_fab_on_a_hand_built_tensor_with_identity_convs():
    # reduce = expand = identity 1x1 convs, zero bias: M = sigmoid(relu(F)) element-wise, out = F*M + F.
    block = FullyAttentionalBlock(channels=2, reduction=1)
    with torch.no_grad():
        for conv in (block.reduce, block.expand):
            conv.weight.copy_(torch.eye(2)[:, :, None, None])
            conv.bias.zero_()
    values = [[[-1.0, 0.0], [2.0, 3.0]], [[0.5, -2.0], [1.0, -0.25]]]
    x = torch.tensor([values])
    block.keep_attended = True
    out = block(x)
    attended = block.take_attended()
    for c in range(2):
        for i in range(2):
            for j in range(2):
                f = values[c][i][j]
                m = _sigmoid(max(f, 0.0))
                assert out[0, c, i, j].item() == pytest.approx(f * m + f, abs=1e-6)
                assert attended[0, c, i, j].item() == pytest.approx(f * m, abs=1e-6)
    assert block.mask(x).shape == x.shape  # no pooling: M has F's shape


def test_fab_reduction_sets_the_hidden_width():
    assert FullyAttentionalBlock(64, 16).reduce.out_channels == 4
    assert FullyAttentionalBlock(8, 16).reduce.out_channels == 1  # at least one channel


@pytest.mark.parametrize("backbone, blocks", [
    ("resnet18", ["layer2.1", "layer3.1", "layer4.1"]),
    ("mobilenetv2", ["features.6", "features.13", "features.18"]),
])
def test_fab_blocks_follow_the_last_block_of_stages_2_to_4_and_are_new(backbone, blocks):
    net = _bot(backbone, fab=True)
    fabs = [n for n, m in net.named_modules() if isinstance(m, FullyAttentionalBlock)]
    assert fabs == [f"backbone.{b}.extra" for b in blocks]
    for b in blocks:
        assert isinstance(net.backbone.get_submodule(b), After)
    groups = net.module_groups
    names = [n for n, _ in net.named_parameters()]
    pretrained = {n for n in names if any(fnmatch.fnmatchcase(n, g) for g in module_globs(["pretrained"], groups, "x"))}
    new = {n for n in names if any(fnmatch.fnmatchcase(n, g) for g in module_globs(["new"], groups, "x"))}
    assert pretrained | new == set(names) and not pretrained & new
    assert {n for n in new if ".extra." in n} == {n for n in names if ".extra." in n} != set()
    assert all(n.startswith(("head.", "attention.", "backbone.")) for n in new)
    assert not any(".extra." in n for n in pretrained)


def test_fab_is_inserted_after_the_weights_and_the_head_are_built():
    # Same seed: the FAB model's backbone (under .inner) and head equal the plain bot's.
    plain, fab = _bot(), _bot(fab=True)
    mine = {k.replace(".inner", ""): v for k, v in fab.state_dict().items() if ".extra." not in k
            and not k.startswith("attention.")}
    assert mine.keys() == plain.state_dict().keys()
    assert all(torch.equal(mine[k], v) for k, v in plain.state_dict().items())


def test_default_bot_has_no_options_and_the_old_groups():
    net = _bot()
    assert net.module_groups == {"backbone": ("backbone",), "head": ("head",), "pretrained": ("backbone",),
                                 "new": ("head",)}
    assert not any(isinstance(m, (FullyAttentionalBlock, nn.PReLU)) for m in net.modules())


def test_attention_feature_is_the_pooled_masked_maps_concatenated():
    net = _bot(fab=True)
    net.train()
    inputs: list[torch.Tensor] = []
    blocks = [m for m in net.modules() if isinstance(m, FullyAttentionalBlock)]
    handles = [b.register_forward_hook(lambda _m, args, _o: inputs.append(args[0])) for b in blocks]
    out = net(torch.randn(2, 3, 64, 32))
    for h in handles:
        h.remove()
    expected = torch.cat([(f * b.mask(f)).mean(dim=(2, 3)) for f, b in zip(inputs, blocks)], dim=1)
    assert out["f_att"].shape == (2, 128 + 256 + 512) and net.feature_dims["f_att"] == 896
    assert torch.allclose(out["f_att"], expected, atol=1e-6)
    assert torch.allclose(out["logits_att"], net.attention.classifier(expected), atol=1e-5)
    assert all(b.attended is None for b in blocks)  # taken: no graph kept past the step
    net.eval()
    with torch.no_grad():
        assert "logits_att" not in net(torch.randn(2, 3, 64, 32)) and "f_att" in net(torch.randn(2, 3, 64, 32))


def test_bce_term_against_the_formula_by_hand():
    torch.manual_seed(3)
    logits = torch.randn(4, 5, dtype=torch.float64)
    labels = torch.tensor([0, 3, 3, 4])
    total = 0.0
    for i in range(4):
        for c in range(5):
            q = _sigmoid(float(logits[i, c]))
            y = 1.0 if c == int(labels[i]) else 0.0
            total += y * math.log(q) + (1 - y) * math.log(1 - q)
    assert one_hot_bce(logits, labels).item() == pytest.approx(-total / 20, rel=1e-12)


# --------------------------------------------------------------------------- PReLU


@pytest.mark.parametrize("backbone, name", [("resnet18", "layer4.1.act2"), ("mobilenetv2", "features.18.2")])
def test_prelu_replaces_only_the_last_relu_and_with_slope_0_is_the_relu_net(backbone, name):
    plain, prelu = _bot(backbone), _bot(backbone, prelu=True)
    swapped = [n for n, m in prelu.backbone.named_modules() if isinstance(m, nn.PReLU)]
    assert swapped == [name]
    assert prelu.module_groups["new"] == ("head", f"backbone.{name}")
    with torch.no_grad():
        prelu.backbone.get_submodule(name).weight.zero_()
        for net in (plain, prelu):  # timm zero-inits each block's last BN: randomise, so the sum can be < 0
            generator = torch.Generator().manual_seed(1)
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=generator))
    plain.eval(), prelu.eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        # Relative comparisons: an untrained MobileNetV2 with random BN weights has tiny activations.
        assert torch.allclose(plain(x)["f_t"], prelu(x)["f_t"], rtol=1e-5, atol=0)
        prelu.backbone.get_submodule(name).weight.fill_(0.25)
        assert not torch.allclose(plain(x)["f_t"], prelu(x)["f_t"], rtol=1e-2, atol=0)


def test_prelu_refuses_a_shared_activation_module():
    from torchvision.models import resnet18

    from reidbench.models.activation import replace_last_activation

    net = nn.Sequential(*list(resnet18(weights=None).children())[:-2])  # torchvision blocks share one relu
    with pytest.raises(ValueError, match="runs 2 times per forward"):
        replace_last_activation(net)


# --------------------------------------------------------------------------- focal


def test_focal_with_gamma_0_is_cross_entropy_and_gamma_2_matches_the_formula():
    torch.manual_seed(1)
    logits = torch.randn(6, 4, dtype=torch.float64) * 3
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    assert focal_loss(logits, labels, 0.0, "softmax").item() == pytest.approx(F.cross_entropy(logits, labels).item(),
                                                                             rel=1e-12)
    for gamma in (0.0, 2.0):
        soft = sig = 0.0
        for i in range(6):
            z = [float(v) for v in logits[i]]
            y = int(labels[i])
            p_soft = math.exp(z[y]) / sum(math.exp(v) for v in z)
            p_sig = _sigmoid(z[y])  # the seed's p_i = Sigmoid_{c_i}(FC(f))
            soft += (1 - p_soft) ** gamma * math.log(p_soft)
            sig += (1 - p_sig) ** gamma * math.log(p_sig)
        assert focal_loss(logits, labels, gamma, "softmax").item() == pytest.approx(-soft / 6, rel=1e-10)
        assert focal_loss(logits, labels, gamma, "sigmoid").item() == pytest.approx(-sig / 6, rel=1e-10)


def test_focal_is_finite_for_confident_logits():
    logits = torch.tensor([[60.0, -60.0], [-60.0, 60.0]], requires_grad=True)
    loss = focal_loss(logits, torch.tensor([0, 0]), 2.0, "softmax")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


# --------------------------------------------------------------------------- curriculum sampling


def test_mu_and_sigma_at_hand_computed_epochs():
    assert mu_fraction_sigma(0.0, 30, 60, 15, 0.001) == pytest.approx((1.0, 15000.0))
    assert mu_fraction_sigma(15.0, 30, 60, 15, 0.001) == pytest.approx((0.5, 15 * 1000 ** 0.5))
    assert mu_fraction_sigma(30.0, 30, 60, 15, 0.001) == pytest.approx((0.0, 15.0))
    assert mu_fraction_sigma(60.0, 30, 60, 15, 0.001) == pytest.approx((0.0, 0.015))
    assert mu_fraction_sigma(15.0, 30, 60, 15, 0.001, "constant") == pytest.approx((0.5, 15.0))


def test_t0_t1_rescale_with_the_run_length_and_are_recorded():
    params = CurriculumTripletParams()
    assert effective_bounds(params, 160) == (30.0, 60.0)
    assert effective_bounds(params, 6) == pytest.approx((1.125, 2.25))
    info = CurriculumTripletLoss(params, TrainProgress(max_epochs=6)).describe()
    assert (info["t0_epochs"], info["t1_epochs"]) == pytest.approx((1.125, 2.25))
    assert info["mu_fraction_by_epoch"][0] == 1.0 and info["mu_fraction_by_epoch"][2:] == [0.0] * 4
    assert info["sigma_by_epoch"][0] == pytest.approx(15000.0)


def _expected_rank_distribution(n_neg: int, mu: float, sigma: float) -> np.ndarray:
    r = np.arange(n_neg, dtype=np.float64)
    w = np.exp(-((r - mu) ** 2) / (2 * sigma ** 2))
    return w / w.sum()


@pytest.mark.parametrize("epoch, options, mu, sigma", [
    (1, {}, 28.0, 15000.0),                                   # t = 0: easiest, near uniform
    (16, {"early_sigma": "constant", "a": 4.0}, 14.0, 4.0),   # t = 15: half way, σ held at a
    (31, {}, 0.0, 15.0),                                      # t = t0: hardest first, σ = a
    (41, {}, 0.0, 1.5),                                       # t = 40: σ = 15·0.001^(1/3)
])
def test_drawn_negative_ranks_follow_the_discretised_gaussian(epoch, options, mu, sigma):
    P, K = 8, 4
    n_neg = (P - 1) * K
    labels = torch.arange(P).repeat_interleave(K)
    term = CurriculumTripletLoss(CurriculumTripletParams(**options), TrainProgress(epoch=epoch, max_epochs=160))
    _, mu_fraction, s = term.schedule()
    assert mu_fraction * n_neg == pytest.approx(mu) and s == pytest.approx(sigma)
    torch.manual_seed(0)
    features = torch.randn(P * K, 6)
    distances = torch.cdist(features, features)
    same = (labels[:, None] == labels[None, :]).numpy()
    counts = np.zeros(n_neg)
    draws = 600
    for _ in range(draws):
        anchor, pos, neg, rank = draw_triplets(distances, labels, mu_fraction, s)
        counts += np.bincount(rank.numpy(), minlength=n_neg)
    # The drawn negative is the one at that rank (hardest first), found independently by numpy.
    d = distances.numpy()
    for a, n, r in zip(anchor.tolist(), neg.tolist(), rank.tolist()):
        assert not same[a, n] and np.sort(d[a][~same[a]])[r] == pytest.approx(d[a, n])
    assert (labels[anchor] == labels[pos]).all() and (anchor != pos).all()
    empirical = counts / counts.sum()
    expected = _expected_rank_distribution(n_neg, mu, sigma)
    assert np.abs(empirical - expected).max() < 0.02  # 19200 draws: ~5 standard errors at worst


def test_curriculum_draws_are_seeded_and_every_positive_mode_counts_pkk1_triplets():
    labels = torch.arange(4).repeat_interleave(3)
    features = torch.randn(12, 5, requires_grad=True)
    term = CurriculumTripletLoss(CurriculumTripletParams(), TrainProgress(epoch=10, max_epochs=160))

    def draws(seed: int):
        torch.manual_seed(seed)
        return [t.tolist() for t in draw_triplets(torch.cdist(features, features).detach(), labels, 0.5, 5.0)]

    assert draws(7) == draws(7) and draws(7) != draws(8)
    torch.manual_seed(7)
    first = term(features, labels)
    torch.manual_seed(7)
    assert term(features, labels).item() == first.item()
    first.backward()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0
    anchor, pos, _, _ = draw_triplets(torch.cdist(features, features).detach(), labels, 0.5, 5.0, positive="all")
    assert len(anchor) == 4 * 3 * 2  # P·K·(K−1)


def test_curriculum_loss_is_the_margin_triplet_of_the_drawn_triplets():
    labels = torch.arange(3).repeat_interleave(2)
    features = torch.randn(6, 4)
    torch.manual_seed(2)
    loss = CurriculumTripletLoss(CurriculumTripletParams(margin=0.5), TrainProgress(epoch=40, max_epochs=160))(
        features, labels)
    torch.manual_seed(2)
    from reidbench.models.losses import euclidean_distances

    d = euclidean_distances(features)
    mu_fraction, sigma = mu_fraction_sigma(39.0, 30, 60, 15, 0.001)  # epoch 40: t = 39
    anchor, pos, neg, _ = draw_triplets(d, labels, mu_fraction, sigma)
    hand = sum(max(0.0, 0.5 + float(d[a, p]) - float(d[a, n])) for a, p, n in zip(anchor, pos, neg)) / len(anchor)
    assert loss.item() == pytest.approx(hand, rel=1e-6)


# --------------------------------------------------------------------------- random crop


def test_random_crop_ratio_is_height_over_width():
    from reidbench.harness.data.transforms import build_train_transform, resized_crop

    crop = resized_crop((64, 32), (0.64, 1.0), (2.0, 3.0))
    assert crop.scale == (0.64, 1.0) and crop.ratio == pytest.approx((1 / 3, 1 / 2))  # torchvision: width/height
    image = torch.randint(0, 256, (3, 64, 32), dtype=torch.uint8)
    # Scale 1 and height/width exactly 2 on a 64x32 image: the crop is the whole image (an inverted
    # ratio would fall back to a 16x32 centre crop).
    whole = build_train_transform((64, 32), flip_prob=0.0, pad_px=0, crop_scale=(1.0, 1.0), crop_aspect=(2.0, 2.0))
    plain = build_train_transform((64, 32), flip_prob=0.0, pad_px=0)
    assert torch.equal(whole(image), plain(image))
    torch.manual_seed(0)
    out = build_train_transform((64, 32), pad_px=0, crop_scale=(0.64, 1.0))(image)
    assert out.shape == (3, 64, 32)


def test_crop_fields_validate_and_default_off():
    base = {"data": {"crop_scale": [0.64, 1.0]}}
    assert spec_from_dict(base).data.crop_scale == (0.64, 1.0)
    assert spec_from_dict({}).data.crop_scale is None
    with pytest.raises(SpecError, match="crop_aspect.*only read with data.crop_scale"):
        spec_from_dict({"data": {"crop_aspect": [1, 2]}})
    with pytest.raises(SpecError, match="data.crop_scale"):
        spec_from_dict({"data": {"crop_scale": [0.5, 1.5]}})


# --------------------------------------------------------------------------- options and tricks


def test_bot_options_are_checked_in_one_line():
    with pytest.raises(SpecError, match="model.fab_reduction is only read with model.fab=true"):
        spec_from_dict({"model": {"fab_reduction": 8}})
    with pytest.raises(SpecError, match="model.fab_stages=.*stage5"):
        spec_from_dict({"model": {"fab": True, "fab_stages": ["stage2", "stage5"]}})
    assert spec_from_dict({"model": {"fab": False}}).model.options == ()  # a default is not stored


def test_tricks_on_bot_and_their_refusals():
    bot = load_spec_file(EXPERIMENTS / "bot.yaml", "paper")
    fab = get_trick("fab").apply(bot)
    assert dict(fab.model.options) == {**dict(bot.model.options), "fab": True}  # the paper profile's stem_relu kept
    assert (fab.loss.terms[-1].kind, fab.loss.terms[-1].reads, fab.loss.terms[-1].weight) == ("bce", "logits_att", 0.2)
    cs = get_trick("curriculum").apply(bot)
    assert (cs.loss.terms[1].kind, dict(cs.loss.terms[1].options)) == ("curriculum_triplet", {"margin": 0.3})
    assert get_trick("focal").apply(bot).loss.terms[0].kind == "focal"
    with pytest.raises(ValueError, match="conflicts with ls"):
        spec = bot
        for t in parse_trick_list("ls,focal"):
            spec = t.apply(spec)
    mgn = load_spec_file(EXPERIMENTS / "mgn.yaml", "paper")
    with pytest.raises(ValueError, match="applies to model.arch bot or mancs, not 'mgn'"):
        get_trick("fab").apply(mgn)
    mancs = load_spec_file(EXPERIMENTS / "mancs.yaml", "paper")
    for name in ("fab", "focal", "curriculum"):
        with pytest.raises(ValueError, match="changes nothing"):
            get_trick(name).apply(mancs)
