"""Optimiser registry, parameter groups (lr scales, weight decay, frozen parameters) and clipping."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch import nn

from reidbench.harness.train.optim import (
    OPTIMIZERS,
    AdamParams,
    GroupRule,
    SGDParams,
    build_optimizer,
    clip_gradients,
    get_optimizer,
    module_patterns,
    param_groups,
)
from reidbench.harness.train.schedules import build_scheduler


class Tiny(nn.Module):
    """A pretrained-backbone / new-head split, with a BN layer for the no-decay rule."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _names(model: nn.Module, group: dict) -> list[str]:
    ids = {id(p) for p in group["params"]}
    return [n for n, p in model.named_parameters() if id(p) in ids]


# --- the same contract for every registered optimiser --------------------------------------------


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_contract_reduces_a_simple_loss(name):
    torch.manual_seed(0)
    model = Tiny()
    x = torch.randn(32, 4)
    y = x.sum(dim=1, keepdim=True)
    groups = param_groups(model.named_parameters(), [GroupRule(module_patterns("backbone"), 0.1)],
                          base_lr=0.01, weight_decay=1e-4, no_decay_bias_bn=True)
    opt = build_optimizer(groups, name, 0.01, 1e-4)
    sched = build_scheduler(opt, "multistep", 5)
    loss_fn = nn.MSELoss()
    with torch.no_grad():
        first = float(loss_fn(model(x), y))
    for _ in range(60):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    sched.step()
    with torch.no_grad():
        assert float(loss_fn(model(x), y)) < 0.5 * first
    assert [g["name"] for g in opt.param_groups] == ["backbone.*", "backbone.*/no_decay", "default",
                                                    "default/no_decay"]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_contract_plain_parameters_keep_only_trainable_ones(name):
    model = Tiny()
    model.head.weight.requires_grad_(False)
    opt = build_optimizer(model.parameters(), name, 0.01, 0.0)
    kept = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.head.weight) not in kept and id(model.head.bias) in kept


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_parameter_with_grad_none_is_left_alone_state_included(name):
    # A frozen parameter stays in its group (a later stage may unfreeze it): with grad None the
    # optimiser must neither move it (not even by weight decay or momentum) nor keep state for it.
    frozen = nn.Parameter(torch.tensor([1.0, -2.0]), requires_grad=False)
    live = nn.Parameter(torch.tensor([1.0, -2.0]))
    groups = param_groups([("frozen", frozen), ("live", live)], [], base_lr=0.1, weight_decay=0.5)
    opt = build_optimizer(groups, name, 0.1, 0.5, momentum=0.9) if name == "sgd" else \
        build_optimizer(groups, name, 0.1, 0.5)
    assert any(frozen is p for p in opt.param_groups[0]["params"])
    for _ in range(3):
        opt.zero_grad()
        (live**2).sum().backward()
        opt.step()
    assert frozen.grad is None
    assert torch.equal(frozen.detach(), torch.tensor([1.0, -2.0]))
    assert frozen not in opt.state and live in opt.state
    # Unfrozen later, it trains in its group from then on.
    frozen.requires_grad_(True)
    opt.zero_grad()
    (frozen**2).sum().backward()
    opt.step()
    assert not torch.equal(frozen.detach(), torch.tensor([1.0, -2.0]))


def test_adamw_decay_is_decoupled_and_adam_coupled():
    # Zero loss gradient: AdamW moves w by lr*wd*w; coupled Adam normalises wd*w to a full lr step.
    w_adamw = nn.Parameter(torch.tensor([2.0]))
    w_adam = nn.Parameter(torch.tensor([2.0]))
    adamw = build_optimizer([w_adamw], "adamw", 0.1, 5e-4, (0.9, 0.999))
    adam = build_optimizer([w_adam], "adam", 0.1, 5e-4, (0.9, 0.999))
    for w, opt in ((w_adamw, adamw), (w_adam, adam)):
        w.grad = torch.zeros(1)
        opt.step()
    assert float(w_adamw.detach()) == pytest.approx(2.0 - 0.1 * 5e-4 * 2.0, abs=1e-7)
    assert float(w_adam.detach()) == pytest.approx(2.0 - 0.1, abs=1e-4)
    assert type(adamw) is torch.optim.AdamW and type(adam) is torch.optim.Adam


