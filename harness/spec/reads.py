"""Which spec fields the chosen components read: a field that nothing reads is an error, not a new hash.

A section that chooses a component by name (``model.arch``, ``optim.name``, ``schedule.kind``)
also holds fields that only some kinds of that component read. Each kind declares them:

- an architecture, in ``Architecture.model_fields`` (``neck`` is read by ``bot`` and ``mgn`` only);
- an optimiser or a schedule, by naming the section field in its parameter dataclass
  (``SGDParams.momentum`` makes ``optim.momentum`` SGD's; ``MultiStepParams.milestones`` makes
  ``schedule.milestones`` the multistep schedule's).

A section field that at least one registered kind declares is *owned*: it is read only when the
chosen kind declares it. A field no kind declares (``optim.base_lr``, ``schedule.max_epochs``) is
read by the harness itself, always. A few fields are read only when another field switches them
on (``schedule.warmup_factor`` without a warmup); those are listed in ``CONDITIONAL``.

Three uses, one answer:

- ``unread_fields(spec)``: every field holding a non-default value that nothing reads — an error
  when a spec loads (``RunSpec.validate``), whatever brought the value in (YAML, CLI override,
  profile, preset, step list, trick);
- ``unread_keys(section, raw, kind)``: the keys a user *wrote* that nothing reads, even at their
  default value (``spec_from_dict``'s strict mode);
- ``reset_unread(spec)``: the spec with every unread field back at its default — how a *stored*
  spec (written when such fields were accepted) is read today (``spec_from_stored``).

Registries are imported lazily (they import torch); this module itself is pure.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

from reidbench.harness.spec.sections import OptimSpec, RunSpec, ScheduleSpec, field_defaults

# The sections whose fields belong to a chosen component: section → its selector field.
SELECTORS: dict[str, str] = {"model": "arch", "optim": "name", "schedule": "kind"}


@dataclass(frozen=True)
class Unread:
    """One field with a value that no component of the spec reads."""

    path: str  # dotted, e.g. "optim.momentum"
    value: Any
    why: str  # the rest of the message: "is read by optim.name sgd only, not adam"

    def message(self) -> str:
        return f"{self.path}={_shown(self.value)} {self.why}: drop it"


def _shown(value: Any) -> str:
    return repr(list(value) if isinstance(value, tuple) else value)


# ------------------------------------------------------------------ what each kind declares


def _architecture_reads() -> dict[str, frozenset[str]]:
    from reidbench.models.architectures import ARCHITECTURES

    return {name: frozenset(entry.model_fields) for name, entry in ARCHITECTURES.items()}


def _params_reads(entries: Mapping[str, Any], section: type) -> dict[str, frozenset[str]]:
    own = {f.name for f in fields(section)}
    return {name: frozenset(f.name for f in fields(entry.params) if f.name in own) if entry.params else frozenset()
            for name, entry in entries.items()}


def _optimizer_reads() -> dict[str, frozenset[str]]:
    from reidbench.harness.train.optim import OPTIMIZERS

    return _params_reads(OPTIMIZERS, OptimSpec)


def _schedule_reads() -> dict[str, frozenset[str]]:
    from reidbench.harness.train.schedules import SCHEDULES

    return _params_reads(SCHEDULES, ScheduleSpec)


_READS: dict[str, Callable[[], dict[str, frozenset[str]]]] = {
    "model": _architecture_reads, "optim": _optimizer_reads, "schedule": _schedule_reads,
}


def kind_reads(section: str) -> dict[str, frozenset[str]]:
    """{kind: the section fields it reads} for every registered kind of ``section``'s component."""
    return _READS[section]()


def owned_fields(section: str) -> dict[str, tuple[str, ...]]:
    """{section field: the kinds that read it} for the fields some (not necessarily every) kind declares."""
    out: dict[str, list[str]] = {}
    for kind, names in sorted(kind_reads(section).items()):
        for name in names:
            out.setdefault(name, []).append(kind)
    return {name: tuple(kinds) for name, kinds in out.items()}


def _unread_owned(section: str, kind: str) -> dict[str, tuple[str, ...]]:
    """{field: the kinds that would read it} for the owned fields that ``kind`` does not read."""
    reads = kind_reads(section).get(kind)
    if reads is None:  # an unknown kind: its own error comes from the registry lookup
        return {}
    return {name: kinds for name, kinds in owned_fields(section).items() if name not in reads}


def _why_owned(section: str, kind: str, readers: tuple[str, ...]) -> str:
    selector = SELECTORS[section]
    return f"is not read by {section}.{selector}={kind} (only by {section}.{selector} {', '.join(readers)})"


# ------------------------------------------------------------------ fields read only when switched on


