"""Spec files and plain data → validated RunSpec: YAML, profiles, component options, --epochs.

Every problem is one ``SpecError`` line naming the file, field and value and what would be
valid. Components named in a spec (``model.arch``, ``loss.terms[].kind``, ``data.sampler``,
``schedule.kind``, ``optim.name``, ``tricks``) are looked up in their registries here, lazily,
so importing the spec package stays light.

Spec files written before loss terms existed keep loading: the old flat loss fields
(``id_weight``, ``label_smoothing``, ``triplet_weight``, ``triplet_margin``, ``center_weight``,
``center_lr``) become the equivalent ``loss.terms``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from reidbench.harness.spec.sections import (
    PROFILE_NAME,
    PROFILES,
    SECTIONS,
    DataSpec,
    GroupSpec,
    LossSpec,
    LossTermSpec,
    ModelSpec,
    OptimSpec,
    RunSpec,
    ScheduleSpec,
    SpecError,
    StageSpec,
    fail,
    field_defaults,
    options_from,
)

LEGACY_LOSS_FIELDS = ("id_weight", "label_smoothing", "triplet_weight", "triplet_margin", "center_weight", "center_lr")


# --------------------------------------------------------------------------- components


def _architecture_params(name: str) -> type | None:
    from reidbench.models.architectures import ARCHITECTURES

    return ARCHITECTURES.get(name).params


def _term_params(name: str) -> type | None:
    from reidbench.models.terms import LOSS_TERMS

    return LOSS_TERMS.get(name).params


def _sampler_params(name: str) -> type | None:
    from reidbench.harness.data.samplers import SAMPLERS

    return SAMPLERS.get(name).params


def _schedule_params(name: str) -> type | None:
    from reidbench.harness.train.schedules import get_schedule

    return getattr(get_schedule(name), "params", None)


def _check_optimizer(name: str) -> None:
    from reidbench.harness.train.optim import OPTIMIZERS

    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name={name!r} is unknown; valid: {', '.join(sorted(OPTIMIZERS))}")


def _sparse_options(lookup: Callable[[str], type | None], name: str, raw: Mapping[str, Any], where: str,
                    section_fields: Sequence[str] = ()) -> tuple[tuple[str, Any], ...]:
    """Validate a component's flat options; keep only values that differ from its defaults."""
    from reidbench.models.registry import build_params

    try:
        params_type = lookup(name)
        own = [f.name for f in fields(params_type)] if params_type is not None else []
        unknown = [k for k in raw if k not in own]
        if unknown:
            raise SpecError(f"{where}.{unknown[0]} is not a known field; valid: {', '.join([*section_fields, *own])}")
        params = build_params(params_type, raw, where)
    except SpecError:
        raise
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    if params is None:
        return ()
    defaults = params_type()
    return options_from({f.name: getattr(params, f.name) for f in fields(params)
                         if getattr(params, f.name) != getattr(defaults, f.name)})


# --------------------------------------------------------------------------- sections


