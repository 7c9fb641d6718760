"""The ``reidbench`` command line.

Only click is imported at module level: every heavy import (torch, timm, pandas, ...) happens
inside the command that needs it, so ``reidbench --help`` and every ``--help`` stay instant.
User errors become one line on stderr and exit code 2; nothing prints a traceback for bad input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import click

from reidbench.harness.cli_common import (  # noqa: E402  (re-exported for other CLI modules)
    EXIT_PROBLEMS,
    EXIT_USAGE,
    UserError,
    db_option,
    open_store,
    parse_data_options,
    user_errors,
)

_user_errors = user_errors
_db_option = db_option
_open_store = open_store


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="reidbench")
def main() -> None:
    """reidbench: which person re-identification training tricks matter, on your data.

    Train Bag-of-Tricks runs, evaluate them same- and cross-domain, and keep every result.
    With no --data, everything runs on the embedded synthetic benchmark (domains synth-a, synth-b).
    """


# --------------------------------------------------------------------------- train


@main.command()
@click.argument("spec_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", "data_items", multiple=True, metavar="NAME=PATH",
              help="Dataset folder for a name used in the spec (repeatable). Format from the name: "
                   "market*, duke*, msmt17*, cuhk03*; anything else is read as Market layout.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder for checkpoints and logs [default: runs/<hash>].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--profile", type=click.Choice(["paper", "cpu"]), default=None,
              help="Profile overlay from the spec file [default: the file's own profile].")
@click.option("--epochs", type=int, default=None, help="Shorten the schedule to N epochs (milestones scale).")
@click.option("--seed", type=int, default=None, help="Override train.seed.")
@click.option("--workers", type=int, default=None, help="Data loader worker processes [default: auto].")
def train(spec_file: Path, data_items: tuple[str, ...], out_dir: Path | None, device: str,
          profile: str | None, epochs: int | None, seed: int | None, workers: int | None) -> None:
    """Train and evaluate one run described by SPEC_FILE (YAML).

    Resumable: re-running the same command continues from the run folder's last checkpoint.
    """
    _train(spec_file, data_items, out_dir, device, profile, epochs, seed, workers)


@_user_errors
def _train(spec_file: Path, data_items: tuple[str, ...], out_dir: Path | None, device: str,
           profile: str | None, epochs: int | None, seed: int | None, workers: int | None) -> None:
    from reidbench.harness.hashing import run_hash
    from reidbench.harness.spec import load_spec_file, replace_section, with_epochs

    spec = load_spec_file(spec_file, profile)
    if epochs is not None:
        spec = with_epochs(spec, epochs)
    if seed is not None:
        spec = replace_section(spec, "train", seed=seed)
    data_paths = parse_data_options(data_items)
    from reidbench.harness.runner import RuntimeOptions, execute

    rhash = run_hash(spec)
    runtime = RuntimeOptions(
        out_dir=out_dir or Path("runs") / rhash[:12],
        device=device,
        num_workers=workers,
        data_paths=data_paths,
    )
    result = execute(spec, runtime)
    click.echo(result.summary_table())


# --------------------------------------------------------------------------- evaluate


@main.command()
@click.option("--features", "features_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="npz with q_feats, g_feats, q_pids, g_pids, q_camids, g_camids.")
@click.option("--rerank", is_flag=True, help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3).")
@click.option("--metric", type=click.Choice(["cosine", "euclidean", "sqeuclidean"]), default="euclidean",
              show_default=True)
@click.option("--normalize/--no-normalize", default=False, show_default=True,
              help="L2-normalise features before computing distances.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of a table.")
def evaluate(features_file: Path, rerank: bool, metric: str, normalize: bool, as_json: bool) -> None:
    """Score externally computed features with the Market protocol (R1/R5/R10/mAP/mINP)."""
    _evaluate(features_file, rerank, metric, normalize, as_json)


@_user_errors
def _evaluate(features_file: Path, rerank: bool, metric: str, normalize: bool, as_json: bool) -> None:
    from reidbench.harness.evaluation import load_features_npz, score

    arrays = load_features_npz(features_file)
    result = score(**arrays, metric=metric, normalize=normalize, rerank=rerank)
    keys = ("R1", "R5", "R10", "mAP", "mINP")
    if as_json:
        click.echo(json.dumps({k: float(result[k]) for k in keys} | {"num_valid_queries": int(result["num_valid_queries"])}))
    else:
        click.echo("  ".join(f"{k} {100 * float(result[k]):5.1f}" for k in keys)
                   + f"  ({int(result['num_valid_queries'])} valid queries)")


# --------------------------------------------------------------------------- data


@main.group()
def data() -> None:
    """Check real datasets, build and preview the synthetic benchmark."""


@data.command("check")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["auto", "market", "duke", "msmt17", "cuhk03np"]),
              default="auto", show_default=True, help="Dataset layout; auto guesses from the folder name.")
@click.option("--no-verify-images", is_flag=True, help="Skip decoding every image (faster).")
def data_check(path: Path, fmt: str, no_verify_images: bool) -> None:
    """Print identities, images and cameras per split and every problem found in PATH.

    Exit code 1 when problems were found, 0 otherwise.
    """
    from reidbench.harness.data.check import check_dataset, format_report
    from reidbench.harness.data.datasets import guess_format

    try:
        if not path.exists():
            raise UserError(f"{path}: no such folder")
        use = guess_format(path.name) if fmt == "auto" else fmt
        report = check_dataset(path, use, verify_images=not no_verify_images)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    click.echo(format_report(report))
    if report.problems:
        sys.exit(EXIT_PROBLEMS)


@data.command("synth")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--domain", default="A", show_default=True, help="Synthetic domain (A: 6 cameras, B: 8 cameras, ...).")
@click.option("--ids", "num_ids", type=int, default=None, help="Number of identities [default: the domain's].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", "size", default="128x64", show_default=True, help="Image size HxW in pixels.")
def data_synth(out_dir: Path, domain: str, num_ids: int | None, seed: int, size: str) -> None:
    """Write a synthetic dataset in exact Market-1501 layout to --out."""
    _data_synth(out_dir, domain, num_ids, seed, size)


def parse_size(text: str, option: str = "--size") -> tuple[int, int]:
    h, sep, w = text.lower().partition("x")
    if not sep or not h.isdigit() or not w.isdigit() or int(h) < 1 or int(w) < 1:
        raise UserError(f"{option} {text!r} is not valid: use HxW in pixels, e.g. 128x64")
    return int(h), int(w)


@_user_errors
def _data_synth(out_dir: Path, domain: str, num_ids: int | None, seed: int, size: str) -> None:
    image_size = parse_size(size)
    from reidbench.harness.data.synth import generate_domain

    root = generate_domain(out_dir, domain=domain, num_ids=num_ids, seed=seed, image_size=image_size,
                           progress=sys.stderr.isatty())
    click.echo(f"wrote {root}")


@data.command("list")
@click.option("--data", "data_items", multiple=True, metavar="NAME=PATH", help="Also show these real datasets.")
def data_list(data_items: tuple[str, ...]) -> None:
    """Show the available datasets: the embedded synthetic ones and those given with --data."""
    _data_list(data_items)


@_user_errors
def _data_list(data_items: tuple[str, ...]) -> None:
    from reidbench.harness.datasets import describe_datasets

    for line in describe_datasets(parse_data_options(data_items)):
        click.echo(line)


@data.command("preview")
@click.argument("name")
@click.option("--out", "out_png", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--ids", "num_ids", type=int, default=8, show_default=True, help="Identities (rows).")
@click.option("--data", "data_items", multiple=True, metavar="NAME=PATH")
def data_preview(name: str, out_png: Path, num_ids: int, data_items: tuple[str, ...]) -> None:
    """Draw identities x cameras of dataset NAME as one picture."""
    _data_preview(name, out_png, num_ids, data_items)


@_user_errors
def _data_preview(name: str, out_png: Path, num_ids: int, data_items: tuple[str, ...]) -> None:
    from reidbench.harness.data.synth import render_preview
    from reidbench.harness.datasets import dataset_root

    root = dataset_root(name, parse_data_options(data_items))
    render_preview(root, out_png, num_ids=num_ids)
    click.echo(f"wrote {out_png}")


# --------------------------------------------------------------------------- tricks / ablate




def resolve_base(base: str) -> Path:
    """A base is a YAML path or the name of one in the package's experiments/ folder."""
    path = Path(base)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UserError(f"--base {base}: no such file")
        return path
    folder = Path(__file__).resolve().parent.parent / "experiments"
    candidate = folder / f"{base}.yaml"
    if not candidate.is_file():
        names = sorted(p.stem for p in folder.glob("*.yaml"))
        raise UserError(f"--base {base!r} is not known; valid: {', '.join(names)} (or a path to a YAML file)")
    return candidate


