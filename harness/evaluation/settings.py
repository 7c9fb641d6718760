"""Evaluation settings and variants: how a trained run is scored, as data.

An evaluation = (run, test set + its fingerprint, settings). Settings = which feature output
(``auto`` resolves to the architecture's declared test feature; ``a+b`` concatenates), whether
it is L2-normalised, the distance, flip averaging, k-reciprocal re-ranking and a later re-scoring
stage (``rescore``: a registered re-scorer such as ``sggnn``, with ``rescore_options``). Its identity (``key``) hashes the settings that differ from the defaults plus the test
set's fingerprint, so adding a setting later never changes an existing key.

A *variant* is a named set of settings an ablation scores every trained model with besides its
default evaluation — BoT's Table 2 (f_t/f_i × Euclidean/cosine) and Table 1's re-ranking row come
from the same trained models this way. Pure data: no torch import.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from reidbench.harness.spec.hashing import evaluation_key
from reidbench.harness.spec.sections import METRICS, EvalSpec, SpecError, to_jsonable

DEFAULT_VARIANT = ""  # the run's own evaluation (its spec's eval section)
RERANK_VARIANT = "rerank"  # the default settings, re-ranked (Table 1's last row; "(RR)" columns)


@dataclass(frozen=True)
class EvaluationSettings:
    feature: str = "auto"
    normalize: bool = True
    metric: str = "sqeuclidean"
    flip: bool = False
    rerank: bool = False
    rescore: str | None = None  # a re-scoring stage (harness/evaluation/rescorers), e.g. sggnn
    # The re-scorer's parameters that differ from its defaults, sorted by key (sparse, like a spec's options).
    rescore_options: tuple[tuple[str, Any], ...] = ()

    def validate(self, where: str = "evaluation") -> "EvaluationSettings":
        """Check every setting (one-line SpecError naming it); returns the settings with the re-scorer's
        options made sparse (values equal to its defaults dropped), so equal settings have one key."""
        if not isinstance(self.feature, str) or not self.feature or any(not p for p in self.feature.split("+")):
            raise SpecError(f"{where}.feature={self.feature!r} is not valid: auto, an output name such as f_t, "
                            "or names joined by +")
        if self.metric not in METRICS:
            raise SpecError(f"{where}.metric={self.metric!r} is not valid: {' or '.join(METRICS)}")
        if self.rescore is None:
            if self.rescore_options:
                raise SpecError(f"{where}.rescore_options needs a re-scorer: set {where}.rescore too")
            return self
        from reidbench.harness.evaluation.rescorers import RESCORERS, sparse_options

        if self.rescore not in RESCORERS:
            raise SpecError(f"{where}.rescore={self.rescore!r} is not valid: {', '.join(RESCORERS.names())} or none")
        if self.rerank:
            raise SpecError(f"{where}.rescore={self.rescore!r} cannot be combined with rerank: choose one")
        try:
            options = sparse_options(self.rescore, self.rescore_options, f"{where}.rescore_options")
        except ValueError as err:
            raise SpecError(str(err)) from None
        return dataclasses.replace(self, rescore_options=options)

    @classmethod
    def from_eval(cls, ev: EvalSpec, **changes: Any) -> "EvaluationSettings":
        return dataclasses.replace(cls(feature=ev.feature, normalize=ev.normalize, metric=ev.metric, flip=ev.flip,
                                       rerank=False), **changes)

    def resolved(self, test_feature: str | Sequence[str]) -> "EvaluationSettings":
        """``auto`` replaced by the architecture's test feature (names joined by +)."""
        if self.feature != "auto":
            return self
        name = test_feature if isinstance(test_feature, str) else "+".join(test_feature)
        return dataclasses.replace(self, feature=name)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(self.feature.split("+"))

    def identity(self) -> dict[str, Any]:
        """The non-default settings: what the evaluation key hashes."""
        out = to_jsonable(self, prune_defaults=True)
        if self.rescore_options:
            out["rescore_options"] = dict(self.rescore_options)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what the store records); ``rescore_options`` appears only when there are some,
        so evaluations recorded before it existed compare equal to today's."""
        out = to_jsonable(self)
        out.pop("rescore_options", None)
        if self.rescore_options:
            out["rescore_options"] = dict(self.rescore_options)
        return out

    def key(self, test_fingerprint: str | None) -> str:
        return evaluation_key(self.identity(), test_fingerprint)


@dataclass(frozen=True)
class Variant:
    """A named evaluation variant: settings changes relative to the run's default evaluation."""

    name: str
    changes: tuple[tuple[str, Any], ...]
    label: str = ""  # how tables name it ("f_t Euclidean"); default: the name
    steps: tuple[str, ...] = ()  # ablation steps it applies to (labels or trick names); () = every step

    def settings(self, ev: EvalSpec) -> EvaluationSettings:
        return EvaluationSettings.from_eval(ev, **dict(self.changes))

    def applies_to(self, step_label: str, last_trick: str | None, is_last: bool) -> bool:
        """Whether an ablation step gets this variant: every step, or those named by label
        (``+BNNeck``), by the trick the step adds (``bnneck``), or ``last``."""
        if not self.steps:
            return True
        return any(s == step_label or s == last_trick or (s == "last" and is_last) for s in self.steps)


_SETTING_FIELDS = {f.name for f in dataclasses.fields(EvaluationSettings)}


def parse_variants(raw: Any, where: str = "evaluations") -> tuple[Variant, ...]:
    """``{name: {feature: f_t, metric: euclidean, normalize: false, label: ..., steps: [...]}}`` → variants."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where} must be a mapping of variant name → settings, got {type(raw).__name__}")
    out = []
    for name, body in raw.items():
        body = dict(body or {})
        if not isinstance(name, str) or not name or name == DEFAULT_VARIANT:
            raise SpecError(f"{where}: variant name {name!r} is not valid: a non-empty name")
        label = str(body.pop("label", name))
        steps = body.pop("steps", ())
        steps = (steps,) if isinstance(steps, str) else tuple(steps or ())
        unknown = sorted(set(body) - _SETTING_FIELDS)
        if unknown:
            raise SpecError(f"{where}.{name}.{unknown[0]} is not a known setting; valid: "
                            f"{', '.join(sorted(_SETTING_FIELDS))}, label, steps")
        if "rescore_options" in body:
            body["rescore_options"] = options_tuple(body["rescore_options"], f"{where}.{name}.rescore_options")
        checked = EvaluationSettings(**body).validate(f"{where}.{name}")
        if "rescore_options" in body:
            body["rescore_options"] = checked.rescore_options
        out.append(Variant(name=name, changes=tuple(sorted(body.items())), label=label, steps=steps))
    return tuple(out)


def options_tuple(raw: Any, where: str) -> tuple[tuple[str, Any], ...]:
    """``{key: value}`` (or (key, value) pairs) → sorted pairs; lists become tuples."""
    if raw is None:
        return ()
    if isinstance(raw, Mapping):
        items = list(raw.items())
    elif isinstance(raw, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in raw):
        items = [tuple(p) for p in raw]
    else:
        raise SpecError(f"{where} must be a mapping of option → value, got {type(raw).__name__}")
    if not all(isinstance(k, str) for k, _ in items):
        raise SpecError(f"{where}: option names must be strings")
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in items))


def default_variants(ev: EvalSpec) -> tuple[Variant, ...]:
    """The variants every run gets from its own eval section: re-ranking when ``eval.rerank``."""
    return (Variant(name=RERANK_VARIANT, changes=(("rerank", True),), label="re-ranking"),) if ev.rerank else ()
