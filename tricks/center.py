"""center: center loss on f_t with weight beta=0.0005 and its own SGD (lr 0.5) (bot.md)."""

from reidbench.harness.spec import LossTermSpec, RunSpec
from reidbench.tricks.base import Trick, add_term


def _patch(spec: RunSpec) -> RunSpec:
    if any(t.kind == "center" for t in spec.loss.terms if t.weight > 0):
        return spec  # "changes nothing": Trick.apply says so
    return add_term(spec, LossTermSpec(kind="center", reads="f_t", weight=0.0005))  # lr 0.5 is the default


TRICK = Trick(
    name="center", version=1, label="+center loss", patch=_patch,
    aliases=frozenset({"center-loss", "center_loss"}),
    summary="center loss, beta=0.0005, centers updated by SGD lr 0.5",
)
