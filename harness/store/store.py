"""The results database: runs and their life cycle, evaluations and their final metrics,
training curves, ablations.

A run is one training (its hash covers the training only); an evaluation is one scoring of it
(test set + settings) and owns the final metrics. Lookups by an exact run hash fall back to the
run's aliases: the hashes it had before a schema upgrade.

Every public method is one short transaction (``_session``) that commits or rolls back as a
whole and hands out frozen records, never ORM rows. Claiming is a single conditional UPDATE, so
any number of processes (or machines, with PostgreSQL) can share one database: a run is claimed
by exactly one of them, and a claim whose heartbeat went stale can be taken over.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from sqlalchemy import and_, delete, exc, func, inspect, literal, or_, select, union, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker

from reidbench.harness.store.engine import (
    WRITE_OPTION,
    build_engine,
    describe,
    driver_errors,
    is_sqlite,
    parse_url,
    translate,
)
from reidbench.harness.store.errors import StoreError
from reidbench.harness.store.tables import (
    RUN_STATUSES,
    SCHEMA_VERSION,
    Ablation,
    AblationMember,
    Base,
    ConvergenceRow,
    Epoch,
    Evaluation,
    Meta,
    Metric,
    QueryScores,
    Run,
    RunAlias,
    UTCDateTime,
    dumps,
)
from reidbench.harness.store import migrations
from reidbench.harness.store.records import AblationRecord, EpochRecord, EvaluationRecord, MetricRecord, RunRecord
from reidbench.harness.store.results import (
    ParsedEvaluation,
    ParsedResult,
    finite_metric,
    parse_evaluation,
    parse_result,
)
from reidbench.harness.store.rows import chunks as _chunks
from reidbench.harness.store.rows import evaluation_records, run_records

if TYPE_CHECKING:
    import pandas

DEFAULT_URL = "sqlite:///results.db"
ENV_VAR = "REIDBENCH_DB"
ERROR_CHARS = 20_000  # a traceback's tail is what explains it
CLAIMABLE = ("pending", "failed")


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@contextmanager
def _sqlite_creation_lock(url: Any) -> Iterator[None]:
    """Serialise the first connection + schema check of processes opening one SQLite file.

    Two processes creating the same new file race to switch it to WAL; a connection that still
    sees the old journal mode then waits for an exclusive lock that the other side's open WAL
    connections never give up (seen as a 30 s "database is locked"). An flock on the file's
    folder makes the second opener wait until the file is in WAL mode with its tables. The folder,
    not the file: closing any descriptor of the database file would drop the POSIX locks SQLite
    holds on it in this process. Elsewhere (no fcntl, not a file) it does nothing.
    """
    path = url.database if is_sqlite(url) else None
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None  # type: ignore[assignment]
    if not path or path == ":memory:" or path.startswith("file:") or fcntl is None:
        yield
        return
    folder = os.path.dirname(os.path.abspath(os.path.expanduser(path)))
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # SQLite itself will say what is wrong with the path
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _normalise_url(url: str) -> str:
    """A bare path means an SQLite file, so ``REIDBENCH_DB=results.db`` works as well as a URL."""
    url = str(url).strip()
    if not url:
        raise StoreError("empty database URL; use e.g. sqlite:///results.db or postgresql://user@host/db")
    return url if "://" in url else f"sqlite:///{url}"


def _require_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise StoreError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _run_record(s: Session, row: Run) -> RunRecord:
    return run_records(s, [row])[0]


def _reopen(url: str, busy_timeout_s: float) -> "Store":
    return Store(url, busy_timeout_s=busy_timeout_s)


class Store:
    """Results database at ``url`` (any SQLAlchemy URL; a bare path means an SQLite file)."""

    def __init__(self, url: str = DEFAULT_URL, *, busy_timeout_s: float = 30.0) -> None:
        self.url = _normalise_url(url)
        self.busy_timeout_s = float(busy_timeout_s)
        self._url = parse_url(self.url)
        self._name = describe(self._url)
        self._engine = build_engine(self._url, self.busy_timeout_s)
        self._errors = driver_errors(self._engine)
        # Same pool, but transactions begun through it take SQLite's write lock up front.
        self._write_engine = self._engine.execution_options(**{WRITE_OPTION: True})
        self._reads = sessionmaker(bind=self._engine, expire_on_commit=False)
        self._writes = sessionmaker(bind=self._write_engine, expire_on_commit=False)
        self._pid = os.getpid()
        with _sqlite_creation_lock(self._url):
            self._prepare_schema()

    @staticmethod
    def default_url() -> str:
        """``$REIDBENCH_DB`` (a URL or an SQLite path) or ``sqlite:///results.db``."""
        return _normalise_url(os.environ.get(ENV_VAR) or DEFAULT_URL)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickles as its URL, so a store can be handed to spawned workers or submitit jobs,
        # which then open their own connections.
        return (_reopen, (self.url, self.busy_timeout_s))

    def __repr__(self) -> str:
        return f"Store({self._url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _session(self, write: bool = False) -> Iterator[Session]:
        """One transaction: commit on success, roll back on any exception, errors made one line."""
        if os.getpid() != self._pid:
            # A forked child must not share the parent's sockets/file handles: open its own.
            self._engine.dispose(close=False)
            self._pid = os.getpid()
        session = (self._writes if write else self._reads)()
        try:
            yield session
            session.commit()
        except BaseException as err:
            try:
                session.rollback()
            except self._errors:
                pass  # the connection is gone; the database rolled the transaction back itself
            if isinstance(err, self._errors) and not isinstance(err, StoreError):
                raise translate(err, self._url, self.busy_timeout_s) from err
            raise
        finally:
            session.close()

    def _prepare_schema(self) -> None:
        """Check the schema version, upgrade an older database in place, create missing tables.

        Never touches a database newer than this code. A new database is created at the current
        version directly; an older one runs every pending step of ``migrations`` (backup first).
        """
        stored, ready = self._schema_state()
        version = None if stored is None else self._check_version(stored)
        if version is not None and version < SCHEMA_VERSION:
            migrations.upgrade(self._migration_transaction, url=self._url, name=self._name, stored_version=version)
            stored, ready = self._schema_state()
        if stored is None or not ready:
            self._create_schema()

    def _schema_state(self) -> tuple[str | None, bool]:
        """(stored schema_version or None, whether every table exists)."""
        with self._session() as s:
            names = set(inspect(s.connection()).get_table_names())
            stored = s.get(Meta, "schema_version") if Meta.__tablename__ in names else None
            return (None if stored is None else stored.value), set(Base.metadata.tables) <= names

    @contextmanager
    def _migration_transaction(self) -> Iterator[Connection]:
        """One write transaction (BEGIN IMMEDIATE on SQLite) for one migration step."""
        with self._session(write=True) as s:
            yield s.connection()

    def _create_schema(self) -> None:
        for attempt in range(3):
            try:
                with self._session(write=True) as s:
                    conn = s.connection()
                    # PostgreSQL: two processes creating the tables at once would both pass the
                    # existence checks and the loser would fail on the catalog's unique index
                    # (pg_type_typname_nsp_index); the schema lock makes the second wait, then see them.
                    migrations.lock_schema(conn)
                    if Meta.__tablename__ in inspect(conn).get_table_names():
                        meta = s.get(Meta, "schema_version")
                        if meta is not None:
                            self._check_version(meta.value)  # another process may have just created it
                    Base.metadata.create_all(conn)
                    if s.get(Meta, "schema_version") is None:
                        s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                return
            except StoreError as err:
                # PostgreSQL: two processes creating the tables at once; the loser retries and finds them.
                if "already exists" not in str(err) or attempt == 2:
                    raise

    def _check_version(self, value: str) -> int:
        try:
            version = int(value)
        except ValueError:
            raise StoreError(f"{self._name}: rb_meta schema_version {value!r} is not an integer") from None
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self._name}: results database schema version {version} is newer than this reidbench "
                f"supports ({SCHEMA_VERSION}); upgrade reidbench"
            )
        return version

    @staticmethod
    def _lookup(s: Session, run_hash: str) -> Run | None:
        """The run with this exact hash, else the run that had it before (an alias)."""
        row = s.scalar(select(Run).where(Run.run_hash == run_hash))
        if row is None:
            row = s.scalar(select(Run).join(RunAlias, RunAlias.run_id == Run.id).where(RunAlias.alias_hash == run_hash))
        return row

    def _run_row(self, s: Session, run_hash: str) -> Run:
        row = self._lookup(s, run_hash)
        if row is None:
            raise StoreError(f"no run {run_hash[:12]} in {self._name}")
        return row

    # ------------------------------------------------------------------ runs

    def ensure_run(self, run_hash: str, spec: Mapping[str, Any], label: str,
                   train_fingerprint: str | None = None) -> RunRecord:
        """Insert the run as pending unless it exists; an existing run is returned untouched.

        Only the exact hash counts here (not aliases): the caller asks for this run by its identity.
        """
        _require_text(run_hash, "run_hash")
        if train_fingerprint is not None:
            _require_text(train_fingerprint, "train_fingerprint")
        if not isinstance(spec, Mapping):
            raise StoreError(f"run {run_hash[:12]}: spec must be a dict, got {type(spec).__name__}")
        try:
            dumps(spec)
        except (TypeError, ValueError) as err:
            raise StoreError(f"run {run_hash[:12]}: spec is not JSON serialisable ({err})") from None
        exact = select(Run).where(Run.run_hash == run_hash)
        with self._session() as s:  # a read first: re-running a finished ablation takes no write lock
            row = s.scalar(exact)
            if row is not None:
                return _run_record(s, row)
        with self._session(write=True) as s:
            row = s.scalar(exact)
            if row is None:
                row = Run(run_hash=run_hash, label=str(label or ""), status="pending", spec=dict(spec),
                          created_at=_utcnow(), attempts=0, train_fingerprint=train_fingerprint)
                try:
                    # Added inside the savepoint, so that its rollback also drops the row from the
                    # session (added before it, the next query's autoflush would insert it again).
                    with s.begin_nested():
                        s.add(row)
                        s.flush()
                except exc.IntegrityError:  # PostgreSQL: another process inserted it a moment ago
                    row = s.scalar(exact)
                    if row is None:
                        raise
            return _run_record(s, row)

    def find_run(self, run_hash: str) -> RunRecord | None:
        """The run with this hash (or that had it before an upgrade), or None."""
        with self._session() as s:
            row = self._lookup(s, run_hash)
            return None if row is None else _run_record(s, row)

    def get_run(self, hash_or_prefix: str) -> RunRecord:
        """The run with this hash, or the only run whose hash starts with it (aliases count too)."""
        ref = _require_text(str(hash_or_prefix).strip(), "run hash")
        with self._session() as s:
            row = self._lookup(s, ref)
            if row is not None:
                return _run_record(s, row)
            by_hash = select(Run.id.label("run_id"), Run.run_hash.label("ref")).where(
                Run.run_hash.startswith(ref, autoescape=True))
            by_alias = select(RunAlias.run_id.label("run_id"), RunAlias.alias_hash.label("ref")).where(
                RunAlias.alias_hash.startswith(ref, autoescape=True))
            matches = union(by_hash, by_alias).subquery()
            count = s.scalar(select(func.count(func.distinct(matches.c.run_id)))) or 0
            if count == 0:
                raise StoreError(f"no run {ref!r} in {self._name}; `reidbench runs` lists the runs")
            if count > 1:
                shown = s.scalars(select(matches.c.ref).order_by(matches.c.ref).limit(4)).all()
                more = ", ..." if count > len(shown) else ""
                width = max(12, len(ref) + 2)
                while width < max(map(len, shown)) and len({h[:width] for h in shown}) < len(shown):
                    width += 4  # show enough characters to tell the listed runs apart
                listed = ", ".join(h[:width] for h in shown)
                raise StoreError(
                    f"run prefix {ref!r} is ambiguous: {count} runs match ({listed}{more}); give more characters"
                )
            return _run_record(s, s.get_one(Run, s.scalar(select(matches.c.run_id).limit(1))))

    def statuses(self, hashes: Sequence[str]) -> dict[str, str]:
        """Status of every known hash among ``hashes`` (unknown ones are absent): one query per 500.

        A hash that is an alias of a run (its hash before an upgrade) gets that run's status.
        """
        if isinstance(hashes, str):
            raise StoreError("statuses() takes a sequence of run hashes, not one string")
        hashes = list(hashes)  # read twice: hashes first, then aliases for the ones not found
        out: dict[str, str] = {}
        with self._session() as s:
            for chunk in _chunks(hashes):
                out.update(s.execute(select(Run.run_hash, Run.status).where(Run.run_hash.in_(chunk))).all())
            for chunk in _chunks([h for h in hashes if h not in out]):
                stmt = (select(RunAlias.alias_hash, Run.status).join(Run, RunAlias.run_id == Run.id)
                        .where(RunAlias.alias_hash.in_(chunk)))
                out.update(s.execute(stmt).all())
        return out

    def claim(self, run_hash: str, owner: str, stale_after_s: float = 120.0) -> bool:
        """Atomically take a pending/failed run, or a running one whose heartbeat is stale.

        True iff this caller got it. Done runs are never claimed. One conditional UPDATE: the
        database serialises concurrent claims, and exactly one sees its row still claimable.
        """
        _require_text(owner, "owner")
        now = _utcnow()
        cutoff = now - timedelta(seconds=float(stale_after_s))
        stale = and_(Run.status == "running", or_(Run.heartbeat_at.is_(None), Run.heartbeat_at < cutoff))
        stmt = (
            update(Run)
            .where(Run.run_hash == run_hash, or_(Run.status.in_(CLAIMABLE), stale))
            .values(status="running", owner=owner, heartbeat_at=now, attempts=Run.attempts + 1,
                    started_at=func.coalesce(Run.started_at, literal(now, UTCDateTime())))
            .execution_options(synchronize_session=False)
        )
        with self._session(write=True) as s:
            won = s.execute(stmt).rowcount == 1
            if not won:
                self._run_row(s, run_hash)  # an unknown run is a caller bug, not a lost race
            return won

    def heartbeat(self, run_hash: str, owner: str) -> bool:
        """Refresh the claim; False when ``owner`` no longer holds the run (taken over, done, released)."""
        stmt = (
            update(Run)
            .where(Run.run_hash == run_hash, Run.owner == owner, Run.status == "running")
            .values(heartbeat_at=_utcnow())
            .execution_options(synchronize_session=False)
        )
        with self._session(write=True) as s:
            return s.execute(stmt).rowcount == 1

    def release(self, run_hash: str, owner: str) -> None:
        """Give a claimed run back (pending) without counting it as failed, e.g. on KeyboardInterrupt."""
        stmt = (
            update(Run)
            .where(Run.run_hash == run_hash, Run.owner == owner, Run.status == "running")
            .values(status="pending", owner=None, heartbeat_at=None)
            .execution_options(synchronize_session=False)
        )
        with self._session(write=True) as s:
            s.execute(stmt)

    def mark_failed(self, run_hash: str, owner: str, error: str) -> None:
        """Record a failure of ``owner``'s attempt; a no-op if it no longer holds the run.

        Metrics of an earlier success cannot be touched: a done run is never claimed, so never held.
        The owner stays recorded as the last one to try (to find its log).
        """
        message = str(error)
        if len(message) > ERROR_CHARS:
            message = "...\n" + message[-ERROR_CHARS:]
        stmt = (
            update(Run)
            .where(Run.run_hash == run_hash, Run.owner == owner, Run.status == "running")
            .values(status="failed", error=message, finished_at=_utcnow(), heartbeat_at=None)
            .execution_options(synchronize_session=False)
        )
        with self._session(write=True) as s:
            s.execute(stmt)

    def record_result(self, run_hash: str, owner: str | None, result: Mapping[str, Any]) -> RunRecord:
        """Store a finished run (``RunResult.to_dict()``) in one transaction and mark it done.

        ``result["evaluations"]`` lists the run's evaluations (key, test_set, test_fingerprint,
        variant, settings, metrics, features_path, seconds); a result with only the older
        ``metrics`` ({test set: {metric: value}}) records one default evaluation per test set
        (variant "", key "default:<test set>"). Earlier evaluations, metric and epoch rows of the
        run are replaced. The result is accepted whoever holds
        the run now: the hash determines the result, so a late duplicate is as good as the first.
        A run absent from the database is created from ``result["spec"]``.
        """
        _require_text(run_hash, "run_hash")
        parsed = parse_result(run_hash, result)
        for field in ("provenance", "model_info", "versions"):
            try:
                dumps(getattr(parsed, field))
            except (TypeError, ValueError) as err:
                raise StoreError(f"run {run_hash[:12]}: result field {field!r} is not JSON serialisable ({err})") from None
        with self._session(write=True) as s:
            row = s.scalar(select(Run).where(Run.run_hash == run_hash))
            now = _utcnow()
            if row is None:
                if parsed.spec is None:
                    raise StoreError(f"no run {run_hash[:12]} in {self._name} and the result carries no spec")
                row = Run(run_hash=run_hash, label="", status="pending", spec=parsed.spec, created_at=now, attempts=0)
                s.add(row)
                s.flush()
            for table in (Metric, Evaluation, Epoch):
                s.execute(delete(table).where(table.run_id == row.id).execution_options(synchronize_session=False))
            row.status, row.finished_at, row.error, row.heartbeat_at = "done", now, None, None
            if owner:
                row.owner = owner
            row.git_commit, row.versions, row.device, row.host = (
                parsed.git_commit, parsed.versions, parsed.device, parsed.host)
            row.provenance, row.model_info = parsed.provenance, parsed.model_info
            row.seconds_train, row.seconds_eval, row.out_dir = parsed.seconds_train, parsed.seconds_eval, parsed.out_dir
            if parsed.train_fingerprint is not None:
                row.train_fingerprint = parsed.train_fingerprint
            s.flush()
            for evaluation in parsed.evaluations:
                # rows reach the database as they go: a later failure must roll them back
                self._write_evaluation(s, row, evaluation, now, existing=None)
            self._write_epochs(s, row, parsed)
            self._write_convergence(s, row, parsed, result.get("convergence"))
            return _run_record(s, row)

    def _write_evaluation(self, s: Session, row: Run, parsed: ParsedEvaluation, now: datetime,
                          existing: Evaluation | None) -> Evaluation:
        """Insert (or overwrite ``existing``) one evaluation with its final metrics."""
        if existing is None:
            evaluation = Evaluation(run_id=row.id, key=parsed.key, created_at=now)
            s.add(evaluation)
        else:
            evaluation = existing
            s.execute(delete(Metric).where(Metric.evaluation_id == existing.id)
                      .execution_options(synchronize_session=False))
        evaluation.test_set, evaluation.test_fingerprint = parsed.test_set, parsed.test_fingerprint
        evaluation.variant, evaluation.settings = parsed.variant, parsed.settings
        evaluation.status, evaluation.error = parsed.status, parsed.error
        evaluation.features_path, evaluation.seconds, evaluation.finished_at = parsed.features_path, parsed.seconds, now
        s.flush()
        s.add_all(Metric(run_id=row.id, evaluation_id=evaluation.id, test_set=parsed.test_set, metric=name,
                         value=finite_metric(row.run_hash, parsed.test_set, name, value), step=None)
                  for name, value in parsed.metrics)
        if existing is not None:  # per-query results of the replaced scoring would no longer match its metrics
            s.execute(delete(QueryScores).where(QueryScores.evaluation_id == evaluation.id)
                      .execution_options(synchronize_session=False))
        if parsed.per_query is not None:
            self._write_query_scores(s, evaluation.id, parsed.per_query)
        s.flush()
        return evaluation

    @staticmethod
    def _write_query_scores(s: Session, evaluation_id: int, payload: bytes) -> None:
        from reidbench.harness.evaluation.per_query import unpack

        count = int(unpack(payload)["ap"].shape[0])
        s.merge(QueryScores(evaluation_id=evaluation_id, num_queries=count, payload=bytes(payload)))

    def _write_epochs(self, s: Session, row: Run, parsed: ParsedResult) -> None:
        s.add_all(Epoch(run_id=row.id, epoch=epoch, values=values) for epoch, values in parsed.epochs)
        s.flush()

    def _write_convergence(self, s: Session, row: Run, parsed: ParsedResult, given: Any) -> None:
        """The run's convergence record: the result's own (the runner measured it), else computed from
        the result's history and default evaluation (a result.json written before convergence existed)."""
        from reidbench.harness.train.convergence import Convergence, assess_run

        if given is not None:
            try:
                record = Convergence.from_dict(given)
            except (TypeError, ValueError) as err:
                raise StoreError(f"run {row.run_hash[:12]}: result field 'convergence' is not valid ({err})") from None
        else:
            finals: dict[str, dict[str, float]] = {}
            for evaluation in parsed.evaluations:
                if not evaluation.variant:
                    finals.setdefault(evaluation.test_set, {}).update(
                        {k: v for k, v in evaluation.metrics if isinstance(v, (int, float))})
            history = [{"epoch": epoch, **values} for epoch, values in parsed.epochs]
            record = assess_run(dict(row.spec or {}), history, finals)
        s.execute(delete(ConvergenceRow).where(ConvergenceRow.run_id == row.id)
                  .execution_options(synchronize_session=False))
        s.add(ConvergenceRow(run_id=row.id, status=record.status,
                             first_epoch=record.epochs[0] if record.epochs else None,
                             last_epoch=record.epochs[1] if record.epochs else None,
                             loss_change=record.loss_change, map_change=record.map_change, detail=record.to_dict()))
        s.flush()

    def convergence(self, run_hashes: Sequence[str]) -> dict[str, Any]:
        """{run hash: its ``train.convergence.Convergence``} for the runs that have a record (finished
        runs); ``run_hashes`` are current hashes or aliases, answered under the hash asked for."""
        from reidbench.harness.train.convergence import Convergence

        out: dict[str, Any] = {}
        with self._session() as s:
            for chunk in _chunks(list(run_hashes)):
                stmt = (select(Run.run_hash, ConvergenceRow.detail)
                        .join(ConvergenceRow, ConvergenceRow.run_id == Run.id).where(Run.run_hash.in_(chunk)))
                for run_hash, detail in s.execute(stmt):
                    out[run_hash] = Convergence.from_dict(detail)
                missing = [h for h in chunk if h not in out]
                if missing:
                    stmt = (select(RunAlias.alias_hash, ConvergenceRow.detail)
                            .join(ConvergenceRow, ConvergenceRow.run_id == RunAlias.run_id)
                            .where(RunAlias.alias_hash.in_(missing)))
                    for alias, detail in s.execute(stmt):
                        out[alias] = Convergence.from_dict(detail)
        return out

    def list_runs(self, status: str | None = None, limit: int | None = None) -> list[RunRecord]:
        """Runs, newest first, optionally only those with ``status``."""
        stmt = select(Run).order_by(Run.created_at.desc(), Run.id.desc())
        if status is not None:
            if status not in RUN_STATUSES:
                raise StoreError(f"unknown run status {status!r}; valid: {', '.join(RUN_STATUSES)}")
            stmt = stmt.where(Run.status == status)
        if limit is not None:
            stmt = stmt.limit(int(limit))
        with self._session() as s:
            return run_records(s, list(s.scalars(stmt)))

    def metrics(self, run_hashes: Sequence[str] | None = None, variant: str | None = "") -> list[MetricRecord]:
        """Final metrics (step NULL) of the evaluations with ``variant`` ("" = each run's default
        evaluation, None = every variant), ordered by run and then as they were recorded.

        ``run_hashes`` are current run hashes (aliases are not followed here).
        """
        if variant is not None and not isinstance(variant, str):
            raise StoreError(f"metrics(): variant must be a string (\"\" = default) or None, got {variant!r}")
        base = (select(Run.id, Metric.id, Run.run_hash, Metric.test_set, Metric.metric, Metric.value,
                       Evaluation.variant, Evaluation.key)
                .join(Run, Metric.run_id == Run.id).outerjoin(Evaluation, Metric.evaluation_id == Evaluation.id)
                .where(Metric.step.is_(None)))
        if variant is not None:
            # a final metric outside any evaluation can only be a default one
            base = base.where(func.coalesce(Evaluation.variant, "") == variant)
        rows: list[Any] = []
        with self._session() as s:
            if run_hashes is None:
                rows = list(s.execute(base))
            else:
                for chunk in _chunks(run_hashes):
                    rows.extend(s.execute(base.where(Run.run_hash.in_(chunk))))
        rows.sort(key=lambda r: (r[0], r[1]))
        return [MetricRecord(run_hash=r[2], test_set=r[3], metric=r[4], value=float(r[5]), step=None,
                             variant=r[6] or "", evaluation_key=r[7]) for r in rows]

    def epochs(self, run_hash: str) -> list[EpochRecord]:
        """Per-epoch training values of the run, by epoch."""
        with self._session() as s:
            row = self._run_row(s, run_hash)
            found = s.scalars(select(Epoch).where(Epoch.run_id == row.id).order_by(Epoch.epoch)).all()
            return [EpochRecord(run_hash=row.run_hash, epoch=e.epoch, values=dict(e.values or {})) for e in found]

    def delete_run(self, run_hash: str) -> None:
        """Remove the run with its evaluations, metrics, epochs, aliases and ablation memberships."""
        with self._session(write=True) as s:
            row = self._run_row(s, run_hash)
            owned = select(Evaluation.id).where(Evaluation.run_id == row.id).scalar_subquery()
            s.execute(delete(QueryScores).where(QueryScores.evaluation_id.in_(owned))
                      .execution_options(synchronize_session=False))
            for table in (Metric, Evaluation, Epoch, AblationMember, RunAlias, ConvergenceRow):
                s.execute(delete(table).where(table.run_id == row.id).execution_options(synchronize_session=False))
            s.delete(row)

    # ------------------------------------------------------------------ evaluations

    def record_evaluation(self, run_hash: str, evaluation: Mapping[str, Any]) -> EvaluationRecord:
        """Store one evaluation of a done run, replacing the one with the same key and its metrics.

        ``evaluation``: key, test_set, and optionally test_fingerprint, variant ("" = default),
        settings, metrics ({metric: value}; needed unless status is "failed"), features_path,
        seconds, status ("done" | "failed"), error. Scores a stored run without retraining it.
        """
        _require_text(run_hash, "run_hash")
        parsed = parse_evaluation(run_hash, evaluation)
        with self._session(write=True) as s:
            row = self._run_row(s, run_hash)
            if row.status != "done":
                raise StoreError(f"run {row.run_hash[:12]} is {row.status}; only a done run can be evaluated "
                                 "(train it first)")
            find = select(Evaluation).where(Evaluation.run_id == row.id, Evaluation.key == parsed.key)
            existing = s.scalar(find)
            if existing is None:
                try:
                    with s.begin_nested():
                        written = self._write_evaluation(s, row, parsed, _utcnow(), existing=None)
                except exc.IntegrityError:  # PostgreSQL: another process inserted this key a moment ago
                    existing = s.scalar(find)
                    if existing is None:
                        raise
            if existing is not None:
                written = self._write_evaluation(s, row, parsed, _utcnow(), existing=existing)
            return evaluation_records(s, [(written, row.run_hash)])[0]

    def record_query_scores(self, run_hash: str, key: str, payload: bytes) -> None:
        """Attach per-query results (``evaluation/per_query.pack``) to the stored evaluation ``key`` of a run.

        How evaluations recorded without them are filled in later; the metrics are not touched.
        """
        _require_text(run_hash, "run_hash")
        with self._session(write=True) as s:
            row = self._run_row(s, run_hash)
            evaluation = s.scalar(select(Evaluation).where(Evaluation.run_id == row.id, Evaluation.key == str(key)))
            if evaluation is None:
                raise StoreError(f"run {row.run_hash[:12]} has no evaluation {key!r}")
            try:
                self._write_query_scores(s, evaluation.id, payload)
            except ValueError as err:
                raise StoreError(f"run {row.run_hash[:12]} evaluation {key!r}: {err}") from None

    def query_scores(self, run_hash: str, key: str) -> dict[str, Any] | None:
        """The per-query arrays of evaluation ``key`` of a run (``evaluation/per_query``), None when not stored."""
        from reidbench.harness.evaluation.per_query import unpack

        with self._session() as s:
            row = self._run_row(s, run_hash)
            payload = s.scalar(select(QueryScores.payload).join(Evaluation, QueryScores.evaluation_id == Evaluation.id)
                               .where(Evaluation.run_id == row.id, Evaluation.key == str(key)))
        return None if payload is None else unpack(payload)

    def evaluations(self, run_hashes: Sequence[str] | None = None,
                    variant: str | None = None) -> list[EvaluationRecord]:
        """Evaluations with their final metrics (only ``variant`` unless None), by run then as recorded."""
        if isinstance(run_hashes, str):
            raise StoreError("evaluations() takes a sequence of run hashes, not one string")
        base = select(Evaluation, Run.run_hash, Run.id).join(Run, Evaluation.run_id == Run.id)
        if variant is not None:
            base = base.where(Evaluation.variant == str(variant))
        with self._session() as s:
            if run_hashes is None:
                rows = list(s.execute(base))
            else:
                rows = []
                for chunk in _chunks(run_hashes):
                    rows.extend(s.execute(base.where(Run.run_hash.in_(chunk))))
            rows.sort(key=lambda r: (r[2], r[0].id))
            return evaluation_records(s, [(r[0], r[1]) for r in rows])

    def find_evaluation(self, run_hash: str, key: str) -> EvaluationRecord | None:
        """The run's evaluation with this key, or None (also when the run is unknown)."""
        with self._session() as s:
            row = self._lookup(s, run_hash)
            if row is None:
                return None
            found = s.scalar(select(Evaluation).where(Evaluation.run_id == row.id, Evaluation.key == key))
            return None if found is None else evaluation_records(s, [(found, row.run_hash)])[0]

    # ------------------------------------------------------------------ ablations

    def record_ablation(self, name: str, base: str, mode: str, meta: Mapping[str, Any],
                        members: Sequence[Mapping[str, Any]]) -> int:
        """Store an ablation (ordered member runs, which must exist already); returns its id."""
        _require_text(name, "ablation name")
        try:
            dumps(dict(meta))
        except (TypeError, ValueError) as err:
            raise StoreError(f"ablation {name!r}: meta is not JSON serialisable ({err})") from None
        positions: set[int] = set()
        for index, member in enumerate(members):
            if not isinstance(member, Mapping) or "run_hash" not in member or "position" not in member:
                raise StoreError(f"ablation {name!r}: member {index} needs at least 'position' and 'run_hash'")
            if int(member["position"]) in positions:
                raise StoreError(f"ablation {name!r}: position {member['position']} appears twice")
            positions.add(int(member["position"]))
        with self._session(write=True) as s:
            ids: dict[str, int] = {}
            for chunk in _chunks([str(m["run_hash"]) for m in members]):
                ids.update(s.execute(select(Run.run_hash, Run.id).where(Run.run_hash.in_(chunk))).all())
            missing = [str(m["run_hash"])[:12] for m in members if str(m["run_hash"]) not in ids]
            if missing:
                raise StoreError(f"ablation {name!r}: no run {', '.join(missing)} in {self._name}; ensure_run first")
            ablation = Ablation(name=name, base=str(base), mode=str(mode), meta=dict(meta), created_at=_utcnow())
            s.add(ablation)
            s.flush()
            s.add_all(
                AblationMember(ablation_id=ablation.id, position=int(m["position"]), run_id=ids[str(m["run_hash"])],
                               label=str(m.get("label") or ""), step=str(m.get("step") or ""),
                               seed=None if m.get("seed") is None else int(m["seed"]))
                for m in members
            )
            return int(ablation.id)

    def get_ablation(self, ref: int | str = "latest") -> AblationRecord:
        """By id, by name (the latest with that name), or ``"latest"``."""
        newest = (Ablation.created_at.desc(), Ablation.id.desc())
        with self._session() as s:
            row: Ablation | None
            if isinstance(ref, int) and not isinstance(ref, bool):
                row = s.get(Ablation, ref)
            elif ref == "latest":
                row = s.scalars(select(Ablation).order_by(*newest).limit(1)).first()
            else:
                row = s.scalars(select(Ablation).where(Ablation.name == str(ref)).order_by(*newest).limit(1)).first()
                if row is None and str(ref).isdigit():
                    row = s.get(Ablation, int(ref))
            if row is None:
                names = s.scalars(select(Ablation.name).distinct().order_by(Ablation.name).limit(10)).all()
                known = f"known: {', '.join(names)}" if names else "none recorded yet"
                raise StoreError(f"no ablation {ref!r} in {self._name} ({known})")
            return self._ablation_records(s, [row])[0]

    def list_ablations(self) -> list[AblationRecord]:
        """Every ablation, newest first."""
        with self._session() as s:
            rows = s.scalars(select(Ablation).order_by(Ablation.created_at.desc(), Ablation.id.desc())).all()
            return self._ablation_records(s, list(rows))

    def _ablation_records(self, s: Session, rows: list[Ablation]) -> list[AblationRecord]:
        members: dict[int, list[dict[str, Any]]] = {row.id: [] for row in rows}
        if rows:
            stmt = (select(AblationMember, Run.run_hash).join(Run, AblationMember.run_id == Run.id)
                    .where(AblationMember.ablation_id.in_(list(members))).order_by(AblationMember.position))
            for member, run_hash in s.execute(stmt):
                members[member.ablation_id].append({"position": member.position, "run_hash": run_hash,
                                                    "label": member.label, "step": member.step, "seed": member.seed})
        return [AblationRecord(id=row.id, name=row.name, base=row.base, mode=row.mode, meta=dict(row.meta or {}),
                               created_at=row.created_at, members=tuple(members[row.id])) for row in rows]

    # ------------------------------------------------------------------ frames

    def to_frame(self, run_hashes: Sequence[str] | None = None) -> "pandas.DataFrame":
        """One row per (run, test set, variant, metric) with the run's label, status and data/weights
        flags; every variant ("" = the run's default evaluation)."""
        import pandas as pd  # only report code needs pandas; the CLI's --help must stay light

        columns = ["run_hash", "short_hash", "label", "status", "synthetic", "pretrained", "test_set", "variant",
                   "metric", "value"]
        metrics = self.metrics(run_hashes, variant=None)
        runs: dict[str, RunRecord] = {}
        with self._session() as s:
            for chunk in _chunks([m.run_hash for m in metrics]):
                found = list(s.scalars(select(Run).where(Run.run_hash.in_(chunk))))
                runs.update((r.run_hash, r) for r in run_records(s, found))
        rows = [(m.run_hash, runs[m.run_hash].short_hash, runs[m.run_hash].label, runs[m.run_hash].status,
                 runs[m.run_hash].synthetic, runs[m.run_hash].pretrained, m.test_set, m.variant, m.metric, m.value)
                for m in metrics]
        return pd.DataFrame(rows, columns=columns)
