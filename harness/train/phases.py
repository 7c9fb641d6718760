"""A run's phases and their share of the optimizer steps, from its spec: what ``ablate --dry-run`` prints.

A phase is a stretch of the run in epochs elapsed, x in [0, T) (``harness/train/schedules.py``):
the LR warmup, each multistep decay, the cosine hold, each stage, the freeze warm-up, a
curriculum's easy-to-hard ramp. The boundaries are where training really changes — in epoch
granularity at an epoch start (a warmup of W epochs trains below the full LR for epochs
1..W-1, so x < W - 1), in step granularity at the exact fractional point — so a phase's share
``(end - start) / T`` is its share of the optimizer steps, to within one step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from reidbench.harness.spec import RunSpec


@dataclass(frozen=True)
class Phase:
    """``label`` holds for x in [start, end) epochs elapsed; ``end`` None = to the end of the run."""

    label: str
    start: float
    end: float | None = None


def _percent(x: float, total: float) -> str:
    text = f"{100.0 * x / total:.2f}".rstrip("0").rstrip(".")
    return text


def _factor(value: float) -> str:
    return f"{value:.4g}"


def schedule_phases(spec: RunSpec) -> list[Phase]:
    """The LR schedule's phases: warmup, multistep decays, the cosine hold and decay, poly's decay."""
    from reidbench.harness.train.build import _schedule_kwargs
    from reidbench.harness.train.schedules import CosineParams, MultiStepParams, PolyParams, get_schedule, phase_epochs

    sched = spec.schedule
    try:
        params = get_schedule(sched.kind).make_params(**_schedule_kwargs(spec))
    except ValueError:
        return []
    total, step = sched.max_epochs, sched.granularity == "step"
    out: list[Phase] = []
    warmup = 0.0
    if hasattr(params, "warmup_epochs") and getattr(params, "unit", None):
        warmup = phase_epochs(params.warmup_epochs, total, params.unit, sched.granularity)
        ramp = warmup if step else warmup - 1  # epoch granularity: epoch W is the first at the full LR
        if ramp > 0:
            out.append(Phase(f"warmup (×{_factor(params.warmup_factor)}→1)", 0.0, min(ramp, total)))
    if isinstance(params, MultiStepParams):
        for k, m in enumerate(params.milestones, start=1):
            at = phase_epochs(m, total, params.unit, sched.granularity) - 1  # milestone m: the first epoch decayed
            if at < total:
                out.append(Phase(f"LR ×{_factor(params.gamma ** k)}", max(0.0, at)))
    elif isinstance(params, CosineParams):
        delay = phase_epochs(params.delay_epochs, total, params.unit, sched.granularity)
        if step:
            hold = max(warmup, delay) if params.delay_from == "start" else warmup + delay
        else:  # the last epoch at the full LR is E; the decay starts with epoch E + 1, at x = E
            hold = max(warmup, 1, delay) if params.delay_from == "start" else max(warmup, 1) + delay
            hold = hold if hold > 1 or warmup > 0 or delay > 0 else 0.0  # plain cosine: decays from epoch 2 on
        out.append(Phase(f"cosine decay to ×{_factor(params.min_factor)}", min(hold, total)))
    elif isinstance(params, PolyParams):
        out.append(Phase(f"poly decay (power {_factor(params.power)})", 0.0))
    return out


def _stage_what(stage: Any) -> str:
    parts = []
    if stage.train_only:
        parts.append(f"train {', '.join(stage.train_only)} only")
    if stage.frozen:
        parts.append(f"{', '.join(stage.frozen)} frozen")
    if stage.losses:
        parts.append(f"losses {', '.join(stage.losses)}")
    if stage.lr_scale != 1.0:
        parts.append(f"LR ×{_factor(stage.lr_scale)}")
    return f" ({'; '.join(parts)})" if parts else ""


def stage_phases(spec: RunSpec) -> list[Phase]:
    """Each stage (when there are several) and the freeze warm-up."""
    out: list[Phase] = []
    if len(spec.stages) > 1 or (spec.stages and _stage_what(spec.stages[0])):
        start = 0.0
        for i, stage in enumerate(spec.stages):
            end = start + stage.epochs
            out.append(Phase(f"{stage.name or f'stage{i + 1}'}{_stage_what(stage)}", start, end))
            start = end
    sched = spec.schedule
    if sched.freeze_epochs:
        epochs = sched.freeze_epochs * (sched.max_epochs if sched.unit == "fraction" else 1)
        out.append(Phase(f"{', '.join(sched.freeze_modules)} frozen", 0.0, epochs))
    return out


def curriculum_phases(spec: RunSpec) -> list[Phase]:
    """Each curriculum term: the hardness ramp (μ from the easiest negative to the hardest, reached at
    t0) and σ shrinking to a·b (at t1). ``time: epoch`` (in epoch granularity) counts completed
    epochs: it reaches t at the start of epoch ceil(t) + 1."""
    from reidbench.models.terms.curriculum import CurriculumTripletParams, effective_bounds, effective_time

    out: list[Phase] = []
    for term in spec.loss.terms:
        if term.kind != "curriculum_triplet":
            continue
        params = CurriculumTripletParams(**dict(term.options))
        t0, t1 = effective_bounds(params, spec.schedule.max_epochs)
        if effective_time(params.time, spec.schedule.granularity) == "epoch":
            t0, t1 = float(math.ceil(t0)), float(math.ceil(t1))
        label = term.name or "curriculum"
        out.append(Phase(f"{label}: negatives easiest→hardest", 0.0, t0))
        out.append(Phase(f"{label}: σ {_factor(params.a)}→{_factor(params.a * params.b)}", t0, t1))
    return out


def run_phases(spec: RunSpec) -> list[Phase]:
    """Every phase of ``spec``'s run, in the order: schedule, stages and freeze, curricula."""
    return schedule_phases(spec) + stage_phases(spec) + curriculum_phases(spec)


def phases_text(spec: RunSpec) -> str:
    """``warmup from ×0.01 0–8.33 %; LR ×0.1 from 32.5 %; ...``: each phase with its share of the run ("" if none)."""
    total = spec.schedule.max_epochs
    parts = []
    for phase in run_phases(spec):
        end = phase.end if phase.end is None else min(phase.end, total)
        if end is None:
            parts.append(f"{phase.label} from {_percent(phase.start, total)} %")
        else:
            parts.append(f"{phase.label} {_percent(phase.start, total)}–{_percent(end, total)} %")
    return "; ".join(parts)
