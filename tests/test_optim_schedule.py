"""LR schedule against the values bot.md spells out, and the optimiser's coupled L2."""

from __future__ import annotations

import pytest
import torch

from reidbench.harness.train.optim import build_epoch_scheduler, build_optimizer, lr_multiplier

BASE = 3.5e-4


def test_warmup_schedule_matches_reference_values():
    lr = {t: BASE * lr_multiplier(t, (40, 70), 0.1, 10, 0.01) for t in range(1, 121)}
    assert lr[1] == pytest.approx(3.815e-5, rel=1e-9)  # 0.01*(1-0.1) + 0.1 = 0.109
    assert lr[5] == pytest.approx(BASE * (0.01 * 0.5 + 0.5))
    for t in range(10, 40):
        assert lr[t] == pytest.approx(BASE)
    for t in range(40, 70):
        assert lr[t] == pytest.approx(3.5e-5)
    for t in range(70, 121):
        assert lr[t] == pytest.approx(3.5e-6)
    assert all(lr[t] < lr[t + 1] for t in range(1, 10))


def test_without_warmup_first_epochs_train_at_base_lr():
    assert [lr_multiplier(t, (40, 70)) for t in (1, 39, 40, 70)] == pytest.approx([1, 1, 0.1, 0.01])


def test_epochs_are_one_based():
    with pytest.raises(ValueError, match="1-based"):
        lr_multiplier(0, (40, 70))


def test_scheduler_steps_once_per_epoch_like_the_multiplier():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([p], "adam", BASE, 5e-4, (0.9, 0.999))
    sched = build_epoch_scheduler(opt, (4, 7), 0.1, 3, 0.01)
    seen = []
    for epoch in range(1, 10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()  # no gradients: a no-op that keeps the step order torch expects
        sched.step()
    assert seen == pytest.approx([BASE * lr_multiplier(t, (4, 7), 0.1, 3, 0.01) for t in range(1, 10)])


def test_adam_weight_decay_is_coupled_l2_not_decoupled():
    # With zero loss gradient, coupled L2 feeds wd*w through Adam's normalisation: the first step
    # moves w by exactly lr (sign of w), whereas AdamW would move it by lr*wd*w.
    p = torch.nn.Parameter(torch.tensor([2.0]))
    opt = build_optimizer([p], "adam", 0.1, 5e-4, (0.9, 0.999))
    p.grad = torch.zeros(1)
    opt.step()
    assert float(p.detach()) == pytest.approx(2.0 - 0.1, abs=1e-4)
    assert isinstance(opt, torch.optim.Adam) and not isinstance(opt, torch.optim.AdamW)
