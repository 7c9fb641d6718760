"""``reidbench train SPEC``: one run, resumable."""

from __future__ import annotations

from pathlib import Path

import click

from reidbench.harness.cli.common import (
    data_option,
    device_option,
    epochs_option,
    gpus_per_run_option,
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
@click.option("--preset", default=None, metavar="NAME", help="Apply the file's preset NAME (its presets: section).")
@loader_workers_option()
@gpus_per_run_option
def train(spec_file: Path, data_items: tuple[str, ...], out_dir: Path | None, device: str,
          profile: str | None, epochs: int | None, seed: int | None, preset: str | None,
          loader_workers: int | None, gpus_per_run: int) -> None:
    """Train and evaluate one run described by SPEC_FILE (YAML).

    Resumable: re-running the same command continues from the run folder's last checkpoint.
    """
    _train(spec_file, data_items, out_dir, device, profile, epochs, seed, loader_workers, preset, gpus_per_run)


@user_errors
def _train(spec_file: Path, data_items: tuple[str, ...], out_dir: Path | None, device: str,
           profile: str | None, epochs: int | None, seed: int | None, workers: int | None,
           preset: str | None = None, gpus_per_run: int = 1) -> None:
    from reidbench.harness.cli.common import UserError
    from reidbench.harness.spec import load_base_file, replace_section, with_epochs
    from reidbench.harness.spec.patches import apply_patch, parse_presets

    spec, extras = load_base_file(spec_file, profile)
    if preset is not None:
        presets = parse_presets(extras.get("presets"), f"{spec_file.name}: presets")
        if preset not in presets:
            raise UserError(f"--preset {preset!r} is not a preset of {spec_file.name}; valid: "
                            f"{', '.join(presets) or 'none defined (add a presets: section)'}")
        spec = apply_patch(spec, presets[preset], presets=presets)
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
    if gpus_per_run > 1:
        from reidbench.harness.execution.torchrun import DistributedRunFailed, execute_distributed

        try:
            result = execute_distributed(spec, runtime, gpus_per_run)
        except DistributedRunFailed as exc:  # the failing rank printed its traceback above
            click.echo(f"reidbench: error: {exc}; run the same command again to resume", err=True)
            raise SystemExit(1) from None
    else:
        result = execute(spec, runtime)
    click.echo(result.summary_table())
