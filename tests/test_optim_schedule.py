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


# --- the schedule registry (harness/train/schedules.py) ------------------------------------------

import dataclasses  # noqa: E402
import math  # noqa: E402

from reidbench.harness.train.schedules import (  # noqa: E402
    SCHEDULES,
    CosineParams,
    MultiStepParams,
    PolyParams,
    ScheduleEntry,
    build_scheduler,
    get_schedule,
    register_schedule,
    resolve_epochs,
)


def _reference_lr_multiplier(epoch, milestones, gamma, warmup_epochs, warmup_factor):
    # The pre-registry lr_multiplier body, verbatim: multistep must stay bit-identical to it.
    if warmup_epochs > 0 and epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        warm = warmup_factor * (1.0 - alpha) + alpha
    else:
        warm = 1.0
    decays = sum(1 for m in milestones if m <= epoch)
    return warm * gamma**decays


def _lrs(name, max_epochs, epochs, **params):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=BASE)
    sched = build_scheduler(opt, name, max_epochs, **params)
    seen = []
    for _ in range(epochs):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return seen


@pytest.mark.parametrize("warmup", [0, 10])
def test_multistep_is_bit_identical_to_the_reference(warmup):
    entry = get_schedule("multistep")
    for t in range(1, 122):
        ref = _reference_lr_multiplier(t, (40, 70), 0.1, warmup, 0.01)
        assert entry.multiplier(t, 120, milestones=(40, 70), gamma=0.1, warmup_epochs=warmup) == ref
        assert lr_multiplier(t, (40, 70), 0.1, warmup, 0.01) == ref


def test_multistep_scheduler_matches_build_epoch_scheduler_exactly():
    params = dict(milestones=(40, 70), gamma=0.1, warmup_epochs=10, warmup_factor=0.01)
    p = torch.nn.Parameter(torch.zeros(1))
    old_opt, new_opt = torch.optim.SGD([p], lr=BASE), torch.optim.SGD([p], lr=BASE)
    old = build_epoch_scheduler(old_opt, (40, 70), 0.1, 10, 0.01)
    new = build_scheduler(new_opt, "multistep", 120, **params)
    for _ in range(120):
        assert new_opt.param_groups[0]["lr"] == old_opt.param_groups[0]["lr"]
        old_opt.step(), new_opt.step(), old.step(), new.step()


def test_multistep_is_the_default_and_its_defaults_are_the_reference():
    from reidbench.harness.train.schedules import DEFAULT_SCHEDULE

    assert DEFAULT_SCHEDULE == "multistep"
    assert MultiStepParams() == MultiStepParams(milestones=(40, 70), gamma=0.1, warmup_epochs=0,
                                                warmup_factor=0.01, unit="epochs")


def test_cosine_hand_computed_with_warmup_and_delay():
    # T=10, W=2, delay 3: epoch 1 warms up, 2 reaches the full LR, 3-5 hold it (E = 5), then
    # (1 + cos(pi * (t - 5) / 6)) / 2 for t = 6..10, reaching 0 at epoch 11 (after the run).
    m = [get_schedule("cosine").multiplier(t, 10, warmup_epochs=2, delay_epochs=3) for t in range(1, 12)]
    half = math.sqrt(3) / 2
    expected = [0.01 * 0.5 + 0.5, 1, 1, 1, 1, (1 + half) / 2, 0.75, 0.5, 0.25, (1 - half) / 2, 0.0]
    assert m == pytest.approx(expected, abs=1e-12)


def test_cosine_min_factor_and_plain_cosine():
    assert CosineParams() == CosineParams(warmup_epochs=0, warmup_factor=0.01, delay_epochs=0, min_factor=0.0,
                                          unit="epochs")
    entry = get_schedule("cosine")
    # No warmup, no delay: epoch 1 at the full LR, then d(t) over progress (t - 1) / T.
    assert entry.multiplier(1, 4) == 1.0
    assert entry.multiplier(3, 4) == pytest.approx(0.5)  # progress 2/4
    assert entry.multiplier(3, 4, min_factor=0.2) == pytest.approx(0.2 + 0.8 * 0.5)
    assert entry.multiplier(5, 4, min_factor=0.2) == pytest.approx(0.2)  # the epoch after the run
    assert entry.multiplier(9, 4, min_factor=0.2) == pytest.approx(0.2)  # clamped, never back up


def test_poly_hand_computed():
    entry = get_schedule("poly")
    assert [entry.multiplier(t, 10, power=2.0) for t in (1, 2, 6, 10, 11, 12)] == pytest.approx(
        [1.0, 0.81, 0.25, 0.01, 0.0, 0.0])
    assert entry.multiplier(2, 10) == pytest.approx(0.9**0.9)  # SPReID's power 0.9 by default
    assert PolyParams().power == 0.9
    # Warmup multiplies: epoch 1 of W=4 is 0.01 * 0.75 + 0.25.
    assert entry.multiplier(1, 10, warmup_epochs=4) == pytest.approx(0.2575)
    assert entry.multiplier(3, 10, warmup_epochs=4, power=1.0) == pytest.approx((0.01 * 0.25 + 0.75) * 0.8)


