"""Learning-rate schedules, by name, per epoch or per optimizer step.

**Epoch granularity** (``schedule.granularity: epoch``, the default and the BoT reference). A
schedule is a multiplier of the 1-based training epoch ``t``: epoch t trains at
``base_lr * m(t)``; the LR changes once per epoch, at its start. Every schedule here is
``m(t) = w(t) * d(t)`` with the reference's linear warmup

    w(t) = warmup_factor * (1 - t/W) + t/W   for t < W,   1 otherwise

(W = warmup epochs; epoch W is the first at the full LR) and a decay ``d`` per schedule.
Phase lengths are whole epochs.

**Step granularity** (``granularity: step``). Every phase is a function of the epochs elapsed at
the start of each optimizer step, fractional:

    x = (epoch - 1) + step_index / steps_per_epoch      (step_index 0-based; x in [0, T))

evaluated at every step, so a phase of length L takes L/T of the run's steps whatever T is (to
within one step), and phase lengths may be fractional (``warmup_epochs: 0.5``):

- warmup: ``w(x) = warmup_factor + (1 - warmup_factor) * x / W`` for x < W, 1 from x = W: it
  ramps from ``warmup_factor`` at the first step to 1 at x = W, so it takes W/T of the steps
  (the paper's 10/120, where epoch granularity gives (W - 1)/T);
- multistep: a milestone m (as in epoch granularity: the first 1-based epoch at the decayed rate)
  decays for x >= m - 1, so the share before the decay is (m - 1)/T, exactly as in epoch
  granularity; ``d`` is the epoch formula at the continuous t = x + 1;
- poly: its formula at the continuous t = x + 1, ``(1 - x/T) ** power``;
- cosine: its formula at the continuous t = x + 1 with the full LR held until x = S, where
  S = W + delay (``delay_from: warmup``) or max(W, delay) (``start``): the delay starts where the
  step warmup ends (x = W), so it holds the full LR for exactly ``delay_epochs``; then
  ``d = min + (1 - min) * (1 + cos(pi * (x - S) / (T - S))) / 2``, reaching ``min_factor`` at the
  run's end (x = T), as the epoch formula does at t = T + 1;
- stages, the freeze warm-up and the curriculum (``time: continuous``) read the same x
  (``harness/train/loop.py`` ``StagePlan``, ``models/terms/curriculum.py``).

At every epoch start (x = epoch - 1) the step multiplier of multistep and poly equals the epoch
multiplier of that epoch; only the warmup (one epoch longer: it starts at ``warmup_factor``) and
the cosine hold (see above) differ. ``build_lr_scheduler`` (``harness/train/build.py``) builds a
``LambdaLR`` stepped once per epoch or once per optimizer step accordingly.

Milestones, warmup and delay are stated in epochs (``unit="epochs"``) or as fractions of the
run (``unit="fraction"``); see :func:`resolve_epochs` (epoch granularity rounds them to whole
epochs) and :func:`phase_epochs` (step granularity: a fraction f is f·T epochs, unrounded).
Fractions make a shortened profile rescale explicitly instead of silently keeping a 120-epoch
milestone in a 12-epoch run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

UNITS = ("epochs", "fraction")
GRANULARITIES = ("epoch", "step")


def resolve_epochs(value: float, max_epochs: int, unit: str, *, where: str = "epochs") -> int:
    """An epoch count from ``value`` in ``unit``.

    ``"epochs"``: ``value`` must be a whole number >= 0 and is kept as it is.
    ``"fraction"``: ``value`` in [0, 1] maps to ``round(value * max_epochs)`` with halves rounded
    up (not Python's round-half-to-even), and a nonzero fraction never maps below 1 — so a
    milestone (or warmup, or delay) stated for a long run survives on a very short one.
    ``where`` names the field in the error message.
    """
    if unit == "epochs":
        if isinstance(value, bool) or not float(value).is_integer() or value < 0:
            raise ValueError(f"{where}={value!r} is not valid: a whole number >= 0 (unit 'epochs'; a fractional one "
                             "needs granularity step)")
        return int(value)
    if unit == "fraction":
        if isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{where}={value!r} is not valid: a value in [0, 1] (unit 'fraction')")
        if value == 0:
            return 0
        return max(1, math.floor(float(value) * max_epochs + 0.5))
    raise ValueError(f"unit={unit!r} is not valid: {' or '.join(UNITS)}")


def warmup_multiplier(epoch: int, warmup_epochs: int, warmup_factor: float) -> float:
    """``w(t)`` above: linear from ``warmup_factor`` towards 1, reaching 1 at epoch ``warmup_epochs``."""
    if warmup_epochs > 0 and epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        return warmup_factor * (1.0 - alpha) + alpha
    return 1.0


def phase_epochs(value: float, max_epochs: int, unit: str, granularity: str, *, where: str = "epochs") -> float:
    """A phase length (or milestone) in epochs: ``resolve_epochs`` in epoch granularity; in step
    granularity the value itself (``unit="epochs"``, any number >= 0) or ``value * max_epochs``
    (``unit="fraction"``, unrounded)."""
    if granularity == "epoch":
        return resolve_epochs(value, max_epochs, unit, where=where)
    if granularity != "step":
        raise ValueError(f"granularity={granularity!r} is not valid: {' or '.join(GRANULARITIES)}")
    if isinstance(value, bool) or not math.isfinite(float(value)) or value < 0:
        raise ValueError(f"{where}={value!r} is not valid: a number >= 0")
    if unit == "epochs":
        return float(value)
    if unit == "fraction":
        if not value <= 1.0:
            raise ValueError(f"{where}={value!r} is not valid: a value in [0, 1] (unit 'fraction')")
        return float(value) * max_epochs
    raise ValueError(f"unit={unit!r} is not valid: {' or '.join(UNITS)}")


def step_warmup_multiplier(x: float, warmup_epochs: float, warmup_factor: float) -> float:
    """Step granularity's warmup at ``x`` epochs elapsed: ``warmup_factor`` at x = 0, linear to 1 at x = W."""
    if warmup_epochs > 0 and x < warmup_epochs:
        return warmup_factor + (1.0 - warmup_factor) * (x / warmup_epochs)
    return 1.0


def _check_epoch(epoch: float, max_epochs: int) -> None:
    if epoch < 1:
        raise ValueError(f"epoch={epoch} is not valid: epochs are 1-based")
    if max_epochs < 1:
        raise ValueError(f"max_epochs={max_epochs} is not valid: an integer >= 1")


def _check_warmup(where: str, unit: str, warmup_epochs: float, warmup_factor: float, granularity: str = "epoch"
                  ) -> None:
    if unit not in UNITS:
        raise ValueError(f"{where}.unit={unit!r} is not valid: {' or '.join(UNITS)}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"{where}.granularity={granularity!r} is not valid: {' or '.join(GRANULARITIES)}")
    phase_epochs(warmup_epochs, 1, unit, granularity, where=f"{where}.warmup_epochs")  # shape only: no run length yet
    if not 0.0 < warmup_factor <= 1.0:
        raise ValueError(f"{where}.warmup_factor={warmup_factor!r} is not valid: a value in (0, 1]")


# --- multistep -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MultiStepParams:
    """``d(t) = gamma ** (number of milestones <= t)``: the BoT reference (bot.md "warmup")."""

    milestones: tuple[float, ...] = (40, 70)  # 1-based epochs (or fractions) where the LR is multiplied by gamma
    gamma: float = 0.1
    warmup_epochs: float = 0
    warmup_factor: float = 0.01
    unit: str = "epochs"
    granularity: str = "epoch"  # or step (the module doc): milestones and warmup may be fractional epochs

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(self.milestones))
        _check_warmup("multistep", self.unit, self.warmup_epochs, self.warmup_factor, self.granularity)
        if list(self.milestones) != sorted(self.milestones) or any(m <= 0 for m in self.milestones):
            raise ValueError(f"multistep.milestones={list(self.milestones)!r} is not valid: increasing values > 0")
        for m in self.milestones:
            phase_epochs(m, 1, self.unit, self.granularity, where="multistep.milestones")
        if not self.gamma > 0.0:
            raise ValueError(f"multistep.gamma={self.gamma!r} is not valid: a value > 0")


def step_decay(epoch: int, milestones: Sequence[int], gamma: float, warmup_epochs: int, warmup_factor: float) -> float:
    """``w(t) * gamma ** #{milestones <= t}`` in epochs, unvalidated: the arithmetic that
    ``optim.lr_multiplier`` (the BoT reference values) and ``multistep`` share, so they stay bit-identical."""
    decays = sum(1 for m in milestones if m <= epoch)
    return warmup_multiplier(epoch, warmup_epochs, warmup_factor) * gamma**decays


def multistep_multiplier(epoch: float, max_epochs: int, p: MultiStepParams) -> float:
    """``w(t) * gamma ** #{milestones <= t}`` after resolving milestones and warmup to epochs.

    Step granularity: ``epoch`` is the continuous t = x + 1, the warmup the step one (module doc).
    """
    _check_epoch(epoch, max_epochs)
    warmup = phase_epochs(p.warmup_epochs, max_epochs, p.unit, p.granularity)
    milestones = [phase_epochs(m, max_epochs, p.unit, p.granularity) for m in p.milestones]
    if p.granularity == "step":
        decays = sum(1 for m in milestones if m <= epoch)
        return step_warmup_multiplier(epoch - 1, warmup, p.warmup_factor) * p.gamma**decays
    return step_decay(epoch, milestones, p.gamma, warmup, p.warmup_factor)


# --- cosine --------------------------------------------------------------------------------------

DELAY_FROM = ("warmup", "start")


@dataclass(frozen=True)
class CosineParams:
    """Warmup, then the full LR for ``delay_epochs``, then a half cosine down to ``min_factor``."""

    warmup_epochs: float = 0
    warmup_factor: float = 0.01
    delay_epochs: float = 0  # fast-reid's "delay", in epochs: held at the full LR after the warmup
    min_factor: float = 0.0  # fast-reid's ETA_MIN_LR / BASE_LR
    unit: str = "epochs"
    # --- AGW / fast-reid ---
    # Where the delay counts from: "warmup" (after it, the original reading) or "start" (from
    # epoch 1, overlapping the warmup: fast-reid's T_max = max_epoch - max(warmup, delay)).
    delay_from: str = "warmup"
    granularity: str = "epoch"  # or step (the module doc): warmup and delay may be fractional epochs

    def __post_init__(self) -> None:
        _check_warmup("cosine", self.unit, self.warmup_epochs, self.warmup_factor, self.granularity)
        phase_epochs(self.delay_epochs, 1, self.unit, self.granularity, where="cosine.delay_epochs")
        if not 0.0 <= self.min_factor < 1.0:
            raise ValueError(f"cosine.min_factor={self.min_factor!r} is not valid: a value in [0, 1)")
        if self.delay_from not in DELAY_FROM:
            raise ValueError(f"cosine.delay_from={self.delay_from!r} is not valid: {' or '.join(DELAY_FROM)}")


def cosine_multiplier(epoch: int, max_epochs: int, p: CosineParams) -> float:
    """``w(t) * d(t)`` with, for T = max_epochs and E = max(W, 1) + delay (the last epoch at the full LR):

        d(t) = 1                                                     for t <= E
        d(t) = min + (1 - min) * (1 + cos(pi * (t - E) / (T + 1 - E))) / 2   for E < t <= T + 1
        d(t) = min                                                   after that

    So ``min_factor`` is reached at the end of the run (epoch T + 1, the one that would follow),
    and the last trained epoch still has a positive LR, as poly's and as fast-reid's
    ``CosineAnnealingLR(T_max=max_epoch - delay)``; no epoch is spent at LR 0. Unlike fast-reid,
    the delay counts after the warmup, not from epoch 1 (fast-reid's delay D with warmup W is
    ``delay_epochs = max(0, D - W)`` here). With T=10, W=2, delay 3: 0.505, 1, 1, 1, 1, then
    (1 + cos(k*pi/6)) / 2 for k = 1..5 = 0.9330, 0.75, 0.5, 0.25, 0.0670.

    ``delay_from="start"`` counts the delay from epoch 1 as fast-reid does: E = max(W, 1, delay),
    so fast-reid's D is written as it is (the ``cosine`` trick's reading).

    Step granularity (``epoch`` = the continuous t = x + 1): the full LR until x = S, S = W + delay
    (or max(W, delay) from the start), then the half cosine over x in [S, T] (the module doc).
    With T=10, W=2, delay 3 (S = 5): 0.01 at x = 0, 0.505 at x = 1, 1 for x in [2, 5], 0.5 at
    x = 7.5, min_factor at x = 10.
    """
    _check_epoch(epoch, max_epochs)
    warmup = phase_epochs(p.warmup_epochs, max_epochs, p.unit, p.granularity)
    delay = phase_epochs(p.delay_epochs, max_epochs, p.unit, p.granularity)
    if p.granularity == "step":
        x = epoch - 1
        start = max(warmup, delay) if p.delay_from == "start" else warmup + delay
        if x <= start:
            decay = 1.0
        else:
            progress = min(1.0, (x - start) / (max_epochs - start))
            decay = p.min_factor + (1.0 - p.min_factor) * (1.0 + math.cos(math.pi * progress)) / 2.0
        return step_warmup_multiplier(x, warmup, p.warmup_factor) * decay
    last_full = max(warmup, 1, delay) if p.delay_from == "start" else max(warmup, 1) + delay
    if epoch <= last_full:
        decay = 1.0
    else:
        progress = min(1.0, (epoch - last_full) / (max_epochs + 1 - last_full))
        decay = p.min_factor + (1.0 - p.min_factor) * (1.0 + math.cos(math.pi * progress)) / 2.0
    return warmup_multiplier(epoch, warmup, p.warmup_factor) * decay


# --- poly ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolyParams:
    """``d(t) = (1 - (t - 1) / T) ** power`` (SPReID's recipe: power 0.9, no warmup)."""

    power: float = 0.9
    warmup_epochs: float = 0
    warmup_factor: float = 0.01
    unit: str = "epochs"
    granularity: str = "epoch"  # or step (the module doc): ``(1 - x/T) ** power`` at every step

    def __post_init__(self) -> None:
        _check_warmup("poly", self.unit, self.warmup_epochs, self.warmup_factor, self.granularity)
        if not self.power > 0:
            raise ValueError(f"poly.power={self.power!r} is not valid: a value > 0")


def poly_multiplier(epoch: float, max_epochs: int, p: PolyParams) -> float:
    """``w(t) * (1 - (t - 1) / T) ** power``: 1 at epoch 1, ``(1/T) ** power`` at the last epoch
    T, 0 at T + 1 (the base is clamped at 0 after that, so a fractional power never sees a
    negative number). Step granularity: the same at the continuous t = x + 1, the step warmup."""
    _check_epoch(epoch, max_epochs)
    warmup = phase_epochs(p.warmup_epochs, max_epochs, p.unit, p.granularity)
    base = max(0.0, 1.0 - (epoch - 1) / max_epochs)
    if p.granularity == "step":
        return step_warmup_multiplier(epoch - 1, warmup, p.warmup_factor) * base**p.power
    return warmup_multiplier(epoch, warmup, p.warmup_factor) * base**p.power


# --- registry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleEntry:
    """One named schedule: a one-line ``summary``, its ``params`` dataclass (frozen, every field
    defaulted, validating in ``__post_init__``) and ``factor(t, max_epochs, params)``.

    ``t`` is the 1-based epoch (an integer) in epoch granularity; a schedule whose params declare
    ``granularity`` also takes ``granularity="step"`` and is then called with the continuous
    t = x + 1 at every optimizer step (the module doc). One that does not declare it is
    epoch-granular only: ``schedule.granularity: step`` with it is refused (harness/spec/reads.py).
    """

    summary: str
    params: type
    factor: Callable[[float, int, Any], float]

    def make_params(self, **params: Any) -> Any:
        """The params dataclass from keyword fields; an unknown field is a ValueError naming the valid ones."""
        valid = [f.name for f in dataclasses.fields(self.params)]
        for key in params:
            if key not in valid:
                raise ValueError(f"schedule parameter {key!r} is not valid: {', '.join(valid)}")
        return self.params(**params)

    def multiplier(self, epoch: float, max_epochs: int, **params: Any) -> float:
        """``m(epoch)`` for a run of ``max_epochs`` epochs (step granularity: ``epoch`` = x + 1)."""
        return self.factor(epoch, max_epochs, self.make_params(**params))

    @property
    def step_granular(self) -> bool:
        """Whether the schedule can be evaluated at every optimizer step (its params declare ``granularity``)."""
        return self.params is not None and "granularity" in {f.name for f in dataclasses.fields(self.params)}


SCHEDULES: dict[str, ScheduleEntry] = {
    "multistep": ScheduleEntry(
        "warmup, then the LR times gamma at each milestone (the BoT reference)", MultiStepParams,
        multistep_multiplier),
    "cosine": ScheduleEntry(
        "warmup, hold for delay_epochs, then a half cosine down to min_factor at the run's end", CosineParams,
        cosine_multiplier),
    "poly": ScheduleEntry("warmup, then (1 - (t-1)/max_epochs) ** power (SPReID)", PolyParams, poly_multiplier),
}
DEFAULT_SCHEDULE = "multistep"


def register_schedule(name: str, entry: ScheduleEntry) -> None:
    """Add (or replace) the schedule ``name``."""
    if not name:
        raise ValueError(f"schedule name={name!r} is not valid: a non-empty string")
    SCHEDULES[name] = entry


def get_schedule(name: str) -> ScheduleEntry:
    """The entry for ``name``; a miss is a ValueError listing the registered names."""
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ValueError(f"schedule.name={name!r} is not valid: {' or '.join(SCHEDULES)}") from None


def build_scheduler(
    optimizer: torch.optim.Optimizer, name: str, max_epochs: int, steps_per_epoch: int = 0, **params: Any
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR: stepped once per epoch (counter 0 = training epoch 1), or, with
    ``granularity="step"`` in ``params``, once per optimizer step (counter k = the k-th step of the
    run, x = k / ``steps_per_epoch``).

    It multiplies each parameter group's ``initial_lr`` (its ``lr`` when built: base_lr times the
    group's lr_scale), so per-group scales survive every epoch. The factor is a closure, so
    ``state_dict`` holds only counters and LRs: rebuild with the same arguments, then
    ``load_state_dict``, to resume.
    """
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(f"max_epochs={max_epochs!r} is not valid: an integer >= 1")
    entry = get_schedule(name)
    p = entry.make_params(**params)
    factor_of = entry.factor
    if getattr(p, "granularity", "epoch") == "step":
        if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch={steps_per_epoch!r} is not valid: an integer >= 1 (granularity step)")

        def per_step(index0: int) -> float:
            return factor_of(1.0 + index0 / steps_per_epoch, max_epochs, p)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=per_step)

    def factor(index0: int) -> float:
        return factor_of(index0 + 1, max_epochs, p)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)
