"""``reidbench tricks`` and ``reidbench ablate``."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click

from reidbench.harness.cli.common import (
    EXIT_PROBLEMS,
    DataOptions,
    NoOptions,
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

DEFAULT_ADD = "warmup,rea,ls,stride,bnneck,center"  # BoT's six (tricks.PAPER_ORDER); a base without default_ablation


def _intervals(store, ablation_id: int, log):
    """Each step's difference from its reference with a 95 % interval (None when it cannot be computed)."""
    from reidbench.harness.report.significance import ablation_intervals
    from reidbench.harness.report.tables import load_ablation

    try:
        frame, ctx = load_ablation(store, ablation_id)
        return ablation_intervals(store, frame, ctx.mode, ("R1", "mAP"), fingerprints=ctx.test_fingerprints, log=log)
    except (ValueError, KeyError) as exc:  # e.g. no run finished: the table says so already
        log(f"no intervals: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        return None


def _echo_speed(store, ablation_id: int) -> None:
    """What each step costs in training speed (img/s against the first row)."""
    from reidbench.harness.report.speed import speed_frame, speed_lines

    for line in speed_lines(speed_frame(store, store.get_ablation(ablation_id))):
        click.echo(line)


@click.command("tricks")
@command_options(NoOptions)
def tricks_cmd(opts: NoOptions) -> None:
    """List the registered tricks (paper order) with their summaries."""
    from reidbench.tricks import registered_tricks

    tricks = registered_tricks()
    width = max(8, *(len(t.name) for t in tricks))
    for t in tricks:
        aliases = f" (also: {', '.join(sorted(t.aliases))})" if t.aliases else ""
        click.echo(f"{t.name:<{width}} v{t.version}  {t.summary}{aliases}")


@dataclass(frozen=True)
class AblateOptions:
    base: str
    add: str | None
    mode: str | None
    steps_name: str | None
    preset: str | None
    seeds: int | None
    seed: int | None
    train_on: str | None
    test_on: str | None
    executor: str
    gpus: str | None
    timeout_min: int
    runs_dir: Path
    evals: str | None
    dry_run: bool
    resolution: str | None
    data: DataOptions
    spec: SpecOptions
    run: RunOptions
    store: StoreOptions


@click.command()
@click.option("--base", default="bot", show_default=True, help="Base name in experiments/ or a YAML path.")
@click.option("--add", "add", default=None, metavar="LIST",
              help="Comma-separated tricks, applied in this order (see `reidbench tricks`) [default: the base "
                   "file's default_ablation, listed above; bot: " + DEFAULT_ADD + "].")
@click.option("--mode", type=click.Choice(["cumulative", "single", "leave-one-out", "factorial", "fractional"]),
              default=None,
              help="cumulative: Table 1 rows; single: base+each; leave-one-out: all and all−each; factorial: all 2^k "
                   "on/off combinations of --add; fractional: a 2^(k−p) fraction of --resolution (docs/factorial.md) "
                   "[default: cumulative].")
@click.option("--resolution", type=click.Choice(["IV", "V"], case_sensitive=False), default=None, metavar="IV|V",
              help="--mode fractional: the smallest regular fraction of this resolution (IV: main effects clear of "
                   "two-trick interactions; V: two-trick interactions clear of each other).")
@click.option("--steps", "steps_name", default=None, metavar="NAME",
              help="Rows from the base file's ablation step list NAME (labelled patches, e.g. mgn's components) "
                   "instead of --add/--mode; `reidbench bases` lists them.")
@click.option("--preset", default=None, metavar="NAME",
              help="Start from the base file's preset NAME (e.g. mgn's fastreid); `reidbench bases` lists them.")
@click.option("--seeds", type=int, default=None, help="Run seeds 0..N-1 (mean±std in the table).")
@click.option("--seed", type=int, default=None, help="Run this one seed.")
@click.option("--train-on", "train_on", default=None, help="Training dataset name [default: first --data, else synth-a].")
@click.option("--test-on", "test_on", default=None,
              help="Comma-separated test datasets [default: every --data, else synth-a,synth-b].")
@data_option
@epochs_option
@profile_option
@click.option("--executor", type=click.Choice(["local", "submitit", "slurm"]), default="local", show_default=True,
              help="local: in this process; submitit: job processes on this machine; slurm: one job array "
                   "(sbatch's SBATCH_PARTITION, SBATCH_ACCOUNT, ... apply; --device cpu asks for no GPU). "
                   "See docs/services.md.")
@click.option("--gpus", default=None, metavar="LIST",
              help="GPU ids for the slot pool, e.g. 0,1,2,3 (with --gpus-per-run G: cut into groups of G).")
@gpus_per_run_option
@click.option("--timeout-min", type=int, default=24 * 60, show_default=True, help="Per-job time limit (submitit/slurm).")
@device_option
@loader_workers_option()
@runs_dir_option
@db_option
@click.option("--eval", "evals", default=None, metavar="LIST",
              help="Evaluation variants (from the base file's evaluations: section) to score every trained model "
                   "with besides its default, e.g. rerank,bnneck-table2. No retraining: cached runs are re-scored.")
@click.option("--dry-run", is_flag=True, help="Print each run's label, hash, changes and cache status, then any "
                                              "problem found before training (exit code 2); train nothing.")
@command_options(AblateOptions)
def ablate(opts: AblateOptions) -> None:
    """Train the base and the base patched step by step with tricks; print the ablation table.

    Every run is cached in the results database by its spec hash: re-running trains only what is
    missing (failed runs are retried, killed runs resume from their checkpoint). Problems certain
    before training (data folders, P against the training identities, ImageNet weights, tricks
    that do not apply) are listed first, one line each, and nothing is recorded.

    \b
    With no --add, --mode or --steps, a base runs its file's default_ablation
    (`reidbench bases NAME` shows it):
      bot, mgn   BoT's six tricks, cumulatively (bot: the paper's Table 1)
      agw        --steps nonlocal-channels (BoT's six are in the base already)
      geng       --steps losses (the paper's own; center loss does not apply)
      mancs      --steps components (the paper's own; 4 of BoT's six do not apply)
      spreid     --steps features (the paper's own; bnneck, center do not apply)
      any other  BoT's six that apply to it (the others named on stderr)
    --mode without --add ablates those tricks, never a step list.
    """
    from reidbench.harness.ablation.defaults import applicable_tricks, choose_rows, parse_default_ablation
    from reidbench.harness.ablation.plan import ablation_table, dry_run_lines, plan_ablation, run_plan
    from reidbench.harness.evaluation.settings import parse_variants
    from reidbench.harness.execution.preflight import PlannedRun, PreflightError, preflight, trick_problems
    from reidbench.harness.spec import RunSpec, load_base_file, replace_section, with_epochs
    from reidbench.harness.spec.patches import apply_patch, parse_presets, parse_step_lists
    from reidbench.tricks import parse_trick_list

    log = lambda line: click.echo(line, err=True)  # noqa: E731
    seeds, seed, steps_name, mode = opts.seeds, opts.seed, opts.steps_name, opts.mode
    if seeds is not None and seed is not None:
        raise UserError("--seeds and --seed are exclusive: give one")
    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds {seeds} is not valid: an integer >= 1")
    if steps_name is not None and (opts.add is not None or mode is not None):
        raise UserError(f"--steps {steps_name} gives the rows itself: drop {'--add' if opts.add is not None else '--mode'}")
    data_paths = opts.data.paths
    base_file = resolve_base(opts.base)
    chosen_profile = opts.spec.profile or default_profile()
    spec, extras = load_base_file(base_file, chosen_profile)
    presets = parse_presets(extras.get("presets"), f"{base_file.name}: presets")
    step_lists = parse_step_lists(extras.get("ablations"), f"{base_file.name}: ablations")
    default = parse_default_ablation(extras.get("default_ablation"), f"{base_file.name}: default_ablation",
                                     list(step_lists))
    rows = choose_rows(default, opts.add, mode, steps_name)
    if rows.by_default and rows.steps is not None:
        log(f"--base {base_file.stem}: no --add/--mode/--steps, so its default_ablation: --steps {rows.steps}")
    steps_name, mode, by_default = rows.steps, rows.mode, rows.by_default
    tricks = parse_trick_list(rows.tricks)
    step_list = None
    if steps_name is not None:
        if steps_name not in step_lists:
            raise UserError(f"--steps {steps_name!r} is not an ablation step list of {base_file.name}; valid: "
                            f"{', '.join(step_lists) or 'none defined (add an ablations: section)'}")
        step_list = step_lists[steps_name]
    if opts.preset is not None:
        if opts.preset not in presets:
            raise UserError(f"--preset {opts.preset!r} is not a preset of {base_file.name}; valid: "
                            f"{', '.join(presets) or 'none defined (add a presets: section)'}")
        spec = apply_patch(spec, presets[opts.preset], presets=presets)
    defined = parse_variants(extras.get("evaluations"), where=f"{base_file}: evaluations")
    chosen = [v.strip() for v in (opts.evals or "").split(",") if v.strip()]
    unknown = [v for v in chosen if v not in {d.name for d in defined}]
    if unknown:
        raise UserError(f"--eval {unknown[0]!r} is not an evaluation variant of {base_file.name}; valid: "
                        f"{', '.join(d.name for d in defined) or 'none defined (add an evaluations: section)'}")
    variants = tuple(d for d in defined if d.name in chosen)
    train_name = opts.train_on or (next(iter(data_paths)) if data_paths else spec.data.train)
    tests = tuple(t for t in (opts.test_on.split(",") if opts.test_on else (list(data_paths) or spec.data.test)) if t)
    # Same-domain test set first, as the paper's tables do.
    tests = tuple(sorted(dict.fromkeys(tests), key=lambda t: t != train_name))
    epochs = opts.spec.epochs

    def prepare(one: RunSpec) -> RunSpec:
        """What the command line changes, applied alike to the base and to any other base a step starts from."""
        if epochs is not None:
            one = with_epochs(one, epochs)
        return replace_section(one, "data", train=train_name, test=tests)

    def load_other(name: str) -> RunSpec:
        return prepare(load_base_file(resolve_base(name), chosen_profile)[0])

    spec = prepare(spec)
    if step_list is None:
        if by_default:  # the base's default tricks: those that do not apply are skipped, saying why
            tricks, skipped = applicable_tricks(spec, tricks, mode)
            for trick, why in skipped:
                log(f"--base {base_file.stem}: default trick {trick.name} skipped: {why}")
        else:  # the user's --add: every trick that does not apply is an error, all of them at once
            problems = trick_problems(spec, tricks, mode)
            if problems:
                raise PreflightError(problems)
    seed_list = list(range(seeds)) if seeds is not None else [seed if seed is not None else spec.train.seed]
    plan = plan_ablation(spec, base_file.stem, tricks, mode, seed_list, data_paths=data_paths, variants=variants,
                         step_list=step_list, presets=presets, load_base=load_other, download_weights=not opts.dry_run,
                         resolution=opts.resolution.upper() if opts.resolution else None)
    # Before the database is opened: a problem certain now records nothing.
    problems = preflight([PlannedRun(s.label, s.spec) for s in plan.steps], data_paths,
                         gpus_per_run=opts.run.gpus_per_run)
    if opts.dry_run:
        if plan.design is not None:  # factorial / fractional: the design matrix and alias structure
            from reidbench.harness.ablation.designs import design_dry_run_lines

            click.echo("\n".join(design_dry_run_lines(plan, opts.store.open())))
        else:
            for line in dry_run_lines(plan, opts.store.open().statuses(plan.unique_hashes())):
                click.echo(line)
        if problems:
            raise PreflightError(problems)
        return
    if problems:
        raise PreflightError(problems)
    store = opts.store.open()
    from reidbench.harness.execution.executors import build_executor

    gpu_list = [g for g in (opts.gpus or "").split(",") if g.strip()]
    runner = build_executor(opts.executor, opts.runs_dir / "_submitit", gpus=gpu_list, timeout_min=opts.timeout_min,
                            log=log, gpus_per_run=opts.run.gpus_per_run, device=opts.run.device)
    meta = {"profile": spec.profile, "epochs": spec.schedule.max_epochs, "full_epochs": spec.full_epochs,
            "tricks": [t.name for t in tricks], "step_list": steps_name, "preset": opts.preset, "train": train_name,
            "test": list(tests), "seeds": seed_list,
            "variants": [{"name": v.name, "label": v.label, "settings": dict(v.changes), "steps": list(v.steps)}
                         for v in variants],
            "train_fingerprint": plan.train_fingerprint, "test_fingerprints": dict(plan.test_fingerprints),
            "command": " ".join(sys.argv[1:])}
    ablation_id = run_plan(plan, store, runner, opts.runs_dir, device=opts.run.device,
                           num_workers=opts.run.loader_workers, data_paths=data_paths, meta=meta, progress=None,
                           log=log)
    if plan.design is not None:  # the rows, then the design's effects and Shapley tables (cli/design.py)
        from reidbench.harness.cli.design import design_after_ablate

        click.echo(ablation_table(plan, store))
        click.echo(design_after_ablate(store, ablation_id))
    else:
        click.echo(ablation_table(plan, store, intervals=_intervals(store, ablation_id, log)))
    _echo_speed(store, ablation_id)
    failed = [h for h, s in store.statuses(plan.unique_hashes()).items() if s != "done"]
    if failed:
        click.echo(f"{len(failed)} run(s) not done (see `reidbench runs list`); re-run the same command to retry",
                   err=True)
        sys.exit(EXIT_PROBLEMS)
