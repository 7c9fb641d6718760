"""Pieces shared by every CLI module: the one-line user error, the options objects, --db and --data.

Every command is written once: its click options are collected into one frozen dataclass
(``@command_options(XOptions)``, the innermost decorator) and the command body takes that one
typed object. Options used by several commands are fields of the small shared dataclasses below
(``DataOptions``, ``StoreOptions``, ``RunOptions``, ``SpecOptions``), each holding the values of
option decorators defined once here.

Imports only click (and the store lazily), so ``--help`` stays instant.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import click

EXIT_USAGE = 2
EXIT_PROBLEMS = 1


class UserError(click.ClickException):
    """A one-line error for the user (exit code 2)."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        click.echo(f"reidbench: error: {self.format_message()}", err=True, file=file)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's user-facing exceptions (ValueError & co.) into one-line CLI errors."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, KeyError, PermissionError) as exc:
            problems = getattr(exc, "problems", None)  # several at once (execution/preflight.PreflightError)
            if problems:
                raise ManyUserErrors(list(problems)) from None
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            raise UserError(str(msg).splitlines()[0] if str(msg) else type(exc).__name__) from None

    return wrapper


class ManyUserErrors(click.ClickException):
    """Several problems found at once (a preflight): one line each on stderr, exit code 2."""

    exit_code = EXIT_USAGE

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__(lines[0] if lines else "")
        self.lines = tuple(lines)

    def show(self, file: Any = None) -> None:
        for line in self.lines:
            click.echo(f"reidbench: error: {line}", err=True, file=file)


# ------------------------------------------------------------------ one options object per command

Options = TypeVar("Options")


def _fields_of(options_type: type) -> list[tuple[str, Any, dataclasses.Field]]:
    hints = typing.get_type_hints(options_type)
    return [(f.name, hints[f.name], f) for f in dataclasses.fields(options_type)]


def option_names(options_type: type) -> set[str]:
    """Every click parameter name an options type takes (its shared groups' fields included)."""
    names: set[str] = set()
    for name, hint, _ in _fields_of(options_type):
        names |= option_names(hint) if dataclasses.is_dataclass(hint) else {name}
    return names


def build_options(options_type: type[Options], values: dict[str, Any]) -> Options:
    """``options_type`` (a module-level frozen dataclass) from click's keyword arguments; a field typed
    as a dataclass (a shared group) is built from the same keywords. A parameter without a field, or a field without a value and
    without a default, is a programming error (TypeError), caught by tests/test_cli_help.py."""
    left = dict(values)

    def build(cls: type) -> Any:
        kwargs = {}
        for name, hint, f in _fields_of(cls):
            if dataclasses.is_dataclass(hint):
                kwargs[name] = build(hint)
            elif name in left:
                kwargs[name] = left.pop(name)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise TypeError(f"{cls.__name__}.{name}: no click parameter gives it a value")
        return cls(**kwargs)

    built = build(options_type)
    if left:
        raise TypeError(f"{options_type.__name__} has no field for the click parameter(s) {', '.join(sorted(left))}")
    return built


@dataclass(frozen=True)
class NoOptions:
    """The options object of a command that takes none."""


def command_options(options_type: type[Options]) -> Callable[[Callable[[Options], Any]], Callable[..., Any]]:
    """Make ``fn(opts)`` a click callback: click's parameters become one ``options_type`` and the
    library's user-facing exceptions one-line errors (exit code 2). Put it right above ``def``."""

    def decorate(fn: Callable[[Options], Any]) -> Callable[..., Any]:
        body = user_errors(fn)

        @functools.wraps(fn)
        def callback(**values: Any) -> Any:
            return body(build_options(options_type, values))

        callback.options_type = options_type  # type: ignore[attr-defined]  # for the tests' contract check
        return callback

    return decorate


def db_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--db", "db_url", default=None, metavar="URL",
                        help="Results database (any SQLAlchemy URL) [default: $REIDBENCH_DB or "
                             "sqlite:///results.db].")(fn)


def open_store(db_url: str | None):
    from reidbench.harness.store import Store

    return Store(db_url or Store.default_url())


@dataclass(frozen=True)
class StoreOptions:
    """``--db`` (``db_option``)."""

    db_url: str | None = None

    def open(self):
        return open_store(self.db_url)


@dataclass(frozen=True)
class DataOptions:
    """``--data NAME=PATH ...`` (``data_option``)."""

    data_items: tuple[str, ...] = ()

    @property
    def paths(self) -> dict[str, str]:
        return parse_data_options(self.data_items)


