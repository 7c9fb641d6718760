"""``reidbench report`` and ``reidbench plot ...``: paper-ready tables and figures from the results database.

Registered into the main group by ``harness/cli/__init__.py`` (``main.add_command(report)``,
``main.add_command(plot)``). Only click is imported here at module level; pandas, matplotlib and
numpy are imported inside the commands so every ``--help`` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from reidbench.harness.cli.common import (
    IntervalOptions,
    StoreOptions,
    command_options,
    db_option,
    interval_options,
)

TABLE_FORMATS = ("latex", "markdown", "csv", "html")
_EXTENSION_FORMATS = {".tex": "latex", ".md": "markdown", ".markdown": "markdown", ".csv": "csv",
                      ".html": "html", ".htm": "html"}




def _ablation_ref(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def table_format(fmt: str | None, out: Path | None) -> str:
    """--format, else the --out extension (.tex .md .csv .html), else markdown."""
    if fmt:
        return fmt
    if out is not None and out.suffix.lower() in _EXTENSION_FORMATS:
        return _EXTENSION_FORMATS[out.suffix.lower()]
    return "markdown"


def emit(text: str, out: Path | None) -> None:
    """Write ``text`` to ``out`` (saying so on stderr) or to stdout. The reuse point for other reports."""
    if out is None:
        click.echo(text, nl=not text.endswith("\n"))
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    click.echo(f"wrote {out}", err=True)


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class StudyRefOptions:
    """``--study``, ``--storage``, ``--runs-dir`` (``_study_options``): where a study's trials are."""

    study: str | None = None
    storage: str | None = None
    runs_dir: Path = Path("runs")


def _study_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
                      show_default=True, help="Where `reidbench study` kept its journal files.")(fn)
    fn = click.option("--storage", default=None, metavar="URL",
                      help="Optuna storage of the study [default: its journal file, else --db].")(fn)
    return click.option("--study", default=None, metavar="NAME",
                        help="Use the runs of this `reidbench study` (Tables 5/6 layout).")(fn)


@dataclass(frozen=True)
class ReportOptions:
    ablation: str
    fmt: str | None
    metrics: str | None
    paper: bool
    speed: bool
    against: str | None
    label: str
    out: Path | None
    table: str
    studies: StudyRefOptions
    intervals: IntervalOptions
    store: StoreOptions


@click.command("report")
@click.option("--ablation", "ablation", default="latest", show_default=True, metavar="ID|NAME|latest",
              help="Which recorded ablation (`reidbench ablate` prints its id).")
@click.option("--format", "fmt", type=click.Choice(TABLE_FORMATS), default=None,
              help="Output format [default: from the --out extension (.tex .md .csv .html), else markdown].")
@click.option("--metrics", default=None, metavar="LIST",
              help="Comma-separated: r1,r5,r10,map,minp, rerank_<name> [default: r1,map (+ re-ranked if recorded)].")
@click.option("--paper", is_flag=True,
              help="Add the paper's numbers (Luo et al. 2019, Tables 1 and 3) beside matching rows on Market/Duke, "
                   "and, on any data, each published effect (paper Δ) beside the measured one with a verdict: "
                   "agrees / opposite / within the noise (CSV: paper_delta, agreement columns).")
@click.option("--speed", is_flag=True,
              help="Instead of accuracy: each step's training speed (img/s, mean±std over seeds) and its ratio to "
                   "the first row — what a component costs.")
@click.option("--against", default=None, metavar="ROW",
              help="Compare every row with this one (its label or 1-based number) instead of the mode's "
                   "reference (the base, the step before, all tricks, a step list's first row).")
@click.option("--label", default="tab:ablation", show_default=True, help="LaTeX \\label of the table.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file [default: stdout].")
@click.option("--table", "table", type=click.Choice(["auto", "runs", "effects", "shapley"]), default="auto",
              show_default=True,
              help="auto: a factorial/fractional ablation's effects and Shapley tables (docs/factorial.md), any other "
                   "ablation's rows; runs: the rows (one per design point) of any ablation; effects / shapley: one "
                   "of a design's tables (a CSV holds one).")
