"""A trick is a named, versioned, pure patch of a RunSpec that declares the fields it writes (DESIGN.md).

The behaviour lives in the builders behind a spec field that is off by default; a trick only
flips that field. Bump ``version`` when what a trick does changes: cached runs stop matching.

``writes`` names every field the patch may change, as dotted paths: a section field
(``schedule.warmup_epochs``), a component option (``model.pool``, ``schedule.delay_epochs``),
every loss term of a kind (``loss.terms[ce]``: added, removed or replaced) or one option of
them (``loss.terms[ce].label_smoothing``), the stages (``stages``). ``Trick.apply`` checks the
declaration against what the patch really changed, and refuses a trick whose writes overlap
those of a trick already applied — a later trick would otherwise silently undo an earlier one
while both names stay in the row label — unless one of them ``refines`` the other (it carries the
other's setting over, e.g. ``circle`` keeps ``ls``'s label smoothing).

The patch helpers below share one convention: a value equal to the component's default is not
written (component options are sparse, as a spec file stores them); any other value is, ``None``
included where the component accepts it; the result is validated like a spec file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from reidbench.harness.spec import RunSpec, SpecError


@dataclass(frozen=True)
class Trick:
    name: str  # CLI token
    version: int
    summary: str  # one line, used in listings and report captions
    label: str  # row label in tables, as the paper writes it ("+REA")
    patch: Callable[[RunSpec], RunSpec]
    writes: frozenset[str] = frozenset()  # dotted fields the patch may change (module doc)
    refines: frozenset[str] = frozenset()  # tricks whose written fields this one may write again
    aliases: frozenset[str] = frozenset()
    requires: frozenset[str] = frozenset()
    conflicts: frozenset[str] = frozenset()

    def apply(self, spec: RunSpec) -> RunSpec:
        """Patch ``spec`` and record the trick; a one-line ValueError when it cannot apply (see the module doc)."""
        if self.name in spec.tricks:
            raise ValueError(f"trick {self.name!r} is already applied by the base; remove it from --add")
        missing = self.requires - set(spec.tricks)
        if missing:
            raise ValueError(f"trick {self.name!r} requires {', '.join(sorted(missing))}; add it first")
        clash = self.conflicts & set(spec.tricks)
        if clash:
            raise ValueError(f"trick {self.name!r} conflicts with {', '.join(sorted(clash))}")
        self._check_overlaps(spec.tricks)
        patched = self.patch(spec)
        undeclared = [p for p in written_paths(spec, patched) if not covered(p, self.writes)]
        if undeclared:
            raise ValueError(f"trick {self.name!r} changed {undeclared[0]}, which it does not declare in its "
                             f"writes ({', '.join(sorted(self.writes)) or 'none'})")
        _check_applies(self, spec, patched)
        if patched == spec:
            raise ValueError(
                f"trick {self.name!r} changes nothing: the base already has it ({self.summary}); remove it from --add"
            )
        try:
            return dataclasses.replace(patched, tricks=tuple(sorted((*spec.tricks, self.name)))).validate()
        except SpecError as exc:
            raise SpecError(f"trick {self.name!r}: {exc}") from None

    def _check_overlaps(self, applied: Iterable[str]) -> None:
        from reidbench.tricks import find_trick

        for name in applied:
            other = find_trick(name)
            if other is None or self.name in other.refines or other.name in self.refines:
                continue
            shared = overlapping(self.writes, other.writes)
            if shared:
                raise ValueError(f"trick {self.name!r} and {other.name!r} both write {shared[0]}: the later one would "
                                 f"silently undo the other; apply one of them (or declare that one refines the other)")


# ---------------------------------------------------------------------- written fields


def covered(path: str, declared: Iterable[str]) -> bool:
    """``path`` is one of ``declared`` or lies inside one (``loss.terms[ce].label_smoothing`` in ``loss.terms[ce]``)."""
    return any(path == d or path.startswith(d + ".") for d in declared)


def overlapping(a: Iterable[str], b: Iterable[str]) -> list[str]:
    """The paths of ``a`` that equal, contain or lie inside a path of ``b`` (sorted)."""
    b = list(b)
    return sorted(p for p in a if covered(p, b) or any(covered(q, [p]) for q in b))


def _flat(data: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            _flat(value, f"{prefix}.{key}" if prefix else key, out)
    else:
        out[prefix] = data


def _terms_by_kind(spec: RunSpec) -> dict[str, list[dict[str, Any]]]:
    from reidbench.harness.spec import to_jsonable

    out: dict[str, list[dict[str, Any]]] = {}
    for term in spec.loss.terms:
        out.setdefault(term.kind, []).append(to_jsonable(term, prune_defaults=True))
    return out


def written_paths(before: RunSpec, after: RunSpec) -> list[str]:
    """The dotted fields that differ between two specs, in the vocabulary of ``Trick.writes``.

    Loss terms are compared per kind: a kind whose number of terms changed is written whole
    (``loss.terms[center]``); otherwise each changed field or option of its terms
    (``loss.terms[triplet].margin``). ``tricks`` is not a field a trick writes.
    """
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    for spec, flat in ((before, a), (after, b)):
        data = spec.to_dict()
        for key in ("tricks", "loss"):
            data.pop(key, None)
        _flat(data, "", flat)
    paths = {k for k in set(a) | set(b) if a.get(k, _MISSING) != b.get(k, _MISSING)}
    ta, tb = _terms_by_kind(before), _terms_by_kind(after)
    for kind in set(ta) | set(tb):
        old, new = ta.get(kind, []), tb.get(kind, [])
        if len(old) != len(new):
            paths.add(f"loss.terms[{kind}]")
            continue
        for x, y in zip(old, new):
            for key in set(x) | set(y):
                if x.get(key, _MISSING) != y.get(key, _MISSING):
                    paths.add(f"loss.terms[{kind}].{key}")
    return sorted(paths)


_MISSING = object()


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


# ---------------------------------------------------------------------- patch helpers (one convention)


def _sparse(options: Iterable[tuple[str, Any]], params_type: type | None, changes: Mapping[str, Any],
            where: str, context: Mapping[str, Any] | None = None) -> tuple[tuple[str, Any], ...]:
    """``options`` with ``changes`` applied: values equal to the default dropped, the rest validated
    (together with ``context``: the section fields the component also reads, e.g. a schedule's unit)."""
    from reidbench.models.registry import build_params

    known = {f.name for f in dataclasses.fields(params_type)} if params_type is not None else set()
    unknown = [k for k in changes if k not in known]
    if unknown:
        raise ValueError(f"{where}.{unknown[0]} is not an option of it; valid: {', '.join(sorted(known)) or 'none'}")
    defaults = params_type()
    merged = {**dict(options), **changes}
    merged = {k: (tuple(v) if isinstance(v, list) else v) for k, v in merged.items() if v != getattr(defaults, k)}
    build_params(params_type, {**(context or {}), **merged}, where)
    return tuple(sorted(merged.items()))


def set_term_options(spec: RunSpec, kind: str, trick: str, **options: object) -> RunSpec:
    """Set options on every loss term of ``kind`` (label smoothing on each ``ce`` term; ``margin=None`` on triplets)."""
    from reidbench.models.terms import LOSS_TERMS

    if not any(t.kind == kind for t in spec.loss.terms):
        raise ValueError(f"trick {trick!r} needs a loss term of kind {kind!r}; the base has "
                         f"{', '.join(t.kind for t in spec.loss.terms)}")
    params_type = LOSS_TERMS.get(kind).params
    terms = tuple(dataclasses.replace(t, options=_sparse(t.options, params_type, options, f"loss.terms[{kind}]"))
                  if t.kind == kind else t for t in spec.loss.terms)
    return replace_terms(spec, terms)


def set_model_options(spec: RunSpec, trick: str, **options: object) -> RunSpec:
    """Set options of the spec's architecture (``model.pool`` …), refusing an architecture without them."""
    from reidbench.harness.spec import replace_section
    from reidbench.models.architectures import ARCHITECTURES

    arch = spec.model.arch
    params_type = ARCHITECTURES.get(arch).params
    known = {f.name for f in dataclasses.fields(params_type)} if params_type is not None else set()
    missing = [k for k in options if k not in known]
    if missing:
        raise ValueError(f"trick {trick!r} does not apply to model.arch={arch!r}: it has no option "
                         f"model.{missing[0]}")
    return replace_section(spec, "model", options=_sparse(spec.model.options, params_type, options, "model"))


def switch_kind(spec: RunSpec, section: str, kind: str, **options: object) -> RunSpec:
    """Choose another ``kind`` of a section's component (``schedule.kind: cosine``) with its own ``options``.

    The old kind's fields that the new one does not read go back to their defaults (a cosine
    schedule keeps no multistep milestones), its own options are dropped, and ``options`` are set
    with the convention above.
    """
    from reidbench.harness.spec import replace_section
    from reidbench.harness.spec.reads import SELECTORS, _param_names, switched_kind_drops
    from reidbench.harness.spec.sections import field_defaults

    selector = SELECTORS[section]
    part = getattr(spec, section)
    old = getattr(part, selector)
    defaults = field_defaults(type(part))
    reset = {name: defaults[name] for name in switched_kind_drops(section, old, kind) if name in defaults}
    keep = _param_names(section, kind)
    kept = tuple((k, v) for k, v in part.options if k in keep)
    if section == "schedule":
        from reidbench.harness.train.schedules import get_schedule

        params_type = get_schedule(kind).params
    elif section == "optim":
        from reidbench.harness.train.optim import get_optimizer

        params_type = get_optimizer(kind).params
    else:
        from reidbench.models.architectures import ARCHITECTURES

        params_type = ARCHITECTURES.get(kind).params
    section_fields = {f.name for f in dataclasses.fields(part)}
    own = {k: v for k, v in options.items() if k not in section_fields}
    fields_set = {k: v for k, v in options.items() if k in section_fields}
    values = {**{f.name: getattr(part, f.name) for f in dataclasses.fields(part)}, **reset, **fields_set}
    context = {k: v for k, v in values.items() if k in keep}
    return replace_section(spec, section, **{selector: kind, **reset, **fields_set,
                                             "options": _sparse(kept, params_type, own, section, context)})


def add_term(spec: RunSpec, term: object) -> RunSpec:
    """Append a loss term (after the base's, so term labels and order stay stable)."""
    return replace_terms(spec, (*spec.loss.terms, term))


def replace_terms(spec: RunSpec, terms: tuple) -> RunSpec:
    """The spec with ``loss.terms`` replaced."""
    return dataclasses.replace(spec, loss=dataclasses.replace(spec.loss, terms=tuple(terms)))