@dataclass(frozen=True)
class SpecOptions:
    """What the command line changes in every planned spec: ``--profile``, ``--epochs``."""

    profile: str | None = None
    epochs: int | None = None


@dataclass(frozen=True)
class RunOptions:
    """Where and how runs execute, never hashed: ``--device``, loader workers, ``--gpus-per-run``."""

    device: str = "auto"
    loader_workers: int | None = None
    gpus_per_run: int = 1


def parse_data_options(items: Sequence[str]) -> dict[str, str]:
    """``--data NAME=PATH`` pairs → {name: path}; a bad item fails naming it."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--data {item!r} is not valid: use NAME=PATH, e.g. --data market=/data/Market-1501")
        out[name.strip()] = path.strip()
    return out

def parse_size(text: str, option: str = "--size") -> tuple[int, int]:
    h, sep, w = text.lower().partition("x")
    if not sep or not h.isdigit() or not w.isdigit() or int(h) < 1 or int(w) < 1:
        raise UserError(f"{option} {text!r} is not valid: use HxW in pixels, e.g. 128x64")
    return int(h), int(w)


def resolve_base(base: str) -> Path:
    """A base is a YAML path or the name of one in the package's experiments/ folder."""
    path = Path(base)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UserError(f"--base {base}: no such file")
        return path
    folder = Path(__file__).resolve().parents[2] / "experiments"
    candidate = folder / f"{base}.yaml"
    if not candidate.is_file():
        names = sorted(p.stem for p in folder.glob("*.yaml"))
        raise UserError(f"--base {base!r} is not known; valid: {', '.join(names)} (or a path to a YAML file)")
    return candidate


def default_profile() -> str:
    import torch

    return "paper" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------ options shared by several commands
# Each option is written once here; commands stack the ones they take.

def data_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--data", "data_items", multiple=True, metavar="NAME=PATH",
                        help="Dataset folder for a dataset name (repeatable), e.g. --data market=/data/Market-1501. "
                             "Format from the name: market*, duke*, msmt17*, cuhk03*; else Market layout.")(fn)


def device_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                        help="Where to train/evaluate (auto: CUDA when present).")(fn)


def epochs_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--epochs", type=int, default=None,
                        help="Shorten every run to N epochs (milestones and stages scale; recorded).")(fn)


def profile_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    # Any profile the base file defines (its profiles: keys; `reidbench bases NAME` lists them): a name it
    # does not define is refused by the loader with the defined ones listed.
    return click.option("--profile", type=str, default=None, metavar="NAME",
                        help="Profile overlay of the base file, one of its profiles: keys: paper (ResNet50 256x128, "
                             "the paper's schedule), cpu (minutes on a laptop; step-granular phases), cpu-v1 (the cpu "
                             "profile with whole-epoch phases) [default: cpu without a GPU; train: the file's own].")(fn)


def loader_workers_option(name: str = "--workers") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        return click.option(name, "loader_workers", type=int, default=None,
                            help="Data loader worker processes per run [default: auto].")(fn)
    return deco


def gpus_per_run_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--gpus-per-run", "gpus_per_run", type=click.IntRange(1, None), default=1, show_default=True,
                        help="Train each run on G processes with torchrun/DDP (NCCL on G GPUs; gloo with G CPU "
                             "processes without CUDA). P×K stays the global batch: P must divide by G. Recorded, "
                             "not hashed (docs/distributed.md).")(fn)


def runs_dir_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
                        show_default=True, help="Where run folders (checkpoints, logs, features) go.")(fn)


@dataclass(frozen=True)
class IntervalOptions:
    """``--interval``, ``--resamples`` (``interval_options``)."""

    interval: str = "auto"
    resamples: int = 1000


def interval_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--interval and --resamples: how a report's differences get their 95 % intervals (report/significance)."""
    fn = click.option("--resamples", type=click.IntRange(1, None), default=1000, show_default=True,
                      help="Bootstrap resamples (over query identities) for --interval bootstrap/auto.")(fn)
    return click.option("--interval", "interval", type=click.Choice(["auto", "seeds", "bootstrap", "none"]),
                        default="auto", show_default=True,
                        help="Interval of each step's difference from its reference: paired t over seeds (needs 2+), "
                             "paired bootstrap over query identities (1 seed is enough), auto (seeds when 2+), "
                             "none.")(fn)
