"""Losses against brute-force references written here."""

from __future__ import annotations

import math

import pytest
import torch

from reidbench.models.losses import CenterLoss, TripletLoss, build_center_optimizer, center_sgd_step, id_loss


def _brute_force_triplet(features: torch.Tensor, labels: list[int], margin: float | None) -> float:
    def distance(i: int, j: int) -> float:
        a, b = features[i].tolist(), features[j].tolist()
        squared = sum(x * x for x in a) + sum(y * y for y in b) - 2 * sum(x * y for x, y in zip(a, b))
        return math.sqrt(max(squared, 1e-12))

    terms = []
    for i in range(len(labels)):
        d_ap = max(distance(i, j) for j in range(len(labels)) if labels[j] == labels[i])  # includes i itself
        d_an = min(distance(i, j) for j in range(len(labels)) if labels[j] != labels[i])
        gap = d_ap - d_an
        terms.append(max(0.0, gap + margin) if margin is not None else math.log1p(math.exp(gap)))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("margin", [0.3, None])
def test_batch_hard_triplet_matches_a_double_loop(margin: float | None) -> None:
    generator = torch.Generator().manual_seed(1)
    # Small spread so that several anchors are active (gap + margin > 0) with margin 0.3.
    features = (torch.randn(8, 5, generator=generator, dtype=torch.float64) * 0.3).requires_grad_(True)
    labels = [0, 0, 1, 1, 1, 2, 2, 3]  # identity 3 appears once: its hardest positive is itself
    loss = TripletLoss(margin)(features, torch.tensor(labels))
    assert loss.item() == pytest.approx(_brute_force_triplet(features.detach(), labels, margin), abs=1e-9)
    loss.backward()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0


def test_an_identity_seen_once_has_d_ap_of_the_clamp() -> None:
    # Anchor 2 (label 9) is alone: d_ap = sqrt(1e-12) = 1e-6, so its term is relu(1e-6 − d_an + m).
    features = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.2]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 9])
    # Anchor 0: d_ap 0.1, d_an 0.2; anchor 1: d_ap 0.1, d_an √0.05; anchor 2: d_ap 1e-6, d_an 0.2.
    expected = [0.1 - 0.2 + 0.3, 0.1 - math.sqrt(0.05) + 0.3, 1e-6 - 0.2 + 0.3]
    assert TripletLoss(0.3)(features, labels).item() == pytest.approx(sum(expected) / 3, abs=1e-12)


def test_triplet_without_any_negative_is_zero_not_nan() -> None:
    features = torch.randn(4, 3, requires_grad=True)
    loss = TripletLoss(0.3)(features, torch.zeros(4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(features.grad).all()


def test_center_loss_is_the_batch_mean_of_squared_distances() -> None:
    torch.manual_seed(0)
    center_loss = CenterLoss(num_classes=3, feat_dim=2)
    assert center_loss.centers.shape == (3, 2) and isinstance(center_loss.centers, torch.nn.Parameter)
    with torch.no_grad():
        center_loss.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.0]]))
    features = torch.tensor([[1.0, 2.0], [0.0, 1.0], [-2.0, 3.0]])
    labels = torch.tensor([0, 1, 2])
    # ‖(1,2)−(0,0)‖² = 5, ‖(0,1)−(1,1)‖² = 1, ‖(−2,3)−(−2,0)‖² = 9 → mean 5 (no ½).
    assert center_loss(features, labels).item() == pytest.approx(5.0)


def test_center_update_is_the_closed_form_after_one_weighted_step() -> None:
    torch.manual_seed(0)
    beta, batch = 0.0005, 6
    center_loss = CenterLoss(num_classes=4, feat_dim=3)
    centers_before = center_loss.centers.detach().clone()
    features = torch.randn(batch, 3, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 1, 3])  # class 2 absent: its centre must not move
    optimizer = build_center_optimizer(center_loss, lr=0.5)
    optimizer.zero_grad()
    total = features.pow(2).sum() * 0.0 + beta * center_loss(features, labels)
    total.backward()
    center_sgd_step(center_loss, optimizer, center_weight=beta)
    expected = centers_before.clone()
    for k in range(4):
        members = features.detach()[labels == k]
        expected[k] = centers_before[k] + (members - centers_before[k]).sum(0) / batch
    torch.testing.assert_close(center_loss.centers.detach(), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(center_loss.centers.detach()[2], centers_before[2])
    assert optimizer.param_groups[0]["momentum"] == 0 and optimizer.param_groups[0]["weight_decay"] == 0


def test_id_loss_with_label_smoothing_matches_the_smoothed_target() -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 7, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 6, 3, 3, 1])
    epsilon, classes = 0.1, 7
    target = (1 - epsilon) * torch.nn.functional.one_hot(labels, classes).double() + epsilon / classes
    manual = -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()
    assert id_loss(logits, labels, label_smoothing=epsilon).item() == pytest.approx(manual.item(), abs=1e-12)
    plain = -logits.log_softmax(dim=1)[torch.arange(5), labels].mean()
    assert id_loss(logits, labels, label_smoothing=0.0).item() == pytest.approx(plain.item(), abs=1e-12)
    with pytest.raises(ValueError, match="label_smoothing"):
        id_loss(logits, labels, label_smoothing=1.0)


def test_triplet_on_half_precision_features_is_computed_in_float32() -> None:
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(6, 2048, generator=generator) * 4  # ‖f‖² ≈ 3e4: near float16's 65504 limit
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    half = features.half()
    expected = TripletLoss(0.3)(half.float(), labels)
    assert torch.isfinite(TripletLoss(0.3)(half, labels))
    torch.testing.assert_close(TripletLoss(0.3)(half, labels), expected)
