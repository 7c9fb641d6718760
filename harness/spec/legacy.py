"""What a schema-1 results database holds, in today's terms (used once, by the store's 1→2 upgrade).

Schema 1 hashed every spec field (evaluation settings and the dataset *name* included) and kept
re-ranked metrics as ``rerank_<metric>`` rows beside the plain ones. Here an old run becomes:

- its spec, loaded with today's loader (old flat loss fields become the same loss terms);
- its new hash: the training identity with the fingerprint of the data it trained on. For an
  embedded synthetic set that is its recipe (known without the data); for a folder, the folder
  named in the run's provenance is fingerprinted if it is still there (relative paths from the
  current folder). A folder that is gone cannot be vouched for: the run is keyed by the dataset
  name instead (``train_fingerprint`` None), kept and reported, but not served to new ablations;
- one evaluation per test set with the settings the old run was scored with (``eval.feature``
  ``auto`` resolved as the ``bot`` architecture did: f_i with the BNNeck, else f_t), plus a
  ``rerank`` variant evaluation holding the old ``rerank_*`` values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from reidbench.harness.spec.hashing import run_hash
from reidbench.harness.spec.loading import spec_from_stored

RERANK_PREFIX = "rerank_"


@dataclass(frozen=True)
class UpgradedEvaluation:
    key: str
    test_set: str
    test_fingerprint: str | None
    variant: str
    settings: dict[str, Any]
    metrics: dict[str, float]


@dataclass(frozen=True)
class UpgradedRun:
    run_hash: str
    spec: dict[str, Any]
    train_fingerprint: str | None
    evaluations: list[UpgradedEvaluation] = field(default_factory=list)


def _fingerprint(name: str, provenance: Mapping[str, Any]) -> Any:
    """The DataFingerprint of dataset ``name`` as the run saw it, or None when it cannot be established."""
    from reidbench.harness.data.fingerprint import dataset_fingerprint, synthetic_fingerprint

    prov = provenance.get(name) or {}
    if prov.get("synthetic"):
        try:
            return synthetic_fingerprint(name)
        except ValueError:
            return None
    root = prov.get("root")
    if not root or not Path(root).expanduser().is_dir():
        return None
    try:
        return dataset_fingerprint(name, {name: str(root)})
    except (OSError, ValueError):
        return None


def upgrade_v1_run(*, run_hash: str, spec: Mapping[str, Any], provenance: Mapping[str, Any],
                   metrics: Mapping[str, Mapping[str, float]]) -> UpgradedRun:
    """A schema-1 run (its stored spec, provenance and final metrics) as today's run + evaluations.

    Raises ValueError (SpecError) when the stored spec cannot be read by today's loader.
    """
    from reidbench.harness.evaluation.settings import RERANK_VARIANT, EvaluationSettings

    new = spec_from_stored(dict(spec))
    train_fp = _fingerprint(new.data.train, provenance)
    train = train_fp.train if train_fp is not None else None
    new_hash = _hash(new, train)
    default = EvaluationSettings.from_eval(new.eval).resolved("f_i" if new.model.neck == "bnneck" else "f_t")
    evaluations = []
    for test_set, values in metrics.items():
        test_fp = _fingerprint(test_set, provenance)
        test = test_fp.test if test_fp is not None else None
        plain = {k: float(v) for k, v in values.items() if not k.startswith(RERANK_PREFIX)}
        reranked = {k[len(RERANK_PREFIX):]: float(v) for k, v in values.items() if k.startswith(RERANK_PREFIX)}
        for variant, settings, chosen in (("", default, plain),
                                           (RERANK_VARIANT, EvaluationSettings(**{**default.to_dict(), "rerank": True}),
                                            reranked)):
            if chosen:
                evaluations.append(UpgradedEvaluation(key=settings.key(test), test_set=test_set, test_fingerprint=test,
                                                      variant=variant, settings=settings.to_dict(), metrics=chosen))
    return UpgradedRun(run_hash=new_hash, spec=new.to_dict(), train_fingerprint=train, evaluations=evaluations)


def _hash(spec: Any, train_fingerprint: str | None) -> str:
    return run_hash(spec, None, train_fingerprint)


def upgrade_v1_ablation_name(*, name: str, base: str, mode: str, meta: Mapping[str, Any],
                             member_hashes: Sequence[str]) -> str:
    """The name today's ``ablate`` gives the same ablation (so re-running it finds this record)."""
    from reidbench.harness.ablation.plan import ablation_name

    return ablation_name(base, mode, list(member_hashes))
