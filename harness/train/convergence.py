"""Did a run train to a plateau before its first LR decay? A measurable definition, stored with every run.

The paper's runs are trained until the loss and the accuracy stop improving, and only then is the
LR stepped down. A short schedule that decays while the model is still learning scores a trick on
how fast it lets the model learn, not on where it ends: warmup, random erasing or a curriculum
then look harmful although they are not. Every run therefore gets a convergence record.

Definition (``DEFINITION_VERSION`` 1):

1. **The window** is two consecutive whole epochs (a, b = a + 1) read from the LR each epoch
   trains at (schedule × stage scale; ``convergence_window``):

   - the first *decay* is the first epoch whose LR is below the highest LR of the epochs before
     it (an LR that only rises, as in a warmup, is no decay);
   - when the two epochs right before that decay both train at the peak LR (a plateau: multistep's
     epochs before its first milestone, a delayed cosine's hold), the window is those two epochs;
   - when no epoch decays (a constant LR, milestones beyond the run, a single stage), the window is
     the run's last two epochs;
   - when the LR falls from its peak at once — an annealing schedule (cosine or poly without a
     hold) — the window is also the run's last two epochs: there is no plateau before a decay, and
     the check asks whether training had stopped improving by its end;
   - a step schedule (``STEP_KINDS``) that decays before two whole epochs at its peak (a milestone
     at epoch 2, or right where its warmup ends) has no window: ``unknown``.

   A step-granular schedule whose decay falls inside an epoch must pass the LR each epoch *ends*
   at (its lowest), so that the epoch holding the decay counts as decayed and the window is the
   last whole epochs before it; the recorded per-epoch ``lr`` (an epoch's first step) is that LR for
   every epoch-granular schedule.

2. **The two criteria**, over the window (a → b):

   - the training loss — the sum of the epoch-mean weighted loss terms, as the loop logs them —
     changes by less than ``LOSS_REL_TOL`` (1 %) of its value in the run's first epoch (what
     training started from; epoch a's own value when the first epoch is not in the history). Not
     of its value at epoch a: a loss that has fallen close to 0 (cross-entropy without label
     smoothing) changes by tens of percent of itself from one epoch to the next through sampling
     noise alone, long after it stopped falling;
   - the mAP on the run's first test set (the training domain in reidbench's ablations) changes by
     less than ``MAP_TOL_POINTS`` (0.5 points). The runner scores it at epochs a and b only when it
     can change the verdict — when the loss criterion has not already failed (``hooks.ConvergenceHook``
     keeps epoch a's weights in memory until epoch b's loss is known; an epoch already scored by
     ``eval.every_epochs`` is reused, and epoch b = the last epoch is the final evaluation). No
     evaluation setting enters the run hash.

3. **The verdict**: ``no`` when either measured criterion fails; ``yes`` when both were measured
   and pass; ``unknown`` otherwise (no window, a missing mAP — runs recorded before this existed
   and trained without a periodic evaluation, or a run resumed between a and b —, loss terms that
   differ between a and b because a stage boundary lies between them).

Why these thresholds: 1 % of the starting loss per epoch is a loss that has done at least ~99 % of
its falling if it had fallen steadily for a run of 100 epochs — flat at the time scale of a schedule; 0.5 points of mAP is half the run-to-run spread the
BoT author states for one setting (1.0 point, ``report/tables.PAPER_SPREAD``), so a change below
it cannot be told from seed noise. The epoch-mean loss of a short epoch has sampling noise of its
own (a few hundred batches: well under 1 %; a few dozen: about 1 %), so on tiny training sets a
converged run can read ``no``: the record keeps both measured changes, not only the verdict.

Pure Python (no torch): the runner, the store (and its upgrade of old databases) and the reports
share it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

DEFINITION_VERSION = 1
LOSS_REL_TOL = 0.01  # |Δ training loss| / loss at epoch a, over one epoch
MAP_TOL_POINTS = 0.5  # |Δ first-test-set mAP| in percentage points, over one epoch
LR_REL_EPS = 1e-6  # an LR this much below the running peak is a decay; float round-off is not
STEP_KINDS = frozenset({"multistep"})  # schedules that decay in steps (the others anneal)
DEFAULT_KIND = "multistep"  # schedule.kind of a spec that does not write it
KEY_PREFIX = "convergence/"  # stats.extra key of the window's extra evaluations: convergence/<test>/mAP

YES, NO, UNKNOWN = "yes", "no", "unknown"
STATUSES = (YES, NO, UNKNOWN)
BEFORE_DECAY, RUN_END, NO_WINDOW = "before-decay", "run-end", "none"


@dataclass(frozen=True)
class Window:
    """The two epochs (a, b) the criteria compare, and why those."""

    epochs: tuple[int, int] | None  # 1-based; None: no window (``reason`` says why)
    where: str  # before-decay | run-end | none
    decay_epoch: int | None = None  # the first epoch at a decayed LR; None: none in the run
    reason: str = ""


@dataclass(frozen=True)
class Convergence:
    """One run's convergence record (what the store keeps in ``rb_convergence``)."""

    status: str  # yes | no | unknown
    epochs: tuple[int, int] | None = None  # the window (a, b)
    where: str = NO_WINDOW  # before-decay | run-end | none
    decay_epoch: int | None = None
    loss_change: float | None = None  # relative: (L_b - L_a) / L_a; negative = still falling
    map_change: float | None = None  # points: mAP_b - mAP_a
    loss: tuple[float, float] | None = None  # L_a, L_b
    map: tuple[float, float] | None = None  # mAP_a, mAP_b as fractions
    test_set: str | None = None  # whose mAP
    reason: str = ""  # what decided the verdict, or why it is unknown
    definition: int = DEFINITION_VERSION
    thresholds: dict[str, float] = field(
        default_factory=lambda: {"loss_rel": LOSS_REL_TOL, "map_points": MAP_TOL_POINTS})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("epochs", "loss", "map"):
            out[key] = None if out[key] is None else list(out[key])
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "Convergence":
        """A record from ``to_dict`` (a result.json or the store); a malformed one is a ValueError."""
        if not isinstance(raw, Mapping) or raw.get("status") not in STATUSES:
            raise ValueError(f"convergence record {raw!r} is not valid: a mapping with status in {STATUSES}")

        def pair(key: str, kind: type) -> tuple[Any, Any] | None:
            value = raw.get(key)
            if value is None:
                return None
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise ValueError(f"convergence record: {key}={value!r} is not a pair")
            return kind(value[0]), kind(value[1])

        def number(key: str) -> float | None:
            value = raw.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"convergence record: {key}={value!r} is not a finite number")
            return float(value)

        decay = raw.get("decay_epoch")
        return cls(status=str(raw["status"]), epochs=pair("epochs", int), where=str(raw.get("where") or NO_WINDOW),
                   decay_epoch=None if decay is None else int(decay), loss_change=number("loss_change"),
                   map_change=number("map_change"), loss=pair("loss", float), map=pair("map", float),
                   test_set=None if raw.get("test_set") is None else str(raw["test_set"]),
                   reason=str(raw.get("reason") or ""), definition=int(raw.get("definition") or DEFINITION_VERSION),
                   thresholds=dict(raw.get("thresholds") or {"loss_rel": LOSS_REL_TOL, "map_points": MAP_TOL_POINTS}))


