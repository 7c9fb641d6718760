"""``reidbench components``: every registered architecture, loss term, sampler, schedule and optimiser."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from reidbench.harness.cli.common import user_errors


def _params(params_type: Any) -> str:
    if params_type is None:
        return ""
    parts = [f"{f.name}={getattr(params_type(), f.name)!r}" for f in dataclasses.fields(params_type)]
    return "  (" + ", ".join(parts) + ")" if parts else ""


def component_lines() -> list[str]:
    """One section per registry: name, summary and the options a spec may set (with defaults)."""
    from reidbench.harness.data.samplers import SAMPLERS
    from reidbench.harness.train.optim import OPTIMIZERS
    from reidbench.harness.train.schedules import SCHEDULES
    from reidbench.models.architectures import ARCHITECTURES
    from reidbench.models.terms import LOSS_TERMS

    sections = [
        ("model.arch — architectures", [(n, e.summary, e.params) for n, e in ARCHITECTURES.items()]),
        ("loss.terms[].kind — loss terms", [(n, e.summary, e.params) for n, e in LOSS_TERMS.items()]),
        ("data.sampler — batch samplers", [(n, e.summary, e.params) for n, e in SAMPLERS.items()]),
        ("schedule.kind — LR schedules", [(n, e.summary, e.params) for n, e in sorted(SCHEDULES.items())]),
        ("optim.name — optimisers", [(n, e.summary, e.params) for n, e in sorted(OPTIMIZERS.items())]),
    ]
    lines: list[str] = []
    for title, entries in sections:
        lines.append(title)
        for name, summary, params in entries:
            lines.append(f"  {name:<10} {summary}{_params(params)}")
    return lines


@click.command("components")
@user_errors
def components() -> None:
    """List the registered components a spec can name, with their options and defaults."""
    for line in component_lines():
        click.echo(line)