@_study_options
@interval_options
@db_option
@command_options(ReportOptions)
def report(opts: ReportOptions) -> None:
    """A paper-style table of one ablation: rows = steps, column groups = test sets.

    R1/mAP in percent with one decimal, mean±std over seeds, the best value per column in bold;
    a † marks a step whose difference from its reference row has a 95 % interval excluding 0
    (CSV: delta, ci_low, ci_high, significant columns); a "step [evaluation]" row is compared with
    the same models' default evaluation; the caption says what the numbers are (data, profile,
    epochs, seeds, weights, re-ranking, which interval).
    """
    if opts.against is not None and (opts.speed or opts.studies.study):
        raise click.UsageError(f"--against applies to an ablation's accuracy table, not to "
                               f"{'--speed' if opts.speed else '--study'} (which compares with "
                               f"{'the first row' if opts.speed else 'the best point'})")
    if opts.speed:
        _report_speed(opts)
    elif opts.studies.study:
        _report_study(opts)
    else:
        _report(opts)


def _study_points(store: Any, ref: StudyRefOptions, metrics: tuple[str, ...]):
    """(points frame, study attributes) of a study's complete trials."""
    from reidbench.harness.report.points import points_from_runs
    from reidbench.harness.study import locate_study, study_attrs, study_run_hashes

    study = str(ref.study)
    url = locate_study(study, store.url, ref.runs_dir, ref.storage)
    hashes = study_run_hashes(url, study)
    if not hashes:
        raise ValueError(f"study {study!r} has no complete trial yet")
    return points_from_runs(store, hashes, metrics), study_attrs(url, study)


def _report_study(opts: ReportOptions) -> None:
    from reidbench.harness.report.naming import parse_metrics
    from reidbench.harness.report.points import describe_runs, sweep_table
    from reidbench.harness.report.writers import render

    study, fmt, label, out = opts.studies.study, opts.fmt, opts.label, opts.out
    interval, resamples = opts.intervals.interval, opts.intervals.resamples
    use_metrics = parse_metrics(opts.metrics) if opts.metrics else ("R1", "mAP")
    store = opts.store.open()
    points, attrs = _study_points(store, opts.studies, use_metrics)
    by = "image_size" if attrs.get("space") == "image-size" else "batch"
    tables = []
    if attrs.get("space") == "both":  # one P×K table per image size
        for size in sorted(points["image_size"].unique()):
            tables.append((f" at {size}", sweep_table(points[points["image_size"] == size], "batch", use_metrics)))
    else:
        tables.append(("", sweep_table(points, by, use_metrics)))
    runs = [store.get_run(h) for h in points["run_hash"].unique()]
    what = "batch size P×K" if by == "batch" else "input image size"
    from reidbench.harness.train.convergence import Counts, footer

    found = store.convergence([r.run_hash for r in runs])
    converged = footer(Counts.of([found[r.run_hash].status if r.run_hash in found else "unknown" for r in runs]))
    notes = "; ".join([*(attrs.get("notes", []) or []), converged])
    parts = []
    for suffix, table in tables:
        caption = (f"{'/'.join(use_metrics)} (%) against {what}{suffix}, study {study}: {describe_runs(runs)}"
                   + (f". {notes}" if notes else ""))
        if interval != "none":  # every point against the best one (of its table)
            from reidbench.harness.report.significance import interval_note, study_intervals
            from reidbench.harness.report.tables import with_intervals

            size = suffix.removeprefix(" at ")
            use = points[points["image_size"] == size] if suffix else points
            intervals = study_intervals(store, use, "batch" if suffix else by, use_metrics, method=interval,
                                        resamples=resamples, log=lambda line: click.echo(line, err=True))
            table = with_intervals(table, intervals)
            caption = f"{caption}. {interval_note(intervals, 'study', resamples=resamples)}".rstrip(". ") + "."
        parts.append(render(table, table_format(fmt, out), caption=caption, label=label + suffix.replace(" ", "-"),
                            title=f"reidbench study {study}"))
    emit("\n".join(parts), out)