def test_sgd_settings_reach_torch():
    opt = build_optimizer([nn.Parameter(torch.zeros(1))], "sgd", 0.1, 1e-4, (0.5, 0.5), momentum=0.8,
                          nesterov=True)
    group = opt.param_groups[0]
    assert type(opt) is torch.optim.SGD
    assert (group["momentum"], group["nesterov"], group["dampening"], group["weight_decay"]) == (0.8, True, 0, 1e-4)
    assert SGDParams() == SGDParams(momentum=0.9, nesterov=False)


def test_adam_settings_reach_torch():
    opt = build_optimizer([nn.Parameter(torch.zeros(1))], "adam", 0.1, 0.0, (0.8, 0.99), eps=1e-6)
    assert opt.param_groups[0]["betas"] == (0.8, 0.99) and opt.param_groups[0]["eps"] == 1e-6
    assert AdamParams() == AdamParams(betas=(0.9, 0.999), eps=1e-8)


def test_optimizer_errors_name_the_field():
    p = [nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError, match="optim.name='lamb' is not valid: adam or adamw or sgd"):
        build_optimizer(p, "lamb", 0.1, 0.0)
    with pytest.raises(ValueError, match="'momentum' is not valid: betas, eps"):
        build_optimizer(p, "adam", 0.1, 0.0, momentum=0.9)
    with pytest.raises(ValueError, match="sgd.nesterov"):
        build_optimizer(p, "sgd", 0.1, 0.0, momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="adam.betas"):
        build_optimizer(p, "adam", 0.1, 0.0, (0.9, 1.0))
    with pytest.raises(ValueError, match="optim.base_lr"):
        build_optimizer(p, "sgd", 0.0, 0.0)
    with pytest.raises(ValueError, match="lamb"):
        get_optimizer("lamb")


# --- parameter groups ----------------------------------------------------------------------------


def test_new_layers_times_ten_against_the_pretrained_backbone():
    model = Tiny()
    groups = param_groups(model.named_parameters(), [GroupRule(("head.*",), 10.0, name="new")],
                          base_lr=3.5e-4, weight_decay=5e-4)
    assert [(g["name"], g["lr_scale"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("new", 10.0, pytest.approx(3.5e-3), 5e-4), ("default", 1.0, 3.5e-4, 5e-4)]
    assert _names(model, groups[0]) == ["head.weight", "head.bias"]
    assert len(_names(model, groups[1])) == 4  # backbone linear + BN weight and bias


def test_first_matching_rule_wins_and_empty_groups_are_dropped():
    model = Tiny()
    rules = [GroupRule(("backbone.0.*",), 0.1, weight_decay=0.0), GroupRule(module_patterns("backbone"), 0.5),
             GroupRule(("nothing.*",), 3.0), GroupRule(("*",), 2.0, name="rest")]
    groups = param_groups(model.named_parameters(), rules, base_lr=1.0, weight_decay=1e-3)
    assert [g["name"] for g in groups] == ["backbone.0.*", "backbone.*", "rest"]  # no "nothing", no "default"
    assert _names(model, groups[0]) == ["backbone.0.weight", "backbone.0.bias"]
    assert groups[0]["weight_decay"] == 0.0 and groups[1]["weight_decay"] == 1e-3  # None inherits
    assert _names(model, groups[1]) == ["backbone.1.weight", "backbone.1.bias"]
    assert groups[2]["lr"] == 2.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_no_decay_on_biases_and_norm_layers():
    model = Tiny()
    groups = param_groups(model.named_parameters(), [GroupRule("head.*", 10.0, name="head")],
                          base_lr=0.1, weight_decay=5e-4, no_decay_bias_bn=True)
    by_name = {g["name"]: (_names(model, g), g["weight_decay"], g["lr"]) for g in groups}
    assert by_name == {
        "head": (["head.weight"], 5e-4, pytest.approx(1.0)),
        "head/no_decay": (["head.bias"], 0.0, pytest.approx(1.0)),
        "default": (["backbone.0.weight"], 5e-4, 0.1),
        "default/no_decay": (["backbone.0.bias", "backbone.1.weight", "backbone.1.bias"], 0.0, 0.1),
    }


def test_frozen_parameters_stay_in_their_group():
    model = Tiny()
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    groups = param_groups(model.named_parameters(), [GroupRule(module_patterns("backbone"), 0.1)], 1.0, 0.0)
    assert len(_names(model, groups[0])) == 4


def test_groups_feed_an_optimizer_and_a_scheduler_per_group():
    model = Tiny()
    groups = param_groups(model.named_parameters(), [GroupRule(module_patterns("backbone"), 0.1)], 0.01, 0.0)
    opt = build_optimizer(groups, "sgd", 0.01, 0.0)
    sched = build_scheduler(opt, "multistep", 4, milestones=(2,))
    opt.step()
    sched.step()  # epoch 2: past the milestone
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.0001, 0.001])
    assert [g["lr_scale"] for g in opt.param_groups] == [0.1, 1.0]


