"""``reidbench components``: every registered architecture, loss term, sampler, schedule and optimiser."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import click

from reidbench.harness.cli.common import NoOptions, command_options


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
@command_options(NoOptions)
def components(opts: NoOptions) -> None:
    """List the registered components a spec can name, with their options and defaults."""
    for line in component_lines():
        click.echo(line)


def architecture_rows(backbone: str, num_classes: int) -> list[dict[str, Any]]:
    """Every architecture built with ``backbone`` (no pretrained weights) and the default loss terms.

    ``params`` counts every parameter of the model and of its loss terms, trained or frozen;
    ``feature_dim`` is the width of the default test feature; ``variants`` the options it accepts.
    """
    import dataclasses as dc

    import torch

    from reidbench.harness.spec import LossSpec, ModelSpec
    from reidbench.models.architectures import ARCHITECTURES, build_architecture
    from reidbench.models.objective import build_objective

    from reidbench.harness.cli.bases import presets_by_arch

    presets = presets_by_arch()
    rows = []
    for name, entry in ARCHITECTURES.items():
        torch.manual_seed(0)
        model = build_architecture(ModelSpec(arch=name, backbone=backbone, pretrained=False), num_classes)
        try:
            objective = build_objective(LossSpec().terms, num_classes, model.feature_dims)
            loss_params = sum(p.numel() for p in objective.parameters())
        except ValueError:  # the default terms read outputs this architecture does not have
            loss_params = 0
        test = (model.test_feature,) if isinstance(model.test_feature, str) else tuple(model.test_feature)
        options = {f.name: getattr(entry.params(), f.name) for f in dc.fields(entry.params)} if entry.params else {}
        rows.append({"name": name, "summary": entry.summary, "backbone": backbone, "num_classes": num_classes,
                     "params": sum(p.numel() for p in model.parameters()) + loss_params,
                     "feature_dim": sum(model.feature_dims[t] for t in test), "test_feature": list(test),
                     "variants": {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()},
                     "model_fields": list(entry.model_fields), "presets": presets.get(name, [])})
    return rows


@dataclass(frozen=True)
class ModelsOptions:
    backbone: str
    num_classes: int
    as_json: bool


@click.command("models")
@click.option("--backbone", default="resnet50", show_default=True, help="Backbone to build each architecture with.")
@click.option("--num-classes", type=int, default=751, show_default=True,
              help="Training identities (classifier width); 751 = Market-1501.")
@click.option("--json", "as_json", is_flag=True, help="A JSON list of {name, params, feature_dim, ...}.")
@command_options(ModelsOptions)
def models(opts: ModelsOptions) -> None:
    """Every architecture: parameter count (model + loss terms), test-feature width, accepted options."""
    import json

    backbone, num_classes, as_json = opts.backbone, opts.num_classes, opts.as_json

    rows = architecture_rows(backbone, num_classes)
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    click.echo(f"{'arch':<8} {'params':>12} {'feature':>8}  options (defaults)   [{backbone}, {num_classes} classes]")
    for row in rows:
        options = ", ".join(f"{k}={v}" for k, v in row["variants"].items()) or "no options of its own"
        click.echo(f"{row['name']:<8} {row['params']:>12,} {row['feature_dim']:>8}  {options}")
        click.echo(f"{'':<31}reads model.{', model.'.join(row['model_fields'])}"
                   + (f"; presets {', '.join(row['presets'])}" if row["presets"] else ""))
