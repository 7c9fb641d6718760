"""wrt: AGW's weighted regularized triplet in place of batch-hard triplet (docs/agw.md).

On every triplet term: ``mining: weighted`` (softmax weights over the positives of d_ap and over
the negatives of −d_an) and ``margin: null`` (soft margin; WRT has no margin parameter):
loss = SoftMargin(Σ w_an·d_an − Σ w_ap·d_ap) on Euclidean distances of un-normalised features.
It keeps the term's inputs (f_t on bot), weight and name, so ``center`` still finds it.
"""

from reidbench.harness.spec import RunSpec
from reidbench.tricks.base import Trick, set_term_options


def _patch(spec: RunSpec) -> RunSpec:
    return set_term_options(spec, "triplet", "wrt", mining="weighted", margin=None)


TRICK = Trick(
    name="wrt", version=1, label="+WRT", patch=_patch,
    writes=frozenset({"loss.terms[triplet].mining", "loss.terms[triplet].margin"}),
    aliases=frozenset({"weighted-triplet", "weighted_triplet"}), conflicts=frozenset({"soft-margin"}),
    summary="weighted regularized triplet: softmax-weighted positives/negatives, soft margin, no margin (AGW)",
)
