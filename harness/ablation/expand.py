"""Ablation expansion: a base spec + an ordered list of tricks + a mode → the runs to make. Pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from reidbench.harness.spec.hashing import run_hash
from reidbench.harness.spec import RunSpec, replace_section
from reidbench.tricks import Trick, trick_versions

if TYPE_CHECKING:
    from reidbench.harness.spec.patches import Patch, StepList
    from reidbench.harness.stats.factorial import Design

DESIGN_MODES = ("factorial", "fractional")  # rows = the points of a two-level design over the --add tricks
MODES = ("cumulative", "single", "leave-one-out", *DESIGN_MODES)
STEPS_MODE = "steps"  # rows from a base file's ablation step list (labelled patches), not from --add


@dataclass(frozen=True)
class AblationStep:
    position: int
    step: str  # row label as the paper writes it: "Baseline", "+warmup", "−REA", "All tricks"
    added: tuple[str, ...]  # tricks applied on top of the base
    seed: int
    spec: RunSpec
    run_hash: str

    @property
    def label(self) -> str:
        return f"{self.step} (seed {self.seed})"


def _apply_all(base: RunSpec, tricks: Sequence[Trick]) -> RunSpec:
    spec = base
    for trick in tricks:
        spec = trick.apply(spec)
    return spec


def _rows(tricks: Sequence[Trick], mode: str) -> list[tuple[str, tuple[Trick, ...]]]:
    if mode == "cumulative":
        return [("Baseline", ())] + [(t.label, tuple(tricks[: i + 1])) for i, t in enumerate(tricks)]
    if mode == "single":
        return [("Baseline", ())] + [(t.label, (t,)) for t in tricks]
    if mode == "leave-one-out":
        rows = [("All tricks", tuple(tricks))]
        for t in tricks:
            rows.append(("−" + t.label.lstrip("+"), tuple(x for x in tricks if x is not t)))
        return rows
    raise ValueError(f"--mode {mode!r} is not valid: {', '.join(MODES)}")


def make_design(tricks: Sequence[Trick], mode: str, resolution: str | None = None) -> "Design":
    """The two-level design of ``--mode factorial`` (all 2^k points) or ``fractional`` (``--resolution IV|V``)."""
    from reidbench.harness.stats.factorial import RESOLUTIONS, fractional_factorial, full_factorial

    names = [t.name for t in tricks]
    if mode == "factorial":
        if resolution is not None:
            raise ValueError(f"--resolution {resolution} applies to --mode fractional only (factorial runs all "
                             f"2^{len(names)} points)")
        return full_factorial(names)
    if mode == "fractional":
        if resolution is None:
            raise ValueError(f"--mode fractional needs --resolution: {' or '.join(RESOLUTIONS)}")
        return fractional_factorial(names, resolution)
    raise ValueError(f"--mode {mode!r} is not a design mode: {', '.join(DESIGN_MODES)}")


def point_label(chosen: Sequence[Trick]) -> str:
    """A design point's row label: "Baseline", or its tricks' labels in --add order ("+REA +BNNeck")."""
    return " ".join(t.label for t in chosen) if chosen else "Baseline"


def point_tricks(tricks: Sequence[Trick], point: int) -> tuple[Trick, ...]:
    """The tricks of design point ``point`` (bit i: the i-th trick of --add), in --add order."""
    return tuple(t for i, t in enumerate(tricks) if point >> i & 1)


def _design_rows(tricks: Sequence[Trick], design: "Design") -> list[tuple[str, tuple[Trick, ...]]]:
    return [(point_label(point_tricks(tricks, p)), point_tricks(tricks, p)) for p in design.points]


def expand(base: RunSpec, tricks: Sequence[Trick], mode: str, seeds: Sequence[int],
           train_fingerprint: str | None = None,
           weights_of: Callable[[RunSpec], str | None] | None = None, *, design: "Design | None" = None
           ) -> list[AblationStep]:
    """The ablation's runs in table order (rows × seeds). Validates every patched spec up front.

    ``train_fingerprint`` identifies the training data in every run hash (computed by the caller,
    which can read the data; None hashes the dataset name, for callers without data).
    ``weights_of(spec)``: the digest of the pretrained weights a run starts from
    (``models.weights.WeightsResolver``); None leaves weights out, for callers without them.
    Design modes (``factorial``, ``fractional``) take their points from ``design`` (``make_design``;
    the full factorial when None): each point's tricks are applied in ``tricks`` order, and a point
    whose tricks cannot be combined is a one-line ValueError naming it.
    """
    if not seeds:
        raise ValueError("at least one seed is needed")
    if mode in DESIGN_MODES:
        rows = _design_rows(tricks, design if design is not None else make_design(tricks, mode))
    else:
        rows = _rows(tricks, mode)
    steps: list[AblationStep] = []
    for step, chosen in rows:
        for seed in seeds:
            try:
                spec = _apply_all(replace_section(base, "train", seed=seed), chosen)
            except ValueError as exc:
                if mode not in DESIGN_MODES:
                    raise
                raise ValueError(f"--mode {mode}: design point {step!r} ({' + '.join(t.name for t in chosen)}, "
                                 f"applied in --add order) cannot be built: {str(exc).splitlines()[0]}") from None
            rhash = run_hash(spec, trick_versions(spec.tricks), train_fingerprint, _weights(weights_of, spec))
            steps.append(AblationStep(len(steps), step, tuple(t.name for t in chosen), seed, spec, rhash))
    return steps


def expand_steps(base: RunSpec, steps: "StepList", seeds: Sequence[int], train_fingerprint: str | None = None, *,
                 presets: Mapping[str, "Patch"] | None = None,
                 load_base: Callable[[str], RunSpec] | None = None,
                 weights_of: Callable[[RunSpec], str | None] | None = None) -> list[AblationStep]:
    """A step list's runs in table order (steps × seeds): each step = ``base`` patched, then seeded.

    ``base`` is the prepared base (the ablation's data and epochs applied); ``load_base(name)``
    must return another base file prepared the same way (for steps with ``base:``).
    """
    from reidbench.harness.spec.patches import apply_patch
    from reidbench.tricks import parse_trick_list

    if not seeds:
        raise ValueError("at least one seed is needed")
    out: list[AblationStep] = []
    for patch in steps.steps:
        patched = apply_patch(base, patch, presets=presets, load_base=load_base)
        tricks = parse_trick_list(patch.tricks) if patch.tricks else ()
        for seed in seeds:
            try:
                spec = _apply_all(replace_section(patched, "train", seed=seed), tricks)
            except ValueError as exc:
                raise ValueError(f"{patch.where}.tricks: {exc}") from None
            rhash = run_hash(spec, trick_versions(spec.tricks), train_fingerprint, _weights(weights_of, spec))
            out.append(AblationStep(len(out), patch.label, tuple(t.name for t in tricks), seed, spec, rhash))
    return out


def _weights(weights_of: Callable[[RunSpec], str | None] | None, spec: RunSpec) -> str | None:
    return weights_of(spec) if weights_of is not None and spec.model.pretrained else None


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def spec_diff(base: RunSpec, other: RunSpec) -> list[str]:
    """Human-readable ``field: old → new`` lines for what ``other`` changes relative to ``base``."""
    a, b = _flatten(base.to_dict()), _flatten(other.to_dict())
    skip = {"tricks", "train.seed", "loss.terms"}
    if a.get("loss.terms") != b.get("loss.terms"):
        term_lines = [f"loss.terms: {_terms_text(base)} → {_terms_text(other)}"]
    else:
        term_lines = []
    # A field missing on one side is either not read by that spec's components (a cosine schedule's
    # milestones) or a component option left at its default (not stored).
    from reidbench.harness.spec import to_jsonable

    def shown(spec: RunSpec, shown_fields: dict[str, Any], key: str) -> Any:
        if key in shown_fields:
            return shown_fields[key]
        return "(not read)" if key in _flatten(to_jsonable(spec)) else "(default)"

    return term_lines + [f"{k}: {shown(base, a, k)} → {shown(other, b, k)}" for k in sorted(set(a) | set(b))
                         if k not in skip and shown(base, a, k) != shown(other, b, k)
                         and not _same_when_read(base, other, a, b, k)]


def _same_when_read(base: RunSpec, other: RunSpec, a: dict[str, Any], b: dict[str, Any], key: str) -> bool:
    """A field read on one side only, at the same value both sides hold (a warmup factor that a
    warmup starts to read, at its default): no change worth a line."""
    from reidbench.harness.spec import to_jsonable

    full_a, full_b = _flatten(to_jsonable(base)), _flatten(to_jsonable(other))
    return key in full_a and key in full_b and full_a[key] == full_b[key] and (key in a) != (key in b)


def _terms_text(spec: RunSpec) -> str:
    from reidbench.harness.spec import to_jsonable

    parts = []
    for term in spec.loss.terms:
        extra = {k: v for k, v in to_jsonable(term, prune_defaults=True).items() if k not in ("kind", "reads")}
        parts.append(f"{term.kind}({','.join(term.read_names)})" + (str(extra).replace("'", "") if extra else ""))
    return " + ".join(parts)