def _report(opts: ReportOptions) -> None:
    from reidbench.harness.report.naming import parse_metrics
    from reidbench.harness.report.significance import ablation_steps, reference_row
    from reidbench.harness.report.tables import (
        ablation_caption,
        ablation_table,
        default_metrics,
        has_paper_numbers,
        load_ablation,
    )
    from reidbench.harness.report.writers import render

    paper, label, out, against = opts.paper, opts.label, opts.out, opts.against
    interval, resamples = opts.intervals.interval, opts.intervals.resamples
    use_fmt = table_format(opts.fmt, out)
    chosen = parse_metrics(opts.metrics) if opts.metrics else None
    store = opts.store.open()
    from reidbench.harness.cli.design import design_tables

    design = design_tables(store, _ablation_ref(opts.ablation), use_fmt, opts.table, chosen, paper, against, interval,
                           resamples, label)
    if design is not None:  # a factorial/fractional ablation: its effects and Shapley tables
        emit(design, out)
        return
    frame, context = load_ablation(store, _ablation_ref(opts.ablation))
    if against is not None:
        against = reference_row(ablation_steps(frame), against)
        if interval == "none":
            raise ValueError(f"--against {against!r} with --interval none: the table shows no differences; "
                             f"drop --interval none (or --against)")
    use_metrics = chosen or default_metrics(frame)
    table = ablation_table(frame, use_metrics, paper=paper)
    with_paper = paper and has_paper_numbers(table)
    caption = ablation_caption(context, use_metrics, paper=with_paper)
    if interval != "none":
        from reidbench.harness.report.significance import ablation_intervals, interval_note
        from reidbench.harness.report.tables import with_intervals

        intervals = ablation_intervals(store, frame, context.mode, use_metrics, method=interval, resamples=resamples,
                                       fingerprints=context.test_fingerprints,
                                       log=lambda line: click.echo(line, err=True), against=against)
        table = with_intervals(table, intervals)
        note = interval_note(intervals, context.mode, resamples=resamples, against=against)
        caption = f"{caption} {note}".strip()
    from reidbench.harness.report.tables import ablation_row_info

    agreement = None
    if paper:  # the papers' effects beside the measured ones: directions and ranks (report/agreement.py)
        if not with_paper:
            click.echo("note: --paper: no row matches the paper (it reports Market-1501/DukeMTMC-reID only, never "
                       "synthetic data): only effects are compared, in the agreement block", err=True)
        agreement = _agreement(frame, intervals if interval != "none" else None, use_metrics)
        if agreement is not None and use_fmt == "csv":
            from reidbench.harness.report.agreement import with_agreement

            table = with_agreement(table, agreement)
    text = render(table, use_fmt, caption=caption, label=label, title=f"reidbench ablation {context.name}",
                  row_info=ablation_row_info(store, frame))
    if agreement is not None and use_fmt != "csv":
        from reidbench.harness.report.agreement import render_agreement

        block = render_agreement(agreement, use_fmt, label=label + "-agreement", data_kind=context.data_kind)
        if use_fmt == "html":
            text = text.replace("</body>", block + "\n</body>")
        else:
            text = text.rstrip("\n") + "\n\n" + block
    emit(text, out)


def _agreement(frame: Any, intervals: Any, metrics: Any) -> Any:
    """The agreement of the table's effects with the papers' (None, with a note, when there is none)."""
    from reidbench.harness.report.agreement import agreement_frame

    if intervals is None:
        click.echo("note: --paper with --interval none: no agreement with the papers' effects (it needs the "
                   "intervals)", err=True)
        return None
    agreement = agreement_frame(frame, intervals, metrics)
    if agreement.empty:
        click.echo("note: --paper: no comparison in this table has a published effect to compare with", err=True)
        return None
    return agreement


