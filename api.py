"""The library API: specs and training parts without the command line (a notebook, another trainer).

```python
import reidbench

spec = reidbench.load_spec("bot", profile="cpu", tricks="warmup,ls,bnneck")
parts = reidbench.build(spec, num_classes=751)  # no dataset needed
parts.model, parts.objective, parts.optimizer, parts.scheduler
```

``load_spec`` reads a base file as ``reidbench ablate``/``train`` do (profile overlay, preset,
``--epochs``, tricks applied in order); ``build`` returns what ``reidbench train`` builds for that
spec and that many training identities (``harness/train/build.py`` ``build_parts``). Both are
imported lazily by the package, so ``import reidbench`` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from reidbench.harness.spec import RunSpec
    from reidbench.harness.train.build import TrainingParts

EXPERIMENTS = Path(__file__).resolve().parent / "experiments"


def base_path(base: str | Path) -> Path:
    """A base name in the package's experiments/ folder (``bot``, ``mgn``, …) or a YAML path."""
    path = Path(base)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"{base}: no such spec file")
        return path
    candidate = EXPERIMENTS / f"{base}.yaml"
    if not candidate.is_file():
        names = ", ".join(sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")))
        raise ValueError(f"base {str(base)!r} is not known; valid: {names} (or a path to a YAML file)")
    return candidate


def load_spec(base: str | Path, profile: str | None = None, *, tricks: str | Iterable[str] = (),
              preset: str | None = None, epochs: int | None = None, seed: int | None = None) -> "RunSpec":
    """The validated spec of ``base`` with ``profile``, ``preset``, ``epochs`` and ``tricks`` applied in that order.

    ``profile`` None is the file's own (``paper`` unless it says otherwise). Errors are one-line
    ``SpecError``/``ValueError`` messages naming the field and what would be valid.
    """
    from reidbench.harness.spec import load_base_file, replace_section, with_epochs
    from reidbench.harness.spec.patches import apply_patch, parse_presets
    from reidbench.tricks import parse_trick_list

    path = base_path(base)
    spec, extras = load_base_file(path, profile)
    if preset is not None:
        presets = parse_presets(extras.get("presets"), f"{path.name}: presets")
        if preset not in presets:
            raise ValueError(f"preset {preset!r} is not a preset of {path.name}; valid: "
                             f"{', '.join(presets) or 'none defined'}")
        spec = apply_patch(spec, presets[preset], presets=presets)
    if epochs is not None:
        spec = with_epochs(spec, epochs)
    if seed is not None:
        spec = replace_section(spec, "train", seed=seed)
    for trick in parse_trick_list(tricks):
        spec = trick.apply(spec)
    return spec


def build(spec: "RunSpec | str | Path", num_classes: int, *, device: str = "cpu", profile: str | None = None
          ) -> "TrainingParts":
    """Model, objective, optimiser, LR schedule and stage plan of ``spec`` (a RunSpec, base name or path).

    ``num_classes``: the number of training identities (the classifier's width). Pretrained
    weights are loaded as ``train`` loads them; set ``model.pretrained: false`` in the spec to skip.
    """
    from reidbench.harness.spec import RunSpec
    from reidbench.harness.train.build import build_parts

    if not isinstance(spec, RunSpec):
        spec = load_spec(spec, profile)
    elif profile is not None:
        raise ValueError("profile= applies to a base name or path, not to a RunSpec that is already loaded")
    return build_parts(spec, num_classes, device)