@dataclass(frozen=True)
class Conditional:
    """``path`` is read only when ``read(spec)``; ``when`` says when, for the message."""

    path: str
    read: Callable[[RunSpec], bool]
    when: str


CONDITIONAL: tuple[Conditional, ...] = (
    Conditional("schedule.warmup_factor", lambda s: s.schedule.warmup_epochs > 0,
                "schedule.warmup_epochs > 0 (the warmup's starting factor)"),
    Conditional("schedule.freeze_modules", lambda s: s.schedule.freeze_epochs > 0,
                "schedule.freeze_epochs > 0 (what the freeze warm-up freezes)"),
)


def _get(spec: RunSpec, path: str) -> Any:
    section, name = path.split(".", 1)
    return getattr(getattr(spec, section), name)


def _default(path: str) -> Any:
    section, name = path.split(".", 1)
    return field_defaults(type(getattr(RunSpec(), section)))[name]


# ------------------------------------------------------------------ the three uses


def unread_fields(spec: RunSpec) -> list[Unread]:
    """Every field of ``spec`` holding a non-default value that none of its components reads."""
    out: list[Unread] = []
    for section, selector in SELECTORS.items():
        part = getattr(spec, section)
        kind = getattr(part, selector)
        defaults = field_defaults(type(part))
        for name, readers in sorted(_unread_owned(section, kind).items()):
            value = getattr(part, name)
            if value != defaults[name]:
                out.append(Unread(f"{section}.{name}", value, _why_owned(section, kind, readers)))
    for cond in CONDITIONAL:
        value = _get(spec, cond.path)
        if value != _default(cond.path) and not cond.read(spec):
            out.append(Unread(cond.path, value, f"is only read with {cond.when}"))
    return out


def unread_keys(section: str, raw: Mapping[str, Any], kind: str) -> list[Unread]:
    """The keys of a written ``section`` mapping that its chosen ``kind`` does not read (any value)."""
    if section not in SELECTORS:
        return []
    unread = _unread_owned(section, kind)
    return [Unread(f"{section}.{key}", raw[key], _why_owned(section, kind, unread[key]))
            for key in raw if key in unread]


def reset_unread(spec: RunSpec) -> tuple[RunSpec, list[Unread]]:
    """``spec`` with every unread field back at its default, and what was reset (non-default values only)."""
    dropped = unread_fields(spec)
    for item in dropped:
        section, name = item.path.split(".", 1)
        spec = dataclasses.replace(spec, **{section: dataclasses.replace(getattr(spec, section),
                                                                         **{name: _default(item.path)})})
    return spec, dropped


def prune_unread_keys(data: dict[str, Any], spec: RunSpec) -> dict[str, Any]:
    """Drop from ``spec``'s plain data (``to_dict``) the fields its components do not read.

    They hold their defaults (``unread_fields`` is empty for a valid spec) and would only say
    something untrue (``momentum`` beside Adam), so a stored spec never shows them.
    """
    for section, selector in SELECTORS.items():
        part = data.get(section)
        if isinstance(part, dict):
            for name in _unread_owned(section, getattr(getattr(spec, section), selector)):
                part.pop(name, None)
    for cond in CONDITIONAL:
        section, name = cond.path.split(".", 1)
        if isinstance(data.get(section), dict) and not cond.read(spec):
            data[section].pop(name, None)
    return data


def _param_names(section: str, kind: str) -> set[str]:
    """The names of ``kind``'s own parameters (written flat in its section)."""
    if section == "model":
        from reidbench.models.architectures import ARCHITECTURES

        entries: Mapping[str, Any] = {n: e for n, e in ARCHITECTURES.items()}
    elif section == "optim":
        from reidbench.harness.train.optim import OPTIMIZERS as entries
    else:
        from reidbench.harness.train.schedules import SCHEDULES as entries
    entry = entries.get(kind)
    params = getattr(entry, "params", None) if entry is not None else None
    return {f.name for f in fields(params)} if params is not None else set()


def switched_kind_drops(section: str, old_kind: str, new_kind: str) -> set[str]:
    """Keys of ``section`` that belong to ``old_kind`` and that ``new_kind`` does not read.

    When a profile overlay, a preset or a patch switches a component (the cpu profile's Adam in
    place of MGN's SGD), the old component's own settings (``momentum``) leave with it.
    """
    if section not in SELECTORS or old_kind == new_kind:
        return set()
    reads = kind_reads(section)
    if old_kind not in reads or new_kind not in reads:
        return set()
    old = set(reads[old_kind]) | _param_names(section, old_kind)
    new = set(reads[new_kind]) | _param_names(section, new_kind)
    return old - new
