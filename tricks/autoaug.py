"""autoaug: ImageNet AutoAugment with probability 0.1, first of the random transforms (fast-reid SBS; docs/agw.md).

Sets ``data.autoaug_prob: 0.1``: torchvision's ``RandomApply([AutoAugment(IMAGENET)], p=0.1)`` on
the resized image, before flip / pad-crop / random erasing (``harness/data/transforms.py``).
"""

from reidbench.harness.spec import RunSpec, replace_section
from reidbench.tricks.base import Trick

FASTREID_AUTOAUG_PROB = 0.1


def _patch(spec: RunSpec) -> RunSpec:
    return replace_section(spec, "data", autoaug_prob=FASTREID_AUTOAUG_PROB)


TRICK = Trick(
    name="autoaug", version=1, label="+AutoAugment", patch=_patch, writes=frozenset({"data.autoaug_prob"}),
    aliases=frozenset({"autoaugment", "auto-augment"}),
    summary="ImageNet AutoAugment (torchvision) with probability 0.1 before flip and crop (fast-reid SBS)",
)