def _report_speed(opts: ReportOptions) -> None:
    from reidbench.harness.report.speed import FIRST_TIMED_EPOCH, hosts_of, speed_frame, speed_table
    from reidbench.harness.report.writers import render

    label, out = opts.label, opts.out
    store = opts.store.open()
    record = store.get_ablation(_ablation_ref(opts.ablation))
    frame = speed_frame(store, record)
    hosts = hosts_of(frame)
    caption = (f"Training speed of ablation {record.name} (id {record.id}): images per second, median over epochs "
               f"{FIRST_TIMED_EPOCH}..N of each run, mean±std over seeds; % of base = 100 × the ratio to the first row. "
               f"Trained on {', '.join(sorted(hosts)) or 'unknown hosts'}"
               + (" (several hosts: the ratios mix machines)." if len(hosts) > 1 else "."))
    emit(render(speed_table(frame), table_format(opts.fmt, out), caption=caption, label=label + "-speed",
                title=f"reidbench ablation {record.name} speed"), out)


# --------------------------------------------------------------------------- plots


@dataclass(frozen=True)
class FigureOptions:
    """``--out``, ``--figsize``, ``--dpi`` of every plot (``_figure_options``, which adds ``--db`` too)."""

    out: Path
    figsize: str | None = None
    dpi: int = 150


def _figure_options(default_out: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = click.option("--dpi", type=int, default=150, show_default=True, help="Resolution of PNG output.")(fn)
        fn = click.option("--figsize", default=None, metavar="WxH",
                          help="Figure size in inches, e.g. 10x6 [default: from the number of panels].")(fn)
        fn = click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
                          default=Path(default_out), show_default=True,
                          help="Output image; .png, .pdf or .svg picks the format.")(fn)
        return db_option(fn)

    return decorate


@click.group("plot")
def plot() -> None:
    """Figures from the results database (PNG, PDF or SVG by the --out extension)."""


@dataclass(frozen=True)
class SweepOptions:
    """``plot batch-size`` and ``plot image-size``: which runs, which metrics, where to draw."""

    ablation: str | None
    runs: str | None
    where: tuple[str, ...]
    metrics: str
    studies: StudyRefOptions
    figure: FigureOptions
    store: StoreOptions


def _sweep_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--metrics", default="r1,map", show_default=True, metavar="LIST",
                      help="Comma-separated metrics (rows of panels).")(fn)
    fn = click.option("--where", "where", multiple=True, metavar="FIELD=VALUE",
                      help="Keep runs whose spec has FIELD=VALUE, e.g. data.train=synth-a (repeatable).")(fn)
    fn = click.option("--runs", "runs", default=None, metavar="HASH,...", help="Comma-separated run hashes (prefixes).")(fn)
    fn = click.option("--ablation", default=None, metavar="ID|NAME", help="Use the runs of this ablation.")(fn)
    return _study_options(fn)


