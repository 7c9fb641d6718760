"""``spreid``: region pooling against features computed by hand, options, and the build contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reidbench.harness.spec import ModelSpec
from reidbench.models.architectures import build_architecture
from reidbench.models.architectures.spreid import SPReID, SPReIDParams, region_features
from reidbench.models.registry import build_params


class FixedMap(nn.Module):
    """A 'backbone' returning a given B×C×h×w map (so pooled features can be computed by hand)."""

    def __init__(self, feature_map: torch.Tensor) -> None:
        super().__init__()
        self.feature_map = feature_map
        self.weight = nn.Parameter(torch.ones(()))  # so the model has a pretrained group to train

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.feature_map * self.weight


def _three_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Feature maps (3×2×2×2) and masks (3×5×2×2: foreground, head, upper, lower, shoes)."""
    x = torch.tensor([
        [[[1., 2.], [3., 4.]], [[0., 0.], [0., 8.]]],
        [[[2., 2.], [2., 2.]], [[1., 0.], [0., 3.]]],
        [[[1., 1.], [1., 5.]], [[4., 4.], [4., 4.]]],
    ])
    m = torch.zeros(3, 5, 2, 2)
    # image 1: soft maps
    m[0, 0] = torch.tensor([[0., 1.], [.5, 1.]])
    m[0, 1] = torch.tensor([[0., 1.], [0., 0.]])
    m[0, 2] = torch.tensor([[0., 0.], [.5, 0.]])
    m[0, 3] = torch.tensor([[0., 0.], [0., .5]])
    m[0, 4] = torch.tensor([[0., 0.], [0., .5]])
    # image 2: no lower body, no shoes (a legs-cut crop)
    m[1, 0] = 1.0
    m[1, 1] = torch.tensor([[1., 1.], [0., 0.]])
    m[1, 2] = torch.tensor([[0., 0.], [1., 1.]])
    # image 3: no person at all (a background-only distractor): every map is zero
    return x, m


def _model(feature_map: torch.Tensor, **options) -> SPReID:
    params = build_params(SPReIDParams, {"mask_stride": 1, **options}, "model")
    return SPReID(FixedMap(feature_map), feature_map.shape[1], num_classes=3, params=params)


def test_region_pooling_matches_the_features_computed_by_hand():
    x, m = _three_images()
    model = _model(x).eval()
    out = model(torch.zeros(3, 3, 2, 2), masks=m)
    # By hand (sum p·x / sum p per region; parts: element-wise max; global: plain mean):
    # 1: fg (0·1+1·2+.5·3+1·4)/2.5 = 3, (1·8)/2.5 = 3.2; head (2, 0); upper (3, 0); lower = shoes = (4, 8)
    #    -> parts max (4, 8); GAP (2.5, 2)
    # 2: fg (2, 1); head (2, .5); upper (2, 1.5); lower, shoes absent -> zero vectors -> parts (2, 1.5); GAP (2, 1)
    # 3: nothing -> fg and parts zero vectors (not NaN); GAP (2, 4)
    expected = torch.tensor([[3.0, 3.2, 4.0, 8.0, 2.5, 2.0],
                             [2.0, 1.0, 2.0, 1.5, 2.0, 1.0],
                             [0.0, 0.0, 0.0, 0.0, 2.0, 4.0]])
    assert torch.allclose(out["f"], expected, atol=1e-6)
    assert torch.allclose(out["f_fg"], expected[:, 0:2]) and torch.allclose(out["f_parts"], expected[:, 2:4])
    assert torch.allclose(out["f_global"], expected[:, 4:6])
    regions = region_features(x, m)
    assert torch.allclose(regions[0, 1:], torch.tensor([[2.0, 0.0], [3.0, 0.0], [4.0, 8.0], [4.0, 8.0]]))


def test_a_nearly_empty_region_is_scaled_towards_zero_by_eps():
    x = torch.full((1, 1, 2, 2), 4.0)
    m = torch.zeros(1, 5, 2, 2)
    m[0, 0, 0, 0] = 1e-8  # Σp = 1e-8 < eps = 1e-6: the average 4 is scaled by Σp / eps = 0.01
    assert torch.allclose(region_features(x, m, eps=1e-6)[0, 0], torch.tensor([0.04]))
    assert torch.allclose(region_features(x, m, eps=1e-9)[0, 0], torch.tensor([4.0]))  # eps below Σp: exact


