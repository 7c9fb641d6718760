"""soft-margin: batch-hard triplet with the soft margin log(1 + exp(d_ap − d_an)) (fast-reid; docs/agw.md).

fast-reid's ``TRI.MARGIN: 0.0`` means the soft margin (``soft_margin_loss(d_an − d_ap)``), used by
its SBS and MGN configs with hard mining. Sets ``margin: null`` on every triplet term. Not
reproduced: fast-reid's fall-back to margin 0.3 when the soft-margin loss is infinite (softplus
is finite for any finite gap).
"""

from reidbench.harness.spec import RunSpec
from reidbench.tricks.base import Trick, set_term_options


def _patch(spec: RunSpec) -> RunSpec:
    return set_term_options(spec, "triplet", "soft-margin", margin=None)


TRICK = Trick(
    name="soft-margin", version=1, label="+soft margin", patch=_patch, writes=frozenset({"loss.terms[triplet].margin"}),
    aliases=frozenset({"soft_margin", "softmargin"}), conflicts=frozenset({"wrt"}),
    summary="batch-hard triplet with the soft margin softplus(d_ap - d_an) instead of margin 0.3 (fast-reid)",
)