def _sweep(kind: str, opts: SweepOptions) -> None:
    from reidbench.harness.report.figures import figure_format, parse_figsize
    from reidbench.harness.report.naming import parse_metrics
    from reidbench.harness.report.points import (
        BATCH_FIELDS,
        IMAGE_FIELDS,
        check_sweep,
        describe_runs,
        parse_filters,
        points_from_runs,
        select_runs,
    )
    from reidbench.harness.report.plots import plot_batch_size, plot_image_size

    out, dpi = opts.figure.out, opts.figure.dpi
    figure_format(out)
    size = parse_figsize(opts.figure.figsize)
    chosen = parse_metrics(opts.metrics)
    store = opts.store.open()
    refs = [r.strip() for r in (opts.runs or "").split(",") if r.strip()]
    if opts.studies.study:
        refs += list(_study_points(store, opts.studies, chosen)[0]["run_hash"].unique())
    selected = select_runs(store, ablation=None if opts.ablation is None else _ablation_ref(opts.ablation),
                           run_refs=refs, filters=parse_filters(opts.where))
    fields = BATCH_FIELDS if kind == "batch" else IMAGE_FIELDS
    what = "batch size (data.ids_per_batch, data.imgs_per_id)" if kind == "batch" else "image size (data.image_size)"
    check_sweep([r.spec for r in selected], fields, what)
    points = points_from_runs(store, [r.run_hash for r in selected], chosen)
    where_text = describe_runs(selected)
    from reidbench.harness.report.significance import study_intervals

    intervals = study_intervals(store, points, "batch" if kind == "batch" else "image_size", chosen,
                                log=lambda line: click.echo(line, err=True))
    if kind == "batch":
        path = plot_batch_size(points, out, metrics=chosen, figsize=size, dpi=dpi,
                               title=f"Batch size P×K — {where_text}", intervals=intervals)
    else:
        path = plot_image_size(points, out, metrics=chosen, figsize=size, dpi=dpi,
                               title=f"Input image size — {where_text}", intervals=intervals)
    click.echo(f"wrote {path} ({len(selected)} runs)")


@plot.command("batch-size")
@_sweep_options
@_figure_options("batch-size.png")
@command_options(SweepOptions)
def plot_batch_size_cmd(opts: SweepOptions) -> None:
    """R1/mAP against batch size P×K: K on x, one line per P, one panel per test set and metric.

    Runs: an ablation's, --runs, or every done run matching --where; their specs may differ only in
    data.ids_per_batch, data.imgs_per_id and the seed (error bars = std over seeds).
    """
    _sweep("batch", opts)


@plot.command("image-size")
@_sweep_options
@_figure_options("image-size.png")
@command_options(SweepOptions)
def plot_image_size_cmd(opts: SweepOptions) -> None:
    """R1/mAP against input image size, one panel per test set (error bars = std over seeds).

    Runs are selected as for batch-size; their specs may differ only in data.image_size and the seed.
    """
    _sweep("image", opts)


@dataclass(frozen=True)
class CurvesOptions:
    run_ref: str
    figure: FigureOptions
    store: StoreOptions


@plot.command("curves")
@click.option("--run", "run_ref", required=True, metavar="HASH", help="Run hash (a unique prefix is enough).")
@_figure_options("curves.png")
@command_options(CurvesOptions)
def plot_curves_cmd(opts: CurvesOptions) -> None:
    """Loss terms, learning rate and periodic evaluation of one run, per epoch."""
    from reidbench.harness.report.figures import figure_format, parse_figsize
    from reidbench.harness.report.plots import curves_frame, plot_curves
    from reidbench.harness.report.points import describe_runs

    out, dpi = opts.figure.out, opts.figure.dpi
    figure_format(out)
    size = parse_figsize(opts.figure.figsize)
    store = opts.store.open()
    run = store.get_run(opts.run_ref)
    curves = curves_frame(store.epochs(run.run_hash))
    # The periodic evaluation runs on the first test set: its final R1/mAP end those curves.
    first = ((run.spec.get("data") or {}).get("test") or [None])[0]
    final = {f"{m.test_set}/{m.metric}": m.value for m in store.metrics([run.run_hash])
             if m.step is None and m.metric in ("mAP", "R1") and m.test_set == first}
    title = f"Run {run.short_hash} ({run.label or 'no label'}) — {describe_runs([run])}"
    path = plot_curves(curves, out, final=final, title=title, figsize=size, dpi=dpi)
    click.echo(f"wrote {path}")


@dataclass(frozen=True)
class AblationPlotOptions:
    ablation: str
    metric: str
    against: str | None
    intervals: IntervalOptions
    figure: FigureOptions
    store: StoreOptions


@plot.command("ablation")
@click.option("--ablation", default="latest", show_default=True, metavar="ID|NAME|latest")
@click.option("--metric", default="map", show_default=True, help="Metric whose difference is plotted.")
@click.option("--against", default=None, metavar="ROW",
              help="Plot every row's difference from this one (its label or 1-based number) instead.")
