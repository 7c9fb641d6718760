"""Plain and BNNeck heads."""

from __future__ import annotations

import pytest
import torch

from reidbench.models.heads import BNNeckHead, PlainHead, build_head


def test_bnneck_bias_stays_frozen_at_zero_through_an_optimizer_step() -> None:
    torch.manual_seed(0)
    head = BNNeckHead(in_dim=16, num_classes=5)
    assert not head.bottleneck.bias.requires_grad
    assert torch.equal(head.bottleneck.weight.detach(), torch.ones(16))
    optimizer = torch.optim.Adam(head.parameters(), lr=0.1, weight_decay=5e-4)
    out = head(torch.randn(8, 16, 3, 2) + 3.0)
    torch.nn.functional.cross_entropy(out["logits"], torch.arange(8) % 5).backward()
    optimizer.step()
    assert torch.equal(head.bottleneck.bias.detach(), torch.zeros(16))
    assert not torch.equal(head.bottleneck.weight.detach(), torch.ones(16))  # the weight does train
    # f_i is f_t standardised per channel over the batch (training-mode BN, weight 1, bias 0).
    f_t = out["f_t"].detach()
    expected = (f_t - f_t.mean(0)) / torch.sqrt(f_t.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(out["f_i"].detach(), expected, rtol=1e-4, atol=1e-4)


def test_bnneck_classifier_has_no_bias_and_std_0_001() -> None:
    torch.manual_seed(0)
    head = BNNeckHead(in_dim=512, num_classes=200)
    assert head.classifier.bias is None
    assert head.classifier.weight.std().item() == pytest.approx(0.001, rel=0.02)
    assert head.classifier.weight.mean().abs().item() < 2e-5


def test_plain_head_pools_and_classifies_with_a_bias() -> None:
    head = PlainHead(in_dim=4, num_classes=3)
    assert head.classifier.bias is not None and head.classifier.bias.requires_grad
    feature_map = torch.arange(2 * 4 * 2 * 3, dtype=torch.float32).reshape(2, 4, 2, 3)
    out = head(feature_map)
    expected_pooled = feature_map.mean(dim=(2, 3))
    torch.testing.assert_close(out["f_t"], expected_pooled)
    assert out["f_i"] is out["f_t"]
    torch.testing.assert_close(out["logits"], expected_pooled @ head.classifier.weight.t() + head.classifier.bias)


def test_build_head_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="model.neck='bn'.*bnneck, plain"):
        build_head("bn", 8, 3)
    with pytest.raises(ValueError, match="num_classes=0"):
        build_head("plain", 8, 0)
