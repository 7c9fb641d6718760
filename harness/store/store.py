"""The results database: runs and their life cycle, final metrics, training curves, ablations.

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

from sqlalchemy import and_, delete, exc, func, inspect, literal, or_, select, update
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
    Epoch,
    Meta,
    Metric,
    Run,
    UTCDateTime,
    dumps,
)
from reidbench.harness.store.records import AblationRecord, EpochRecord, MetricRecord, RunRecord
from reidbench.harness.store.results import ParsedResult, finite_metric, parse_result

if TYPE_CHECKING:
    import pandas

DEFAULT_URL = "sqlite:///results.db"
ENV_VAR = "REIDBENCH_DB"
IN_CHUNK = 500  # hashes per IN (...) list: far below SQLite's and PostgreSQL's parameter limits
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


def _chunks(items: Sequence[str], size: int = IN_CHUNK) -> Iterator[list[str]]:
    items = list(dict.fromkeys(items))
    for start in range(0, len(items), size):
        yield items[start:start + size]


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


def _run_record(row: Run) -> RunRecord:
    return RunRecord(
        run_hash=row.run_hash, label=row.label or "", status=row.status, spec=dict(row.spec or {}),
        created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at,
        heartbeat_at=row.heartbeat_at, owner=row.owner, attempts=int(row.attempts or 0), error=row.error,
        git_commit=row.git_commit, versions=dict(row.versions or {}), device=row.device, host=row.host,
        provenance=dict(row.provenance or {}), model_info=dict(row.model_info or {}),
        seconds_train=row.seconds_train, seconds_eval=row.seconds_eval, out_dir=row.out_dir,
    )


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
        """Check the schema version; create missing tables (never in a database newer than us)."""
        with self._session() as s:
            names = set(inspect(s.connection()).get_table_names())
            stored = s.get(Meta, "schema_version") if Meta.__tablename__ in names else None
            ready = set(Base.metadata.tables) <= names
        if stored is not None:
            self._check_version(stored.value)
        if stored is None or not ready:
            self._create_schema()

    def _create_schema(self) -> None:
        for attempt in range(3):
            try:
                with self._session(write=True) as s:
                    conn = s.connection()
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

    def _check_version(self, value: str) -> None:
        try:
            version = int(value)
        except ValueError:
            raise StoreError(f"{self._name}: rb_meta schema_version {value!r} is not an integer") from None
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self._name}: results database schema version {version} is newer than this reidbench "
                f"supports ({SCHEMA_VERSION}); upgrade reidbench"
            )

    def _run_row(self, s: Session, run_hash: str) -> Run:
        row = s.scalar(select(Run).where(Run.run_hash == run_hash))
        if row is None:
            raise StoreError(f"no run {run_hash[:12]} in {self._name}")
        return row

    # ------------------------------------------------------------------ runs

    def ensure_run(self, run_hash: str, spec: Mapping[str, Any], label: str) -> RunRecord:
        """Insert the run as pending unless it exists; an existing run is returned untouched."""
        _require_text(run_hash, "run_hash")
        if not isinstance(spec, Mapping):
            raise StoreError(f"run {run_hash[:12]}: spec must be a dict, got {type(spec).__name__}")
        try:
            dumps(spec)
        except (TypeError, ValueError) as err:
            raise StoreError(f"run {run_hash[:12]}: spec is not JSON serialisable ({err})") from None
        existing = self.find_run(run_hash)  # a read first: re-running a finished ablation takes no write lock
        if existing is not None:
            return existing
        with self._session(write=True) as s:
            row = s.scalar(select(Run).where(Run.run_hash == run_hash))
            if row is None:
                row = Run(run_hash=run_hash, label=str(label or ""), status="pending", spec=dict(spec),
                          created_at=_utcnow(), attempts=0)
                s.add(row)
                try:
                    with s.begin_nested():
                        s.flush()
                except exc.IntegrityError:  # PostgreSQL: another process inserted it a moment ago
                    row = self._run_row(s, run_hash)
            return _run_record(row)

    def find_run(self, run_hash: str) -> RunRecord | None:
        with self._session() as s:
            row = s.scalar(select(Run).where(Run.run_hash == run_hash))
            return None if row is None else _run_record(row)

    def get_run(self, hash_or_prefix: str) -> RunRecord:
        """The run with this hash, or the only run whose hash starts with it."""
        ref = _require_text(str(hash_or_prefix).strip(), "run hash")
        with self._session() as s:
            row = s.scalar(select(Run).where(Run.run_hash == ref))
            if row is not None:
                return _run_record(row)
            match = Run.run_hash.startswith(ref, autoescape=True)
            count = s.scalar(select(func.count()).select_from(Run).where(match)) or 0
            if count == 0:
                raise StoreError(f"no run {ref!r} in {self._name}; `reidbench runs` lists the runs")
            if count > 1:
                shown = s.scalars(select(Run.run_hash).where(match).order_by(Run.run_hash).limit(4)).all()
                more = ", ..." if count > len(shown) else ""
                width = max(12, len(ref) + 2)
                while width < max(map(len, shown)) and len({h[:width] for h in shown}) < len(shown):
                    width += 4  # show enough characters to tell the listed runs apart
                listed = ", ".join(h[:width] for h in shown)
                raise StoreError(
                    f"run prefix {ref!r} is ambiguous: {count} runs match ({listed}{more}); give more characters"
                )
            return _run_record(s.scalar(select(Run).where(match)))

    def statuses(self, hashes: Sequence[str]) -> dict[str, str]:
        """Status of every known hash among ``hashes`` (unknown ones are absent): one query per 500."""
        if isinstance(hashes, str):
            raise StoreError("statuses() takes a sequence of run hashes, not one string")
        out: dict[str, str] = {}
        with self._session() as s:
            for chunk in _chunks(hashes):
                out.update(s.execute(select(Run.run_hash, Run.status).where(Run.run_hash.in_(chunk))).all())
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

        Earlier metric and epoch rows of the run are replaced. The result is accepted whoever holds
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
            s.execute(delete(Metric).where(Metric.run_id == row.id).execution_options(synchronize_session=False))
            s.execute(delete(Epoch).where(Epoch.run_id == row.id).execution_options(synchronize_session=False))
            row.status, row.finished_at, row.error, row.heartbeat_at = "done", now, None, None
            if owner:
                row.owner = owner
            row.git_commit, row.versions, row.device, row.host = (
                parsed.git_commit, parsed.versions, parsed.device, parsed.host)
            row.provenance, row.model_info = parsed.provenance, parsed.model_info
            row.seconds_train, row.seconds_eval, row.out_dir = parsed.seconds_train, parsed.seconds_eval, parsed.out_dir
            s.flush()
            self._write_metrics(s, row, parsed)
            self._write_epochs(s, row, parsed)
            return _run_record(row)

    def _write_metrics(self, s: Session, row: Run, parsed: ParsedResult) -> None:
        current = None
        for test_set, metric, value in parsed.metrics:
            if test_set != current and current is not None:
                s.flush()  # rows reach the database as they go: a later failure must roll them back
            current = test_set
            s.add(Metric(run_id=row.id, test_set=test_set, metric=metric,
                         value=finite_metric(row.run_hash, test_set, metric, value), step=None))
        s.flush()

    def _write_epochs(self, s: Session, row: Run, parsed: ParsedResult) -> None:
        s.add_all(Epoch(run_id=row.id, epoch=epoch, values=values) for epoch, values in parsed.epochs)
        s.flush()

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
            return [_run_record(row) for row in s.scalars(stmt)]

    def metrics(self, run_hashes: Sequence[str] | None = None) -> list[MetricRecord]:
        """Final metrics (step NULL), ordered by run and then as the result listed them."""
        base = (select(Run.id, Metric.id, Run.run_hash, Metric.test_set, Metric.metric, Metric.value)
                .join(Run, Metric.run_id == Run.id).where(Metric.step.is_(None)))
        rows: list[Any] = []
        with self._session() as s:
            if run_hashes is None:
                rows = list(s.execute(base))
            else:
                for chunk in _chunks(run_hashes):
                    rows.extend(s.execute(base.where(Run.run_hash.in_(chunk))))
        rows.sort(key=lambda r: (r[0], r[1]))
        return [MetricRecord(run_hash=r[2], test_set=r[3], metric=r[4], value=float(r[5]), step=None) for r in rows]

    def epochs(self, run_hash: str) -> list[EpochRecord]:
        """Per-epoch training values of the run, by epoch."""
        with self._session() as s:
            row = self._run_row(s, run_hash)
            found = s.scalars(select(Epoch).where(Epoch.run_id == row.id).order_by(Epoch.epoch)).all()
            return [EpochRecord(run_hash=run_hash, epoch=e.epoch, values=dict(e.values or {})) for e in found]

    def delete_run(self, run_hash: str) -> None:
        """Remove the run with its metrics, epochs and ablation memberships."""
        with self._session(write=True) as s:
            row = self._run_row(s, run_hash)
            for table in (Metric, Epoch, AblationMember):
                s.execute(delete(table).where(table.run_id == row.id).execution_options(synchronize_session=False))
            s.delete(row)

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
        """One row per (run, test set, metric) with the run's label, status and data/weights flags."""
        import pandas as pd  # only report code needs pandas; the CLI's --help must stay light

        columns = ["run_hash", "short_hash", "label", "status", "synthetic", "pretrained", "test_set", "metric", "value"]
        metrics = self.metrics(run_hashes)
        runs: dict[str, RunRecord] = {}
        with self._session() as s:
            for chunk in _chunks([m.run_hash for m in metrics]):
                runs.update((r.run_hash, _run_record(r)) for r in s.scalars(select(Run).where(Run.run_hash.in_(chunk))))
        rows = [(m.run_hash, runs[m.run_hash].short_hash, runs[m.run_hash].label, runs[m.run_hash].status,
                 runs[m.run_hash].synthetic, runs[m.run_hash].pretrained, m.test_set, m.metric, m.value)
                for m in metrics]
        return pd.DataFrame(rows, columns=columns)
