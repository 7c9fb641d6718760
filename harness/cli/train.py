"""``reidbench train SPEC``: one run, resumable."""

from __future__ import annotations

from pathlib import Path

import click

from reidbench.harness.cli.common import (
    data_option,
    device_option,
    epochs_option,
    loader_workers_option,
    parse_data_options,
    profile_option,
    user_errors,
)

@click.command()
@click.argument("spec_file", type=click.Path(dir_okay=False, path_type=Path))
@data_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder for checkpoints and logs [default: runs/<hash>].")
@device_option
@profile_option
@epochs_option
@click.option("--seed", type=int, default=None, help="Override train.seed.")
@loader_workers_option()
def train(spec_file: Path, data_items: tuple[str, ...], out_dir: Path | None, device: str,
          profile: str | None, epochs: int | None, seed: int | None, loader_workers: int | None) -> None:
    """Train and evaluate one run described by SPEC_FILE (YAML).

    Resumable: re-running the same command continues from the run folder's last checkpoint.
    """
    _train(spec_file, data_items, out_dir, device, profile, epochs, seed, loader_workers)


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
