"""Tables of the results database (SQLAlchemy 2.0 declarative mapping).

Every table carries the ``rb_`` prefix so Optuna's tables can share the file. JSON lives in
TEXT columns (portable across SQLite and PostgreSQL, and exact: sorted keys, Python floats).
Times are stored as naive UTC and come back timezone-aware.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import PurePath
from typing import Any

from sqlalchemy import (
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# 2: evaluations, run aliases, training fingerprint; 3: per-query results; 4: run hashes hold the pretrained
# weights' digest and no field that nothing reads; 5: convergence records (migrations.py upgrades older ones)
SCHEMA_VERSION = 5
RUN_STATUSES = ("pending", "running", "done", "failed")
EVALUATION_STATUSES = ("done", "failed")
NAME_CHARS = 200  # test set, metric, label and owner names
HASH_CHARS = 128  # run hashes, aliases and fingerprints
KEY_CHARS = 64  # evaluation keys


def _json_default(value: Any) -> Any:
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_json_default, separators=(",", ":"))


class JSONText(TypeDecorator):
    """A JSON document in a TEXT column; None stays SQL NULL."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        return None if value is None else dumps(value)

    def process_result_value(self, value: str | None, dialect: Any) -> Any:
        return None if value is None else json.loads(value)


class UTCDateTime(TypeDecorator):
    """Naive UTC in the database, aware UTC in Python (naive input is taken to be UTC already)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "rb_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Run(Base):
    __tablename__ = "rb_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_hash: Mapped[str] = mapped_column(String(HASH_CHARS), unique=True)
    label: Mapped[str] = mapped_column(String(NAME_CHARS), default="")
    status: Mapped[str] = mapped_column(String(16), index=True, default="pending")
    spec: Mapped[Any] = mapped_column(JSONText)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    owner: Mapped[str | None] = mapped_column(String(NAME_CHARS))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    error: Mapped[str | None] = mapped_column(Text)
    git_commit: Mapped[str | None] = mapped_column(String(80))
    versions: Mapped[Any | None] = mapped_column(JSONText)
    device: Mapped[str | None] = mapped_column(Text)
    host: Mapped[str | None] = mapped_column(Text)
    provenance: Mapped[Any | None] = mapped_column(JSONText)
    model_info: Mapped[Any | None] = mapped_column(JSONText)
    seconds_train: Mapped[float | None] = mapped_column(Float)
    seconds_eval: Mapped[float | None] = mapped_column(Float)
    out_dir: Mapped[str | None] = mapped_column(Text)
    train_fingerprint: Mapped[str | None] = mapped_column(String(HASH_CHARS))


class RunAlias(Base):
    """An earlier hash of a run (a schema-1 hash), so notes and study trials that hold it still resolve."""

    __tablename__ = "rb_run_aliases"

    alias_hash: Mapped[str] = mapped_column(String(HASH_CHARS), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("rb_runs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Evaluation(Base):
    """One scoring of a trained run: a test set (and its fingerprint) under some settings.

    ``key`` is the evaluation's identity, computed by the caller and opaque here; ``variant`` is
    only a label ("" = the run's default evaluation, "rerank", or a user's name).
    """

    __tablename__ = "rb_evaluations"
    __table_args__ = (UniqueConstraint("run_id", "key", name="uq_rb_evaluations"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("rb_runs.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(KEY_CHARS))
    test_set: Mapped[str] = mapped_column(String(NAME_CHARS))
    test_fingerprint: Mapped[str | None] = mapped_column(String(HASH_CHARS))
    variant: Mapped[str] = mapped_column(String(NAME_CHARS), default="", server_default=text("''"))
    settings: Mapped[Any] = mapped_column(JSONText)
    status: Mapped[str] = mapped_column(String(16), default="done")
    error: Mapped[str | None] = mapped_column(Text)
    features_path: Mapped[str | None] = mapped_column(Text)
    seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class QueryScores(Base):
    """Per-query results of one evaluation (``harness/evaluation/per_query.py``: compressed npz bytes).

    No row = the evaluation lacks them (recorded before schema 3, or by a caller that did not
    keep them); reports fill them in from the evaluation's saved features on demand.
    """

    __tablename__ = "rb_query_scores"

    evaluation_id: Mapped[int] = mapped_column(ForeignKey("rb_evaluations.id", ondelete="CASCADE"),
                                               primary_key=True)
    num_queries: Mapped[int] = mapped_column(Integer)
    payload: Mapped[bytes] = mapped_column(LargeBinary)


class Metric(Base):
    __tablename__ = "rb_metrics"
    __table_args__ = (
        # Final metrics (step NULL) are one row per (evaluation, metric). NULLs are distinct inside
        # a UNIQUE constraint, hence a partial index. Databases upgraded from schema 1 still carry
        # the old UNIQUE (run_id, test_set, metric, step): it never fires for step NULL rows.
        Index("uq_rb_metrics_eval_final", "evaluation_id", "metric", unique=True,
              sqlite_where=text("step IS NULL"), postgresql_where=text("step IS NULL")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("rb_runs.id", ondelete="CASCADE"), index=True)
    evaluation_id: Mapped[int | None] = mapped_column(ForeignKey("rb_evaluations.id", ondelete="CASCADE"),
                                                      index=True)
    test_set: Mapped[str] = mapped_column(String(NAME_CHARS))
    metric: Mapped[str] = mapped_column(String(NAME_CHARS))
    value: Mapped[float] = mapped_column(Float)
    step: Mapped[int | None] = mapped_column(Integer)


class Epoch(Base):
    __tablename__ = "rb_epochs"
    __table_args__ = (UniqueConstraint("run_id", "epoch", name="uq_rb_epochs"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("rb_runs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    values: Mapped[Any] = mapped_column(JSONText)


class ConvergenceRow(Base):
    """A finished run's convergence record (``harness/train/convergence.py``): the verdict and the two
    measured changes as columns, the whole record (window, values, reason, thresholds) as JSON.
    No row = unknown (a run not finished yet)."""

    __tablename__ = "rb_convergence"

    run_id: Mapped[int] = mapped_column(ForeignKey("rb_runs.id", ondelete="CASCADE"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # yes | no | unknown
    first_epoch: Mapped[int | None] = mapped_column(Integer)  # the window (a, b)
    last_epoch: Mapped[int | None] = mapped_column(Integer)
    loss_change: Mapped[float | None] = mapped_column(Float)  # relative
    map_change: Mapped[float | None] = mapped_column(Float)  # points
    detail: Mapped[Any] = mapped_column(JSONText)


class Ablation(Base):
    __tablename__ = "rb_ablations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_CHARS), index=True)
    base: Mapped[str] = mapped_column(Text)
    mode: Mapped[str] = mapped_column(String(64))
    meta: Mapped[Any] = mapped_column(JSONText)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AblationMember(Base):
    __tablename__ = "rb_ablation_members"
    __table_args__ = (UniqueConstraint("ablation_id", "position", name="uq_rb_ablation_members"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ablation_id: Mapped[int] = mapped_column(ForeignKey("rb_ablations.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[int] = mapped_column(ForeignKey("rb_runs.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(NAME_CHARS), default="")
    step: Mapped[str] = mapped_column(String(NAME_CHARS), default="")
    seed: Mapped[int | None] = mapped_column(Integer)