@interval_options
@_figure_options("ablation.png")
@command_options(AblationPlotOptions)
def plot_ablation_cmd(opts: AblationPlotOptions) -> None:
    """Δ metric per trick: vs the previous step (cumulative), the base (single) or all tricks
    (leave-one-out), one panel per test set.

    Error bars: the 95 % interval of each difference, ci_low..ci_high, asymmetric where the
    interval is (--interval auto: a paired t interval over seeds with 2+ common seeds, else a
    paired bootstrap over query identities of the per-query results). Coloured bars (green up,
    red down): the interval excludes 0. Grey hatched bars: it includes 0 (not significant) or
    none could be computed (the reason is printed). The legend says which interval was used.
    --interval none: ±std-over-seeds error bars, green/red bars, no significance test.
    --against ROW: every row against that one, whatever the mode. A "step [evaluation]" row (an
    --eval variant of the same models) is always against those models' default evaluation.
    """
    from reidbench.harness.report.figures import figure_format, parse_figsize
    from reidbench.harness.report.naming import parse_metrics
    from reidbench.harness.report.plots import REFERENCE, ablation_deltas, plot_ablation
    from reidbench.harness.report.tables import load_ablation

    out, dpi, against = opts.figure.out, opts.figure.dpi, opts.against
    interval, resamples = opts.intervals.interval, opts.intervals.resamples
    figure_format(out)
    size = parse_figsize(opts.figure.figsize)
    (name,) = parse_metrics(opts.metric)[:1]
    store = opts.store.open()
    frame, ctx = load_ablation(store, _ablation_ref(opts.ablation))
    if against is not None:
        from reidbench.harness.report.significance import ablation_steps, reference_row

        against = reference_row(ablation_steps(frame), against)
    if interval == "none":
        deltas = ablation_deltas(frame, ctx.mode, name, against=against)
    else:
        from reidbench.harness.report.significance import ablation_intervals

        intervals = ablation_intervals(store, frame, ctx.mode, [name], method=interval, resamples=resamples,
                                       fingerprints=ctx.test_fingerprints,
                                       log=lambda line: click.echo(line, err=True), against=against)
        deltas = intervals[intervals["metric"] == name]
        lacking = deltas[deltas["method"].astype(str).str.startswith("no interval")]
        for why, rows in lacking.groupby("method", sort=False):
            shown = ", ".join(f"{r.step} on {r.test_set}" for r in rows.itertuples())
            click.echo(f"note: {why.removeprefix('no interval: ')}: no interval for {shown} (drawn hatched)",
                       err=True)
    data = {"synthetic": "synthetic", "real": "real"}.get(ctx.data_kind, ctx.data_kind)
    epochs = f"{ctx.epochs} epochs" + (f" of {ctx.full_epochs}" if ctx.full_epochs else "") if ctx.epochs else ""
    versus = f"'{against}'" if against is not None else REFERENCE.get(ctx.mode, 'reference')
    from reidbench.harness.report.significance import has_evaluation_rows

    if has_evaluation_rows(deltas):
        versus += " ([evaluation] rows: vs the same models' default evaluation)"
    title = (f"Δ {name} vs {versus} — ablation {ctx.name} ({ctx.mode}), trained on "
             f"{ctx.train} ({data}), {', '.join(p for p in (f'profile {ctx.profile}', epochs) if p)}, "
             f"{len(ctx.seeds)} seed(s)")
    path = plot_ablation(deltas, out, mode=ctx.mode, metric=name, title=title, resamples=resamples, figsize=size,
                         dpi=dpi)
    if interval == "none":
        click.echo(f"wrote {path}")
    else:
        significant = int(deltas["significant"].astype(bool).sum())
        click.echo(f"wrote {path} ({significant} of {len(deltas)} differences with a 95% interval excluding 0)")


