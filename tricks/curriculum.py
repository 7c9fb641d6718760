"""curriculum: Mancs' curriculum sampling for the triplet term (seed 002 §3.3; docs/mancs.md).

Every ``triplet`` term becomes a ``curriculum_triplet`` term reading the same features with the
same weight and *the same margin* (the trick changes how the triplets are chosen, not the
margin; Mancs' own 0.5 is set by experiments/mancs.yaml): a random positive per anchor and a
negative drawn by a Gaussian over its hardness rank, easy to hard, with t0=30, t1=60 of 160
epochs rescaled to the run's length.

In step granularity (``schedule.granularity: step``: the cpu profile, ``--epochs``) the curriculum's
t is the fractional epochs elapsed at each step, as every other phase of the run, so μ reaches 0
after exactly t0/160 of the optimizer steps; the patch itself is the same in both granularities.
"""

import dataclasses

from reidbench.harness.spec import RunSpec
from reidbench.tricks.base import Trick

TRIPLET_MARGIN = 0.3  # the triplet term's default margin (models/terms/triplet.py)
CURRICULUM_MARGIN = 0.5  # the curriculum_triplet term's default (Mancs)


def _converted(term):
    margin = dict(term.options).get("margin", TRIPLET_MARGIN)  # None: the soft margin, kept as such
    options = () if margin == CURRICULUM_MARGIN else (("margin", margin),)
    return dataclasses.replace(term, kind="curriculum_triplet", options=options)


def _patch(spec: RunSpec) -> RunSpec:
    if not any(t.kind == "triplet" for t in spec.loss.terms):
        if any(t.kind == "curriculum_triplet" for t in spec.loss.terms):
            return spec  # "changes nothing": Trick.apply says so
        raise ValueError("trick 'curriculum' samples the triplet term's negatives, and the base has no triplet term "
                         f"(its terms: {', '.join(t.kind for t in spec.loss.terms)})")
    terms = tuple(_converted(t) if t.kind == "triplet" else t for t in spec.loss.terms)
    return dataclasses.replace(spec, loss=dataclasses.replace(spec.loss, terms=terms))


TRICK = Trick(
    name="curriculum", version=1, label="+CS", patch=_patch,
    writes=frozenset({"loss.terms[triplet]", "loss.terms[curriculum_triplet]"}),
    # it keeps the triplet term's margin, the soft margin included; wrt's weighted mining it would lose
    refines=frozenset({"soft-margin"}),
    aliases=frozenset({"cs", "curriculum-sampling", "curriculum_sampling"}),
    summary="Mancs' curriculum sampling of triplet negatives: Gaussian over hardness rank, easy to hard (t0/t1 = 30/60 "
            "of 160 epochs, rescaled)",
)
