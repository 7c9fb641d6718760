"""freeze: fast-reid's freeze-backbone warm-up, the first 1000 of its 12,120 iterations (docs/agw.md).

fast-reid's SBS config freezes ``FREEZE_LAYERS: [backbone]`` for ``FREEZE_ITERS: 1000``: no update
and BatchNorm in eval mode, so only the new head trains while it is random. Its Market run has
60 epochs of 12,936 // 64 = 202 iterations, so 1000 iterations are 4.95 epochs, 8.25 % of the
run. An iteration count means nothing without the dataset and batch size, which a trick (a pure
patch of the spec) does not know; so the trick keeps the proportion: ``schedule.freeze_epochs`` =
1000 / (60 × 202) of the base's run (9.901 of 120 epochs, 0.495 of the cpu profile's 6; ``--epochs``
rescales it; rounded to 0.001 epoch in epoch granularity, to 1e-6 in step granularity), and the
training loop honours the fraction to the iteration (the first
ceil(freeze_epochs × iterations per epoch) steps are frozen). ``schedule.freeze_modules``: the
``backbone`` module group — on bot the whole backbone, non-local blocks included (fast-reid's
``backbone`` holds them too); on mgn the trunk and the branches.
"""

from reidbench.harness.spec import RunSpec, replace_section
from reidbench.tricks.base import Trick

FASTREID_FREEZE_ITERS = 1000
FASTREID_ITERS_PER_EPOCH = 202  # Market-1501: 12,936 training images // 64 per batch
FASTREID_MAX_EPOCHS = 60
FREEZE_FRACTION = FASTREID_FREEZE_ITERS / (FASTREID_ITERS_PER_EPOCH * FASTREID_MAX_EPOCHS)  # 0.0825


def _patch(spec: RunSpec) -> RunSpec:
    sched = spec.schedule
    if sched.unit != "epochs":
        value = round(FREEZE_FRACTION, 4)
    else:  # step granularity: to 1e-6 (only step-granular outputs changed, so the version stays 1)
        value = round(FREEZE_FRACTION * sched.max_epochs, 6 if sched.granularity == "step" else 3)
    return replace_section(spec, "schedule", freeze_epochs=value, freeze_modules=("backbone",))


TRICK = Trick(
    name="freeze", version=1, label="+freeze", patch=_patch, writes=frozenset({"schedule.freeze_epochs", "schedule.freeze_modules"}), aliases=frozenset({"freeze-backbone", "freeze_backbone"}),
    summary="backbone frozen (no update, BN statistics kept) for the first 8.25% of the iterations (fast-reid)",
)
