"""Where the ImageNet weights of every backbone that a shipped profile trains from will come from.

The answer is ``models.weights.weights_plan`` (the same search order a run uses: model.weights_path,
an offline package, the torch hub and Hugging Face caches, a download); this module only turns it
into screen lines. Nothing is loaded and nothing is downloaded here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from reidbench.harness.doctor.record import FAIL, OK, WARN, Check
from reidbench.models.weights import weights_available, weights_plan

DOWNLOAD = "download:"


def _home(path: Path) -> str:
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home):] if text == home or text.startswith(home + os.sep) else text


def short_source(source: str) -> str:
    """A recorded source string shortened for the screen: the package without its file inside."""
    return ":".join(source.split(":")[:2]) if source.startswith("pip:") else source


# ------------------------------------------------------------------------- shipped profiles

@dataclass(frozen=True)
class Use:
    base: str
    profile: str
    weights_path: str | None = None


def shipped_uses(folder: Path) -> dict[str, list[Use]]:
    """{backbone: [(base, profile)]} over experiments/*.yaml × their profiles, where model.pretrained is true."""
    from reidbench.harness.spec import PROFILES, load_yaml
    from reidbench.harness.spec.loading import load_base_file

    out: dict[str, list[Use]] = {}
    for path in sorted(folder.glob("*.yaml")):
        raw = load_yaml(path) or {}
        defined = list(raw.get("profiles") or {}) or [raw.get("profile", "paper")]
        for profile in (p for p in PROFILES if p in defined):
            spec, _ = load_base_file(path, profile)
            if spec.model.pretrained:
                out.setdefault(spec.model.backbone, []).append(Use(path.stem, profile, spec.model.weights_path))
    return out


def _uses_text(uses: Sequence[Use]) -> str:
    by_profile: dict[str, list[str]] = {}
    for use in uses:
        by_profile.setdefault(use.profile, []).append(use.base)
    return "; ".join(f"{profile}: {', '.join(bases)}" for profile, bases in by_profile.items())


def weights_checks(uses: Mapping[str, Sequence[Use]], blocking: Iterable[tuple[str, str]] = ()) -> list[Check]:
    """One line per backbone. ``blocking``: (base, profile) pairs the default workflow runs (a miss there
    fails, elsewhere it is advice)."""
    blocking = set(blocking)
    checks = []
    for backbone, backbone_uses in uses.items():
        paths = {u.weights_path for u in backbone_uses}
        weights_path = next(iter(paths)) if len(paths) == 1 else None
        where = _uses_text(backbone_uses)
        try:
            plan = weights_plan(backbone, weights_path)
        except ValueError as err:
            checks.append(Check("weights", FAIL, f"{backbone} ({where}): {err}", {"backbone": backbone}))
            continue
        data = {"backbone": backbone, "uses": [[u.base, u.profile] for u in backbone_uses],
                "plan": [list(entry) for entry in plan]}
        chosen = next((entry for entry in plan if entry[1]), None)
        if chosen is not None and chosen[0].startswith(DOWNLOAD):
            checks.append(Check("weights", OK, f"{backbone} ← download of {chosen[0][len(DOWNLOAD):]} on first use "
                                                f"(needs network access), then cached ({where})", data))
            continue
        if chosen is not None:
            checks.append(Check("weights", OK, f"{backbone} ← {short_source(chosen[0])} ({where})", data))
            continue
        needed = any((u.base, u.profile) in blocking for u in backbone_uses)
        problem = weights_available(backbone, weights_path) or "no source available"
        checks.append(Check("weights", FAIL if needed else WARN, f"{backbone} ({where}): {problem}", data))
    return checks
