"""``reidbench doctor``: one screen that says whether this machine is ready (harness/doctor/)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import click

from reidbench.harness.cli.common import DataOptions, StoreOptions, command_options, data_option, db_option


@dataclass(frozen=True)
class DoctorOptions:
    as_json: bool
    data: DataOptions
    store: StoreOptions


@click.command("doctor")
@db_option
@data_option
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON (name, status, text, data).")
@command_options(DoctorOptions)
def doctor(opts: DoctorOptions) -> None:
    """Check this machine: torch/CUDA/GPUs, AMP and channels_last, the data loader, pretrained weights,
    the results database (read only, never upgraded), Slurm, submitit, PostgreSQL, TensorBoard, MLflow.

    ✓ = fine, ! = advice (the default workflow still runs), ✗ = something needed cannot work.
    Exit code 0 when nothing failed, 1 otherwise. Takes a few seconds (see docs/doctor.md).
    """
    from reidbench.harness.doctor import environment, exit_code, run_checks

    checks = run_checks(opts.store.db_url, opts.data.paths)
    code = exit_code(checks)
    env = environment()
    if opts.as_json:
        click.echo(json.dumps({"environment": env, "checks": [c.to_dict() for c in checks], "exit_code": code},
                              indent=1, sort_keys=True))
    else:
        click.echo(f"reidbench {env['reidbench']} · Python {env['python']} · {env['platform']} · "
                   f"{env['cpu_cores']} CPU cores")
        width = max(len(c.name) for c in checks)
        for check in checks:
            click.echo(check.line(width))
        failed = sum(c.status == "fail" for c in checks)
        advice = sum(c.status == "warn" for c in checks)
        click.echo(f"{failed} failed, {advice} with advice" if failed or advice else "everything is ready")
    click.get_current_context().exit(code)
