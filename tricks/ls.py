"""ls: label smoothing with epsilon 0.1 on the ID loss (bot.md)."""

from reidbench.harness.spec import RunSpec
from reidbench.tricks.base import Trick, set_term_options


def _patch(spec: RunSpec) -> RunSpec:
    return set_term_options(spec, "ce", "ls", label_smoothing=0.1)


TRICK = Trick(
    name="ls", version=1, label="+LS", patch=_patch, writes=frozenset({"loss.terms[ce].label_smoothing"}),
    aliases=frozenset({"label-smoothing", "label_smoothing"}),
    summary="label smoothing, epsilon=0.1, on the ID loss",
)
