"""A trick is a named, versioned, pure patch of a RunSpec (see DESIGN.md).

The behaviour lives in the builders behind a spec field that is off by default; a trick only
flips that field. Bump ``version`` when what a trick does changes: cached runs stop matching.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from reidbench.harness.spec import RunSpec


@dataclass(frozen=True)
class Trick:
    name: str  # CLI token
    version: int
    summary: str  # one line, used in listings and report captions
    label: str  # row label in tables, as the paper writes it ("+REA")
    patch: Callable[[RunSpec], RunSpec]
    aliases: frozenset[str] = frozenset()
    requires: frozenset[str] = frozenset()
    conflicts: frozenset[str] = frozenset()

    def apply(self, spec: RunSpec) -> RunSpec:
        """Patch ``spec`` and record the trick; an error if it is already applied or changes nothing."""
        if self.name in spec.tricks:
            raise ValueError(f"trick {self.name!r} is already applied by the base; remove it from --add")
        missing = self.requires - set(spec.tricks)
        if missing:
            raise ValueError(f"trick {self.name!r} requires {', '.join(sorted(missing))}; add it first")
        clash = self.conflicts & set(spec.tricks)
        if clash:
            raise ValueError(f"trick {self.name!r} conflicts with {', '.join(sorted(clash))}")
        patched = self.patch(spec)
        _check_applies(self, spec, patched)
        if patched == spec:
            raise ValueError(
                f"trick {self.name!r} changes nothing: the base already has it ({self.summary}); remove it from --add"
            )
        return dataclasses.replace(patched, tricks=tuple(sorted((*spec.tricks, self.name)))).validate()


def _check_applies(trick: "Trick", before: RunSpec, after: RunSpec) -> None:
    """A trick that changes a model field the architecture does not read would be a silent no-op: refuse it."""
    if before.model.arch != after.model.arch:
        return
    from reidbench.models.architectures import unread_model_fields

    changed = [f.name for f in dataclasses.fields(before.model)
               if f.name not in ("arch", "options") and getattr(before.model, f.name) != getattr(after.model, f.name)]
    unread = unread_model_fields(before.model.arch, changed)
    if unread:
        raise ValueError(f"trick {trick.name!r} does not apply to model.arch={before.model.arch!r}: it sets "
                         f"model.{unread[0]}, which that architecture does not read")


def set_term_options(spec: RunSpec, kind: str, trick: str, **options: object) -> RunSpec:
    """Set options on every loss term of ``kind`` (e.g. label smoothing on each ``ce`` term)."""
    from reidbench.harness.spec import with_options

    if not any(t.kind == kind for t in spec.loss.terms):
        raise ValueError(f"trick {trick!r} needs a loss term of kind {kind!r}; the base has "
                         f"{', '.join(t.kind for t in spec.loss.terms)}")
    terms = tuple(dataclasses.replace(t, options=with_options(t.options, **options)) if t.kind == kind else t
                  for t in spec.loss.terms)
    return dataclasses.replace(spec, loss=dataclasses.replace(spec.loss, terms=terms))


def add_term(spec: RunSpec, term: object) -> RunSpec:
    """Append a loss term (after the base's, so term labels and order stay stable)."""
    return dataclasses.replace(spec, loss=dataclasses.replace(spec.loss, terms=(*spec.loss.terms, term)))


def set_model_options(spec: RunSpec, trick: str, **options: object) -> RunSpec:
    """Set options of the spec's architecture (``model.pool`` …), refusing an architecture without them.

    A value equal to the option's default is removed (options are sparse), and the result is
    validated by the architecture's parameter dataclass.
    """
    from reidbench.harness.spec import replace_section, with_options
    from reidbench.models.architectures import ARCHITECTURES
    from reidbench.models.registry import build_params

    arch = spec.model.arch
    params_type = ARCHITECTURES.get(arch).params
    known = {f.name for f in dataclasses.fields(params_type)} if params_type is not None else set()
    missing = [k for k in options if k not in known]
    if missing:
        raise ValueError(f"trick {trick!r} does not apply to model.arch={arch!r}: it has no option "
                         f"model.{missing[0]}")
    defaults = params_type()
    changes = {k: (None if v == getattr(defaults, k) else v) for k, v in options.items()}
    merged = with_options(spec.model.options, **changes)
    build_params(params_type, dict(merged), "model")
    return replace_section(spec, "model", options=merged)


def replace_terms(spec: RunSpec, terms: tuple) -> RunSpec:
    """The spec with ``loss.terms`` replaced."""
    return dataclasses.replace(spec, loss=dataclasses.replace(spec.loss, terms=tuple(terms)))


def set_triplet_options(spec: RunSpec, trick: str, **options: object) -> RunSpec:
    """Set options on every ``triplet`` term, None included (``margin: None`` = soft margin).

    Unlike ``set_term_options`` a None is a value here, not a removal; a value equal to the
    option's default is removed, as loading a spec file would.
    """
    from reidbench.models.terms.triplet import TripletParams

    if not any(t.kind == "triplet" for t in spec.loss.terms):
        raise ValueError(f"trick {trick!r} changes the triplet term, and the base has none (its terms: "
                         f"{', '.join(t.kind for t in spec.loss.terms)})")
    defaults = TripletParams()
    terms = []
    for t in spec.loss.terms:
        if t.kind == "triplet":
            merged = {**dict(t.options), **options}
            merged = {k: v for k, v in merged.items() if v != getattr(defaults, k)}
            t = dataclasses.replace(t, options=tuple(sorted(merged.items())))
        terms.append(t)
    return replace_terms(spec, tuple(terms))
