"""nonlocal: AGW's non-local blocks after the last 2 blocks of stage2 and the last 3 of stage3 (docs/agw.md).

Sets ``model.nonlocal_layers: [0, 2, 3, 0]`` (ReID-Survey's ``non_layers``: on a ResNet-50 after
layer2.2, layer2.3, layer3.3, layer3.4, layer3.5 — the survey's "stage 3 and stage 4", counting
the stem as stage 1). ``model.nonlocal_channels`` keeps its default ``one``: the as-published
single intermediate channel. The module is ``non_local.py`` because ``nonlocal`` is a Python keyword.
"""

from reidbench.harness.spec import RunSpec
from reidbench.tricks.base import Trick, set_model_options

AGW_NONLOCAL_LAYERS = (0, 2, 3, 0)  # blocks per stage1..stage4 (models/non_local.AGW_COUNTS)


def _patch(spec: RunSpec) -> RunSpec:
    return set_model_options(spec, "nonlocal", nonlocal_layers=AGW_NONLOCAL_LAYERS)


TRICK = Trick(
    name="nonlocal", version=1, label="+non-local", patch=_patch, writes=frozenset({"model.nonlocal_layers"}),
    aliases=frozenset({"non-local", "non_local", "nl"}),
    summary="non-local blocks after the last 2 blocks of stage2 and last 3 of stage3, 1 inner channel (AGW)",
)
