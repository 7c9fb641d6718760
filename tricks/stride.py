"""stride: last stride 1 (no dilation), doubling the final feature map (bot.md)."""

from reidbench.harness.spec import RunSpec, replace_section
from reidbench.tricks.base import Trick


def _patch(spec: RunSpec) -> RunSpec:
    return replace_section(spec, "model", last_stride=1)


TRICK = Trick(
    name="stride", version=1, label="+stride=1", patch=_patch, writes=frozenset({"model.last_stride"}),
    aliases=frozenset({"last-stride", "last_stride"}),
    summary="last stride 1: the backbone's last downsampling removed, without dilation",
)
