"""``reidbench train SPEC``: one run, resumable, recorded in the results database like ``ablate``'s."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from reidbench.harness.cli.common import (
    EXIT_PROBLEMS,
    DataOptions,
    RunOptions,
    SpecOptions,
    StoreOptions,
    UserError,
    command_options,
    data_option,
    db_option,
    device_option,
    epochs_option,
    gpus_per_run_option,
    loader_workers_option,
    profile_option,
)


@dataclass(frozen=True)
class TrainOptions:
    spec_file: Path
    out_dir: Path | None
    seed: int | None
    preset: str | None
    data: DataOptions
    spec: SpecOptions
    run: RunOptions
    store: StoreOptions


@click.command()
@click.argument("spec_file", type=click.Path(dir_okay=False, path_type=Path))
@data_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder for checkpoints and logs [default: runs/<hash>].")
@device_option
@profile_option
@epochs_option
@click.option("--seed", type=int, default=None, help="Override train.seed.")
@click.option("--preset", default=None, metavar="NAME", help="Apply the file's preset NAME (its presets: section).")
@loader_workers_option()
@gpus_per_run_option
@db_option
@command_options(TrainOptions)
def train(opts: TrainOptions) -> None:
    """Train and evaluate one run described by SPEC_FILE (YAML).

    The run is recorded in the results database under the same hash `reidbench ablate` gives the
    same spec, so `runs list`, `evaluate --run` and `report` see it and an ablation reuses it. A run
    already done there is not trained again; a failed one is retried. Resumable: re-running the
    same command continues from the run folder's last checkpoint.
    """
    from reidbench.harness.execution.jobs import Job, run_job, wait_for_others
    from reidbench.harness.execution.preflight import PlannedRun, check_runs
    from reidbench.harness.spec import load_base_file, replace_section, with_epochs
    from reidbench.harness.spec.patches import apply_patch, parse_presets
    from reidbench.harness.train.runner import identify
    from reidbench.tricks import trick_versions

    spec_file = opts.spec_file
    spec, extras = load_base_file(spec_file, opts.spec.profile)
    if opts.preset is not None:
        presets = parse_presets(extras.get("presets"), f"{spec_file.name}: presets")
        if opts.preset not in presets:
            raise UserError(f"--preset {opts.preset!r} is not a preset of {spec_file.name}; valid: "
                            f"{', '.join(presets) or 'none defined (add a presets: section)'}")
        spec = apply_patch(spec, presets[opts.preset], presets=presets)
    if opts.spec.epochs is not None:
        spec = with_epochs(spec, opts.spec.epochs)
    if opts.seed is not None:
        spec = replace_section(spec, "train", seed=opts.seed)
    data_paths = opts.data.paths
    label = spec_file.stem + (f" [{opts.preset}]" if opts.preset else "")
    # Before the database is opened: a problem certain now records nothing.
    check_runs([PlannedRun(spec_file.name, spec)], data_paths, gpus_per_run=opts.run.gpus_per_run)
    rhash, fingerprint = identify(spec, data_paths)
    short = rhash[:12]
    store = opts.store.open()
    record = store.ensure_run(rhash, spec.to_dict(), label, train_fingerprint=fingerprint)
    if record.status == "done":
        when = f" on {record.finished_at:%Y-%m-%d %H:%M} UTC" if record.finished_at else ""
        click.echo(f"run {short}: already done (trained{when}; recorded in {store.url}): nothing to train", err=True)
        _echo_result(store, rhash)
        return
    out_dir = opts.out_dir or (Path(record.out_dir) if record.out_dir else Path("runs") / short)
    job = Job(run_hash=rhash, label=label, spec_json=spec.to_json(), trick_versions=dict(trick_versions(spec.tricks)),
              db_url=store.url, out_dir=str(out_dir), device=opts.run.device, num_workers=opts.run.loader_workers,
              data_paths=dict(data_paths), gpus_per_run=opts.run.gpus_per_run,
              legacy_hashes=tuple(getattr(record, "aliases", ()) or ()))
    log = lambda line: click.echo(line, err=True)  # noqa: E731
    outcome = run_job(job, store=store)
    if outcome.status == "skipped":  # another process holds the claim: wait, take over if it dies
        log(f"run {short} is being trained by another process; waiting for it")
        if rhash in wait_for_others(store, [rhash], log=log):
            outcome = run_job(job, store=store)
    status = store.statuses([rhash]).get(rhash)
    if status != "done":
        why = f": {outcome.error}" if outcome.error else ""
        click.echo(f"reidbench: error: run {short} {status or 'not done'}{why}; `reidbench runs show {short}` has the "
                   "traceback; run the same command again to resume it", err=True)
        raise SystemExit(EXIT_PROBLEMS)
    _echo_result(store, rhash)


def _echo_result(store, rhash: str) -> None:
    """The run's result table (from its folder), or its metrics as recorded in the store."""
    from reidbench.harness.train.runner import load_cached_result

    record = store.find_run(rhash)
    result = load_cached_result(Path(record.out_dir), rhash) if record is not None and record.out_dir else None
    if result is not None:
        click.echo(result.summary_table())
        return
    click.echo(f"run {rhash[:12]}  ({record.label if record is not None else ''}; its folder "
               f"{record.out_dir if record is not None else '?'} holds no result.json)")
    for m in store.metrics([rhash]):
        if m.step is None:
            click.echo(f"  {m.test_set:<14} {m.metric:<6} {100 * m.value:6.1f}")