def test_resolve_epochs_units():
    assert resolve_epochs(40, 120, "epochs") == 40
    assert resolve_epochs(40.0, 120, "epochs") == 40
    assert resolve_epochs(0.5, 12, "fraction") == 6
    assert resolve_epochs(0.125, 12, "fraction") == 2  # 1.5 rounds half up, not to even
    assert resolve_epochs(0.01, 12, "fraction") == 1  # a nonzero fraction never maps below 1
    assert resolve_epochs(0, 12, "fraction") == 0
    with pytest.raises(ValueError, match="whole number"):
        resolve_epochs(2.5, 12, "epochs")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        resolve_epochs(1.5, 12, "fraction")
    with pytest.raises(ValueError, match="epochs or fraction"):
        resolve_epochs(1, 12, "iterations")


def test_fraction_schedule_shortened_from_120_to_12_epochs_is_proportional():
    params = dict(milestones=(40 / 120, 70 / 120), warmup_epochs=10 / 120, unit="fraction")
    entry = get_schedule("multistep")
    full = [entry.multiplier(t, 120, **params) for t in range(1, 121)]
    assert full == [lr_multiplier(t, (40, 70), 0.1, 10, 0.01) for t in range(1, 121)]
    short = [entry.multiplier(t, 12, **params) for t in range(1, 13)]
    # Milestones (4, 7), warmup 1 epoch (no ramp): the LR drops at the start of epochs 4 and 7.
    assert short == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01])
    # Kept in epochs, the same profile would never decay inside 12 epochs: the reason for fractions.
    assert {get_schedule("multistep").multiplier(t, 12) for t in range(1, 13)} == {1.0}


def test_cosine_delay_and_warmup_as_fractions():
    entry = get_schedule("cosine")
    as_epochs = [entry.multiplier(t, 20, warmup_epochs=4, delay_epochs=6) for t in range(1, 21)]
    as_fraction = [entry.multiplier(t, 20, warmup_epochs=0.2, delay_epochs=0.3, unit="fraction")
                   for t in range(1, 21)]
    assert as_fraction == as_epochs


def test_get_schedule_miss_lists_the_names():
    with pytest.raises(ValueError, match="schedule.name='step' is not valid: multistep or cosine or poly"):
        get_schedule("step")


@pytest.mark.parametrize("name, params, field", [
    ("multistep", dict(milestones=(70, 40)), "multistep.milestones"),
    ("multistep", dict(gamma=0), "multistep.gamma"),
    ("multistep", dict(milestones=(0.3, 1.5), unit="fraction"), "multistep.milestones"),
    ("multistep", dict(unit="iters"), "multistep.unit"),
    ("cosine", dict(min_factor=1.0), "cosine.min_factor"),
    ("cosine", dict(delay_epochs=-1), "cosine.delay_epochs"),
    ("cosine", dict(warmup_factor=0), "cosine.warmup_factor"),
    ("poly", dict(power=0), "poly.power"),
    ("poly", dict(warmup_epochs=1.5), "poly.warmup_epochs"),
    ("poly", dict(gamma=0.1), "'gamma' is not valid: power, warmup_epochs"),
])
def test_invalid_schedule_parameters_name_the_field(name, params, field):
    with pytest.raises(ValueError, match=field):
        get_schedule(name).make_params(**params)


def test_build_scheduler_rejects_a_bad_run_length():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    with pytest.raises(ValueError, match="max_epochs=0 is not valid"):
        build_scheduler(opt, "cosine", 0)


@pytest.fixture
def constant_schedule():
    @dataclasses.dataclass(frozen=True)
    class HalfParams:
        factor: float = 0.5

    register_schedule("half", ScheduleEntry("a constant factor", HalfParams, lambda t, T, p: p.factor))
    yield "half"
    del SCHEDULES["half"]


def test_registered_schedule_is_buildable(constant_schedule):
    assert _lrs(constant_schedule, 5, 3, factor=0.25) == pytest.approx([BASE / 4] * 3)
    with pytest.raises(ValueError, match="half"):
        get_schedule("nope")


# The same contract for every registered schedule.
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_contract_positive_finite_over_the_run(name):
    entry = get_schedule(name)
    for params in ({}, {"warmup_epochs": 3}):
        if "warmup_epochs" in params and "warmup_epochs" not in {f.name for f in dataclasses.fields(entry.params)}:
            continue
        for t in range(1, 21):
            m = entry.multiplier(t, 20, **params)
            assert math.isfinite(m) and m > 0, (name, params, t, m)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_contract_state_dict_round_trip_resumes_the_same_lrs(name):
    def fresh():
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=BASE, momentum=0.9)
        return opt, build_scheduler(opt, name, 20)

    def run(opt, sched, epochs):
        seen = []
        for _ in range(epochs):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return seen

    straight = run(*fresh(), 20)
    opt, sched = fresh()
    first = run(opt, sched, 7)
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    assert saved_sched["lr_lambdas"] == [None]  # a closure: nothing but counters and LRs to save
    opt2, sched2 = fresh()
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert first + run(opt2, sched2, 13) == straight
    assert straight == pytest.approx([BASE * get_schedule(name).multiplier(t, 20) for t in range(1, 21)])


def test_scheduler_multiplies_each_groups_own_lr():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": BASE * 10}, {"params": [b], "lr": BASE * 0.1}], lr=BASE)
    sched = build_scheduler(opt, "poly", 10, power=1.0)
    for t in range(1, 6):
        m = get_schedule("poly").multiplier(t, 10, power=1.0)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([BASE * 10 * m, BASE * 0.1 * m])
        opt.step()
        sched.step()