def default_profile() -> str:
    import torch

    return "paper" if torch.cuda.is_available() else "cpu"


@main.command("tricks")
def tricks_cmd() -> None:
    """List the registered tricks (paper order) with their summaries."""
    from reidbench.tricks import REGISTRY

    for t in REGISTRY:
        aliases = f" (also: {', '.join(sorted(t.aliases))})" if t.aliases else ""
        click.echo(f"{t.name:<8} v{t.version}  {t.summary}{aliases}")


@main.command()
@click.option("--base", default="bot", show_default=True, help="Base name in experiments/ or a YAML path.")
@click.option("--add", "add", default="warmup,rea,ls,stride,bnneck,center", show_default=True,
              help="Comma-separated tricks, applied in this order (see `reidbench tricks`).")
@click.option("--mode", type=click.Choice(["cumulative", "single", "leave-one-out"]), default="cumulative",
              show_default=True, help="cumulative: Table 1 rows; single: base+each; leave-one-out: all and all−each.")
@click.option("--seeds", type=int, default=None, help="Run seeds 0..N-1 (mean±std in the table).")
@click.option("--seed", type=int, default=None, help="Run this one seed.")
@click.option("--train-on", "train_on", default=None, help="Training dataset name [default: first --data, else synth-a].")
@click.option("--test-on", "test_on", default=None,
              help="Comma-separated test datasets [default: every --data, else synth-a,synth-b].")
