"""center: center loss on f_t with weight beta=0.0005 and its own SGD (lr 0.5) (bot.md)."""

from reidbench.harness.spec import RunSpec, replace_section
from reidbench.tricks.base import Trick


def _patch(spec: RunSpec) -> RunSpec:
    return replace_section(spec, "loss", center_weight=0.0005, center_lr=0.5)


TRICK = Trick(
    name="center", version=1, label="+center loss", patch=_patch,
    aliases=frozenset({"center-loss", "center_loss"}),
    summary="center loss, beta=0.0005, centers updated by SGD lr 0.5",
)
