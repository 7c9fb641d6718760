"""warmup: linear LR warmup over the first 10 of 120 epochs, from 1% of the base LR (bot.md)."""

from reidbench.harness.spec import RunSpec, replace_section
from reidbench.tricks.base import Trick

PAPER_WARMUP_EPOCHS = 10
PAPER_MAX_EPOCHS = 120


def _patch(spec: RunSpec) -> RunSpec:
    # Scale with the schedule so a shortened profile keeps the paper's proportion; at least 2
    # epochs, because with one the first epoch would already train at the full rate.
    epochs = max(2, round(PAPER_WARMUP_EPOCHS * spec.schedule.max_epochs / PAPER_MAX_EPOCHS))
    return replace_section(spec, "schedule", warmup_epochs=epochs, warmup_factor=0.01)


TRICK = Trick(
    name="warmup", version=1, label="+warmup", patch=_patch,
    writes=frozenset({"schedule.warmup_epochs", "schedule.warmup_factor"}),
    summary="linear LR warmup from 1% over the first 10/120 of the epochs",
)
