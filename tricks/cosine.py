"""cosine: fast-reid's cosine LR decay after a delay of half the run (docs/agw.md).

fast-reid's SBS config: ``CosineAnnealingLR`` after ``DELAY_EPOCHS: 30`` of ``MAX_EPOCH: 60``, down
to ``ETA_MIN_LR: 7e-7`` from ``BASE_LR: 3.5e-4``. Here: ``schedule.kind: cosine`` with
``delay_epochs`` = 30/60 of the base's ``max_epochs`` (60 of 120; rounded to whole epochs in epoch
granularity, exact in step granularity — the cpu profile, ``--epochs`` — where the LR is then
held for exactly half of the optimizer steps; ``--epochs`` rescales it like the milestones), counted from epoch 1 as fast-reid counts it (``delay_from: start``, so it
overlaps a warmup instead of following it), and ``min_factor`` 7e-7 / 3.5e-4 = 0.002. The
warmup (the ``warmup`` trick's) stays as the base has it. The base's multistep ``milestones`` and
``gamma``, which a cosine schedule does not read, go back to their defaults (``switch_kind``):
before they did, a cosine run hashed the base's unused milestones.
"""

from reidbench.harness.spec import RunSpec
from reidbench.tricks.base import Trick, switch_kind

FASTREID_DELAY_EPOCHS = 30
FASTREID_MAX_EPOCHS = 60
FASTREID_MIN_FACTOR = 0.002  # ETA_MIN_LR 7e-7 / BASE_LR 3.5e-4


def _patch(spec: RunSpec) -> RunSpec:
    sched = spec.schedule
    fraction = FASTREID_DELAY_EPOCHS / FASTREID_MAX_EPOCHS
    if sched.unit != "epochs":
        delay = fraction
    elif sched.granularity == "step":  # exact: only step-granular outputs changed, so the version stays 1
        delay = round(fraction * sched.max_epochs, 6)
        delay = int(delay) if delay.is_integer() else delay
    else:
        delay = round(fraction * sched.max_epochs)
    return switch_kind(spec, "schedule", "cosine", delay_epochs=delay, delay_from="start",
                       min_factor=FASTREID_MIN_FACTOR)


TRICK = Trick(
    name="cosine", version=1, label="+cosine LR", patch=_patch,
    writes=frozenset({"schedule.kind", "schedule.delay_epochs", "schedule.delay_from", "schedule.min_factor",
                      "schedule.milestones", "schedule.gamma"}),
    aliases=frozenset({"cosine-lr", "cosine_lr"}),
    summary="cosine LR decay to 0.002x after holding the LR for the first half of the run (fast-reid SBS)",
)
