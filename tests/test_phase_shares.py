"""Every phase keeps its recipe's share of the optimizer steps in step granularity (generated test).

For every base file (experiments/*.yaml) × every source of a phase — the base's own milestones,
warmup and curriculum, and the tricks warmup, two-step, cosine, freeze and curriculum — a run of
T epochs × n optimizer steps per epoch is simulated with the real schedule, stage plan and
curriculum clock (``build_lr_scheduler``, ``stage_plan``, ``curriculum_time``), the steps of each
phase are counted, and the count must be the recipe's share × T × n to within one step. The
recipe's share is the paper's (the trick's stated proportion — 10/120, 20/170, 30/60, 1000/12,120,
t0/160 — or the paper profile's own phase over its T). Runs are the ways a short run is made:
``--epochs T`` on the paper profile (``with_epochs``, then the trick, as ``ablate`` applies them)
and the cpu profile. ``ablate --dry-run``'s shares (``harness/train/phases.py``) must agree too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

from reidbench.harness.spec import RunSpec, load_base_file, with_epochs
from reidbench.tricks import get_trick
from reidbench.tricks import freeze as freeze_trick
from reidbench.tricks import two_step as two_step_trick
from reidbench.tricks import warmup as warmup_trick

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
BASES = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
RUNS = [(6, 7), (6, 50), (13, 7)]  # (T epochs, n steps per epoch)


class FakeModel(nn.Module):
    """Module groups as the architectures name them; one parameter each (the stage plan only reads names)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(1, 1)
        self.head = nn.Linear(1, 1)
        self.module_groups = {"backbone": ["backbone"], "pretrained": ["backbone"], "new": ["head"]}


class FakeObjective:
    def labels_for(self, names, where):
        return frozenset(names)


@dataclass
class Trace:
    """What a simulated run did at each optimizer step k = (epoch - 1) * n + step_index."""

    lr: list[float]  # multiplier of the base LR
    frozen: list[frozenset[str]]
    curriculum_t: list[float]


def simulate(spec: RunSpec, steps_per_epoch: int) -> Trace:
    from reidbench.harness.train.build import build_lr_scheduler, stage_plan
    from reidbench.models.terms import TrainProgress
    from reidbench.models.terms.curriculum import CurriculumTripletParams, curriculum_time

    assert spec.schedule.granularity == "step"
    model = FakeModel()
    plan = stage_plan(spec, model, FakeObjective())
    progress = TrainProgress(max_epochs=spec.schedule.max_epochs, granularity="step", steps_per_epoch=steps_per_epoch)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = build_lr_scheduler(optimizer, spec, plan, progress)
    times = [dict(t.options).get("time", "epoch") for t in spec.loss.terms if t.kind == "curriculum_triplet"]
    time = times[0] if times else CurriculumTripletParams().time
    trace = Trace([], [], [])
    for epoch in range(1, spec.schedule.max_epochs + 1):
        progress.epoch = epoch
        for step in range(steps_per_epoch):
            progress.step = step  # as the loop has it during the step's forward
            trace.lr.append(optimizer.param_groups[0]["lr"])
            trace.frozen.append(plan.frozen_at(epoch, step, steps_per_epoch))
            trace.curriculum_t.append(curriculum_time(progress, time))
            optimizer.step()
            progress.step = step + 1  # as the loop has it when the scheduler steps, after the optimizer
            scheduler.step()
    return trace


def first(values: list[Any], test: Callable[[Any], bool]) -> int:
    """The index of the first step where ``test`` holds (len(values) when it never does)."""
    return next((k for k, v in enumerate(values) if test(v)), len(values))


# ---------------------------------------------------------------------------------------------- the phases


@dataclass(frozen=True)
class Source:
    """A phase source: which trick makes it (None: the base's own), how to find it in a run, its recipe share."""

    name: str
    trick: str | None
    applies: Callable[[RunSpec], bool]  # on the paper profile, after the trick
    recipe: Callable[[RunSpec], list[float]]  # from the paper spec: the shares at which the phases end or start
    measured: Callable[[RunSpec, Trace], list[int]]  # step indices of those boundaries in a simulated run


def _milestone_shares(paper: RunSpec) -> list[float]:
    return [(m - 1) / paper.schedule.max_epochs for m in paper.schedule.milestones]


def _milestone_steps(spec: RunSpec, trace: Trace) -> list[int]:
    gamma = spec.schedule.gamma
    peak = max(trace.lr)
    start = first(trace.lr, lambda v: v >= peak - 1e-12)  # after any warmup
    return [start + first(trace.lr[start:], lambda v, j=j: v <= peak * gamma**j * (1 + 1e-9))
            for j in range(1, len(spec.schedule.milestones) + 1)]


def _warmup_end(spec: RunSpec, trace: Trace) -> list[int]:
    return [first(trace.lr, lambda v: v >= max(trace.lr) - 1e-12)]


def _curriculum_bounds(spec: RunSpec, trace: Trace) -> list[int]:
    from reidbench.models.terms.curriculum import CurriculumTripletParams, effective_bounds

    term = next(t for t in spec.loss.terms if t.kind == "curriculum_triplet")
    t0, t1 = effective_bounds(CurriculumTripletParams(**dict(term.options)), spec.schedule.max_epochs)
    return [first(trace.curriculum_t, lambda t: t >= t0), first(trace.curriculum_t, lambda t: t >= t1)]