@pytest.mark.parametrize("kwargs, match", [
    (dict(patterns=()), "rule.patterns"),
    (dict(patterns=("a.*",), lr_scale=-1), "rule.lr_scale"),
    (dict(patterns=("a.*",), weight_decay=-1e-4), "rule.weight_decay"),
])
def test_bad_rules_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GroupRule(**kwargs)


def test_duplicate_or_reserved_group_names_are_rejected():
    with pytest.raises(ValueError, match="distinct"):
        param_groups([], [GroupRule("a.*", name="default")], 0.1, 0.0)
    with pytest.raises(ValueError, match="distinct"):
        param_groups([], [GroupRule("a.*"), GroupRule("a.*", 2.0)], 0.1, 0.0)


# --- gradient clipping ---------------------------------------------------------------------------


def _with_grads(values: list[float]) -> list[nn.Parameter]:
    params = [nn.Parameter(torch.zeros(1)) for _ in values]
    for p, v in zip(params, values):
        p.grad = torch.tensor([v])
    return params


def test_clipping_bounds_the_norm_and_returns_the_norm_before():
    params = _with_grads([3.0, 4.0])
    assert clip_gradients(params, 1.0) == pytest.approx(5.0)
    assert float(torch.linalg.vector_norm(torch.cat([p.grad for p in params]))) == pytest.approx(1.0, rel=1e-5)
    assert clip_gradients(_with_grads([3.0, 4.0]), 10.0) == pytest.approx(5.0)  # under the bound: untouched


def test_clipping_disabled_returns_none_and_leaves_grads():
    params = _with_grads([3.0, 4.0])
    assert clip_gradients(params, None) is None
    assert [float(p.grad) for p in params] == [3.0, 4.0]
    with pytest.raises(ValueError, match="max_norm=0"):
        clip_gradients(params, 0)


def test_clipping_with_a_grad_scaler_sees_true_gradients():
    # torch.amp.GradScaler("cpu") runs on CPU in this torch: a real scaled backward.
    p = nn.Parameter(torch.tensor([1.0, 1.0]))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaler.scale((p * torch.tensor([3.0, 4.0])).sum()).backward()
    assert float(p.grad.norm()) == pytest.approx(5.0 * 2**10)
    assert clip_gradients([p], 1.0, scaler=scaler, optimizer=opt) == pytest.approx(5.0)
    assert float(p.grad.norm()) == pytest.approx(1.0, rel=1e-5)
    scaler.step(opt)  # knows the grads are unscaled already: no second division
    scaler.update()
    assert p.detach().tolist() == pytest.approx([1.0 - 0.1 * 0.6, 1.0 - 0.1 * 0.8], rel=1e-5)


def test_clipping_unscales_only_an_enabled_scaler_and_needs_the_optimizer():
    scaler = mock.Mock()
    scaler.is_enabled.return_value = False
    clip_gradients(_with_grads([1.0]), 1.0, scaler=scaler, optimizer=None)
    scaler.unscale_.assert_not_called()
    scaler.is_enabled.return_value = True
    with pytest.raises(ValueError, match="optimizer=None"):
        clip_gradients(_with_grads([1.0]), 1.0, scaler=scaler)
    opt = mock.sentinel.optimizer
    clip_gradients(_with_grads([1.0]), 1.0, scaler=scaler, optimizer=opt)
    scaler.unscale_.assert_called_once_with(opt)