@dataclass(frozen=True)
class CompareOptions:
    runs: tuple[str, str]
    test_set: str | None
    variant: str
    num_queries: int
    top: int
    resamples: int
    image_root: Path | None
    figure: FigureOptions
    store: StoreOptions


@plot.command("compare")
@click.option("--runs", "runs", nargs=2, required=True, metavar="A B",
              help="The two runs (hashes; a unique prefix is enough): B is compared with A.")
@click.option("--test-on", "test_set", default=None, metavar="NAME",
              help="Test set [default: the first both runs were evaluated on].")
@click.option("--variant", default="", metavar="NAME",
              help="Evaluation variant, e.g. rerank [default: each run's default evaluation].")
@click.option("-n", "num_queries", type=click.IntRange(0, 32), default=4, show_default=True,
              help="Most improved and most regressed queries shown as ranked lists (0: no ranked lists).")
@click.option("--top", type=click.IntRange(1, 50), default=8, show_default=True, help="Gallery images per ranked list.")
@click.option("--resamples", type=click.IntRange(1, None), default=1000, show_default=True,
              help="Bootstrap resamples (over query identities) of the ΔmAP interval.")
@click.option("--image-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Dataset folder, if its images moved since the runs were evaluated.")
@_figure_options("compare.png")
@command_options(CompareOptions)
def plot_compare_cmd(opts: CompareOptions) -> None:
    """What changed between two stored runs on one test set, query by query.

    \b
    --out: per-query AP of run B (y) against run A (x), one point per valid
      query, the diagonal B = A; green = B improved the query, red = B
      regressed it, grey = unchanged. The title gives both mAPs, the counts
      and ΔmAP with its 95 % paired bootstrap interval over query identities.
    <out>-ranks.<ext> (e.g. compare-ranks.png): the -n most improved and -n
      most regressed queries as ranked lists, two rows each (run A, run B):
      the query then its top gallery images, green frame = same identity,
      red = another; ranked from the runs' saved features as `plot ranks` does.

    Per-query results missing from older evaluations are filled in from the runs' saved
    features first. Both runs must have scored the same query list of the same test data.
    Written files are listed on stdout; if the ranked lists cannot be drawn (features or
    images gone) the scatter is still written and a note says why. --figsize sizes the scatter.
    """
    runs, variant, num_queries = opts.runs, opts.variant, opts.num_queries
    out, dpi = opts.figure.out, opts.figure.dpi
    from reidbench.harness.report.compare import (
        compare_queries,
        load_pair,
        plot_compare,
        plot_compare_ranks,
        ranks_path,
        summary,
    )
    from reidbench.harness.report.figures import figure_format, parse_figsize

    figure_format(out)
    size = parse_figsize(opts.figure.figsize)
    store = opts.store.open()
    pair = load_pair(store, runs[0], runs[1], test_set=opts.test_set, variant=variant,
                     log=lambda line: click.echo(line, err=True))
    cmp = compare_queries(pair.a.per_query, pair.b.per_query, n=num_queries, resamples=opts.resamples)
    what = f"run B {pair.b.name} vs run A {pair.a.name} on {pair.test_set}" + (f" [{variant}]" if variant else "")
    line = summary(pair, cmp)
    path = plot_compare(pair, cmp, out, title=f"{what}: {line}", figsize=size, dpi=dpi)
    click.echo(f"{what}: {line}")
    click.echo(f"wrote {path} (per-query AP scatter)")
    if num_queries == 0:
        return
    try:
        ranks_out = plot_compare_ranks(pair, cmp, ranks_path(out), top=opts.top, image_root=opts.image_root, dpi=dpi,
                                       title=f"Most improved and most regressed queries — {what}")
    except (ValueError, FileNotFoundError) as err:
        click.echo(f"note: ranked lists not drawn: {str(err).splitlines()[0]}", err=True)
        return
    click.echo(f"wrote {ranks_out} (ranked lists of the {len(cmp.most_improved)} most improved and "
               f"{len(cmp.most_regressed)} most regressed queries, run A then run B)")


