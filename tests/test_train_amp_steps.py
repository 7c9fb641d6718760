"""Under fp16 loss scaling every optimiser step — the loss terms' own ones included — goes through
the GradScaler's inf check (torch's GradScaler works on CPU, so the same code path is tested here)."""

from __future__ import annotations

import torch
from torch import nn

from reidbench.harness.spec import LossTermSpec
from reidbench.harness.train.loop import TrainComponents, _step
from reidbench.models.objective import build_objective


def _setup(scaler):
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    objective = build_objective([LossTermSpec(kind="center", reads="f", weight=0.5)], 2, {"f": 2})
    (term,) = objective.terms
    main = torch.optim.SGD(model.parameters(), lr=0.1)
    c = TrainComponents(model=model, objective=objective, optimizer=main, scheduler=None, loader=[],
                        device=torch.device("cpu"), own_optimizers=objective.own_optimizers(), scaler=scaler)
    x = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    return model, term, c, x, labels


def _loss(objective, model, x, labels):
    return torch.stack(list(objective({"f": model(x)}, labels).values())).sum()


def test_an_inf_gradient_in_a_terms_own_parameters_skips_its_step_and_lowers_the_scale():
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    model, term, c, x, labels = _setup(scaler)
    centres = term.centers.detach().clone()
    weights = model.weight.detach().clone()
    term.centers.register_hook(lambda g: g * float("inf"))  # overflow only in the centres' gradient
    _step(c, _loss(c.objective, model, x, labels))
    assert torch.equal(term.centers.detach(), centres)  # skipped: inf found when unscaling it
    assert not torch.equal(model.weight.detach(), weights)  # the model's optimiser had finite gradients
    assert scaler.get_scale() < 1024.0  # the scaler saw the overflow and backed off


def test_with_finite_gradients_the_scaled_step_equals_the_unscaled_one():
    model_a, term_a, c_a, x, labels = _setup(torch.amp.GradScaler("cpu", init_scale=1024.0))
    model_b, term_b, c_b, _, _ = _setup(None)
    _step(c_a, _loss(c_a.objective, model_a, x, labels))
    _step(c_b, _loss(c_b.objective, model_b, x, labels))
    # Scaling by a power of two and unscaling is exact: the same update, centres divided by their weight too.
    assert torch.allclose(term_a.centers, term_b.centers, atol=1e-6)
    assert torch.allclose(model_a.weight, model_b.weight, atol=1e-6)
