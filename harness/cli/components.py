"""``reidbench components``: every registered architecture, loss term, sampler, schedule and optimiser."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import click

from reidbench.harness.cli.common import NoOptions, UserError, command_options, profile_option


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


def step_rows(base: str, steps_name: str, profile: str | None, num_classes: int,
              backbone: str | None = None) -> list[dict[str, Any]]:
    """The models of a base file's step list (``ablate --steps NAME``), one row per step: its
    architecture built from the step's spec (no pretrained weights; ``backbone`` replaces the spec's
    when given), with the step's own loss terms counted, and the test feature's width."""
    import dataclasses as dc

    import torch

    from reidbench.harness.cli.common import default_profile, resolve_base
    from reidbench.harness.spec import load_base_file
    from reidbench.harness.spec.patches import apply_with_tricks, parse_presets, parse_step_lists
    from reidbench.models.architectures import build_architecture
    from reidbench.models.objective import build_objective

    base_file = resolve_base(base)
    chosen = profile or default_profile()
    spec, extras = load_base_file(base_file, chosen)
    lists = parse_step_lists(extras.get("ablations"), f"{base_file.name}: ablations")
    if steps_name not in lists:
        raise UserError(f"--steps {steps_name!r} is not an ablation step list of {base_file.name}; valid: "
                        f"{', '.join(lists) or 'none defined (add an ablations: section)'}")
    presets = parse_presets(extras.get("presets"), f"{base_file.name}: presets")
    rows = []
    for patch in lists[steps_name].steps:
        one = apply_with_tricks(spec, patch, presets=presets,
                                load_base=lambda name: load_base_file(resolve_base(name), chosen)[0])
        model_spec = dc.replace(one.model, pretrained=False, weights_path=None,
                                **({"backbone": backbone} if backbone else {}))
        torch.manual_seed(0)
        model = build_architecture(model_spec, num_classes)
        objective = build_objective(one.loss.terms, num_classes, model.feature_dims)
        test = (model.test_feature,) if isinstance(model.test_feature, str) else tuple(model.test_feature)
        rows.append({"label": patch.label, "arch": model_spec.arch, "backbone": model_spec.backbone,
                     "profile": chosen, "num_classes": num_classes,
                     "params": sum(p.numel() for p in model.parameters())
                               + sum(p.numel() for p in objective.parameters()),
                     "feature_dim": sum(model.feature_dims[t] for t in test), "test_feature": list(test),
                     "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in model_spec.options},
                     "masks": one.data.masks, "image_size": list(one.data.image_size)})
    return rows


@dataclass(frozen=True)
class ModelsOptions:
    backbone: str | None
    num_classes: int
    base: str | None
    steps_name: str | None
    profile: str | None
    as_json: bool


@click.command("models")
@click.option("--backbone", default=None,
              help="Backbone to build each architecture with [default: resnet50; with --steps: each step's own].")
@click.option("--num-classes", type=int, default=751, show_default=True,
              help="Training identities (classifier width); 751 = Market-1501.")
@click.option("--base", default=None, help="With --steps: a base name in experiments/ or a YAML path [default: bot].")
@click.option("--steps", "steps_name", default=None, metavar="NAME",
              help="Instead of one row per architecture, one row per step of the base file's ablation step list "
                   "NAME (e.g. bot's pooling): the step's model, its loss terms' parameters, its test-feature width.")
@profile_option
@click.option("--json", "as_json", is_flag=True, help="A JSON list of {name, params, feature_dim, ...}.")
@command_options(ModelsOptions)
def models(opts: ModelsOptions) -> None:
    """Every architecture (or every step of a step list): parameter count (model + loss terms),
    test-feature width, options."""
    import json

    backbone, num_classes, base, steps_name, profile, as_json = (opts.backbone, opts.num_classes, opts.base,
                                                                 opts.steps_name, opts.profile, opts.as_json)

    if steps_name is None and (base is not None or profile is not None):
        raise UserError(f"{'--base' if base is not None else '--profile'} is only read with --steps NAME; "
                        "drop it or add --steps")
    if steps_name is not None:
        rows = step_rows(base or "bot", steps_name, profile, num_classes, backbone)
        if as_json:
            click.echo(json.dumps(rows, indent=1))
            return
        width = max(len(r["label"]) for r in rows)
        click.echo(f"{'step':<{width}} {'params':>12} {'feature':>8}  model options   "
                   f"[{base or 'bot'} --steps {steps_name}, profile {rows[0]['profile']}, {num_classes} classes]")
        for row in rows:
            options = ", ".join(f"{k}={v}" for k, v in row["options"].items()) or "defaults"
            masks = f"; data.masks={row['masks']}" if row["masks"] else ""
            click.echo(f"{row['label']:<{width}} {row['params']:>12,} {row['feature_dim']:>8}  "
                       f"{row['arch']} on {row['backbone']} {row['image_size'][0]}x{row['image_size'][1]}: "
                       f"{options}{masks}")
        return
    backbone = backbone or "resnet50"
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
