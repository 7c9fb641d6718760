"""``reidbench study``: Optuna studies over batch size (P×K) and image size through the cached runner.

Registered into the main group by ``harness/cli.py`` (``main.add_command(study)``). Only click is
imported at module level: optuna, torch and pandas are imported inside the command.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click

from reidbench.harness.cli.common import (
    DataOptions,
    RunOptions,
    SpecOptions,
    StoreOptions,
    UserError,
    command_options,
    data_option,
    db_option,
    default_profile,
    device_option,
    epochs_option,
    gpus_per_run_option,
    loader_workers_option,
    profile_option,
    resolve_base,
    runs_dir_option,
)

DEFAULT_TRICKS = "warmup,rea,ls,stride,bnneck"  # the paper's Tables 5/6: all tricks but the center loss


@dataclass(frozen=True)
class StudyOptions:
    base: str
    tricks_text: str
    space: str
    sampler: str
    trials: int | None
    objective: str
    batches_text: str | None
    sizes_text: str | None
    name: str | None
    storage: str | None
    workers: int
    prune: bool
    seed: int | None
    train_on: str | None
    test_on: str | None
    runs_dir: Path
    dry_run: bool
    data: DataOptions
    spec: SpecOptions
    run: RunOptions
    store: StoreOptions


@click.command("study")
@click.option("--base", default="bot", show_default=True, help="Base name in experiments/ or a YAML path.")
@click.option("--tricks", "tricks_text", default=DEFAULT_TRICKS, show_default=True,
              help="Comma-separated tricks applied to the base before each point ('none' for the bare base).")
@click.option("--space", type=click.Choice(["batch-size", "image-size", "both"]), default="batch-size",
              show_default=True, help="What varies: P×K (Table 5), image size (Table 6) or both.")
@click.option("--sampler", type=click.Choice(["grid", "tpe"]), default="grid", show_default=True,
              help="grid: the paper's points (cpu profile: image sizes halved); tpe: P, K and size in their ranges.")
@click.option("--trials", type=int, default=None,
              help="Trials in the study in total [default: every grid point; tpe: 20]. Re-running continues to N.")
@click.option("--objective", type=click.Choice(["map", "r1"]), default="map", show_default=True,
              help="Maximised: final mAP or R1 on the first (same-domain) test set.")
@click.option("--batches", "batches_text", default=None, metavar="LIST",
              help="P×K points instead of the paper's, e.g. 8x4,16x4,32x4 (tpe: their ranges).")
@click.option("--image-sizes", "sizes_text", default=None, metavar="LIST",
              help="HxW sizes instead of the paper's, e.g. 256x128,384x128.")
@click.option("--name", default=None, help="Study name [default: from base, space, sampler and a digest of the setup].")
@click.option("--storage", default=None, metavar="URL",
              help="Optuna storage: postgresql://... for workers on several machines, or journal:PATH "
                   "[default: the --db database; a journal file under --runs-dir with --workers > 1 on SQLite].")
@click.option("--workers", type=int, default=1, show_default=True, help="Study worker processes on this machine.")
@click.option("--prune", is_flag=True,
              help="Stop runs whose periodic mAP on the first test set is below the median (MedianPruner).")
@click.option("--seed", type=int, default=None, help="Override train.seed of every run.")
@click.option("--train-on", "train_on", default=None,
              help="Training dataset name [default: first --data, else synth-a].")
@click.option("--test-on", "test_on", default=None,
              help="Comma-separated test datasets [default: every --data, else synth-a,synth-b].")
@data_option
@epochs_option
@profile_option
@device_option
@loader_workers_option("--loader-workers")
@gpus_per_run_option
@runs_dir_option
@db_option
@click.option("--dry-run", is_flag=True, help="Print the study's points, run hashes and cache status; train nothing.")
@command_options(StudyOptions)
def study(opts: StudyOptions) -> None:
    """Search batch size P×K and/or image size with Optuna (the paper's Tables 5 and 6).

    Each trial is the base with --tricks applied and P, K and image size replaced, trained through
    the same cache as `reidbench ablate`: a configuration already in the database is not trained
    again. Interrupted studies resume where they stopped when the same command runs again;
    --workers N shares one study between N processes. Problems certain before training (data
    folders, P against the training identities, ImageNet weights, tricks that do not apply) are
    listed first, one line each, and no study is created.
    """
    from reidbench.harness.execution.preflight import (
        DataInventory,
        PlannedRun,
        PreflightError,
        preflight,
        trick_problems,
    )
    from reidbench.harness.spec import load_spec_file, replace_section, with_epochs
    from reidbench.harness.study.plan import plan_study
    from reidbench.harness.study.space import build_space, format_pair, parse_pair_list
    from reidbench.harness.study.storage import choose_storage, describe_storage
    from reidbench.tricks import parse_trick_list

    workers, runs_dir, gpus_per_run = opts.workers, opts.runs_dir, opts.run.gpus_per_run
    if workers < 1:
        raise UserError(f"--workers {workers} is not valid: an integer >= 1")
    tricks = () if opts.tricks_text.strip().lower() in ("", "none") else parse_trick_list(opts.tricks_text)
    batches = parse_pair_list(opts.batches_text, "--batches") if opts.batches_text is not None else None
    sizes = parse_pair_list(opts.sizes_text, "--image-sizes") if opts.sizes_text is not None else None
    data_paths = opts.data.paths
    base_file = resolve_base(opts.base)
    spec = load_spec_file(base_file, opts.spec.profile or default_profile())
    if opts.spec.epochs is not None:
        spec = with_epochs(spec, opts.spec.epochs)
    if opts.seed is not None:
        spec = replace_section(spec, "train", seed=opts.seed)
    train_name = opts.train_on or (next(iter(data_paths)) if data_paths else spec.data.train)
    tests = tuple(t for t in (opts.test_on.split(",") if opts.test_on else (list(data_paths) or spec.data.test))
                  if t)
    tests = tuple(sorted(dict.fromkeys(tests), key=lambda t: t != train_name))  # same domain first
    spec = replace_section(spec, "data", train=train_name, test=tests)
    problems = trick_problems(spec, tricks, "cumulative")
    # The grid needs the training set's identity count, so broken data stops here, before planning.
    inventory = DataInventory(data_paths)
    problems += list(dict.fromkeys(p for name in (train_name, *tests) for p in inventory.facts(name).problems))
    if problems:
        raise PreflightError(problems)
    space, notes = build_space(opts.space, opts.sampler, spec.profile,
                               (spec.data.ids_per_batch, spec.data.imgs_per_id), tuple(spec.data.image_size),
                               batches=batches, image_sizes=sizes,
                               num_train_ids=inventory.training_facts(train_name).num_train_ids)
    plan = plan_study(spec, base_file.stem, tricks, space, opts.objective, opts.trials, name=opts.name,
                      prune=opts.prune, notes=notes, data_paths=data_paths,
                      download_weights=not opts.dry_run)
    problems = preflight([PlannedRun(f"P×K {p.batch} at {p.size}", plan.point_spec(p)) for p in _points(plan)],
                         data_paths, gpus_per_run=gpus_per_run, inventory=inventory)
    if problems:  # before the database is opened: no study, no run is recorded
        raise PreflightError(problems)
    store = opts.store.open()
    storage_url = choose_storage(plan.name, store.url, runs_dir, opts.storage, workers)

    log = lambda line: click.echo(line, err=True)  # noqa: E731
    what = {"batch-size": "P×K", "image-size": "image size", "both": "P×K and image size"}[space.space]
    log(f"study {plan.name}: {space.sampler} over {what}, {plan.trials} trial(s), maximising final {plan.metric} "
        f"on {plan.first_test}; profile {spec.profile}, {spec.schedule.max_epochs} epochs, tricks "
        f"{','.join(t.name for t in tricks) or 'none'}; storage {describe_storage(storage_url)}")
    for note in notes:
        log(f"  note: {note}")
    if opts.dry_run:
        _dry_run(plan, store, format_pair)
        return

    from reidbench.harness.study.storage import lock_path
    from reidbench.harness.study.worker import (
        AskLock,
        WorkerConfig,
        prepare_study,
        run_workers,
        runner_supports_epoch_hook,
    )

    if opts.prune and not runner_supports_epoch_hook():
        log("  note: --prune: this runner has no per-epoch hook yet; runs train to the end and their stored "
            "curves are reported afterwards (nothing is stopped early)")
    lock = AskLock(lock_path(runs_dir, plan.name))
    prepare_study(plan, storage_url, lock, log)
    config = WorkerConfig(name=plan.name, storage_url=storage_url, db_url=store.url, runs_dir=str(runs_dir),
                          device=opts.run.device, loader_workers=opts.run.loader_workers,
                          data_paths=dict(data_paths),
                          lock_path=str(lock.path), gpus_per_run=gpus_per_run)
    try:
        run_workers(config, workers, log)
    except KeyboardInterrupt:
        click.echo("interrupted: run the same command again to resume the study", err=True)
        sys.exit(130)
    except RuntimeError as exc:  # a worker process died: its trial is re-queued on the next run
        click.echo(f"reidbench: {exc}; run the same command again to resume the study", err=True)
        sys.exit(1)
    _finish(plan, storage_url, store)


def _points(plan) -> list:
    """The points a study may train: every grid point; for tpe the corners of its ranges at every size
    (the largest P is the one the training set may lack; the other points then fit too)."""
    from reidbench.harness.study.space import Point

    space = plan.space
    if space.sampler == "grid":
        return [space.point_from_params(p) for p in plan.grid_params()]
    base = plan.base.data
    ps = space.p_range if space.searches_batch else (base.ids_per_batch,)
    ks = space.k_range if space.searches_batch else (base.imgs_per_id,)
    sizes = space.image_sizes if space.searches_size else (tuple(base.image_size),)
    return [Point(p, k, tuple(size)) for p in dict.fromkeys(ps) for k in dict.fromkeys(ks) for size in sizes]


def _dry_run(plan, store, format_pair) -> None:
    if plan.space.sampler == "tpe":
        s = plan.space
        parts = []
        if s.searches_batch:
            parts += [f"P in {s.p_range[0]}..{s.p_range[1]}", f"K in {s.k_range[0]}..{s.k_range[1]}"]
        if s.searches_size:
            parts.append("image size in " + ", ".join(format_pair(*x) for x in s.image_sizes))
        click.echo(f"tpe: {'; '.join(parts)}; {plan.trials} trial(s)")
        return
    from reidbench.models.weights import is_pending

    points = [plan.space.point_from_params(p) for p in plan.grid_params()]
    if is_pending(plan.weights_digest):  # the run hashes hold the weights' digest: known once downloaded
        click.echo(f"  note: {plan.base.model.backbone} ImageNet weights are not on this machine yet; the run "
                   f"hashes are known once they are downloaded (run without --dry-run)")
        for i, point in enumerate(points):
            click.echo(f"  {i:>3}  P×K {point.batch:<6} {point.size:<8} {'pending':<12}  [weights not downloaded yet]")
        return
    hashes = [plan.point_hash(p) for p in points]
    statuses = store.statuses(hashes)
    for i, (point, h) in enumerate(zip(points, hashes)):
        status = statuses.get(h, "new")
        shown = "cached" if status == "done" else status
        click.echo(f"  {i:>3}  P×K {point.batch:<6} {point.size:<8} {h[:12]}  [{shown}]")


def _finish(plan, storage_url: str, store) -> None:
    import optuna

    from reidbench.harness.study.results import study_table_lines

    for line in study_table_lines(storage_url, plan.name, store):
        click.echo(line)
    from reidbench.harness.study.storage import open_storage

    study = optuna.load_study(study_name=plan.name, storage=open_storage(storage_url, heartbeat=False))
    ended = [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]
    if plan.space.sampler == "grid":
        done_points = {t.user_attrs.get("grid_point") for t in ended}
        missing = sum(1 for i in range(len(plan.grid_params())) if i not in done_points)
    else:
        missing = max(0, plan.trials - len(ended))
    if missing:
        click.echo(f"{missing} trial(s) not finished (failed or still running elsewhere); run the same command "
                   "again to retry", err=True)
        sys.exit(1)
