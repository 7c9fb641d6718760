"""ORM rows → frozen records, loading what hangs off them (aliases, metrics) in batched queries."""

from __future__ import annotations

from typing import Hashable, Iterator, Sequence, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from reidbench.harness.store.records import EvaluationRecord, RunRecord
from reidbench.harness.store.tables import Evaluation, Metric, QueryScores, Run, RunAlias

IN_CHUNK = 500  # items per IN (...) list: far below SQLite's and PostgreSQL's parameter limits

T = TypeVar("T", bound=Hashable)


def chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterator[list[T]]:
    """Distinct ``items`` in order, ``size`` at a time."""
    unique = list(dict.fromkeys(items))
    for start in range(0, len(unique), size):
        yield unique[start:start + size]


def run_records(s: Session, rows: Sequence[Run]) -> list[RunRecord]:
    """Records of ``rows`` with their aliases (one query per 500 runs)."""
    aliases: dict[int, list[str]] = {row.id: [] for row in rows}
    for chunk in chunks(list(aliases)):
        stmt = (select(RunAlias.run_id, RunAlias.alias_hash).where(RunAlias.run_id.in_(chunk))
                .order_by(RunAlias.created_at, RunAlias.alias_hash))
        for run_id, alias in s.execute(stmt):
            aliases[run_id].append(alias)
    return [
        RunRecord(
            run_hash=row.run_hash, label=row.label or "", status=row.status, spec=dict(row.spec or {}),
            created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at,
            heartbeat_at=row.heartbeat_at, owner=row.owner, attempts=int(row.attempts or 0), error=row.error,
            git_commit=row.git_commit, versions=dict(row.versions or {}), device=row.device, host=row.host,
            provenance=dict(row.provenance or {}), model_info=dict(row.model_info or {}),
            seconds_train=row.seconds_train, seconds_eval=row.seconds_eval, out_dir=row.out_dir,
            train_fingerprint=row.train_fingerprint, aliases=tuple(aliases[row.id]),
        )
        for row in rows
    ]


def evaluation_records(s: Session, rows: Sequence[tuple[Evaluation, str]]) -> list[EvaluationRecord]:
    """Records of (evaluation row, run hash) pairs with their final metrics, in recorded order."""
    metrics: dict[int, dict[str, float]] = {e.id: {} for e, _ in rows}
    for chunk in chunks(list(metrics)):
        stmt = (select(Metric.evaluation_id, Metric.metric, Metric.value)
                .where(Metric.evaluation_id.in_(chunk), Metric.step.is_(None)).order_by(Metric.id))
        for evaluation_id, name, value in s.execute(stmt):
            metrics[evaluation_id][name] = float(value)
    with_queries: set[int] = set()
    for chunk in chunks(list(metrics)):
        with_queries.update(s.scalars(select(QueryScores.evaluation_id).where(QueryScores.evaluation_id.in_(chunk))))
    return [
        EvaluationRecord(
            run_hash=run_hash, key=e.key, test_set=e.test_set, test_fingerprint=e.test_fingerprint,
            variant=e.variant or "", settings=dict(e.settings or {}), status=e.status, metrics=metrics[e.id],
            features_path=e.features_path, seconds=e.seconds, created_at=e.created_at,
            finished_at=e.finished_at, error=e.error, has_per_query=e.id in with_queries,
        )
        for e, run_hash in rows
    ]
