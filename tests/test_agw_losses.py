"""AGW / fast-reid losses against brute force: the weighted regularised triplet (WRT), the soft
margin, circle-softmax logits and the circle term (docs/agw.md)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from reidbench.harness.spec import LossTermSpec
from reidbench.models.losses import TripletLoss
from reidbench.models.objective import build_objective
from reidbench.models.terms.circle import circle_logits


def _distance(a: torch.Tensor, b: torch.Tensor) -> float:
    # the reference's sqrt(clamp(‖a‖² + ‖b‖² − 2a·b, 1e-12)): ≈ 1e-6 from an item to itself
    return math.sqrt(max(float(a @ a + b @ b - 2 * a @ b), 1e-12))


def _softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def wrt_brute_force(features: torch.Tensor, labels: list[int]) -> float:
    """ReID-Survey's WeightedRegularizedTriplet written out per anchor with Python numbers."""
    n = len(labels)
    total = 0.0
    for i in range(n):
        pos = [_distance(features[i], features[j]) for j in range(n) if labels[j] == labels[i]]  # itself included
        neg = [_distance(features[i], features[j]) for j in range(n) if labels[j] != labels[i]]
        # softmax_weights(dist_ap, is_pos): shift by the row max of dist*mask = the largest positive distance
        m_p = max(pos)
        z_p = sum(math.exp(d - m_p) for d in pos) + 1e-6
        furthest = sum(d * math.exp(d - m_p) / z_p for d in pos)
        # softmax_weights(-dist_an, is_neg): the row max of (-dist_an)*mask is 0 (the masked entries)
        z_n = sum(math.exp(-d) for d in neg) + 1e-6
        closest = sum(d * math.exp(-d) / z_n for d in neg)
        total += _softplus(furthest - closest)  # SoftMarginLoss(closest - furthest, y=1)
    return total / n


def test_wrt_matches_a_brute_force_loop_over_anchors():
    torch.manual_seed(0)
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 3]
    features = torch.randn(len(labels), 5, dtype=torch.float64) * 1.5
    loss = TripletLoss(margin=None, mining="weighted")(features, torch.tensor(labels))
    assert loss.item() == pytest.approx(wrt_brute_force(features, labels), rel=1e-9)


def test_wrt_keeps_the_references_shift_for_far_negatives():
    # Distances around 20: the reference's negative weights sum to far less than 1 (module doc of
    # losses.softmax_weights); the brute force says the same, so the quirk is reproduced.
    torch.manual_seed(1)
    labels = [0, 0, 1, 1]
    features = torch.randn(4, 3, dtype=torch.float64) * 12
    from reidbench.models.losses import euclidean_distances, softmax_weights

    same = torch.tensor(labels)[:, None] == torch.tensor(labels)[None, :]
    is_neg = (~same).double()
    weights = softmax_weights(-euclidean_distances(features) * is_neg, is_neg)
    assert weights.sum(dim=1).min() < 0.5, "this test must be in the regime where the shift matters"
    loss = TripletLoss(margin=None, mining="weighted")(features, torch.tensor(labels))
    assert loss.item() == pytest.approx(wrt_brute_force(features, labels), rel=1e-9)


def wrt_exact_brute_force(features: torch.Tensor, labels: list[int]) -> float:
    """WRT with true softmax weights: w_ap ∝ exp(d_ap) over the positives, w_an ∝ exp(−d_an) over the
    negatives, each summing to 1 (the shift-invariant textbook softmax, written with Python numbers)."""
    n = len(labels)
    total = 0.0
    for i in range(n):
        pos = [_distance(features[i], features[j]) for j in range(n) if labels[j] == labels[i]]
        neg = [_distance(features[i], features[j]) for j in range(n) if labels[j] != labels[i]]
        furthest = sum(d * math.exp(d - max(pos)) for d in pos) / sum(math.exp(d - max(pos)) for d in pos)
        closest = sum(d * math.exp(min(neg) - d) for d in neg) / sum(math.exp(min(neg) - d) for d in neg)
        total += _softplus(furthest - closest)
    return total / n


