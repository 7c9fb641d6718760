"""What ``reidbench ablate --base X`` runs when the command line names no rows (no --add, --mode, --steps).

A base file declares it with a top-level ``default_ablation:`` key, one of

``{steps: NAME}``
    the file's ablation step list NAME (``ablations: NAME``), e.g. Mancs' ``components``: the
    seed paper's own ablation, where BoT's tricks mostly do not apply.
``{add: [trick, ...], mode: cumulative|single|leave-one-out}``
    these tricks (``mode`` defaults to cumulative). A trick that does not apply to the base as
    planned (already applied, not read by its architecture, no loss term to change, ...) is
    skipped, and ``ablate`` names it and the reason on stderr.

A base file without the key gets ``{add: [BoT's six]}``: the Bag-of-Tricks tricks that apply to it.
``--mode`` without ``--add`` always ablates tricks (the ``add:`` list, else BoT's six), never a
step list. Parsing is pure (no torch): ``reidbench bases`` shows the default without building
anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from reidbench.harness.ablation.expand import MODES

if TYPE_CHECKING:
    from reidbench.harness.spec import RunSpec
    from reidbench.tricks import Trick

KEY = "default_ablation"
FIELDS = ("steps", "add", "mode")


@dataclass(frozen=True)
class DefaultAblation:
    """One base file's default rows: a step list name, or tricks with a mode."""

    steps: str | None = None
    add: tuple[str, ...] = ()  # with steps: what --mode without --add ablates (BoT's six)
    mode: str = "cumulative"
    declared: bool = True  # False: the file has no default_ablation key (BoT's six that apply)

    def describe(self) -> str:
        """How ``reidbench bases`` and ``ablate --help`` name it."""
        if self.steps is not None:
            return f"--steps {self.steps}"
        mode = "" if self.mode == "cumulative" else f" --mode {self.mode}"
        return f"--add {','.join(self.add)}{mode} (a trick that does not apply is skipped, saying why)"


def bot_default() -> DefaultAblation:
    from reidbench.tricks import PAPER_ORDER

    return DefaultAblation(add=tuple(PAPER_ORDER), declared=False)


def parse_default_ablation(raw: Any, where: str, step_lists: Sequence[str]) -> DefaultAblation:
    """The file's ``default_ablation`` value (None: not declared) → DefaultAblation; a bad value is one
    ValueError line naming ``where`` (e.g. ``mancs.yaml: default_ablation``) and what is valid."""
    if raw is None:
        return bot_default()
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where} must be a mapping: {{steps: NAME}} or {{add: [trick, ...], mode: MODE}}")
    unknown = [k for k in raw if k not in FIELDS]
    if unknown:
        raise ValueError(f"{where}.{unknown[0]} is not a known field; valid: {', '.join(FIELDS)}")
    if ("steps" in raw) == ("add" in raw):
        raise ValueError(f"{where} needs exactly one of steps (a step list of the file) or add (a list of tricks)")
    if "steps" in raw:
        name = raw["steps"]
        if "mode" in raw:
            raise ValueError(f"{where}.mode is only read with {where}.add (a step list's rows are its steps)")
        if not isinstance(name, str) or name not in step_lists:
            raise ValueError(f"{where}.steps={name!r} is not a step list of the file; valid: "
                             f"{', '.join(step_lists) or 'none defined (add an ablations: section)'}")
        return DefaultAblation(steps=name, add=bot_default().add)  # the tricks of `--mode M` without --add
    add = raw["add"]
    if isinstance(add, str):
        add = [s for s in add.split(",") if s.strip()]
    if not isinstance(add, (list, tuple)) or not add or not all(isinstance(s, str) for s in add):
        raise ValueError(f"{where}.add={add!r} is not valid: a non-empty list of trick names (`reidbench tricks`)")
    from reidbench.tricks import parse_trick_list  # pure: the trick modules import no torch

    try:
        tricks = parse_trick_list(add)
    except ValueError as exc:
        raise ValueError(f"{where}.add: {exc}") from None
    mode = raw.get("mode", "cumulative")
    if mode not in MODES:
        raise ValueError(f"{where}.mode={mode!r} is not valid: {', '.join(MODES)}")
    return DefaultAblation(add=tuple(t.name for t in tricks), mode=str(mode))


@dataclass(frozen=True)
class Rows:
    """What an ``ablate`` command line's rows are, once the base's default fills in what it leaves out."""

    steps: str | None  # a step list of the file, or None: tricks
    tricks: tuple[str, ...]  # trick names, in order (empty with steps)
    mode: str  # cumulative | single | leave-one-out | steps
    by_default: bool  # the base's default tricks: those that do not apply are skipped, not refused


def choose_rows(default: DefaultAblation, add: str | None, mode: str | None, steps: str | None) -> Rows:
    """The rows of ``ablate --add ADD --mode MODE --steps STEPS`` (None: not given) on a base with ``default``.

    ``--steps`` wins; with none of the three the default step list or tricks; ``--mode`` alone ablates
    the default tricks (never a step list); ``--add`` is taken as given.
    """
    from reidbench.harness.ablation.expand import STEPS_MODE

    if steps is not None:
        return Rows(steps, (), STEPS_MODE, False)
    if add is None and mode is None and default.steps is not None:
        return Rows(default.steps, (), STEPS_MODE, True)
    if add is None:
        return Rows(None, default.add, mode or default.mode, True)
    return Rows(None, tuple(s.strip() for s in add.split(",") if s.strip()), mode or "cumulative", False)


def applicable_tricks(base: "RunSpec", tricks: Sequence["Trick"], mode: str = "cumulative"
                      ) -> tuple[tuple["Trick", ...], tuple[tuple["Trick", str], ...]]:
    """(the tricks that apply, (trick, why not) for the others), in the given order.

    Cumulative and leave-one-out rows stack the tricks, so each is tried on the base patched by the
    ones kept before it; single rows, and the designs (factorial, fractional: a combination that
    cannot be built is named by ``expand`` as its design point), apply each to the base alone.
    """
    kept: list["Trick"] = []
    skipped: list[tuple["Trick", str]] = []
    spec = base
    stack = mode in ("cumulative", "leave-one-out")
    for trick in tricks:
        try:
            patched = trick.apply(spec if stack else base)
        except ValueError as exc:
            skipped.append((trick, str(exc).splitlines()[0]))
            continue
        kept.append(trick)
        if stack:
            spec = patched
    return tuple(kept), tuple(skipped)