def _curriculum_recipe(paper: RunSpec) -> list[float]:
    from reidbench.models.terms.curriculum import CurriculumTripletParams

    term = next(t for t in paper.loss.terms if t.kind == "curriculum_triplet")
    p = CurriculumTripletParams(**dict(term.options))
    return [p.t0_epochs / p.schedule_epochs, p.t1_epochs / p.schedule_epochs]


def _has_curriculum(spec: RunSpec) -> bool:
    return any(t.kind == "curriculum_triplet" for t in spec.loss.terms)


def _backbone_frozen_steps(spec: RunSpec, trace: Trace) -> list[int]:
    return [first(trace.frozen, lambda f: "backbone.weight" not in f)]


SOURCES = [
    Source("milestones", None, lambda s: s.schedule.kind == "multistep" and bool(s.schedule.milestones),
           _milestone_shares, _milestone_steps),
    Source("base warmup", None, lambda s: s.schedule.warmup_epochs > 0,
           lambda p: [p.schedule.warmup_epochs / p.schedule.max_epochs], _warmup_end),
    Source("base curriculum", None, _has_curriculum, _curriculum_recipe, _curriculum_bounds),
    Source("warmup", "warmup", lambda s: True,
           lambda p: [warmup_trick.PAPER_WARMUP_EPOCHS / warmup_trick.PAPER_MAX_EPOCHS], _warmup_end),
    Source("two-step", "two-step", lambda s: True,
           lambda p: [two_step_trick.STEP1_ITERS / two_step_trick.TOTAL_ITERS], _backbone_frozen_steps),
    Source("cosine", "cosine", lambda s: True,
           lambda p: [max(p.schedule.warmup_epochs, dict(p.schedule.options)["delay_epochs"]) / p.schedule.max_epochs],
           lambda s, t: [first(t.lr, lambda v: v < 1.0 - 1e-12) if s.schedule.warmup_epochs == 0 else
                         _warmup_end(s, t)[0] + first(t.lr[_warmup_end(s, t)[0]:], lambda v: v < 1.0 - 1e-12)]),
    Source("freeze", "freeze", lambda s: True, lambda p: [freeze_trick.FREEZE_FRACTION], _backbone_frozen_steps),
    Source("curriculum", "curriculum", _has_curriculum, _curriculum_recipe, _curriculum_bounds),
]


def _paper(base: str, source: Source) -> RunSpec | None:
    spec, _ = load_base_file(EXPERIMENTS / f"{base}.yaml", "paper")
    if source.trick is not None:
        try:
            spec = get_trick(source.trick).apply(spec)
        except ValueError:
            return None  # the trick does not apply to this base (no triplet term, stages already, ...)
    return spec if source.applies(spec) else None


def _cases() -> list[Any]:
    cases = []
    for base in BASES:
        for source in SOURCES:
            if _paper(base, source) is not None:
                cases.append(pytest.param(base, source, id=f"{base}-{source.name}"))
    return cases


CASES = _cases()


def test_every_base_and_every_phase_source_is_covered():
    names = {(p.values[0], p.values[1].name) for p in CASES}
    assert {base for base, _ in names} == set(BASES)
    for source in ("milestones", "warmup", "two-step", "cosine", "freeze", "curriculum"):
        assert sum(1 for _, s in names if s == source) >= 2, source
    assert ("mancs", "base curriculum") in names and ("agw", "base warmup") in names


def _short_runs(base: str, source: Source, epochs: int) -> list[tuple[str, RunSpec]]:
    """The step-granular runs of ``epochs`` epochs: --epochs on the paper profile (then the trick), the cpu profile."""
    paper, _ = load_base_file(EXPERIMENTS / f"{base}.yaml", "paper")
    runs = [("--epochs", with_epochs(paper, epochs))]
    cpu, _ = load_base_file(EXPERIMENTS / f"{base}.yaml", "cpu")
    if cpu.schedule.max_epochs == epochs and (source.trick is not None or source.name == "base curriculum"):
        runs.append(("cpu profile", cpu))  # its own milestones/warmup are the lead's choice; a trick's are the recipe's
    if source.trick is not None:
        runs = [(how, get_trick(source.trick).apply(spec)) for how, spec in runs]
    return runs


@pytest.mark.parametrize("base, source", CASES)
def test_each_phase_takes_its_recipes_share_of_the_optimizer_steps(base, source):
    from reidbench.harness.train.phases import run_phases

    paper = _paper(base, source)
    recipe = source.recipe(paper)
    # the paper profile states the recipe (a trick's proportion rounded to its whole epochs at most)
    for share in recipe:
        assert 0 < share < 1
    for epochs, n in RUNS:
        for how, spec in _short_runs(base, source, epochs):
            trace = simulate(spec, n)
            measured = source.measured(spec, trace)
            total = epochs * n
            for share, steps in zip(recipe, measured, strict=True):
                assert abs(steps - share * total) <= 1.0, (how, epochs, n, share * total, steps)
                # the dry run prints a boundary at the same point
                bounds = [b for p in run_phases(spec) for b in (p.start, p.end) if b is not None]
                assert min(abs(b * n - steps) for b in bounds) <= 1.0, (how, epochs, n, bounds, steps)
