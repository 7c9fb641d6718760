"""two-step: Geng et al.'s two-stepped fine-tuning (docs/geng.md; seed note 003, §4.1).

Step 1 trains only the architecture's ``new`` module group (bot: the head, i.e. the replaced
identity classifier; mgn: reductions, necks, classifiers) with everything else frozen (no
update, BatchNorm statistics included), so that the randomly initialised classifier does not
send "garbage gradients" into the pretrained net; step 2 trains everything. Per the seed ("first
fine-tune with the classification loss, then classification and verification together"),
step 1 computes only the identity-classification terms (those reading the ``logits*`` outputs);
the other terms (verification, triplet, center) join in step 2. A run without such a term
trains step 1 on all its terms (still with only the new heads unfrozen; a loss term's own
parameters, e.g. the verification FC, are never frozen).

Step 1 takes ``STEP1_ITERS / TOTAL_ITERS`` = 20K / 170K of the epochs (the seed's schedule for the
large datasets: 20K + 150K iterations): in epoch granularity rounded, at least 1 and leaving at
least 1 for step 2; in step granularity (``schedule.granularity: step``: the cpu profile,
``--epochs``) exactly, a fractional stage length, so step 1 takes 20/170 of the optimizer steps
(only step-granular outputs changed: the version stays 1). With ``--epochs`` the base is
shortened first, so the proportion is kept. The result is plain
``stages`` in the spec (``step1`` / ``step2``), recorded and hashed; write ``stages`` by hand for
another split (the seed's small-dataset schedule is 20K + 20K) or another step-1 loss set
(``losses: []`` trains the verification head in step 1 too).
"""

from __future__ import annotations

import dataclasses

from reidbench.harness.spec import RunSpec, StageSpec
from reidbench.tricks.base import Trick

STEP1_ITERS = 20_000
TOTAL_ITERS = 170_000


def step1_epochs(max_epochs: int, granularity: str = "epoch") -> float:
    """Epochs of step 1 in a run of ``max_epochs``: the seed's 20/170 — in epoch granularity
    rounded, at least 1, at most max − 1 (max_epochs >= 2); in step granularity exact."""
    if granularity == "step":
        value = round(max_epochs * STEP1_ITERS / TOTAL_ITERS, 6)
        return int(value) if value.is_integer() else value
    return min(max_epochs - 1, max(1, round(max_epochs * STEP1_ITERS / TOTAL_ITERS)))


def classification_kinds(spec: RunSpec) -> tuple[str, ...]:
    """Kinds of the weighted loss terms that read only logits outputs (identity classification)."""
    return tuple(sorted({t.kind for t in spec.loss.terms
                         if t.weight > 0 and all(r.startswith("logits") for r in t.read_names)}))


def _patch(spec: RunSpec) -> RunSpec:
    if spec.stages:
        raise ValueError(f"trick 'two-step' sets the run's stages, and the base already has "
                         f"{len(spec.stages)}; remove them from the base or drop the trick")
    total = spec.schedule.max_epochs
    granularity = spec.schedule.granularity
    if total < 2 and granularity == "epoch":
        raise ValueError(f"trick 'two-step' needs schedule.max_epochs >= 2 (one epoch per step), not {total}")
    first = step1_epochs(total, granularity)
    second = round(total - first, 6)
    stages = (StageSpec(epochs=first, name="step1", train_only=("new",), losses=classification_kinds(spec)),
              StageSpec(epochs=int(second) if float(second).is_integer() else second, name="step2"))
    return dataclasses.replace(spec, stages=stages)


TRICK = Trick(
    name="two-step", version=1, label="+two-step", patch=_patch, writes=frozenset({"stages"}),
    aliases=frozenset({"two_step", "twostep"}),
    summary="two-stepped fine-tuning: the first 20/170 of the epochs train only the new classifier on the ID "
            "loss, then all",
)
