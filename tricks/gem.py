"""gem: generalized-mean pooling with a learnable exponent starting at p=3 (AGW; docs/agw.md).

Sets ``model.pool: gem`` and ``model.gem_learnable: true`` (``gem_p`` keeps its default, 3): AGW's
``GeneralizedMeanPoolingP``. fast-reid's AGW config fixes p at 3 instead — write
``model.pool: gem`` alone for that. Applies to any architecture with these options (bot, mgn).
"""

from reidbench.harness.spec import RunSpec
from reidbench.tricks.base import Trick, set_model_options


def _patch(spec: RunSpec) -> RunSpec:
    return set_model_options(spec, "gem", pool="gem", gem_learnable=True)


TRICK = Trick(
    name="gem", version=1, label="+GeM", patch=_patch, writes=frozenset({"model.pool", "model.gem_learnable"}), aliases=frozenset({"gem-pooling", "gem_pooling"}),
    summary="generalized-mean pooling, exponent learnable from p=3 (AGW)",
)