def test_the_map_is_resized_bilinearly_with_aligned_corners():
    # 2×2 map [[0, 3], [6, 9]] resized to 4×4 with corners aligned is v(i, j) = 2i + j; the pixel (0, 1)
    # samples column 1/3 of the way: 1.0. Half-pixel centres (align_corners false) sample column 0.25: 0.75.
    x = torch.tensor([[[[0.0, 3.0], [6.0, 9.0]]]])
    m = torch.zeros(1, 5, 4, 4)
    m[0, 1, 0, 1] = 1.0
    assert region_features(x, m, align_corners=True)[0, 1].item() == pytest.approx(1.0)
    assert region_features(x, m, align_corners=False)[0, 1].item() == pytest.approx(0.75)
    whole = torch.zeros(1, 5, 4, 4)
    whole[0, 0] = 1.0  # a uniform foreground averages the resized map: (mean of 2i + j) = 3 + 1.5
    assert region_features(x, whole)[0, 0].item() == pytest.approx(4.5)


def test_masks_are_area_averaged_to_the_input_size_over_mask_stride():
    x = torch.tensor([[[[5.0], [7.0]]]])  # a 2×1 map: one value per half of the image
    m = torch.zeros(1, 5, 32, 16)
    m[0, 1, :16] = 1.0  # head: the top half; upper: a quarter of the bottom half's pixels
    m[0, 2, 16:, :4] = 1.0
    model = _model(x, mask_stride=16).eval()
    out = model(torch.zeros(1, 3, 32, 16), masks=m)
    # masks become 2×1 (area averages: head [1, 0], upper [0, 0.25]); head -> 5, upper -> 7; max -> 7
    assert out["f_parts"].item() == pytest.approx(7.0)
    assert out["f_fg"].item() == 0.0  # foreground map left empty: zero vector


@pytest.mark.parametrize("features, width", [(["global"], 2), (["foreground", "global"], 4),
                                             (["parts", "global"], 4), (["foreground", "parts", "global"], 6)])
def test_features_option_selects_the_pieces_in_order(features, width):
    x, m = _three_images()
    model = _model(x, features=features).train()
    out = model(torch.zeros(3, 3, 2, 2), masks=m)
    pieces = {"foreground": out["f_fg"], "parts": out["f_parts"], "global": out["f_global"]}
    assert torch.equal(out["f"], torch.cat([pieces[f] for f in features], 1))
    assert model.feature_dims["f"] == width and out["logits"].shape == (3, 3)
    assert model.head["classifier"].in_features == width


def test_masks_are_required_unless_only_the_global_feature_is_used():
    x, _ = _three_images()
    with pytest.raises(ValueError, match="data.masks"):
        _model(x)(torch.zeros(3, 3, 2, 2))
    out = _model(x, features=["global"]).eval()(torch.zeros(3, 3, 2, 2))
    assert torch.allclose(out["f"], torch.tensor([[2.5, 2.0], [2.0, 1.0], [2.0, 4.0]]))


@pytest.mark.parametrize("options, fragment", [
    ({"features": ["global", "parts"]}, "must keep the order"),
    ({"features": ["hands"]}, "model.features"),
    ({"features": []}, "non-empty"),
    ({"mask_stride": 0}, "model.mask_stride"),
    ({"eps": 0.0}, "model.eps"),
])
def test_bad_options_are_one_line_errors(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        build_params(SPReIDParams, options, "model")


def test_built_from_a_spec_it_trains_through_the_masks():
    spec = ModelSpec(arch="spreid", backbone="timm:test_resnet", pretrained=False)
    torch.manual_seed(0)
    net = build_architecture(spec, 4)
    channels = net.feature_dims["f_global"]
    assert net.feature_dims == {"f_fg": channels, "f_parts": channels, "f_global": channels, "f": 3 * channels}
    assert net.test_feature == "f" and net.reid_info["feature"] == ["f_fg", "f_parts", "f_global"]
    assert net.module_groups["new"] == ("head",) and net.module_groups["pretrained"] == ("backbone",)
    classifier = net.head["classifier"]  # LeCun normal N(0, 1/fan_in), bias 0 (Chainer's defaults)
    assert torch.equal(classifier.bias.detach(), torch.zeros(4))
    assert classifier.weight.std().item() == pytest.approx((3 * channels) ** -0.5, rel=0.25)
    images, masks = torch.randn(4, 3, 64, 32), torch.rand(4, 5, 64, 32)
    out = net.train()(images, masks=masks)
    nn.functional.cross_entropy(out["logits"], torch.tensor([0, 1, 2, 3])).backward()
    grads = [p.grad for p in net.backbone.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
