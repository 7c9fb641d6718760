"""Training stages (freezing, BatchNorm statistics, checkpointed stage, resume across and inside a
stage), the generic own-optimiser interface (center loss) and gradient clipping in the loop."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from reidbench.harness.spec import LossTermSpec, spec_from_dict
from reidbench.harness.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from reidbench.harness.train.runner import RESULT_NAME, RuntimeOptions, execute, load_datasets
from reidbench.models.architectures import build_architecture
from reidbench.models.losses import CenterLoss, build_center_optimizer, center_sgd_step
from reidbench.models.objective import build_objective


def _conftest_study_spec() -> str:
    import importlib.util

    spec = importlib.util.spec_from_file_location("_stages_conftest", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.STUDY_SPEC


STUDY_SPEC = _conftest_study_spec()
NUM_TRAIN_IDS = 6  # make_market_folder's default


def stages_spec(**optim):
    raw = yaml.safe_load(STUDY_SPEC)
    raw["model"]["neck"] = "bnneck"  # a BNNeck: its bias is frozen by construction
    raw["stages"] = [{"epochs": 1, "train_only": ["new"], "name": "warm"}, {"epochs": 2}]
    raw["optim"] = {"weight_decay": 5e-4, **optim}
    return spec_from_dict(raw)


def _options(out: Path, tiny_market: Path, **kw) -> RuntimeOptions:
    return RuntimeOptions(out_dir=out, device="cpu", num_workers=0, data_paths={"tiny": str(tiny_market)},
                          progress=False, log=lambda s: None, **kw)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def staged(tiny_market, tmp_path_factory):
    """An uninterrupted 3-epoch staged run, with the checkpoint read after every epoch."""
    spec = stages_spec()
    torch.manual_seed(spec.train.seed)  # the run builds its model right after this seed
    initial = copy.deepcopy(build_architecture(spec.model, NUM_TRAIN_IDS).state_dict())
    out = tmp_path_factory.mktemp("staged")
    checkpoints: dict[int, dict] = {}

    def read_checkpoint(epoch, stats):
        checkpoints[epoch] = load_checkpoint(out / CHECKPOINT_NAME)

    result = execute(spec, _options(out, tiny_market, on_epoch=read_checkpoint))
    return spec, initial, checkpoints, result, out


def test_stage_one_trains_only_the_head_backbone_and_its_bn_statistics_untouched(staged):
    _, initial, checkpoints, _, _ = staged
    after1 = checkpoints[1]["model"]
    backbone0, backbone1 = _part(initial, "backbone."), _part(after1, "backbone.")
    assert any(k.endswith("running_mean") for k in backbone0), "the backbone has BatchNorm statistics to check"
    assert _same(backbone0, backbone1), [k for k in backbone0 if not torch.equal(backbone0[k], backbone1[k])]
    for key in ("head.classifier.weight", "head.bottleneck.weight", "head.bottleneck.running_mean"):
        assert not torch.equal(initial[key], after1[key]), f"{key} did not change in stage 1"


def test_stage_two_trains_the_backbone(staged):
    _, initial, checkpoints, _, _ = staged
    final = checkpoints[3]["model"]
    changed = [k for k in _part(initial, "backbone.") if not torch.equal(initial[k], final[k])]
    assert any(k.endswith(".weight") for k in changed) and any(k.endswith("running_mean") for k in changed)


def test_bnneck_bias_stays_frozen_through_every_stage(staged):
    _, initial, checkpoints, result, _ = staged
    assert torch.count_nonzero(initial["head.bottleneck.bias"]) == 0
    for epoch in (1, 2, 3):
        assert torch.equal(checkpoints[epoch]["model"]["head.bottleneck.bias"], initial["head.bottleneck.bias"])


def test_checkpoint_and_history_record_the_stage(staged):
    _, _, checkpoints, result, _ = staged
    assert [checkpoints[e]["stage"] for e in (1, 2, 3)] == ["warm", "stage2", "stage2"]
    assert [h["stage"] for h in result.history] == ["warm", "stage2", "stage2"]
    # The head trains at the base LR from epoch 1 (milestone 2 then decays it): the stage has lr_scale 1.
    assert result.history[0]["lr"] == pytest.approx(3.5e-4) and result.history[1]["lr"] == pytest.approx(3.5e-5)


@pytest.mark.parametrize("crash_epoch,mid_epoch", [(2, False), (3, True)],
                         ids=["after-epoch-1-at-the-stage-boundary", "inside-stage-2-mid-epoch"])
def test_a_crashed_staged_run_resumes_to_identical_weights(staged, tiny_market, tmp_path, monkeypatch,
                                                          crash_epoch, mid_epoch):
    spec, _, checkpoints, full, _ = staged
    import reidbench.harness.train.loop as loop

    real = loop.train_one_epoch

    class Crash:
        def after_step(self, c, step, losses):
            raise RuntimeError("simulated crash")

    def crashing(c, epoch, max_epochs, hooks=()):
        if epoch == crash_epoch:
            if not mid_epoch:
                raise RuntimeError("simulated crash")
            return real(c, epoch, max_epochs, (*hooks, Crash()))  # dies after the epoch's first step
        return real(c, epoch, max_epochs, hooks)

    monkeypatch.setattr(loop, "train_one_epoch", crashing)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        execute(spec, _options(out, tiny_market))
    state = load_checkpoint(out / CHECKPOINT_NAME)
    assert state["epoch"] == crash_epoch - 1 and not (out / RESULT_NAME).exists()
    assert state["stage"] == ("warm" if crash_epoch == 2 else "stage2")
    monkeypatch.setattr(loop, "train_one_epoch", real)
    logs: list[str] = []
    resumed = execute(spec, RuntimeOptions(**{**_options(out, tiny_market).__dict__, "log": logs.append}))
    assert any(f"resuming after epoch {crash_epoch - 1}/3 (stage {state['stage']})" in line for line in logs)
    final = load_checkpoint(out / CHECKPOINT_NAME)
    assert _same(final["model"], checkpoints[3]["model"])
    assert resumed.metrics == full.metrics
    assert [h["stage"] for h in resumed.history] == ["warm", "stage2", "stage2"]


# --------------------------------------------------------------------------- center loss, own optimiser


@pytest.mark.parametrize("beta", [1.0, 0.0005])
def test_center_term_own_optimizer_step_matches_center_sgd_step_and_the_hand_update(beta):
    from reidbench.harness.train.loop import TrainComponents, _step

    # Two identities, 2-D features; the features come from a tiny linear "model" (identity weights).
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    objective = build_objective([LossTermSpec(kind="center", reads="f", weight=beta)], 2, {"f": 2})
    (term,) = objective.terms
    centres0 = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    with torch.no_grad():
        term.centers.copy_(centres0)
    assert {id(p) for p in term.parameters()} == objective.own_parameters()
    x = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    main = torch.optim.SGD(model.parameters(), lr=0.0)  # the model stays put; only the centres move
    c = TrainComponents(model=model, objective=objective, optimizer=main, scheduler=None, loader=[],
                        device=torch.device("cpu"), own_optimizers=objective.own_optimizers())
    _step(c, torch.stack(list(objective({"f": model(x)}, labels).values())).sum())
    # By hand: c_k <- c_k + (1/B) sum_{y_b = k} (f_b - c_k), B = 4, whatever beta is.
    #   c_0 = (0,0) + ((1,2) + (3,0)) / 4 = (1, 0.5);  c_1 = (1,1) + ((-1,0) + (1,0)) / 4 = (1, 1)
    expected = torch.tensor([[1.0, 0.5], [1.0, 1.0]])
    assert torch.allclose(term.centers.detach(), expected, atol=1e-6)
    # The same gradients through the reference helper give the same centres.
    ref = CenterLoss(2, 2)
    with torch.no_grad():
        ref.centers.copy_(centres0)
    (beta * ref(x, labels)).backward()
    center_sgd_step(ref, build_center_optimizer(ref, lr=0.5), beta)
    assert torch.allclose(term.centers.detach(), ref.centers.detach(), atol=1e-7)


# --------------------------------------------------------------------------- gradient clipping


def test_grad_clip_norm_bounds_the_gradient_norm_seen_by_the_step(tiny_market, monkeypatch):
    import reidbench.harness.train.optim as optim
    from reidbench.harness.train.build import build_training
    from reidbench.harness.train.loop import run_training

    clip = 0.05
    raw = yaml.safe_load(STUDY_SPEC)
    raw["optim"] = {"grad_clip_norm": clip}
    raw["schedule"] = {"max_epochs": 1, "milestones": [2]}
    spec = spec_from_dict(raw)
    datasets, _ = load_datasets(("tiny",), {"tiny": str(tiny_market)}, progress=False)
    built = build_training(spec, datasets["tiny"], torch.device("cpu"), 0, False)
    c = built.components
    assert c.grad_clip_norm == clip

    before: list[float] = []
    real_clip = optim.clip_gradients

    def recording_clip(*args, **kwargs):
        norm = real_clip(*args, **kwargs)
        before.append(norm)
        return norm

    monkeypatch.setattr(optim, "clip_gradients", recording_clip)
    seen: list[float] = []

    def pre_step(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    handle = c.optimizer.register_step_pre_hook(pre_step)
    try:
        run_training(c, 0, 1, spec.train.seed)
    finally:
        handle.remove()
    assert seen and len(seen) == len(before)
    assert max(before) > clip, "the raw gradients must exceed the bound, or the test proves nothing"
    assert all(n <= clip * (1 + 1e-4) for n in seen), seen
    for raw_norm, clipped in zip(before, seen):  # clipping rescales, it does not zero
        assert clipped == pytest.approx(min(raw_norm, clip), rel=1e-3)


def test_stage_lr_scale_multiplies_the_schedule(tiny_market, tmp_path):
    raw = yaml.safe_load(STUDY_SPEC)
    raw["stages"] = [{"epochs": 1, "frozen": ["pretrained"], "lr_scale": 10.0}, {"epochs": 2, "lr_scale": 0.5}]
    raw["schedule"] = {"max_epochs": 3, "milestones": [3], "warmup_epochs": 2, "warmup_factor": 0.1}
    result = execute(spec_from_dict(raw), _options(tmp_path, tiny_market))
    base = 3.5e-4
    # epoch 1: warmup 0.1·(1 − 1/2) + 1/2 = 0.55, stage ×10; epoch 2: warmup done, ×0.5; epoch 3: milestone ×0.1, ×0.5
    expected = [base * 0.55 * 10, base * 0.5, base * 0.1 * 0.5]
    assert [h["lr"] for h in result.history] == pytest.approx(expected)
    assert [h["stage"] for h in result.history] == ["stage1", "stage2", "stage2"]
