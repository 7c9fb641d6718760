"""warmup: linear LR warmup over the first 10 of 120 epochs, from 1% of the base LR (bot.md).

Epoch granularity (the paper profile, runs recorded before step granularity): scaled with the
schedule and rounded, ``max(2, round(10 * max_epochs / 120))`` epochs — a third of a 6-epoch run.
Step granularity (``schedule.granularity: step``: the cpu profile, ``--epochs``): exactly
``10 * max_epochs / 120`` epochs, fractional, so the warmup takes the paper's 10/120 of the
optimizer steps. (Only step-granular outputs changed: the version stays 1.)
"""

from reidbench.harness.spec import RunSpec, replace_section
from reidbench.tricks.base import Trick

PAPER_WARMUP_EPOCHS = 10
PAPER_MAX_EPOCHS = 120


def warmup_epochs(max_epochs: int, granularity: str = "epoch") -> float:
    """The warmup's length for a run of ``max_epochs`` (see the module doc)."""
    exact = PAPER_WARMUP_EPOCHS * max_epochs / PAPER_MAX_EPOCHS
    if granularity == "step":
        value = round(exact, 6)
        return int(value) if value.is_integer() else value
    # At least 2 epochs, because with one the first epoch would already train at the full rate.
    return max(2, round(exact))


def _patch(spec: RunSpec) -> RunSpec:
    epochs = warmup_epochs(spec.schedule.max_epochs, spec.schedule.granularity)
    return replace_section(spec, "schedule", warmup_epochs=epochs, warmup_factor=0.01)


TRICK = Trick(
    name="warmup", version=1, label="+warmup", patch=_patch,
    writes=frozenset({"schedule.warmup_epochs", "schedule.warmup_factor"}),
    summary="linear LR warmup from 1% over the first 10/120 of the epochs",
)
