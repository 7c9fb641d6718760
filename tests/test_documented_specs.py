"""Every spec the documentation shows loads and builds (no training).

Generated from the files themselves, so a new base, profile, preset, step list, documented
command or YAML example is covered without editing this test:

- experiments/*.yaml: every base × profile × (no preset, each preset) × (each step list, and the
  base's default ``ablate`` rows);
- README.md, docs/*.md and the comments of experiments/*.yaml: every ``reidbench ablate`` command
  line (``--base``, ``--add``, ``--mode``, ``--steps``, ``--preset``, ``--profile``, ``--epochs``,
  ``--eval``), with both profiles when it names none;
- the fenced YAML examples in README.md and docs/*.md that are spec files.

Each distinct spec must survive ``to_dict`` → ``spec_from_dict`` (a documented spec holds no
field that nothing reads) and build through ``build_parts`` — model, objective, optimiser, LR
schedule, stage plan — on PyTorch's meta device (shapes only: seconds for the lot, no weights).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path
from typing import Iterator

import pytest
import torch
import yaml

from reidbench.api import EXPERIMENTS, base_path
from reidbench.harness.ablation.defaults import applicable_tricks, choose_rows, parse_default_ablation
from reidbench.harness.ablation.expand import DESIGN_MODES, expand, expand_steps, make_design
from reidbench.harness.spec import (FILE_ONLY_KEYS, RunSpec, load_base_file, load_yaml, spec_from_dict, to_jsonable,
                                     with_epochs)
from reidbench.harness.spec.patches import apply_patch, parse_presets, parse_step_lists
from reidbench.models.architectures import build_architecture
from reidbench.tricks import parse_trick_list

ROOT = EXPERIMENTS.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
YAMLS = sorted(EXPERIMENTS.glob("*.yaml"))
PROFILES = ("paper", "cpu")
NUM_CLASSES = 11
COMMAND = re.compile(r"reidbench ablate\b[^`|#\n]*")
PLACEHOLDER = re.compile(r"\bNAME\b|\.\.\.|\[|\]|\\$|<|>")


@dataclasses.dataclass(frozen=True)
class Plan:
    """One documented table: a base file, profile and preset, and its rows (tricks + mode, or a step list)."""

    where: str
    base: Path
    profile: str
    preset: str | None = None
    steps: str | None = None
    tricks: str | None = None  # None: the base's default rows
    mode: str = "cumulative"
    mode_given: bool = False  # --mode was on the command line
    epochs: int | None = None
    evals: tuple[str, ...] = ()
    resolution: str | None = None  # --mode fractional


def _load(plan: Plan) -> tuple[RunSpec, dict]:
    spec, extras = load_base_file(plan.base, plan.profile)
    presets = parse_presets(extras.get("presets"), f"{plan.base.name}: presets")
    if plan.preset is not None:
        spec = apply_patch(spec, presets[plan.preset], presets=presets)
    if plan.epochs is not None:
        spec = with_epochs(spec, plan.epochs)
    return spec, {**extras, "_presets": presets}


def specs_of(plan: Plan) -> list[RunSpec]:
    """The specs the plan's rows train (what ``ablate`` would expand, data fingerprints aside)."""
    spec, extras = _load(plan)
    if plan.evals:
        names = {str(k) for k in (extras.get("evaluations") or {})}
        unknown = [e for e in plan.evals if e not in names]
        assert not unknown, f"{plan.where}: --eval {unknown[0]} is not an evaluation variant of {plan.base.name}"
    lists = parse_step_lists(extras.get("ablations"), f"{plan.base.name}: ablations")
    # No --add/--mode/--steps: the base file's default_ablation, as ``ablate`` chooses it.
    default = parse_default_ablation(extras.get("default_ablation"), f"{plan.base.name}: default_ablation", list(lists))
    rows = choose_rows(default, plan.tricks, plan.mode if plan.mode_given else None, plan.steps)
    if rows.steps is not None:
        assert rows.steps in lists, f"{plan.where}: --steps {rows.steps} is not a step list of {plan.base.name}"

        def other(name: str) -> RunSpec:
            one = load_base_file(base_path(name), plan.profile)[0]
            return with_epochs(one, plan.epochs) if plan.epochs is not None else one

        steps = expand_steps(spec, lists[rows.steps], [0], None, presets=extras["_presets"], load_base=other)
    else:
        tricks = parse_trick_list(rows.tricks)
        if rows.by_default:  # the default tricks that do not apply are skipped (ablate names them)
            tricks, _ = applicable_tricks(spec, tricks, rows.mode)
        design = make_design(tricks, rows.mode, plan.resolution) if rows.mode in DESIGN_MODES else None
        steps = expand(spec, tricks, rows.mode, [0], None, design=design)
    return [s.spec for s in steps]


