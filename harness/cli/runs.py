"""``reidbench runs ...``: inspect the results database."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click

from reidbench.harness.cli.common import StoreOptions, command_options, db_option

@click.group()
def runs() -> None:
    """Inspect recorded runs."""


@dataclass(frozen=True)
class ListOptions:
    status: str | None
    limit: int
    store: StoreOptions


@runs.command("list")
@click.option("--status", type=click.Choice(["pending", "running", "done", "failed"]), default=None)
@click.option("--limit", type=int, default=50, show_default=True)
@db_option
@command_options(ListOptions)
def runs_list(opts: ListOptions) -> None:
    """One line per run: hash, status, label, profile, data, main metrics."""
    store = opts.store.open()
    recs = store.list_runs(status=opts.status, limit=opts.limit)
    metrics: dict[tuple[str, str], dict[str, float]] = {}
    for m in store.metrics([r.run_hash for r in recs]):
        if m.step is None:
            metrics.setdefault((m.run_hash, m.test_set), {})[m.metric] = m.value
    click.echo(f"{'hash':<12} {'status':<8} {'label':<24} {'profile':<7} {'train':<10} results")
    for r in recs:
        spec = r.spec
        cells = [f"{t}: R1 {100 * v.get('R1', float('nan')):.1f} mAP {100 * v.get('mAP', float('nan')):.1f}"
                 for (h, t), v in metrics.items() if h == r.run_hash]
        flags = []
        if r.status == "done" and r.synthetic:
            flags.append("synthetic")
        extra = "; ".join(cells) or (r.error.splitlines()[0][:60] if r.error else "")
        click.echo(f"{r.short_hash:<12} {r.status:<8} {r.label[:24]:<24} {spec.get('profile', '?'):<7} "
                   f"{spec.get('data', {}).get('train', '?'):<10} {extra}" + (f"  [{', '.join(flags)}]" if flags else ""))


def _plain(record: object) -> dict:
    import dataclasses

    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in dataclasses.asdict(record).items()}


@dataclass(frozen=True)
class RunRefOptions:
    run_hash: str
    store: StoreOptions


@runs.command("show")
@click.argument("run_hash")
@db_option
@command_options(RunRefOptions)
def runs_show(opts: RunRefOptions) -> None:
    """Everything recorded about one run (a hash prefix is enough)."""
    store = opts.store.open()
    rec = store.get_run(opts.run_hash)  # an old (pre-upgrade) hash finds the run through its aliases
    info = _plain(rec)  # train_fingerprint and aliases included
    info["metrics"] = {}  # the default evaluation of each test set, as before evaluations existed
    for m in store.metrics([rec.run_hash]):
        if m.step is None:
            info["metrics"].setdefault(m.test_set, {})[m.metric] = m.value
    # every evaluation: test set (+ fingerprint), variant, settings and its metrics
    info["evaluations"] = [{k: v for k, v in _plain(e).items() if k != "run_hash"}
                           for e in store.evaluations([rec.run_hash])]
    info["epochs"] = [e.values | {"epoch": e.epoch} for e in store.epochs(rec.run_hash)]
    click.echo(json.dumps(info, indent=2, sort_keys=True, default=str))


@dataclass(frozen=True)
class ExportOptions:
    target: str
    fmt: str
    out_file: Path | None
    ablation_ref: str | None
    tracking_uri: str | None
    experiment: str
    store: StoreOptions


@runs.command("export")
@click.option("--to", "target", type=click.Choice(["table", "mlflow"]), default="table", show_default=True,
              help="table: one row per (run, test set, variant, metric) as CSV/JSON; mlflow: every run with its "
                   "params, curves, final metrics and tags into an MLflow tracking server, ablations as parent runs "
                   "(needs the mlflow extra).")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True,
              help="--to table: the file format.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="--to table: output file [default: stdout].")
@click.option("--ablation", "ablation_ref", default=None, metavar="ID|NAME|latest",
              help="Only this ablation's runs (--to mlflow: under their parent run) [default: every run; "
                   "--to mlflow: every ablation and every run in none].")
@click.option("--tracking-uri", default=None, metavar="URI",
              help="--to mlflow: where [default: $MLFLOW_TRACKING_URI, else MLflow's default, sqlite:///mlflow.db "
                   "with MLflow 3].")
@click.option("--experiment", default="reidbench", show_default=True, help="--to mlflow: MLflow experiment name.")
@db_option
@command_options(ExportOptions)
def runs_export(opts: ExportOptions) -> None:
    """Export the results: final metrics as a table, or everything to MLflow.

    Re-exporting to MLflow creates nothing twice: runs exported before are found by their
    reidbench.export_key tag and updated in place or left alone.
    """
    if opts.target == "mlflow":
        _export_mlflow(opts)
        return
    store = opts.store.open()
    hashes = None
    if opts.ablation_ref is not None:
        hashes = list(dict.fromkeys(m["run_hash"] for m in store.get_ablation(opts.ablation_ref).members))
    frame = store.to_frame(hashes)
    text = (frame.to_csv(index=False) if opts.fmt == "csv"
            else frame.to_json(orient="records", indent=1, date_format="iso"))
    if opts.out_file:
        opts.out_file.write_text(text)
        click.echo(f"wrote {len(frame)} rows to {opts.out_file}", err=True)
    else:
        click.echo(text)


def _export_mlflow(opts: ExportOptions) -> None:
    from reidbench.harness.tracking.mlflow_export import export_to_mlflow, mlflow_client

    if opts.out_file is not None:
        raise ValueError("--out is for --to table; --to mlflow writes to --tracking-uri")
    store = opts.store.open()
    client, uri = mlflow_client(opts.tracking_uri)
    try:
        summary = export_to_mlflow(store, client, uri, opts.experiment, opts.ablation_ref)
    except Exception as exc:
        from mlflow.exceptions import MlflowException

        if isinstance(exc, MlflowException):  # e.g. a file: store MLflow 3 refuses, a server that cannot be reached
            raise ValueError(f"--tracking-uri {uri}: {str(exc.message).splitlines()[0]}") from None
        raise
    click.echo(summary.line())


@dataclass(frozen=True)
class DeleteOptions:
    run_hash: str
    yes: bool
    store: StoreOptions


@runs.command("delete")
@click.argument("run_hash")
@click.option("--yes", is_flag=True, help="Really delete (without it, only say what would go).")
@db_option
@command_options(DeleteOptions)
def runs_delete(opts: DeleteOptions) -> None:
    """Delete one run and its metrics from the database (needs --yes)."""
    store = opts.store.open()
    rec = store.get_run(opts.run_hash)
    if not opts.yes:
        click.echo(f"would delete run {rec.short_hash} ({rec.label}, {rec.status}); add --yes to do it")
        return
    store.delete_run(rec.run_hash)
    click.echo(f"deleted run {rec.short_hash}")
