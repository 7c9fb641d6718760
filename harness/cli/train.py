"""``reidbench train SPEC``: one run, resumable."""

from __future__ import annotations

from pathlib import Path

import click

from reidbench.harness.cli.common import parse_data_options, user_errors

@click.command()
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


@user_errors
def _train(spec_file: Path, data_items: tuple[str, ...], out_dir: Path | None, device: str,
           profile: str | None, epochs: int | None, seed: int | None, workers: int | None) -> None:
    from reidbench.harness.spec import load_spec_file, replace_section, with_epochs

    spec = load_spec_file(spec_file, profile)
    if epochs is not None:
        spec = with_epochs(spec, epochs)
    if seed is not None:
        spec = replace_section(spec, "train", seed=seed)
    data_paths = parse_data_options(data_items)
    from reidbench.harness.train.runner import RuntimeOptions, execute

    from reidbench.harness.train.runner import identify

    rhash, _ = identify(spec, data_paths)
    runtime = RuntimeOptions(
        out_dir=out_dir or Path("runs") / rhash[:12],
        device=device,
        num_workers=workers,
        data_paths=data_paths,
    )
    result = execute(spec, runtime)
    click.echo(result.summary_table())