def convergence_window(lrs: Sequence[float], kind: str = DEFAULT_KIND) -> Window:
    """The window of a run whose epoch t (1-based) trains at ``lrs[t - 1]``; ``kind``: schedule.kind."""
    total = len(lrs)
    if total < 2:
        return Window(None, NO_WINDOW, None, f"{total} epoch(s): a window needs two")
    running, decay = float(lrs[0]), None
    for t in range(2, total + 1):
        lr = float(lrs[t - 1])
        if lr < running * (1.0 - LR_REL_EPS):
            decay = t
            break
        running = max(running, lr)
    if decay is None:
        return Window((total - 1, total), RUN_END, None, "the LR never decays: the run's last two epochs")
    peak = max(float(v) for v in lrs[:decay - 1])
    held = decay >= 3 and all(float(v) >= peak * (1.0 - LR_REL_EPS) for v in lrs[decay - 3:decay - 1])
    if held:
        return Window((decay - 2, decay - 1), BEFORE_DECAY, decay,
                      f"the last two epochs at the peak LR before the first decay (epoch {decay})")
    if kind in STEP_KINDS:
        return Window(None, NO_WINDOW, decay,
                      f"fewer than two epochs at the peak LR before the first decay (epoch {decay})")
    return Window((total - 1, total), RUN_END, decay,
                  f"the LR anneals from its peak (schedule {kind}): the run's last two epochs")


