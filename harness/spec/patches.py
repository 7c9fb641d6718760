"""Named, labelled patches of a base spec, written in its base file: presets and ablation step lists.

A *preset* (``presets: {name: patch}``) is a named variant of a base that a user picks with
``--preset NAME`` (MGN's ``fastreid``: the values fast-reid uses where the re-implementations
disagree). An *ablation step list* (``ablations: {name: {summary, steps: [patch, ...]}}``) is a
table whose rows are labelled patches, run with ``reidbench ablate --base B --steps NAME`` (MGN's
branch study). A patch is plain data, applied in this order:

``label``
    the table row (steps) or the one-line description (presets).
``base``
    start from another base file instead (e.g. ``bot`` for "MGN vs the BoT baseline"), with the
    same profile; the ablation's data, epochs and seed then apply as to every step.
``keep``
    with ``base``: dotted fields copied from this file's spec (``[data.image_size]``: compare at
    the same input size).
``preset``
    apply a preset of the (original) file first.
``set``
    ``{dotted.field: value}``: spec fields and component options alike (``model.branches``,
    ``data.image_size``, ``optim.base_lr``). Choosing another kind of a component
    (``optim.name: sgd``) drops the fields only the old kind read (Adam's ``betas``).
``terms``
    replace ``loss.terms`` (a list written as in a spec file).
``term``
    ``{kind or name: {field or option: value}}``: merged into every loss term of that kind (or
    with that name); a kind the spec lacks is an error.
``drop``
    remove every loss term of these kinds or names ("MGN w/o triplet").
``tricks``
    then apply these tricks (registry names), recorded in the spec like ``--add``.

Pure: works on the spec's plain data and rebuilds it through ``spec_from_dict``, so every result
is validated like a spec file and every problem is one line naming the patch and the field.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from reidbench.harness.spec.loading import drop_switched, spec_from_dict
from reidbench.harness.spec.sections import RunSpec, SpecError

PATCH_KEYS = ("label", "base", "keep", "preset", "set", "terms", "term", "drop", "tricks")


@dataclass(frozen=True)
class Patch:
    label: str = ""
    base: str | None = None
    keep: tuple[str, ...] = ()
    preset: str | None = None
    set: tuple[tuple[str, Any], ...] = ()
    terms: tuple[Any, ...] | None = None
    term: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    drop: tuple[str, ...] = ()
    tricks: tuple[str, ...] = ()
    where: str = "patch"

    @property
    def changes_spec(self) -> bool:
        return bool(self.base or self.preset or self.set or self.terms is not None or self.term or self.drop)


@dataclass(frozen=True)
class StepList:
    name: str
    summary: str
    steps: tuple[Patch, ...] = field(default_factory=tuple)


def _names(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [s for s in raw.split(",") if s.strip()]
    if not isinstance(raw, (list, tuple)) or not all(isinstance(s, str) and s.strip() for s in raw):
        raise SpecError(f"{where}={raw!r} is not valid: a list of names")
    return tuple(s.strip() for s in raw)


def parse_patch(raw: Any, where: str) -> Patch:
    """Plain data → Patch; unknown keys and wrong shapes are one-line errors naming ``where``."""
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where} must be a mapping with some of {', '.join(PATCH_KEYS)}, got {type(raw).__name__}")
    unknown = [k for k in raw if k not in PATCH_KEYS]
    if unknown:
        raise SpecError(f"{where}.{unknown[0]} is not a known field; valid: {', '.join(PATCH_KEYS)}")
    label = raw.get("label", "")
    if not isinstance(label, str):
        raise SpecError(f"{where}.label={label!r} is not valid: text")
    for key in ("base", "preset"):
        if raw.get(key) is not None and not (isinstance(raw[key], str) and raw[key]):
            raise SpecError(f"{where}.{key}={raw[key]!r} is not valid: a name")
    sets = raw.get("set") or {}
    if not isinstance(sets, Mapping) or not all(isinstance(k, str) and "." in k for k in sets):
        raise SpecError(f"{where}.set must map dotted fields (section.field, e.g. model.branches) to values")
    terms = raw.get("terms")
    if terms is not None and not isinstance(terms, (list, tuple)):
        raise SpecError(f"{where}.terms must be a list of loss terms, got {type(terms).__name__}")
    term = raw.get("term") or {}
    if not isinstance(term, Mapping) or not all(isinstance(v, Mapping) for v in term.values()):
        raise SpecError(f"{where}.term must map a term kind or name to fields, e.g. {{triplet: {{reads: [f_g]}}}}")
    keep = _names(raw.get("keep"), f"{where}.keep")
    if keep and not raw.get("base"):
        raise SpecError(f"{where}.keep is only read with {where}.base (fields copied from this file's spec)")
    if any("." not in k for k in keep):
        raise SpecError(f"{where}.keep={list(keep)} is not valid: dotted fields such as data.image_size")
    return Patch(label=label, base=raw.get("base"), keep=keep, preset=raw.get("preset"),
                 set=tuple(sets.items()), terms=None if terms is None else tuple(terms),
                 term=tuple((k, tuple(v.items())) for k, v in term.items()),
                 drop=_names(raw.get("drop"), f"{where}.drop"), tricks=_names(raw.get("tricks"), f"{where}.tricks"),
                 where=where)


def parse_presets(raw: Any, where: str) -> dict[str, Patch]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where} must map preset names to patches")
    return {str(name): parse_patch(body or {}, f"{where}.{name}") for name, body in raw.items()}


def parse_step_lists(raw: Any, where: str) -> dict[str, StepList]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where} must map step-list names to {{summary, steps: [...]}}")
    out = {}
    for name, body in raw.items():
        here = f"{where}.{name}"
        if not isinstance(body, Mapping) or not isinstance(body.get("steps"), (list, tuple)) or not body["steps"]:
            raise SpecError(f"{here} must be a mapping with a non-empty list of steps")
        extra = [k for k in body if k not in ("summary", "steps")]
        if extra:
            raise SpecError(f"{here}.{extra[0]} is not a known field; valid: summary, steps")
        steps = tuple(parse_patch(s, f"{here}.steps[{i}]") for i, s in enumerate(body["steps"]))
        labels = [s.label for s in steps]
        missing = [i for i, s in enumerate(steps) if not s.label]
        if missing:
            raise SpecError(f"{here}.steps[{missing[0]}] needs a label (its row in the table)")
        repeated = sorted({lbl for lbl in labels if labels.count(lbl) > 1})
        if repeated:
            raise SpecError(f"{here}: step label {repeated[0]!r} is used twice; labels name table rows")
        out[str(name)] = StepList(str(name), str(body.get("summary") or ""), steps)
    return out


def _set_dotted(data: dict[str, Any], path: str, value: Any, where: str) -> None:
    section, _, rest = path.partition(".")
    if section not in data or not isinstance(data[section], dict):
        raise SpecError(f"{where}: {path!r} names no spec section; valid sections: "
                        f"{', '.join(k for k, v in data.items() if isinstance(v, dict))}")
    node = data[section]
    *parents, last = rest.split(".")
    for p in parents:
        if not isinstance(node.get(p), dict):
            raise SpecError(f"{where}: {path!r}: {p!r} is not a mapping in the spec")
        node = node[p]
    node[last] = copy.deepcopy(value)


def _get_dotted(data: Mapping[str, Any], path: str, where: str) -> Any:
    node: Any = data
    for p in path.split("."):
        if not isinstance(node, Mapping) or p not in node:
            raise SpecError(f"{where}: {path!r} is not a field of the spec")
        node = node[p]
    return copy.deepcopy(node)


def _matches(term: Mapping[str, Any], key: str) -> bool:
    return term.get("kind") == key or term.get("name") == key


def apply_patch(spec: RunSpec, patch: Patch, *, presets: Mapping[str, Patch] | None = None,
                load_base: Callable[[str], RunSpec] | None = None) -> RunSpec:
    """The spec ``patch`` describes (tricks excluded: the caller applies them from the registry).

    ``load_base(name)`` loads another base file with the same profile (for ``base``); ``presets``
    are the file's presets (for ``preset``).
    """
    where = patch.where
    start = spec
    if patch.base:
        if load_base is None:
            raise SpecError(f"{where}.base={patch.base!r}: another base cannot be loaded here")
        start = load_base(patch.base)
    data = start.to_dict()
    if patch.keep:
        own = spec.to_dict()
        for path in patch.keep:
            _set_dotted(data, path, _get_dotted(own, path, f"{where}.keep"), f"{where}.keep")
    if patch.preset:
        known = presets or {}
        if patch.preset not in known:
            raise SpecError(f"{where}.preset={patch.preset!r} is not a preset of this base; valid: "
                            f"{', '.join(known) or 'none defined'}")
        inner = known[patch.preset]
        if inner.preset or inner.base or inner.tricks:
            raise SpecError(f"{inner.where}: a preset may not itself use preset, base or tricks")
        data = apply_patch(spec_from_dict(data, where), inner).to_dict()
    # Choosing another kind of a component (optim.name: sgd) drops the old kind's own fields first.
    written: dict[str, dict[str, Any]] = {}
    for path, value in patch.set:
        section, _, rest = path.partition(".")
        written.setdefault(section, {})[rest.split(".")[0]] = value
    data = drop_switched(data, written)
    for path, value in patch.set:
        _set_dotted(data, path, value, f"{where}.set")
    loss = data.setdefault("loss", {})
    if patch.terms is not None:
        loss["terms"] = copy.deepcopy(list(patch.terms))
    for key, changes in patch.term:
        hits = [t for t in loss.get("terms", []) if _matches(t, key)]
        if not hits:
            raise SpecError(f"{where}.term.{key}: the spec has no loss term of that kind or name; its terms: "
                            f"{', '.join(t.get('name') or t['kind'] for t in loss.get('terms', []))}")
        for t in hits:
            t.update(copy.deepcopy(dict(changes)))
    for key in patch.drop:
        before = loss.get("terms", [])
        after = [t for t in before if not _matches(t, key)]
        if len(after) == len(before):
            raise SpecError(f"{where}.drop: the spec has no loss term {key!r} to drop; its terms: "
                            f"{', '.join(t.get('name') or t['kind'] for t in before)}")
        loss["terms"] = after
    try:
        return spec_from_dict(data, where)
    except SpecError as exc:
        message = str(exc)
        raise SpecError(message if message.startswith(where) else f"{where}: {message}") from None


def apply_with_tricks(spec: RunSpec, patch: Patch, trick_names: Sequence[str] = (), **kwargs: Any) -> RunSpec:
    """``apply_patch`` then the patch's tricks and ``trick_names`` (one-line errors naming the patch)."""
    from reidbench.tricks import parse_trick_list

    patched = apply_patch(spec, patch, **kwargs)
    try:
        for trick in parse_trick_list([*patch.tricks, *trick_names]):
            patched = trick.apply(patched)
    except ValueError as exc:
        raise SpecError(f"{patch.where}.tricks: {exc}") from None
    return patched
