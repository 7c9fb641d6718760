"""focal: Mancs' focal identity loss, gamma=2, in place of cross-entropy (seed 002 §3.4; docs/mancs.md).

Every ``ce`` term becomes a ``focal`` term reading the same logits with the same weight, with
the seed's reading (true-class sigmoid probability; ``probability: softmax`` is the option).
Label smoothing has no focal counterpart here: with ``ls`` the trick refuses.
"""

import dataclasses

from reidbench.harness.spec import RunSpec
from reidbench.tricks.base import Trick


def _patch(spec: RunSpec) -> RunSpec:
    ces = [t for t in spec.loss.terms if t.kind == "ce"]
    if not ces:
        if any(t.kind == "focal" for t in spec.loss.terms):
            return spec  # "changes nothing": Trick.apply says so
        raise ValueError("trick 'focal' replaces the ce terms, and the base has none (its terms: "
                         f"{', '.join(t.kind for t in spec.loss.terms)})")
    if any(dict(t.options).get("label_smoothing") for t in ces):
        raise ValueError("trick 'focal' has no label smoothing: drop 'ls' or the ce term's label_smoothing")
    terms = tuple(dataclasses.replace(t, kind="focal", options=()) if t.kind == "ce" else t for t in spec.loss.terms)
    return dataclasses.replace(spec, loss=dataclasses.replace(spec.loss, terms=terms))


TRICK = Trick(
    name="focal", version=1, label="+focal", patch=_patch, writes=frozenset({"loss.terms[ce]", "loss.terms[focal]"}), aliases=frozenset({"focal-loss", "focal_loss"}),
    conflicts=frozenset({"ls"}),
    summary="focal identity loss -(1-p)^2 log p in place of cross-entropy (p: true-class sigmoid, Mancs' formula)",
)
