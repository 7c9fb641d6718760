"""A study plan: the patched base, its search space and objective, and the run each point becomes.

Pure: no optuna, no database. Every trial's spec is the base with the tricks applied (done once
here) and then ``data.ids_per_batch``, ``data.imgs_per_id`` and ``data.image_size`` replaced, so a
trial hashes exactly like the same configuration reached through ``reidbench ablate`` or
``reidbench train`` and reuses its cached result.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from reidbench.harness.spec.hashing import run_hash
from reidbench.harness.spec import RunSpec, canonical_json, replace_section
from reidbench.harness.study.space import OBJECTIVES, Point, StudySpace
from reidbench.tricks import Trick, trick_versions

# The paper's Tables 5 and 6: every trick except the center loss.
DEFAULT_TRICKS = "warmup,rea,ls,stride,bnneck"
STUDY_SCHEMA = 1
# With --prune and no periodic evaluation in the base: about this many evaluations per run.
PRUNE_EVALUATIONS = 12


@dataclass(frozen=True)
class StudyPlan:
    name: str
    base_name: str
    base: RunSpec  # tricks applied, data/epochs/eval set; P, K and image size are the base's
    space: StudySpace
    metric: str  # "mAP" or "R1", on the first test set
    trials: int  # the study's total budget of trials (grid: at most the number of points)
    prune: bool = False
    notes: tuple[str, ...] = ()
    train_fingerprint: str | None = None  # the training data's fingerprint: part of every run hash
    # The pretrained weights' digest (models/weights.py): part of every run hash; every point shares the
    # base's model section. "pending:<backbone>" in a dry run before the weights are downloaded.
    weights_digest: str | None = None

    @property
    def first_test(self) -> str:
        return self.base.data.test[0]

    @property
    def fingerprint(self) -> str:
        """What the study measures; a study of the same name measuring something else is refused."""
        payload = {"schema": STUDY_SCHEMA,
                   "base": run_hash(self.base, trick_versions(self.base.tricks), self.train_fingerprint,
                                    self.weights_digest),
                   "space": self.space.to_attrs(), "metric": self.metric}
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()

    def point_spec(self, point: Point) -> RunSpec:
        return replace_section(self.base, "data", ids_per_batch=point.ids_per_batch, imgs_per_id=point.imgs_per_id,
                               image_size=tuple(point.image_size)).validate()

    def point_hash(self, point: Point) -> str:
        spec = self.point_spec(point)
        return run_hash(spec, trick_versions(spec.tricks), self.train_fingerprint, self.weights_digest)

    def grid_params(self) -> list[dict[str, str]]:
        """The grid points this study runs (the first ``trials`` in table order); empty for tpe."""
        if self.space.sampler != "grid":
            return []
        return self.space.grid_points()[: self.trials]

    def attrs(self) -> dict[str, Any]:
        """The study's user attributes: enough to rebuild every trial's spec and to caption a table."""
        base = self.base
        return {
            "reidbench_study": STUDY_SCHEMA,
            "fingerprint": self.fingerprint,
            "base": self.base_name,
            "base_spec": base.to_dict(),
            "profile": base.profile,
            "tricks": list(base.tricks),
            "train": base.data.train,
            "test": list(base.data.test),
            "epochs": base.schedule.max_epochs,
            "full_epochs": base.full_epochs,
            "seed": base.train.seed,
            "metric": self.metric,
            "objective": f"final {self.metric} on {self.first_test}",
            "prune": self.prune,
            "notes": list(self.notes),
            "train_fingerprint": self.train_fingerprint,
            **({"weights_digest": self.weights_digest} if self.weights_digest is not None else {}),
            **self.space.to_attrs(),
        }


def patched_base(base: RunSpec, tricks: Sequence[Trick], *, prune: bool = False) -> RunSpec:
    """Apply ``tricks`` in order; with ``prune`` make sure the run evaluates periodically."""
    spec = base
    for trick in tricks:
        spec = trick.apply(spec)
    if prune and spec.eval.every_epochs == 0:
        every = max(1, round(spec.schedule.max_epochs / PRUNE_EVALUATIONS))
        spec = replace_section(spec, "eval", every_epochs=every)
    return spec.validate()


def plan_study(base: RunSpec, base_name: str, tricks: Sequence[Trick], space: StudySpace, objective: str,
               trials: int | None = None, *, name: str | None = None, prune: bool = False,
               notes: Sequence[str] = (), data_paths: Mapping[str, str] | None = None,
               download_weights: bool = True) -> StudyPlan:
    """The plan of ``reidbench study``. ``trials`` defaults to every grid point (grid) or 20 (tpe)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"--objective {objective!r} is not valid: {', '.join(OBJECTIVES)}")
    if trials is not None and trials < 1:
        raise ValueError(f"--trials {trials} is not valid: an integer >= 1")
    spec = patched_base(base, tricks, prune=prune)
    if space.sampler == "grid":
        budget = min(trials, space.num_points()) if trials is not None else space.num_points()
    else:
        budget = trials if trials is not None else 20
    train_fp = weights = None
    if data_paths is not None:  # with the data: runs keyed by its fingerprint and by the weights' digest
        from reidbench.harness.data.fingerprint import dataset_fingerprint
        from reidbench.models.weights import WeightsResolver

        train_fp = dataset_fingerprint(spec.data.train, data_paths).train
        weights = WeightsResolver(download=download_weights)(spec)
    plan = StudyPlan(name="", base_name=base_name, base=spec, space=space, metric=OBJECTIVES[objective],
                     trials=budget, prune=prune, notes=tuple(notes), train_fingerprint=train_fp,
                     weights_digest=weights)
    if name is not None and not name.strip():
        raise ValueError("--name is empty: give a study name or leave it out for the default")
    chosen = name.strip() if name else f"{base_name}-{space.space}-{space.sampler}-{plan.fingerprint[:10]}"
    return dataclasses.replace(plan, name=chosen)
