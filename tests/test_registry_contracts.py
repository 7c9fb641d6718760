"""Contract tests generated over every registry: a component registered later is tested automatically.

Architectures, loss terms, samplers, schedules and optimisers are parametrized over their
registries' contents at collection time. Trick contracts live in test_tricks_ablation.py; this
file adds only what is missing there: every trick's patched spec builds (model + objective) and
trains one step.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from reidbench.harness.data.samplers import SAMPLERS, build_sampler
from reidbench.harness.evaluation.rescorers import RESCORERS
from reidbench.harness.spec import ModelSpec, load_spec_file, spec_from_json
from reidbench.harness.train.optim import OPTIMIZERS, build_optimizer, param_groups
from reidbench.harness.train.schedules import SCHEDULES
from reidbench.models.architectures import ARCHITECTURES, build_architecture
from reidbench.models.objective import build_objective
from reidbench.models.registry import build_params
from reidbench.models.terms import LOSS_TERMS, TermContext, TrainProgress
from reidbench.tricks import registered_tricks

TINY_BACKBONE = "timm:test_resnet"
NUM_CLASSES = 3
BOT = Path(__file__).resolve().parent.parent / "experiments" / "bot.yaml"


def _tiny_model_spec(arch: str, neck: str) -> ModelSpec:
    return ModelSpec(arch=arch, backbone=TINY_BACKBONE, pretrained=False, neck=neck)


# --------------------------------------------------------------------------- architectures


@pytest.fixture(scope="module", params=[(a, n) for a in ARCHITECTURES.names() for n in ("plain", "bnneck")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def built(request):
    arch, neck = request.param
    spec = _tiny_model_spec(arch, neck)
    torch.manual_seed(0)
    net = build_architecture(spec, NUM_CLASSES)
    net.contract_spec = spec
    return net


def test_architecture_outputs_match_feature_dims_in_train_and_eval(built):
    images = torch.randn(2, 3, 32, 16)
    # Architectures that pool with part masks take them beside the images (models/architectures/__init__.py).
    extra = {"masks": torch.rand(2, 5, 32, 16)} if ARCHITECTURES.get(built.contract_spec.arch).needs_masks else {}
    assert built.feature_dims and all(isinstance(d, int) and d > 0 for d in built.feature_dims.values())
    for mode in ("train", "eval"):
        built.train(mode == "train")
        with torch.no_grad():
            out = built(images, **extra)
        assert isinstance(out, dict)
        for name, dim in built.feature_dims.items():
            assert name in out, f"{mode}: feature output {name!r} missing"
            assert tuple(out[name].shape) == (2, dim), f"{mode}: {name} has shape {tuple(out[name].shape)}"
            assert torch.isfinite(out[name]).all()
        others = [k for k in out if k not in built.feature_dims]
        if mode == "train":
            assert others, "training mode must output logits for an ID loss"
            for name in others:  # logits: one score per training identity
                assert tuple(out[name].shape) == (2, NUM_CLASSES), f"{name} has shape {tuple(out[name].shape)}"
    test = (built.test_feature,) if isinstance(built.test_feature, str) else tuple(built.test_feature)
    assert test and all(t in built.feature_dims for t in test)


def test_architecture_module_groups_name_real_submodules_covering_every_parameter(built):
    groups = built.module_groups
    assert {"pretrained", "new"} <= set(groups)
    for group, modules in groups.items():
        assert modules, f"group {group!r} is empty"
        for name in modules:
            built.get_submodule(name)  # raises if it does not exist
    covered = set()
    for name in (*groups["pretrained"], *groups["new"]):
        covered |= {f"{name}.{p}" for p, _ in built.get_submodule(name).named_parameters()}
    assert covered == {n for n, _ in built.named_parameters()}, "every parameter is pretrained or new"


def test_architecture_default_build_is_seeded(built):
    # The same seed builds the same weights (the resume and reproducibility contracts rely on it).
    # (``built`` itself ran a training-mode forward, which moved its BatchNorm statistics.)
    builds = []
    for _ in range(2):
        torch.manual_seed(0)
        builds.append(build_architecture(built.contract_spec, NUM_CLASSES))
    a, b = builds[0].state_dict(), builds[1].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- loss terms

FEATURE_DIM = 5


@pytest.mark.parametrize("kind", LOSS_TERMS.names())
def test_loss_term_from_defaults_gives_a_finite_scalar_with_gradients(kind):
    entry = LOSS_TERMS.get(kind)
    params = build_params(entry.params, {}, f"loss.terms[{kind}]")
    torch.manual_seed(0)
    context = TermContext(params=params, weight=1.0, num_classes=NUM_CLASSES,
                          input_dim=None if entry.reads_logits else FEATURE_DIM, progress=TrainProgress(epoch=1))
    term = entry.build(context)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    x = torch.randn(len(labels), NUM_CLASSES if entry.reads_logits else FEATURE_DIM, requires_grad=True)
    loss = term(x, labels)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for p in term.parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all()
    make = getattr(term, "own_optimizer", None)
    if callable(make):  # a term's own optimiser steps its parameters to finite values
        own = make()
        before = [p.detach().clone() for p in term.parameters()]
        if own.before_step is not None:
            own.before_step()
        own.optimizer.step()
        after = list(term.parameters())
        assert any(not torch.equal(b, a) for b, a in zip(before, after))
        assert all(torch.isfinite(a).all() for a in after)


@pytest.mark.parametrize("kind", LOSS_TERMS.names())
def test_loss_term_through_the_objective_weights_its_value(kind):
    # weight w scales the term's value by w (the objective's job, whatever the kind).
    from reidbench.harness.spec import LossTermSpec

    entry = LOSS_TERMS.get(kind)
    reads = "logits" if entry.reads_logits else "f"
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    torch.manual_seed(1)
    outputs = {"f": torch.randn(6, FEATURE_DIM), "logits": torch.randn(6, NUM_CLASSES)}
    values = []
    for weight in (1.0, 0.25):
        torch.manual_seed(0)  # same parameter init for both weights
        objective = build_objective([LossTermSpec(kind=kind, reads=reads, weight=weight)], NUM_CLASSES,
                                    {"f": FEATURE_DIM})
        (value,) = objective(outputs, labels).values()
        values.append(float(value.detach()))
    assert values[1] == pytest.approx(0.25 * values[0], rel=1e-5)


# --------------------------------------------------------------------------- samplers

PIDS = [7, 7, 7, 3, 9, 9, 9, 9, 4, 4, 5, 5, 5, 5, 5]  # 5 identities with 1..5 images, unsorted labels
P, K = 2, 2


def _sampler(name: str, seed: int):
    return build_sampler(name, {}, PIDS, P, K, seed, progress=TrainProgress(epoch=1))


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_sampler_yields_valid_batches_with_exact_len(name):
    sampler = _sampler(name, seed=3)
    for epoch in (1, 2, 5):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(sampler) == len(batches) > 0
        for batch in batches:
            assert batch and all(isinstance(i, int) and 0 <= i < len(PIDS) for i in batch)
            assert len({PIDS[i] for i in batch}) >= 2, "a batch needs several identities (negatives)"
        assert list(sampler) == batches, "iterating the same epoch twice gives the same batches"


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_sampler_is_deterministic_for_seed_and_epoch(name):
    a, b = _sampler(name, seed=11), _sampler(name, seed=11)
    a.set_epoch(4)
    first = list(a)
    a.set_epoch(1)
    list(a)  # another epoch in between changes nothing
    b.set_epoch(4)
    assert list(b) == first
    a.set_epoch(4)
    assert list(a) == first


# --------------------------------------------------------------------------- schedules


def _schedule_variants(name: str):
    fields = {f.name for f in dataclasses.fields(SCHEDULES[name].params)}
    yield {}
    if "warmup_epochs" in fields:
        yield {"warmup_epochs": 5}
        if "unit" in fields:
            yield {"unit": "fraction", "warmup_epochs": 0.25,
                   **({"milestones": (0.5, 0.75)} if "milestones" in fields else {})}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_gives_a_finite_positive_multiplier_every_epoch(name):
    entry = SCHEDULES[name]
    for kwargs in _schedule_variants(name):
        for epoch in range(1, 21):
            m = entry.multiplier(epoch, 20, **kwargs)
            assert math.isfinite(m) and 0 < m <= 1.0 + 1e-12, f"{name} {kwargs} epoch {epoch}: {m}"


# --------------------------------------------------------------------------- optimisers


@pytest.mark.parametrize("grouped", [False, True], ids=["params", "groups"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_reduces_a_simple_loss(name, grouped):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.zeros(4))
    target = torch.tensor([1.0, -2.0, 0.5, 3.0])
    params = param_groups([("w", w)], [], 0.05, 0.0) if grouped else [w]
    opt = build_optimizer(params, name, base_lr=0.05, weight_decay=0.0)

    def loss_fn():
        return (w - target).pow(2).sum()

    start = float(loss_fn().detach())
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    end = float(loss_fn().detach())
    assert math.isfinite(end) and end < 0.9 * start


# --------------------------------------------------------------------------- re-scorers


@pytest.mark.parametrize("name", RESCORERS.names())
def test_rescorer_gives_finite_distance_blocks_covering_every_query(name, tmp_path):
    from reidbench.harness.evaluation.rescorers import RescoreContext, rescorer_params

    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(6), 4)
    feats = (np.eye(6)[pids] + 0.1 * rng.normal(size=(24, 6))).astype(np.float32)
    # small options where the entry has them (fast); its own defaults otherwise
    params_type = RESCORERS.get(name).params
    known = {f.name for f in dataclasses.fields(params_type)} if params_type is not None else set()
    small = {k: v for k, v in (("steps", 2), ("ids_per_batch", 3), ("k", 5)) if k in known}
    params = rescorer_params(name, small)
    context = RescoreContext(q_feats=feats[:5], g_feats=feats[5:], metric="sqeuclidean", params=params,
                             out_dir=tmp_path, identity={"run_hash": "contract"}, train=lambda: (feats, pids, pids % 2))
    blocks, info = RESCORERS.get(name).distances(context)
    assert isinstance(info, dict)
    rows = 0
    for start, block in blocks:
        block = np.asarray(block)
        assert start == rows and block.shape[1] == 19 and np.isfinite(block).all()
        rows += block.shape[0]
    assert rows == 5


# --------------------------------------------------------------------------- tricks (what test_tricks_ablation lacks)


@pytest.fixture(scope="module")
def bot_base():
    return load_spec_file(BOT, "paper")


@pytest.mark.parametrize("trick", registered_tricks(), ids=lambda t: t.name)
def test_each_trick_patched_spec_builds_and_trains_one_step(trick, bot_base):
    patched = trick.apply(bot_base)
    assert spec_from_json(patched.to_json()) == patched
    tiny = dataclasses.replace(patched.model, backbone=TINY_BACKBONE, pretrained=False)
    torch.manual_seed(0)
    model = build_architecture(tiny, NUM_CLASSES)
    objective = build_objective(patched.loss.terms, NUM_CLASSES, model.feature_dims)
    model.train()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    values = objective(model(torch.randn(6, 3, 32, 16)), labels)
    total = torch.stack(list(values.values())).sum()
    assert torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None for p in model.parameters())
