"""fab: Mancs' fully attentional blocks after stages 2-4, deeply supervised (BCE x0.2) (seed 002; docs/mancs.md).

Sets ``model.fab`` (bot: off by default; mancs: on) and, while ``model.fab_supervision`` is on,
adds the attention branch's loss: ``{kind: bce, name: att, reads: logits_att, weight: 0.2}``.
Runs on ``bot`` and ``mancs``; ``mgn`` has no such option (a one-line refusal).
"""

from reidbench.harness.spec import LossTermSpec, RunSpec
from reidbench.tricks.base import Trick, add_term, set_model_options

ARCHES = ("bot", "mancs")
ATT_WEIGHT = 0.2  # λ_att (seed §4.3)


def model_option(spec: RunSpec, name: str, trick: str):
    """The value of an architecture option in ``spec`` (its default when not written)."""
    from reidbench.models.architectures import arch_params

    if spec.model.arch not in ARCHES:
        raise ValueError(f"trick {trick!r} applies to model.arch {' or '.join(ARCHES)}, not {spec.model.arch!r}")
    return getattr(arch_params(spec.model), name)


def _patch(spec: RunSpec) -> RunSpec:
    if model_option(spec, "fab", "fab"):
        return spec  # "changes nothing": Trick.apply says so
    patched = set_model_options(spec, "fab", fab=True)
    reads_att = any("logits_att" in t.read_names for t in spec.loss.terms if t.weight > 0)
    if model_option(patched, "fab_supervision", "fab") and not reads_att:
        patched = add_term(patched, LossTermSpec(kind="bce", reads="logits_att", weight=ATT_WEIGHT, name="att"))
    return patched


TRICK = Trick(
    name="fab", version=1, label="+FAB", patch=_patch, writes=frozenset({"model.fab", "loss.terms[bce]"}),
    aliases=frozenset({"fully-attentional", "fully_attentional"}),
    summary="Mancs' fully attentional blocks after stages 2-4 (r=16), deeply supervised by a BCE id classifier x0.2",
)
