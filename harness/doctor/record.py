"""The one record every doctor check returns, and how a list of them becomes an exit code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

OK, WARN, FAIL = "ok", "warn", "fail"
STATUSES = (OK, WARN, FAIL)
SYMBOLS = {OK: "✓", WARN: "!", FAIL: "✗"}


@dataclass(frozen=True)
class Check:
    """One line of ``reidbench doctor``.

    ``status``: ``ok`` (``text`` is a short fact), ``warn`` (``text`` says what to do; nothing the
    default workflow needs is missing) or ``fail`` (``text`` says what to do; something the default
    workflow or an option the user gave cannot work). ``data``: the measured values behind the line,
    plain JSON types, for ``--json``.
    """

    name: str
    status: str
    text: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"Check.status={self.status!r} is not valid; valid: {', '.join(STATUSES)}")

    def line(self, name_width: int = 13) -> str:
        return f"{SYMBOLS[self.status]} {self.name:<{name_width}} {self.text}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "text": self.text, "data": dict(self.data)}


def exit_code(checks: Iterable[Check]) -> int:
    """0 when nothing failed (warnings are advice), else 1."""
    return 1 if any(c.status == FAIL for c in checks) else 0
