"""``reidbench bases``: the base files of experiments/ with their profiles, presets, step lists and evaluations."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from reidbench.harness.cli.common import command_options, resolve_base


def experiments_folder() -> Path:
    return Path(__file__).resolve().parents[2] / "experiments"


def describe_base(path: Path) -> dict[str, Any]:
    """What a base file offers besides its spec: plain data, validated like ``ablate`` reads it."""
    from reidbench.harness.ablation.defaults import KEY, parse_default_ablation
    from reidbench.harness.evaluation.settings import parse_variants
    from reidbench.harness.spec import load_yaml
    from reidbench.harness.spec.patches import parse_presets, parse_step_lists

    raw = load_yaml(path) or {}
    presets = parse_presets(raw.get("presets"), f"{path.name}: presets")
    lists = parse_step_lists(raw.get("ablations"), f"{path.name}: ablations")
    variants = parse_variants(raw.get("evaluations"), where=f"{path.name}: evaluations")
    default = parse_default_ablation(raw.get(KEY), f"{path.name}: {KEY}", list(lists))
    return {
        "name": path.stem, "path": str(path), "description": str(raw.get("description") or ""),
        "arch": str((raw.get("model") or {}).get("arch", "bot")),
        "profiles": list((raw.get("profiles") or {"paper": {}})),
        "presets": {name: p.label for name, p in presets.items()},
        "step_lists": {name: {"summary": s.summary, "steps": [p.label for p in s.steps]} for name, s in lists.items()},
        "evaluations": {v.name: v.label for v in variants},
        "default_ablation": default.describe() if default.declared else f"(none declared: BoT's six) {default.describe()}",
    }


def presets_by_arch() -> dict[str, list[str]]:
    """``{arch: ["mgn:fastreid", ...]}`` over the shipped base files."""
    out: dict[str, list[str]] = {}
    for path in sorted(experiments_folder().glob("*.yaml")):
        info = describe_base(path)
        out.setdefault(info["arch"], []).extend(f"{info['name']}:{p}" for p in info["presets"])
    return out


@dataclass(frozen=True)
class BasesOptions:
    name: str | None


@click.command("bases")
@click.argument("name", required=False)
@command_options(BasesOptions)
def bases(opts: BasesOptions) -> None:
    """List the base files (experiments/) or show one: profiles, presets (--preset), step lists (--steps),
    evaluation variants (--eval), and what `ablate --base NAME` runs without --add/--mode/--steps."""
    paths = [resolve_base(opts.name)] if opts.name else sorted(experiments_folder().glob("*.yaml"))
    for path in paths:
        info = describe_base(path)
        click.echo(f"{info['name']}  (model.arch {info['arch']}; profiles {', '.join(info['profiles'])})")
        if info["description"]:
            click.echo(f"  {info['description']}")
        for preset, label in info["presets"].items():
            click.echo(f"  --preset {preset}: {label}")
        for step_list, body in info["step_lists"].items():
            click.echo(f"  --steps {step_list}: {body['summary']}")
            click.echo(f"      rows: {' | '.join(body['steps'])}")
        if info["evaluations"]:
            click.echo(f"  --eval {', '.join(info['evaluations'])}")
        click.echo(f"  default (ablate --base {info['name']} alone): {info['default_ablation']}")
