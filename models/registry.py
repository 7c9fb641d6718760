"""One small registry class for every kind of component (architectures, loss terms, samplers, ...).

A registry maps a name to an entry. Built-in entries are registered by the package that defines
the kind; anything else (a user's module, a test file) can call ``register`` with its own entry,
so adding a component never needs an edit of a core file. A miss raises one line listing the
valid names (DESIGN.md rule 2). Pure Python: no torch import here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Generic, Iterator, Mapping, TypeVar

Entry = TypeVar("Entry")


class Registry(Generic[Entry]):
    """Named entries of one kind; ``field`` is how specs name the choice (e.g. ``model.arch``)."""

    def __init__(self, field: str) -> None:
        self.field = field
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, entry: Entry, *, replace: bool = False) -> Entry:
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"{self.field}: a registered name must be a non-empty string without spaces, got {name!r}")
        if name in self._entries and not replace and self._entries[name] is not entry:
            raise ValueError(f"{self.field}={name!r} is already registered; pass replace=True to override it")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register toys clean up with this)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise ValueError(f"{self.field}={name!r} is unknown; valid: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, Entry]]:
        return sorted(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def build_params(params_type: type | None, raw: Mapping[str, Any], where: str) -> Any:
    """A component's parameter dataclass from plain data, rejecting unknown keys with the valid ones.

    ``params_type`` None means the component takes no parameters. Values are type-checked
    against the field's default (bool/int/float/str/tuple/None), with one-line messages naming
    ``where.<key>``; the dataclass's own ``validate(where)`` (if any) runs last.
    """
    raw = dict(raw or {})
    if params_type is None:
        if raw:
            raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(raw))}; this component takes none")
        return None
    valid = {f.name: f for f in dataclasses.fields(params_type)}
    kwargs: dict[str, Any] = {}
    defaults = params_type()
    for key, value in raw.items():
        if key not in valid:
            raise ValueError(f"{where}.{key} is not a known field; valid: {', '.join(valid) or 'none'}")
        kwargs[key] = coerce_value(f"{where}.{key}", getattr(defaults, key), value, str(valid[key].type))
    params = params_type(**kwargs)
    check = getattr(params, "validate", None)
    if callable(check):
        check(where)
    return params


def coerce_value(where: str, default: Any, value: Any, annotation: str = "") -> Any:
    """Check ``value`` against the type of ``default``; lists become tuples. One-line errors."""
    if value is None:
        if default is None or "None" in annotation:
            return None
        raise ValueError(f"{where}=None is not valid: a value is required")
    if isinstance(value, (list, tuple)) and not isinstance(default, tuple) and "tuple[" in annotation:
        return tuple(value)  # a union such as ``str | tuple[str, ...]`` (loss.terms[].reads) given as a list
    if isinstance(default, tuple):
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}={value!r} is not valid: a list")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where}={value!r} is not valid: true or false")
        return value
    if isinstance(default, int) and "float" not in annotation:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}={value!r} is not valid: an integer")
        return value
    if isinstance(default, float) or "float" in annotation:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}={value!r} is not valid: a number")
        return float(value) if isinstance(default, float) or not isinstance(value, int) else value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"{where}={value!r} is not valid: a string")
        return value
    return value