def _coerce_fields(cls: type, where: str, raw: Mapping[str, Any], skip: tuple[str, ...] = ()
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Known fields of ``cls`` (type-checked) and the remaining keys (a component's options)."""
    from reidbench.models.registry import coerce_value

    if not isinstance(raw, Mapping):
        raise SpecError(f"{where} must be a mapping of fields, got {type(raw).__name__}")
    known = {f.name: f for f in fields(cls) if f.name not in skip}
    instance_defaults = field_defaults(cls)
    kwargs: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            rest[key] = value
            continue
        default = instance_defaults.get(key)
        annotation = str(known[key].type)
        if default is None and "None" not in annotation:  # a required field: check its declared type
            default = "" if annotation.startswith("str") else default
        try:
            kwargs[key] = coerce_value(f"{where}.{key}", default, value, annotation)
        except ValueError as exc:
            raise SpecError(str(exc)) from None
    return kwargs, rest


def _no_extra(where: str, cls: type, rest: Mapping[str, Any], skip: tuple[str, ...] = ()) -> None:
    if rest:
        valid = [f.name for f in fields(cls) if f.name not in skip]
        key = sorted(rest)[0]
        raise SpecError(f"{where}.{key} is not a known field; valid: {', '.join(valid)}")


def _model(raw: Mapping[str, Any]) -> ModelSpec:
    kwargs, rest = _coerce_fields(ModelSpec, "model", raw, skip=("options",))
    arch = kwargs.get("arch", ModelSpec.arch)
    kwargs["options"] = _sparse_options(_architecture_params, arch, rest, "model",
                                        [f.name for f in fields(ModelSpec) if f.name != "options"])
    return ModelSpec(**kwargs)


def _data(raw: Mapping[str, Any]) -> DataSpec:
    raw = dict(raw or {})
    if isinstance(raw.get("test"), str):
        raw["test"] = [t for t in raw["test"].split(",") if t]
    kwargs, rest = _coerce_fields(DataSpec, "data", raw, skip=("sampler_options",))
    sampler = kwargs.get("sampler", DataSpec.sampler)
    kwargs["sampler_options"] = _sparse_options(_sampler_params, sampler, rest, "data")
    return DataSpec(**kwargs)


def legacy_loss_terms(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The old flat loss fields as loss terms (same numbers: same losses, weights and inputs)."""
    defaults = {"id_weight": 1.0, "label_smoothing": 0.0, "triplet_weight": 1.0, "triplet_margin": 0.3,
                "center_weight": 0.0, "center_lr": 0.5}
    values = {**defaults, **{k: raw[k] for k in LEGACY_LOSS_FIELDS if k in raw}}
    terms: list[dict[str, Any]] = []
    if values["id_weight"]:
        terms.append({"kind": "ce", "reads": "logits", "weight": values["id_weight"],
                      "label_smoothing": values["label_smoothing"]})
    if values["triplet_weight"]:
        terms.append({"kind": "triplet", "reads": "f_t", "weight": values["triplet_weight"],
                      "margin": values["triplet_margin"]})
    if values["center_weight"]:
        terms.append({"kind": "center", "reads": "f_t", "weight": values["center_weight"], "lr": values["center_lr"]})
    return terms


def _loss(raw: Mapping[str, Any]) -> LossSpec:
    if raw is None:
        return LossSpec()
    if not isinstance(raw, Mapping):
        raise SpecError(f"loss must be a mapping with a list of terms, got {type(raw).__name__}")
    legacy = [k for k in raw if k in LEGACY_LOSS_FIELDS]
    unknown = [k for k in raw if k not in LEGACY_LOSS_FIELDS and k != "terms"]
    if unknown:
        raise SpecError(f"loss.{unknown[0]} is not a known field; valid: terms")
    if legacy and "terms" in raw:
        raise SpecError(f"loss.{legacy[0]} is an old-style field: write it as loss.terms, not beside them")
    for key in legacy:  # old-style fields are numbers (triplet_margin may be null: soft margin)
        value = raw[key]
        if not (value is None and key == "triplet_margin") and (isinstance(value, bool)
                                                                  or not isinstance(value, (int, float))):
            raise SpecError(f"loss.{key}={value!r} is not valid: a number")
    terms_raw = legacy_loss_terms(raw) if legacy else raw.get("terms", None)
    if terms_raw is None:
        return LossSpec()
    if not isinstance(terms_raw, (list, tuple)):
        raise SpecError(f"loss.terms must be a list of terms, got {type(terms_raw).__name__}")
    terms = []
    for i, item in enumerate(terms_raw):
        where = f"loss.terms[{i}]"
        if not isinstance(item, Mapping) or "kind" not in item or "reads" not in item:
            raise SpecError(f"{where} must be a mapping with at least kind and reads, e.g. {{kind: ce, reads: logits}}")
        kwargs, rest = _coerce_fields(LossTermSpec, where, item, skip=("options",))
        if isinstance(kwargs.get("reads"), tuple) and len(kwargs["reads"]) == 1:
            kwargs["reads"] = kwargs["reads"][0]
        kwargs["options"] = _sparse_options(_term_params, kwargs["kind"], rest, where,
                                            [f.name for f in fields(LossTermSpec) if f.name != "options"])
        terms.append(LossTermSpec(**kwargs))
    return LossSpec(terms=tuple(terms))


def _optimizer_params(name: str) -> type | None:
    from reidbench.harness.train.optim import get_optimizer

    return get_optimizer(name).params


def _optim(raw: Mapping[str, Any]) -> OptimSpec:
    kwargs, rest = _coerce_fields(OptimSpec, "optim", raw or {}, skip=("options",))
    kwargs["groups"] = _elements(GroupSpec, kwargs.get("groups", ()), "optim.groups", "match",
                                 "{match: [new], lr_scale: 10}")
    name = kwargs.get("name", OptimSpec.name)
    try:
        _check_optimizer(name)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    # The optimiser's own parameters beyond the section's fields (adam: eps) are written flat beside them.
    section = [f.name for f in fields(OptimSpec) if f.name != "options"]
    params_type = _optimizer_params(name)
    shared = {k: v for k, v in kwargs.items() if params_type is not None and k in {f.name for f in fields(params_type)}}
    try:
        checked = _sparse_options(_optimizer_params, name, {**shared, **rest}, "optim", section)
    except SpecError as exc:  # the optimiser's own checks name it by kind: say which spec field it is
        raise SpecError(str(exc).replace(f"{name}.", "optim.", 1)) from None
    kwargs["options"] = tuple((k, v) for k, v in checked if k in rest)
    return OptimSpec(**kwargs)


def _schedule(raw: Mapping[str, Any]) -> ScheduleSpec:
    kwargs, rest = _coerce_fields(ScheduleSpec, "schedule", raw or {}, skip=("options",))
    kind = kwargs.get("kind", ScheduleSpec.kind)
    section = [f.name for f in fields(ScheduleSpec) if f.name != "options"]
    # The schedule's own options are checked together with the section fields it also reads
    # (unit, warmup): a fraction-stated delay is only valid with unit: fraction.
    params_type = _schedule_params(kind)
    own = {f.name for f in fields(params_type)} if params_type is not None else set()
    shared = {k: v for k, v in kwargs.items() if k in own}
    try:
        checked = _sparse_options(_schedule_params, kind, {**shared, **rest}, "schedule", section)
    except SpecError as exc:  # the schedule's own checks name it by kind: say which spec field it is
        raise SpecError(str(exc).replace(f"{kind}.", "schedule.", 1)) from None
    kwargs["options"] = tuple((k, v) for k, v in checked if k in rest)
    return ScheduleSpec(**kwargs)


def _elements(cls: type, raw: Any, where: str, required: str, example: str) -> tuple[Any, ...]:
    """A list of small sections (stages, optimiser groups), each checked field by field."""
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)):
        raise SpecError(f"{where} must be a list, got {type(raw).__name__}")
    out = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping) or required not in item:
            raise SpecError(f"{at} must be a mapping with at least {required}, e.g. {example}")
        kwargs, rest = _coerce_fields(cls, at, item)
        _no_extra(at, cls, rest)
        out.append(cls(**kwargs))
    return tuple(out)


def _stages(raw: Any) -> tuple[StageSpec, ...]:
    return _elements(StageSpec, raw, "stages", "epochs", "{epochs: 5, train_only: [new]}")


def _plain(name: str, raw: Any) -> Any:
    cls = SECTIONS[name]
    kwargs, rest = _coerce_fields(cls, name, raw if raw is not None else {})
    _no_extra(name, cls, rest)
    return cls(**kwargs)


_BUILDERS: dict[str, Callable[[Any], Any]] = {
    "model": _model, "data": _data, "loss": _loss, "optim": _optim, "schedule": _schedule,
    "eval": lambda raw: _plain("eval", raw), "train": lambda raw: _plain("train", raw),
}


def _check_tricks(names: Any) -> tuple[str, ...]:
    if names is None:
        return ()
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise SpecError(f"tricks must be a list of trick names, got {names!r}")
    from reidbench.tricks import registered_tricks

    known = [t.name for t in registered_tricks()]
    for name in names:
        if name not in known:
            raise SpecError(f"tricks: {name!r} is not a registered trick; valid: {', '.join(known)}")
    return tuple(sorted(names))


def _spec_kwargs(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Each section of plain spec data built and checked on its own (no cross-section checks yet)."""
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where} must be a mapping with sections {', '.join(SECTIONS)}")
    top_valid = {f.name for f in fields(RunSpec)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in top_valid:
            raise SpecError(f"{where}: unknown field {key!r}; valid: {', '.join(sorted(top_valid))}")
        if key in _BUILDERS:
            kwargs[key] = _BUILDERS[key](value)
        elif key == "stages":
            kwargs[key] = _stages(value)
        elif key == "tricks":
            kwargs[key] = _check_tricks(value)
        else:
            kwargs[key] = value
    return kwargs


def spec_from_dict(raw: Mapping[str, Any], where: str = "spec", *, stored: bool = False) -> RunSpec:
    """Build and validate a RunSpec from plain data (YAML/JSON).

    A field that none of the spec's components reads is an error (harness/spec/reads.py): with a
    non-default value wherever it came from, and also at its default value when it is written
    here. ``stored=True`` reads a spec recorded by older code, which accepted such fields: they
    are reset to their defaults instead (``spec_from_stored``).
    """
    from reidbench.harness.spec.reads import SELECTORS, reset_unread, unread_keys

    spec = RunSpec(**_spec_kwargs(raw, where))
    if stored:
        spec, _ = reset_unread(spec)
    else:
        for section, selector in SELECTORS.items():
            written = raw.get(section)
            if isinstance(written, Mapping):
                unread = unread_keys(section, written, getattr(getattr(spec, section), selector))
                if unread:
                    raise SpecError(unread[0].message())
    spec = spec.validate()
    _check_masks(spec)
    return spec


def spec_from_stored(raw: Mapping[str, Any], where: str = "stored spec") -> RunSpec:
    """A spec recorded by a run (database, result.json, spec.json), read by today's code.

    Older code accepted fields that no component reads (``momentum`` beside Adam, a multistep
    ``milestones`` under a cosine schedule); they never changed what trained, so they are reset to
    their defaults here. ``stored_spec_changes`` lists them.
    """
    return spec_from_dict(raw, where, stored=True)


def stored_spec_changes(raw: Mapping[str, Any], where: str = "stored spec") -> list[Any]:
    """The fields of a stored spec holding non-default values that no component reads (``reads.Unread``)."""
    from reidbench.harness.spec.reads import reset_unread

    return reset_unread(RunSpec(**_spec_kwargs(raw, where)))[1]


def _check_masks(spec: RunSpec) -> None:
    """``model.arch`` and ``data.masks`` must agree: a masks architecture needs a provider, others take none."""
    from reidbench.models.architectures import check_masks_field

    try:
        check_masks_field(spec.model.arch, spec.data.masks, spec.model)
    except ValueError as exc:
        raise SpecError(str(exc)) from None


def spec_from_json(text: str) -> RunSpec:
    """A recorded spec's JSON (a job, a run folder, the database): read as ``spec_from_stored``."""
    return spec_from_stored(json.loads(text))


def merge_dicts(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``override`` wins. Used for profile overlays in base YAML files."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def drop_switched(base: Mapping[str, Any], changes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``base`` spec data without the fields of components that ``changes`` switches away from.

    ``changes`` maps a section to the fields about to be written into it. When they choose
    another kind of a component (``optim.name: adam`` over MGN's SGD), the fields the old kind read
    and the new one does not (``momentum``) leave with it, unless ``changes`` writes them itself
    (then the new kind refuses them with one line). Profiles, presets and step lists use this.
    """
    from reidbench.harness.spec.reads import SELECTORS, switched_kind_drops

    out = dict(base)
    for section, selector in SELECTORS.items():
        written = changes.get(section)
        if not isinstance(written, Mapping) or selector not in written or not isinstance(out.get(section), Mapping):
            continue
        default_kind = getattr(SECTIONS[section](), selector)
        old_kind = out[section].get(selector, default_kind)
        drops = switched_kind_drops(section, old_kind, written[selector]) - set(written)
        if drops:
            out[section] = {k: v for k, v in out[section].items() if k not in drops}
    return out


def _exact(value: float) -> float:
    """A scaled phase length: 6 decimals (a millionth of an epoch, far below one step), an int when whole."""
    value = round(float(value), 6)
    return int(value) if value.is_integer() else value


def with_epochs(spec: RunSpec, epochs: int) -> RunSpec:
    """Shorten (or lengthen) the run to ``epochs``; the original length is kept in ``full_epochs``.

    The schedule becomes step-granular (``schedule.granularity: step``; harness/train/schedules.py)
    and every phase is scaled exactly by epochs / max_epochs, so each keeps its share of the
    optimizer steps: the warmup, the cosine delay and the freeze warm-up by the factor, a
    multistep milestone m (the first epoch at the decayed rate) to 1 + (m - 1) × factor (the share
    before its decay is (m - 1) / T), each stage's length by the factor (the last takes the rest).
    Fraction-stated phases need nothing; a curriculum (its t0/t1 scale with the run already)
    follows the same fractional progress. No rounding to whole epochs, no minimum length.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise SpecError(f"--epochs={epochs} is not valid: an integer >= 1")
    sched = spec.schedule
    if epochs == sched.max_epochs:
        return spec
    full = spec.full_epochs or sched.max_epochs
    scale = epochs / sched.max_epochs
    changes: dict[str, Any] = {"max_epochs": epochs, "granularity": "step"}
    if sched.unit == "epochs":
        from reidbench.harness.spec.reads import kind_reads

        if "milestones" in kind_reads("schedule").get(sched.kind, ()):  # others leave them unread, at their default
            changes["milestones"] = tuple(_exact(1 + (m - 1) * scale) for m in sched.milestones)
        changes["warmup_epochs"] = _exact(sched.warmup_epochs * scale)
        options = dict(sched.options)
        if "delay_epochs" in options:
            options["delay_epochs"] = _exact(options["delay_epochs"] * scale)
            changes["options"] = tuple(sorted(options.items()))
        if sched.freeze_epochs:
            changes["freeze_epochs"] = _exact(sched.freeze_epochs * scale)
    stages = spec.stages
    if stages:
        lengths = [_exact(s.epochs * scale) for s in stages[:-1]]
        lengths.append(_exact(epochs - sum(lengths)))
        if lengths[-1] <= 0:
            raise SpecError(f"--epochs={epochs} is not valid: the last stage ({stages[-1].name or 'stage'}) "
                            "would have no epochs left")
        stages = tuple(dataclasses.replace(s, epochs=n) for s, n in zip(stages, lengths))
    new = dataclasses.replace(spec, schedule=dataclasses.replace(sched, **changes), stages=stages,
                              full_epochs=full if epochs != full else None)
    return new.validate()


def load_yaml(path: str | Path) -> Any:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{p}: spec file not found")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{p}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None


# Top-level keys of a base file that are not part of the run spec.
FILE_ONLY_KEYS = ("name", "description", "profiles", "evaluations", "presets", "ablations", "default_ablation")


def load_base_file(path: str | Path, profile: str | None = None) -> tuple[RunSpec, dict[str, Any]]:
    """A base YAML → (its RunSpec for ``profile``, its file-level extras such as ``evaluations``)."""
    raw = load_yaml(path)
    if not isinstance(raw, Mapping):
        raise SpecError(f"{path}: expected a mapping of spec sections at the top level")
    raw = dict(raw)
    extras = {k: raw.pop(k) for k in FILE_ONLY_KEYS if k in raw}
    profiles = extras.get("profiles") or {}
    if not isinstance(profiles, Mapping):
        raise SpecError(f"{path}: profiles must be a mapping of profile names to overlays, e.g. {{cpu: {{...}}}}")
    chosen = profile or raw.get("profile", "paper")
    if not isinstance(chosen, str) or not PROFILE_NAME.fullmatch(chosen):
        fail(f"{path}: profile", chosen, f"a profile of the file: {', '.join(profiles) or ', '.join(PROFILES)}")
    if chosen in profiles:
        overlay = dict(profiles[chosen] or {})
        if "evaluations" in overlay:
            extras["evaluations"] = overlay.pop("evaluations")
        raw = merge_dicts(drop_switched(raw, overlay), overlay)
    elif profile is not None and (profiles or profile not in PROFILES):
        # A file without profiles takes the standard names as labels only (paper, cpu); a typo is never silent.
        raise SpecError(f"{path}: profile {chosen!r} not defined; defined: {', '.join(profiles) or 'none'}"
                        + ("" if profiles else f" (a file without profiles: takes {' or '.join(PROFILES)} as a label)"))
    raw["profile"] = chosen
    try:
        return spec_from_dict(raw, where=str(path)), extras
    except SpecError as exc:
        message = str(exc)
        raise SpecError(message if message.startswith(f"{path}:") else f"{path}: {message}") from None


def load_spec_file(path: str | Path, profile: str | None = None) -> RunSpec:
    """Load a run spec YAML. A base file may hold ``profiles: {name: overrides}``; pick one with ``profile``.

    Without ``profile`` the file's own ``profile`` field (default ``paper``) is used.
    """
    return load_base_file(path, profile)[0]