@click.option("--data", "data_items", multiple=True, metavar="NAME=PATH",
              help="Real dataset folders, e.g. --data market=/data/Market-1501 --data duke=/data/DukeMTMC-reID.")
@click.option("--epochs", type=int, default=None, help="Shorten every run to N epochs (milestones scale).")
@click.option("--profile", type=click.Choice(["paper", "cpu"]), default=None,
              help="paper: ResNet50 256x128 120 epochs; cpu: minutes on a laptop [default: cpu without a GPU].")
@click.option("--executor", type=click.Choice(["local", "submitit", "slurm"]), default="local", show_default=True)
@click.option("--gpus", default=None, metavar="LIST", help="GPU ids for the slot pool, e.g. 0,1,2,3.")
@click.option("--timeout-min", type=int, default=24 * 60, show_default=True, help="Per-job time limit (submitit/slurm).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--workers", type=int, default=None, help="Data loader worker processes [default: auto].")
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, help="Where run folders (checkpoints, logs, features) go.")
@_db_option
@click.option("--dry-run", is_flag=True, help="Print each run's label, hash, changes and cache status; train nothing.")
def ablate(base: str, add: str, mode: str, seeds: int | None, seed: int | None, train_on: str | None,
           test_on: str | None, data_items: tuple[str, ...], epochs: int | None, profile: str | None, executor: str,
           gpus: str | None, timeout_min: int, device: str, workers: int | None, runs_dir: Path,
           db_url: str | None, dry_run: bool) -> None:
    """Train the base and the base patched step by step with tricks; print the ablation table.

    Every run is cached in the results database by its spec hash: re-running trains only what is
    missing (failed runs are retried, killed runs resume from their checkpoint).
    """
    _ablate(base, add, mode, seeds, seed, train_on, test_on, data_items, epochs, profile, executor, gpus,
            timeout_min, device, workers, runs_dir, db_url, dry_run)


@_user_errors
def _ablate(base: str, add: str, mode: str, seeds: int | None, seed: int | None, train_on: str | None,
            test_on: str | None, data_items: tuple[str, ...], epochs: int | None, profile: str | None,
            executor_kind: str, gpus: str | None, timeout_min: int, device: str, workers: int | None,
            runs_dir: Path, db_url: str | None, dry_run: bool) -> None:
    from reidbench.harness.ablate import ablation_table, dry_run_lines, plan_ablation, run_plan
    from reidbench.harness.spec import load_spec_file, replace_section, with_epochs
    from reidbench.tricks import parse_trick_list

    if seeds is not None and seed is not None:
        raise UserError("--seeds and --seed are exclusive: give one")
    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds {seeds} is not valid: an integer >= 1")
    tricks = parse_trick_list(add)
    data_paths = parse_data_options(data_items)
    base_file = resolve_base(base)
    spec = load_spec_file(base_file, profile or default_profile())
    if epochs is not None:
        spec = with_epochs(spec, epochs)
    train_name = train_on or (next(iter(data_paths)) if data_paths else spec.data.train)
    tests = tuple(t for t in (test_on.split(",") if test_on else (list(data_paths) or spec.data.test)) if t)
    # Same-domain test set first, as the paper's tables do.
    tests = tuple(sorted(dict.fromkeys(tests), key=lambda t: t != train_name))
    spec = replace_section(spec, "data", train=train_name, test=tests)
    seed_list = list(range(seeds)) if seeds is not None else [seed if seed is not None else spec.train.seed]
    plan = plan_ablation(spec, base_file.stem, tricks, mode, seed_list)
    store = _open_store(db_url)
    if dry_run:
        for line in dry_run_lines(plan, store.statuses(plan.unique_hashes())):
            click.echo(line)
        return
    from reidbench.harness.executors import build_executor

    log = lambda line: click.echo(line, err=True)  # noqa: E731
    gpu_list = [g for g in (gpus or "").split(",") if g.strip()]
    runner = build_executor(executor_kind, runs_dir / "_submitit", gpus=gpu_list, timeout_min=timeout_min, log=log)
    meta = {"profile": spec.profile, "epochs": spec.schedule.max_epochs, "full_epochs": spec.full_epochs,
            "tricks": [t.name for t in tricks], "train": train_name, "test": list(tests), "seeds": seed_list,
            "command": " ".join(sys.argv[1:])}
    run_plan(plan, store, runner, runs_dir, device=device, num_workers=workers, data_paths=data_paths, meta=meta,
             progress=None, log=log)
    click.echo(ablation_table(plan, store))
    failed = [h for h, s in store.statuses(plan.unique_hashes()).items() if s != "done"]
    if failed:
        click.echo(f"{len(failed)} run(s) not done (see `reidbench runs list`); re-run the same command to retry",
                   err=True)
        sys.exit(EXIT_PROBLEMS)


