"""circle: fast-reid's circle-softmax classifier (s=64, m=0.35) in place of the linear one (docs/agw.md).

Sets ``model.classifier: cosine`` (the head outputs cos(f, w_k) as ``cosine`` / ``cosine_<key>``
instead of ``logits`` / ``logits_<key>``) and turns every ``ce`` term into a ``circle`` term
reading the matching cosine output(s), with the same weight, combine, name and label smoothing
(0.1 on a base with ``ls``, as fast-reid's SBS). With BNNeck the cosine classifier reads f_i, as
the linear one did; the metric losses and the test feature are unchanged. Apply ``ls`` before
``circle``: afterwards there is no ``ce`` term for it.
"""

from reidbench.harness.spec import LossTermSpec, RunSpec
from reidbench.tricks.base import Trick, replace_terms, set_model_options


def _cosine(reads: str) -> str:
    if reads == "logits" or reads.startswith("logits_"):
        return "cosine" + reads[len("logits"):]
    raise ValueError(f"trick 'circle' replaces ce terms reading logits or logits_*; one reads {reads!r}")


def _patch(spec: RunSpec) -> RunSpec:
    if not any(t.kind == "ce" for t in spec.loss.terms):
        raise ValueError(f"trick 'circle' replaces the ce term, and the base has none (its terms: "
                         f"{', '.join(t.kind for t in spec.loss.terms)})")
    terms = []
    for t in spec.loss.terms:
        if t.kind != "ce":
            terms.append(t)
            continue
        reads = tuple(_cosine(r) for r in t.read_names)
        smoothing = dict(t.options).get("label_smoothing", 0.0)
        terms.append(LossTermSpec(kind="circle", reads=reads[0] if isinstance(t.reads, str) else reads,
                                  weight=t.weight, name=t.name, combine=t.combine,
                                  options=(("label_smoothing", smoothing),) if smoothing else ()))
    return replace_terms(set_model_options(spec, "circle", classifier="cosine"), tuple(terms))


TRICK = Trick(
    name="circle", version=1, label="+circle", patch=_patch,
    writes=frozenset({"model.classifier", "loss.terms[ce]", "loss.terms[circle]"}),
    refines=frozenset({"ls"}),  # it carries the ce terms' label smoothing over to the circle terms aliases=frozenset({"circle-softmax", "circle_softmax"}),
    summary="circle-softmax identity loss on a cosine classifier, s=64, m=0.35, replacing CE (fast-reid SBS)",
)
