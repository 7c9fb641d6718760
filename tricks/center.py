"""center: center loss with weight beta=0.0005 and its own SGD (lr 0.5) (bot.md).

It pulls the features the (first) triplet term reads: ``f_t`` on ``bot`` (the reference). On a
model whose triplet reads several features (MGN's three reduced globals) it reads their
concatenation — the sum of one centre loss per feature, each with its own centres, since the
squared distance of concatenations adds up over the parts.
"""

import dataclasses

from reidbench.harness.spec import LossTermSpec, RunSpec
from reidbench.tricks.base import Trick, add_term


def _patch(spec: RunSpec) -> RunSpec:
    if any(t.kind == "center" for t in spec.loss.terms if t.weight > 0):
        return spec  # "changes nothing": Trick.apply says so
    triplets = [t for t in spec.loss.terms if t.kind == "triplet" and t.weight > 0]
    if not triplets:
        raise ValueError("trick 'center' pulls the features the triplet term reads, and the base has no triplet "
                         f"term (its terms: {', '.join(t.kind for t in spec.loss.terms)})")
    reads = triplets[0].reads
    term = LossTermSpec(kind="center", reads=reads, weight=0.0005)  # lr 0.5 is the default
    if len(triplets[0].read_names) > 1 or any(ch in str(reads) for ch in "*?["):
        term = dataclasses.replace(term, combine="concat")
    return add_term(spec, term)


TRICK = Trick(
    name="center", version=1, label="+center loss", patch=_patch, writes=frozenset({"loss.terms[center]"}),
    aliases=frozenset({"center-loss", "center_loss"}),
    summary="center loss on the triplet's features, beta=0.0005, centers updated by SGD lr 0.5",
)
