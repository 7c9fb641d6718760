"""ls: label smoothing with epsilon 0.1 on the ID loss (bot.md)."""

from reidbench.harness.spec import RunSpec, replace_section
from reidbench.tricks.base import Trick


def _patch(spec: RunSpec) -> RunSpec:
    return replace_section(spec, "loss", label_smoothing=0.1)


TRICK = Trick(
    name="ls", version=1, label="+LS", patch=_patch, aliases=frozenset({"label-smoothing", "label_smoothing"}),
    summary="label smoothing, epsilon=0.1, on the ID loss",
)