def file_plans() -> Iterator[Plan]:
    """Every base × profile × preset × step list (and the default rows) of experiments/."""
    for path in YAMLS:
        for profile in load_yaml(path).get("profiles") or PROFILES:  # each profile the file defines (cpu-v1 too)
            _, extras = load_base_file(path, profile)
            presets = [None, *parse_presets(extras.get("presets"), path.name)]
            lists = parse_step_lists(extras.get("ablations"), path.name)
            for preset in presets:
                where = f"{path.name} --profile {profile}" + (f" --preset {preset}" if preset else "")
                for name in lists:
                    yield Plan(f"{where} --steps {name}", path, profile, preset, steps=name)
                yield Plan(f"{where} (its default_ablation)", path, profile, preset)


def command_plans() -> Iterator[Plan]:
    """Every complete ``reidbench ablate`` command line written in the docs and the base files' comments."""
    seen: set[str] = set()
    for doc in [*DOCS, *YAMLS]:
        for match in COMMAND.finditer(doc.read_text()):
            line = match.group(0).strip()
            if PLACEHOLDER.search(line) or line in seen:
                continue
            seen.add(line)
            args = shlex.split(line)[2:]
            opts: dict[str, str] = {}
            i = 0
            while i < len(args):
                key = args[i]
                if key.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
                    opts[key], i = args[i + 1], i + 2
                else:
                    opts[key], i = "", i + 1
            base = base_path(opts.get("--base", "bot"))
            for profile in ([opts["--profile"]] if "--profile" in opts else PROFILES):
                yield Plan(f"{doc.name}: {line}", base, profile, opts.get("--preset"), opts.get("--steps"),
                           opts.get("--add"), opts.get("--mode", "cumulative"), "--mode" in opts,
                           int(opts["--epochs"]) if "--epochs" in opts else None,
                           tuple(e for e in opts.get("--eval", "").split(",") if e), opts.get("--resolution"))


def yaml_examples() -> Iterator[tuple[str, dict]]:
    """Fenced ```yaml blocks of the docs that are spec files (they have spec sections)."""
    for doc in DOCS:
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", doc.read_text(), flags=re.S)):
            raw = yaml.safe_load(block)
            if isinstance(raw, dict) and {"model", "data", "loss", "optim", "schedule", "stages"} & set(raw):
                yield f"{doc.name} yaml block {i + 1}", {k: v for k, v in raw.items() if k not in FILE_ONLY_KEYS}


_MODELS: dict[str, torch.nn.Module] = {}
_BUILD_ARCHITECTURE = build_architecture


def _cached_architecture(model, num_classes):
    """Each distinct model section is built once (on the meta device); specs sharing it get a copy."""
    import copy

    key = f"{json.dumps(to_jsonable(model), sort_keys=True)}|{num_classes}"
    if key not in _MODELS:
        _MODELS[key] = _BUILD_ARCHITECTURE(model, num_classes)
    return copy.deepcopy(_MODELS[key])


def _build(spec: RunSpec, monkeypatch) -> None:
    import reidbench.models.architectures as architectures
    from reidbench.harness.train.build import build_parts

    monkeypatch.setattr(architectures, "build_architecture", _cached_architecture)
    shapes_only = dataclasses.replace(spec, model=dataclasses.replace(spec.model, pretrained=False, weights_path=None))
    with torch.device("meta"):
        parts = build_parts(shapes_only, NUM_CLASSES, "meta")
    assert parts.optimizer.param_groups and parts.objective is not None
    assert len(parts.stages.stages) == max(1, len(spec.stages))


def test_the_generators_find_what_the_docs_show():
    plans = list(command_plans())
    assert len(plans) > 40
    assert any(p.steps == "vs-bot" and p.base.stem == "mgn" for p in plans)
    assert any(p.preset == "fastreid" for p in plans)
    assert len(list(file_plans())) > 20
    assert [w for w, _ in yaml_examples()], "docs/design.md's example spec is a fenced yaml block"


def test_every_documented_spec_loads_and_builds(monkeypatch):
    built: set[str] = set()
    problems: list[str] = []
    plans = [*file_plans(), *command_plans()]
    for plan in plans:
        try:
            specs = specs_of(plan)
        except (ValueError, AssertionError) as exc:
            problems.append(f"{plan.where}: {str(exc).splitlines()[0]}")
            continue
        for spec in specs:
            key = spec.to_json()
            if key in built:
                continue
            built.add(key)
            try:
                assert spec_from_dict(spec.to_dict()) == spec
                _build(spec, monkeypatch)
            except (ValueError, AssertionError, RuntimeError) as exc:
                problems.append(f"{plan.where}: {str(exc).splitlines()[0]}")
    for where, raw in yaml_examples():
        try:
            _build(spec_from_dict(raw, where), monkeypatch)
        except (ValueError, RuntimeError) as exc:
            problems.append(f"{where}: {str(exc).splitlines()[0]}")
    assert not problems, f"{len(problems)} documented spec(s) do not load or build:\n" + "\n".join(problems)
    assert len(built) > 50