@pytest.mark.parametrize("scale", [1.5, 12.0])  # near and far negatives (at 12 the reference's weights vanish)
def test_exact_wrt_weights_match_a_true_softmax(scale):
    torch.manual_seed(3)
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 3]
    features = torch.randn(len(labels), 5, dtype=torch.float64) * scale
    loss = TripletLoss(margin=None, mining="weighted", weights="exact")(features, torch.tensor(labels))
    assert loss.item() == pytest.approx(wrt_exact_brute_force(features, labels), rel=1e-9)
    reference = TripletLoss(margin=None, mining="weighted")(features, torch.tensor(labels)).item()
    if scale > 10:  # far negatives: the two readings must differ, or the option would be pointless
        assert abs(reference - loss.item()) > 1.0


def test_exact_softmax_weights_sum_to_one_per_row_and_ignore_masked_entries():
    from reidbench.models.losses import exact_softmax_weights

    values = torch.tensor([[-30.0, -25.0, 5.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=torch.float64)
    weights = exact_softmax_weights(values, mask)
    e = math.exp(-5.0)  # row 0: softmax of (−30, −25) = (e/(1+e), 1/(1+e)); the masked 5.0 gets 0
    assert weights[0].tolist() == pytest.approx([e / (1 + e), 1 / (1 + e), 0.0], rel=1e-12)
    assert weights[1].sum().item() == pytest.approx(1.0, rel=1e-12)
    assert weights[2].tolist() == [0.0, 0.0, 0.0]  # nothing kept: zeros, not NaN
    with pytest.raises(ValueError, match="weights='typo'"):
        TripletLoss(margin=None, mining="weighted", weights="typo")


def test_weighted_mining_with_a_margin_and_gradients():
    torch.manual_seed(2)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    features = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    loss = TripletLoss(margin=0.3, mining="weighted")(features, labels)
    loss.backward()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mining='semi'"):
        TripletLoss(mining="semi")


def test_soft_margin_batch_hard_by_hand():
    # 1-d features: a=0, b=1 (id 0), c=3, d=7 (id 1). Hardest positive / negative per anchor:
    # a: ap 1, an 3; b: ap 1, an 2; c: ap 4, an 2; d: ap 4, an 6.
    features = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    expected = (_softplus(1 - 3) + _softplus(1 - 2) + _softplus(4 - 2) + _softplus(4 - 6)) / 4
    assert TripletLoss(margin=None)(features, labels).item() == pytest.approx(expected, abs=1e-5)
    hinge = (0 + 0 + (4 - 2 + 0.3) + 0) / 4
    assert TripletLoss(margin=0.3)(features, labels).item() == pytest.approx(hinge, abs=1e-5)


def test_circle_logits_match_the_formula_element_by_element():
    torch.manual_seed(3)
    cosine = torch.rand(4, 5) * 2 - 1
    labels = torch.tensor([0, 3, 3, 4])
    s, m = 64.0, 0.35
    out = circle_logits(cosine, labels, s, m)
    for b in range(4):
        for k in range(5):
            c = float(cosine[b, k])
            if k == int(labels[b]):
                expected = s * max(1 + m - c, 0.0) * (c - (1 - m))
            else:
                expected = s * max(c + m, 0.0) * (c - m)
            assert out[b, k].item() == pytest.approx(expected, rel=1e-5, abs=1e-4)


def test_circle_alphas_carry_no_gradient():
    # fast-reid detaches α: d logit_y / d s_y = s·α_p, not s·(α_p − (s_y − Δ_p))
    cosine = torch.tensor([[0.2, -0.1]], requires_grad=True)
    circle_logits(cosine, torch.tensor([0]), 64.0, 0.35)[0, 0].backward()
    assert cosine.grad[0, 0].item() == pytest.approx(64.0 * (1 + 0.35 - 0.2))


def test_circle_term_is_ce_with_label_smoothing_on_circle_logits():
    torch.manual_seed(4)
    cosine = torch.rand(6, 3) * 2 - 1
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    term = LossTermSpec(kind="circle", reads="cosine", weight=0.5, options=(("label_smoothing", 0.1),))
    objective = build_objective([term], 3, {})
    (label, value), = objective({"cosine": cosine}, labels).items()
    assert label == "id"  # the identity loss keeps its name in logs and curves
    logits = circle_logits(cosine, labels, 64.0, 0.35)
    log_p = F.log_softmax(logits, dim=1)
    targets = torch.full((6, 3), 0.1 / 3)
    targets[torch.arange(6), labels] += 0.9
    expected = 0.5 * (-(targets * log_p).sum(dim=1)).mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
