"""Frozen records handed out by the store: plain data, never ORM rows bound to a session."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

SHORT_HASH_CHARS = 12  # what the runner prints in its log lines


@dataclass(frozen=True)
class RunRecord:
    run_hash: str
    label: str
    status: str  # pending | running | done | failed
    spec: dict[str, Any]
    created_at: datetime  # every time is timezone-aware UTC
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    owner: str | None = None
    attempts: int = 0
    error: str | None = None
    git_commit: str | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    host: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)  # dataset name → provenance
    model_info: dict[str, Any] = field(default_factory=dict)
    seconds_train: float | None = None
    seconds_eval: float | None = None
    out_dir: str | None = None
    train_fingerprint: str | None = None  # the training data's fingerprint, part of the run hash
    aliases: tuple[str, ...] = ()  # earlier hashes of this run (schema-1 hashes), oldest first

    @property
    def synthetic(self) -> bool:
        """True when any dataset the run trained or was tested on is synthetic."""
        return any(bool(p.get("synthetic")) for p in self.provenance.values() if isinstance(p, dict))

    @property
    def pretrained(self) -> bool:
        return self.model_info.get("pretrained_source") is not None

    @property
    def short_hash(self) -> str:
        return self.run_hash[:SHORT_HASH_CHARS]


@dataclass(frozen=True)
class MetricRecord:
    run_hash: str
    test_set: str
    metric: str
    value: float
    step: int | None = None  # None = final metric
    variant: str = ""  # the evaluation's variant: "" = the run's default evaluation
    evaluation_key: str | None = None


@dataclass(frozen=True)
class EvaluationRecord:
    """One scoring of a run: a test set under some settings, with its final metrics."""

    run_hash: str
    key: str  # identity of the evaluation, computed by the caller
    test_set: str
    test_fingerprint: str | None
    variant: str  # "" = default, "rerank", or a user's name
    settings: dict[str, Any]
    status: str  # done | failed
    metrics: dict[str, float]  # metric → value, in the order they were recorded
    features_path: str | None
    seconds: float | None
    created_at: datetime
    finished_at: datetime | None
    error: str | None = None
    has_per_query: bool = False  # per-query results stored (Store.query_scores)


@dataclass(frozen=True)
class EpochRecord:
    run_hash: str
    epoch: int
    values: dict[str, Any]  # flattened: "loss/id", "lr", "images_per_s", "synth-a/mAP", ...


@dataclass(frozen=True)
class AblationRecord:
    id: int
    name: str
    base: str
    mode: str
    meta: dict[str, Any]
    created_at: datetime
    members: tuple[dict[str, Any], ...]  # ordered by position: position, run_hash, label, step, seed
