"""bnneck: BatchNorm neck between the metric losses (f_t) and the ID loss / inference (f_i) (bot.md)."""

from reidbench.harness.spec import RunSpec, replace_section
from reidbench.tricks.base import Trick


def _patch(spec: RunSpec) -> RunSpec:
    return replace_section(spec, "model", neck="bnneck")


TRICK = Trick(
    name="bnneck", version=1, label="+BNNeck", patch=_patch, writes=frozenset({"model.neck"}),
    aliases=frozenset({"bn-neck", "bn_neck"}),
    summary="BNNeck: triplet on f_t, ID loss and inference on BN-normalised f_i, bias-free classifier",
)