def loss_check(losses_a: Mapping[str, Any], losses_b: Mapping[str, Any], epochs: tuple[int, int],
               first: Mapping[str, Any] | None = None) -> tuple[tuple[float, float] | None, float | None, str]:
    """((L_a, L_b), change, note) of two epochs' named loss terms: (L_b − L_a) relative to the total of
    ``first`` (the run's first epoch's terms; L_a without it). The change is None (the note says why)
    when the terms differ (a stage boundary), are not finite, or the scale is <= 0. The loss
    criterion fails when ``abs(change) >= LOSS_REL_TOL``."""
    a, b = epochs
    if set(losses_a) != set(losses_b):
        return None, None, f"loss: the terms differ between epochs {a} and {b} (a stage boundary)"
    if not losses_a or not all(_finite(v) for v in (*losses_a.values(), *losses_b.values())):
        return None, None, "loss: not recorded as finite numbers"
    loss = (float(sum(losses_a.values())), float(sum(losses_b.values())))
    scale = loss[0]
    if first and all(_finite(v) for v in first.values()):
        scale = float(sum(first.values()))
    if scale <= 0:
        return None, None, f"loss: {scale:g} to compare with, no relative change"
    return loss, (loss[1] - loss[0]) / scale, ""


def _epoch_view(entry: Mapping[str, Any]) -> tuple[dict[str, float], float | None, dict[str, Any]]:
    """(losses, lr, extras) of a history entry (``EpochStats.to_dict``) or a stored, flattened epoch."""
    if isinstance(entry.get("losses"), Mapping):
        return dict(entry["losses"]), entry.get("lr"), dict(entry.get("extra") or {})
    losses = {k[len("loss/"):]: v for k, v in entry.items() if k.startswith("loss/")}
    extras = {k: v for k, v in entry.items() if "/" in k and not k.startswith("loss/")}
    return losses, entry.get("lr"), extras


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def schedule_kind(spec: Mapping[str, Any]) -> str:
    return str((spec.get("schedule") or {}).get("kind") or DEFAULT_KIND)


def first_test_set(spec: Mapping[str, Any]) -> str | None:
    tests = (spec.get("data") or {}).get("test") or []
    return str(tests[0]) if tests else None