@dataclass(frozen=True)
class RanksOptions:
    run_ref: str
    test_set: str | None
    queries: str
    num_queries: int
    top: int
    seed: int
    image_root: Path | None
    figure: FigureOptions
    store: StoreOptions


@plot.command("ranks")
@click.option("--run", "run_ref", required=True, metavar="HASH", help="Run hash (a unique prefix is enough).")
@click.option("--test", "test_set", default=None, help="Test set [default: the run's first].")
@click.option("--queries", type=click.Choice(["best", "worst", "random"]), default="worst", show_default=True,
              help="Which queries: highest AP, lowest AP, or a random sample.")
@click.option("-n", "num_queries", type=click.IntRange(1, 64), default=8, show_default=True, help="Queries (rows).")
@click.option("--top", type=click.IntRange(1, 50), default=10, show_default=True, help="Gallery images per query.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --queries random.")
@click.option("--image-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Dataset folder, if its images moved since the run was evaluated.")
@_figure_options("ranks.png")
@command_options(RanksOptions)
def plot_ranks_cmd(opts: RanksOptions) -> None:
    """Query images and their top-k gallery images (green frame = same identity, red = another).

    Ranked as the run was evaluated (its eval.normalize and eval.metric), dropping gallery images
    of the query's identity from the query's camera, from the run's features-<test>.npz.
    """
    test_set, queries, top = opts.test_set, opts.queries, opts.top
    out, dpi = opts.figure.out, opts.figure.dpi
    from reidbench.harness.report.figures import figure_format, parse_figsize
    from reidbench.harness.report.naming import group_label
    from reidbench.harness.report.ranks import choose, load_features, plot_ranks, rank_queries

    figure_format(out)
    size = parse_figsize(opts.figure.figsize)
    store = opts.store.open()
    run = store.get_run(opts.run_ref)
    data = run.spec.get("data") or {}
    tests = list(data.get("test") or [])
    test = test_set or (tests[0] if tests else None)
    if test is None or (tests and test not in tests):
        raise ValueError(f"--test {test_set!r} is not a test set of run {run.short_hash}; valid: {', '.join(tests)}")
    if not run.out_dir:
        raise FileNotFoundError(f"run {run.short_hash} has no run folder recorded (status {run.status}); "
                                "ranked lists need its features file")
    ev = run.spec.get("eval") or {}
    metric, normalize = str(ev.get("metric", "sqeuclidean")), bool(ev.get("normalize", True))
    # the features of the run's default evaluation of this test set; runs recorded before
    # evaluations were stored saved them as features-<test>.npz
    recorded = [e for e in store.evaluations([run.run_hash], variant="") if e.test_set == test and e.features_path]
    if recorded:
        features_path = Path(recorded[-1].features_path)
        if not features_path.is_file():  # recorded relative to another working folder: look in the run folder
            features_path = Path(run.out_dir) / features_path.name
        settings = recorded[-1].settings or {}
        metric, normalize = str(settings.get("metric", metric)), bool(settings.get("normalize", normalize))
    else:
        features_path = Path(run.out_dir) / f"features-{test}.npz"
    arrays = load_features(features_path)
    ranked = rank_queries(arrays, metric=metric, normalize=normalize, top=top)
    chosen = choose(ranked, queries, opts.num_queries, opts.seed)
    root = ((run.provenance or {}).get(test) or {}).get("root")
    title = (f"{queries.capitalize()} {len(chosen)} of {len(ranked)} queries — run {run.short_hash} "
             f"({run.label or 'no label'}), test {group_label(str(data.get('train', '')), test)}")
    path = plot_ranks(chosen, arrays["g_paths"], arrays["g_pids"], out, title=title, dataset_root=root,
                      image_root=opts.image_root, figsize=size, dpi=dpi)
    click.echo(f"wrote {path}")