# --------------------------------------------------------------------------- runs


@main.group()
def runs() -> None:
    """Inspect recorded runs."""


@runs.command("list")
@click.option("--status", type=click.Choice(["pending", "running", "done", "failed"]), default=None)
@click.option("--limit", type=int, default=50, show_default=True)
@_db_option
def runs_list(status: str | None, limit: int, db_url: str | None) -> None:
    """One line per run: hash, status, label, profile, data, main metrics."""
    _runs_list(status, limit, db_url)


@_user_errors
def _runs_list(status: str | None, limit: int, db_url: str | None) -> None:
    store = _open_store(db_url)
    recs = store.list_runs(status=status, limit=limit)
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


@runs.command("show")
@click.argument("run_hash")
@_db_option
def runs_show(run_hash: str, db_url: str | None) -> None:
    """Everything recorded about one run (a hash prefix is enough)."""
    _runs_show(run_hash, db_url)


@_user_errors
def _runs_show(run_hash: str, db_url: str | None) -> None:
    import dataclasses

    store = _open_store(db_url)
    rec = store.get_run(run_hash)
    info = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in dataclasses.asdict(rec).items()}
    info["metrics"] = {}
    for m in store.metrics([rec.run_hash]):
        if m.step is None:
            info["metrics"].setdefault(m.test_set, {})[m.metric] = m.value
    info["epochs"] = [e.values | {"epoch": e.epoch} for e in store.epochs(rec.run_hash)]
    click.echo(json.dumps(info, indent=2, sort_keys=True, default=str))


@runs.command("export")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file [default: stdout].")
@_db_option
def runs_export(fmt: str, out_file: Path | None, db_url: str | None) -> None:
    """Every final metric as one row per (run, test set, metric)."""
    _runs_export(fmt, out_file, db_url)


@_user_errors
def _runs_export(fmt: str, out_file: Path | None, db_url: str | None) -> None:
    store = _open_store(db_url)
    frame = store.to_frame()
    text = frame.to_csv(index=False) if fmt == "csv" else frame.to_json(orient="records", indent=1, date_format="iso")
    if out_file:
        out_file.write_text(text)
        click.echo(f"wrote {len(frame)} rows to {out_file}", err=True)
    else:
        click.echo(text)


@runs.command("delete")
@click.argument("run_hash")
@click.option("--yes", is_flag=True, help="Really delete (without it, only say what would go).")
@_db_option
def runs_delete(run_hash: str, yes: bool, db_url: str | None) -> None:
    """Delete one run and its metrics from the database (needs --yes)."""
    _runs_delete(run_hash, yes, db_url)


@_user_errors
def _runs_delete(run_hash: str, yes: bool, db_url: str | None) -> None:
    store = _open_store(db_url)
    rec = store.get_run(run_hash)
    if not yes:
        click.echo(f"would delete run {rec.short_hash} ({rec.label}, {rec.status}); add --yes to do it")
        return
    store.delete_run(rec.run_hash)
    click.echo(f"deleted run {rec.short_hash}")


# Commands defined in their own modules (each imports only click at module level).
from reidbench.harness.cli_report import plot, report  # noqa: E402
from reidbench.harness.cli_study import study  # noqa: E402

main.add_command(report)
main.add_command(plot)
main.add_command(study)

if __name__ == "__main__":  # pragma: no cover
    main()
