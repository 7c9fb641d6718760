"""Factorial and fractional ablations on the command line: ``plot effects``, ``plot interactions`` and
the design tables that ``report`` and ``ablate`` show for ``--mode factorial|fractional``.

Kept apart from the other command modules so they stay untouched: ``cli/__init__`` adds the two
plot commands to the ``plot`` group; ``report`` and ``ablate`` call ``design_report`` and
``design_dry_run``. Only click is imported at module level (every ``--help`` stays instant).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from reidbench.harness.cli.common import StoreOptions, command_options
from reidbench.harness.cli.report import FigureOptions, _figure_options

DESIGN_INTERVALS = ("auto", "seeds", "bootstrap", "none")


def _log(line: str) -> None:
    click.echo(line, err=True)


def _ref(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def design_tables(store: Any, ablation: str | int, fmt: str, table: str, metrics: tuple[str, ...] | None,
                  paper: bool, against: str | None, interval: str, resamples: int, label: str) -> str | None:
    """What ``reidbench report`` prints for a factorial/fractional ablation (``--table auto|effects|shapley``);
    None for any other ablation (and for ``--table runs``): ``report`` prints its rows as before."""
    from reidbench.harness.report.factorial import DESIGN_MODES, DESIGN_TABLES, render_design

    if table == "runs":
        return None
    record = store.get_ablation(ablation)
    if record.mode not in DESIGN_MODES:
        if table != "auto":
            raise ValueError(f"--table {table}: ablation {record.name} is a {record.mode} ablation, not a factorial "
                             f"design (`reidbench ablate --mode factorial|fractional`); valid here: auto, runs")
        return None
    if paper or against is not None:
        raise ValueError(f"{'--paper' if paper else '--against'} applies to the rows of an ablation: add --table runs")
    tables = DESIGN_TABLES if table == "auto" else (table,)
    if fmt == "csv" and table == "auto":
        _log("note: a CSV holds one table: the effects (--table shapley for the Shapley values)")
    return render_design(store, record.id, fmt, tables=tables,
                         metrics=metrics or ("R1", "mAP"), method=interval, resamples=resamples,
                         label=label if label != "tab:ablation" else "tab:factorial", log=_log)


def design_after_ablate(store: Any, ablation_id: int) -> str:
    """The effects and Shapley tables ``ablate`` prints under a design's table (Markdown)."""
    from reidbench.harness.report.factorial import render_design

    try:
        return render_design(store, ablation_id, "markdown", log=_log)
    except ValueError as exc:  # e.g. a design point failed: the table above says which
        return f"no effects: {str(exc).splitlines()[0]}"


def _design_figure_options(default_out: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Every plot's --out, --figsize, --dpi and --db (report._figure_options) + which design and metric."""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = _figure_options(default_out)(fn)
        fn = click.option("--resamples", type=click.IntRange(1, None), default=1000, show_default=True,
                          help="Bootstrap resamples (over query identities) where the bootstrap is used.")(fn)
        fn = click.option("--interval", type=click.Choice(DESIGN_INTERVALS), default="auto", show_default=True,
                          help="auto: t over seed replicates with 2+ seeds, else the residual of the main-effect + "
                               "two-factor model when it has degrees of freedom, else a bootstrap over query "
                               "identities; seeds; bootstrap.")(fn)
        fn = click.option("--metric", default="map", show_default=True, help="Metric whose effects are drawn.")(fn)
        return click.option("--ablation", default="latest", show_default=True, metavar="ID|NAME|latest",
                            help="A factorial or fractional ablation (`reidbench ablate --mode "
                                 "factorial|fractional`).")(fn)

    return decorate


@dataclass(frozen=True)
class DesignFigureOptions:
    """What both design figures take (``_design_figure_options``)."""

    ablation: str
    metric: str
    interval: str
    resamples: int
    figure: FigureOptions
    store: StoreOptions


@dataclass(frozen=True)
class InteractionsOptions:
    top: int
    design: DesignFigureOptions


def _analysed(opts: DesignFigureOptions) -> tuple[Any, Any, str, Any]:
    """(design data, effects, metric name, figure size) of the figure's ablation."""
    from reidbench.harness.report.factorial import analyse, load_design
    from reidbench.harness.report.figures import figure_format, parse_figsize
    from reidbench.harness.report.naming import parse_metrics

    figure_format(opts.figure.out)
    size = parse_figsize(opts.figure.figsize)
    (name,) = parse_metrics(opts.metric)[:1]
    store = opts.store.open()
    data = load_design(store, _ref(opts.ablation))
    effects, _ = analyse(store, data, [name], method=opts.interval, resamples=opts.resamples, log=_log)
    return data, effects, name, size


@click.command("effects")
@_design_figure_options("effects.png")
@command_options(DesignFigureOptions)
def plot_effects_cmd(opts: DesignFigureOptions) -> None:
    """Main effect of each trick of a factorial or fractional ablation, one panel per test set.

    A bar per trick = its effect (mean with − mean without, over the design; = 2 × the OLS
    coefficient of its ±1-coded column), error bar = its 95 % interval. Coloured (green up, red
    down): the interval excludes 0; grey and hatched: it includes 0, or there is none. The title
    says the design, its resolution and the seeds; the legend the interval method.
    """
    from reidbench.harness.report.design_plots import plot_effects

    data, effects, name, size = _analysed(opts)
    path = plot_effects(data, effects, opts.figure.out, metric=name, resamples=opts.resamples, figsize=size,
                        dpi=opts.figure.dpi)
    mains = effects[effects["kind"] == "main"]
    click.echo(f"wrote {path} ({int(mains['significant'].sum())} of {len(mains)} main effects with a 95% interval "
               f"excluding 0)")


@click.command("interactions")
@click.option("--top", "top", type=click.IntRange(1, 12), default=4, show_default=True,
              help="How many two-trick interactions to draw: the strongest (largest |effect|) per test set.")
@_design_figure_options("interactions.png")
@command_options(InteractionsOptions)
def plot_interactions_cmd(opts: InteractionsOptions) -> None:
    """Interaction plots of the --top strongest two-trick interactions, one row per test set.

    \b
    Each panel, for a pair A × B: the mean over the design points at each
    of A off / A on (x), one line with B off and one with B on. Parallel
    lines: no interaction; the title gives the A × B effect (half of A's
    effect with B − without B) and its 95 % interval. A panel whose interval
    includes 0 (or has none) is hatched grey. In a fraction, a pair stands
    for its alias chain (the title lists the chain).
    """
    from reidbench.harness.report.design_plots import plot_interactions

    design = opts.design
    data, effects, name, size = _analysed(design)
    path, drawn = plot_interactions(data, effects, design.figure.out, metric=name, top=opts.top,
                                    resamples=design.resamples, figsize=size, dpi=design.figure.dpi)
    click.echo(f"wrote {path} ({drawn} interaction panel(s))")
