"""rea: random erasing augmentation with p=0.5 and the reference's fill and sampling (bot.md)."""

from reidbench.harness.spec import RunSpec, replace_section
from reidbench.tricks.base import Trick


def _patch(spec: RunSpec) -> RunSpec:
    return replace_section(spec, "data", random_erasing_prob=0.5)


TRICK = Trick(
    name="rea", version=1, label="+REA", patch=_patch, writes=frozenset({"data.random_erasing_prob"}),
    aliases=frozenset({"random-erasing", "random_erasing"}),
    summary="random erasing, p=0.5, area 2-40%, filled with the ImageNet mean",
)