def assess(history: Sequence[Mapping[str, Any]], *, max_epochs: int, kind: str = DEFAULT_KIND,
           test_set: str | None = None, final_map: float | None = None,
           lrs: Sequence[float] | None = None) -> Convergence:
    """The convergence record of a finished run.

    ``history``: its per-epoch records, raw (``losses``/``lr``/``extra``) or as the store flattens
    them (``loss/<term>``, ``lr``, ``<test>/mAP``); ``final_map``: the final default evaluation's
    mAP on ``test_set`` (fraction), which stands for epoch ``max_epochs``; ``lrs``: the LR of each
    epoch (default: the history's ``lr``), e.g. the runner's planned LRs.
    """
    by_epoch: dict[int, Mapping[str, Any]] = {}
    for entry in history:
        if isinstance(entry, Mapping) and "epoch" in entry:
            by_epoch[int(entry["epoch"])] = entry
    if lrs is None:
        recorded = [_epoch_view(by_epoch[t])[1] if t in by_epoch else None for t in range(1, max_epochs + 1)]
        if max_epochs >= 2 and any(not _finite(v) for v in recorded):
            missing = [t for t, v in zip(range(1, max_epochs + 1), recorded) if not _finite(v)]
            return Convergence(UNKNOWN, test_set=test_set,
                               reason=f"no recorded LR for epoch(s) {', '.join(map(str, missing[:5]))}")
        lrs = [float(v) for v in recorded if _finite(v)]
    window = convergence_window(list(lrs)[:max_epochs], kind)
    base = {"where": window.where, "decay_epoch": window.decay_epoch, "test_set": test_set}
    if window.epochs is None:
        return Convergence(UNKNOWN, reason=f"no window: {window.reason}", **base)
    a, b = window.epochs
    if a not in by_epoch or b not in by_epoch:
        return Convergence(UNKNOWN, epochs=window.epochs, reason=f"epoch {a} or {b} not in the history", **base)
    (loss_a, _, extra_a), (loss_b, _, extra_b) = _epoch_view(by_epoch[a]), _epoch_view(by_epoch[b])

    notes: list[str] = []
    first = _epoch_view(by_epoch[1])[0] if 1 in by_epoch else None
    loss, loss_change, loss_note = loss_check(loss_a, loss_b, (a, b), first)
    if loss_note:
        notes.append(loss_note)

    def map_at(epoch: int, extra: Mapping[str, Any]) -> float | None:
        if test_set is None:
            return None
        for key in (f"{KEY_PREFIX}{test_set}/mAP", f"{test_set}/mAP"):
            if _finite(extra.get(key)):
                return float(extra[key])
        return float(final_map) if epoch == max_epochs and _finite(final_map) else None

    m_a, m_b = map_at(a, extra_a), map_at(b, extra_b)
    mean_ap = map_change = None
    if m_a is None or m_b is None:
        lacking = [str(e) for e, m in ((a, m_a), (b, m_b)) if m is None]
        decided = loss_change is not None and not abs(loss_change) < LOSS_REL_TOL
        why = " (the loss alone decides)" if decided else ""
        notes.append(f"mAP: not scored at epoch {' and '.join(lacking)}{why}" if test_set else "mAP: no test set")
    else:
        mean_ap, map_change = (m_a, m_b), 100.0 * (m_b - m_a)

    failed = []
    if loss_change is not None and not abs(loss_change) < LOSS_REL_TOL:
        failed.append(f"loss changed {100 * loss_change:+.1f} % (limit {100 * LOSS_REL_TOL:g} %)")
    if map_change is not None and not abs(map_change) < MAP_TOL_POINTS:
        failed.append(f"mAP changed {map_change:+.1f} points (limit {MAP_TOL_POINTS:g})")
    if failed:
        status = NO
    elif loss_change is not None and map_change is not None:
        status = YES
    else:
        status = UNKNOWN
    reason = "; ".join(failed + notes) or f"loss and mAP flat over epochs {a}→{b}"
    return Convergence(status, epochs=window.epochs, loss_change=loss_change, map_change=map_change, loss=loss,
                       map=mean_ap, reason=reason, **base)


def assess_run(spec: Mapping[str, Any], history: Sequence[Mapping[str, Any]],
               final_metrics: Mapping[str, Mapping[str, float]], lrs: Sequence[float] | None = None) -> Convergence:
    """``assess`` for a stored spec (plain data), its history and its default evaluation's final metrics."""
    test_set = first_test_set(spec)
    final = (final_metrics.get(test_set) or {}).get("mAP") if test_set else None
    max_epochs = int((spec.get("schedule") or {}).get("max_epochs") or 0)
    if max_epochs < 1:  # a spec without its schedule: the history says how long it trained
        max_epochs = max((int(h["epoch"]) for h in history if isinstance(h, Mapping) and "epoch" in h), default=0)
    return assess(history, max_epochs=max_epochs, kind=schedule_kind(spec), test_set=test_set, final_map=final,
                  lrs=lrs)


# ---------------------------------------------------------------------- what tables say


@dataclass(frozen=True)
class Counts:
    """How many of a table's finished runs converged."""

    yes: int = 0
    no: int = 0
    unknown: int = 0

    @property
    def total(self) -> int:
        return self.yes + self.no + self.unknown

    @classmethod
    def of(cls, statuses: Sequence[str]) -> "Counts":
        return cls(sum(s == YES for s in statuses), sum(s == NO for s in statuses),
                   sum(s not in (YES, NO) for s in statuses))


CRITERIA_TEXT = (f"training loss Δ < {100 * LOSS_REL_TOL:g} % of its first epoch's and same-domain mAP Δ < "
                 f"{MAP_TOL_POINTS:g} points "
                 "over the last epoch before the first LR decay (the run's last epoch if the LR never steps down)")


def footer(counts: Counts) -> str:
    """"converged: 5 of 7 runs (…criteria…; 1 not, 1 unknown)": what every table's footer says."""
    if counts.total == 0:
        return "converged: no finished run yet"
    rest = [f"{counts.no} not" if counts.no else "", f"{counts.unknown} unknown" if counts.unknown else ""]
    tail = ", ".join(p for p in rest if p)
    return f"converged: {counts.yes} of {counts.total} runs ({CRITERIA_TEXT}{'; ' + tail if tail else ''})"
