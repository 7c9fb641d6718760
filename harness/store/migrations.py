"""Upgrade a results database written by older reidbench code, in place, on its first open.

A user's results.db is their data: it is upgraded, never recreated. ``MIGRATIONS`` is the ordered
list of steps (target version, description, function); ``Store`` calls ``upgrade`` when the
stored ``rb_meta.schema_version`` is lower than ``SCHEMA_VERSION``:

1. A backup first, taken inside the first step's transaction so that it shows exactly what is
   migrated: SQLite → an online copy (the sqlite3 backup API, WAL content included) beside the
   file, ``<db>.schema1-backup-<UTC stamp>``; another dialect → a JSON dump of every ``rb_`` table,
   ``reidbench-backup-schema1-<stamp>.json`` in the current folder.
2. Each step runs in ONE transaction that also bumps schema_version: a crash part-way leaves the
   old version with all its rows (and the backup), and the next open retries.
3. Concurrent openers are serialised (SQLite: the caller's folder lock and BEGIN IMMEDIATE;
   PostgreSQL: a transaction-scoped advisory lock). Whoever gets the lock after another process
   finished reads the new version and does nothing.
4. Files outside the database (run folders' spec.json) change only after the commit; one line on
   stderr says what happened.

Steps use their own snapshot of the tables as they were at that version (``_V2``, ``_V3``), never
the live ORM models, so a later schema change cannot alter what an old step does.

Step 3 → 4 is generic: it recomputes every stored run's identity with today's code
(``harness/spec/rekey.py``: the stored spec read by today's loader, the stored data fingerprint,
the digest of the pretrained weights the run recorded) and re-keys the runs whose identity
changed, old hashes kept as aliases, run folders' spec.json rewritten. Runs that end with one
identity are merged into the first finished one without losing an evaluation number (identical
evaluations are duplicates; differing ones stay as variant ``merged:<old hash>``). A run whose
identity cannot be established (its weights are not on this machine any more) keeps its hash and
is named on the stderr line. A later change of what enters a run's identity can reuse the step.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sqlite3
import sys
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.engine.url import URL

from reidbench.harness.store.results import default_evaluation_key
from reidbench.harness.store.tables import JSONText, UTCDateTime, dumps

PG_LOCK_KEY = 0x7262_6D67  # "rbmg": pg_advisory_xact_lock key shared by every reidbench process
KEPT_LISTED = 5  # runs named in the stderr line when some could not be upgraded

Begin = Callable[[], AbstractContextManager[Connection]]


@dataclass
class StepContext:
    """What a step gets: its transaction's connection, and where it leaves notes and file work."""

    conn: Connection
    notes: list[str] = field(default_factory=list)  # phrases for the stderr line
    after_commit: list[Callable[[], str | None]] = field(default_factory=list)  # file work, once committed


@dataclass(frozen=True)
class Migration:
    target: int  # schema version after this step
    description: str
    apply: Callable[[StepContext], None]


def upgrade(begin: Begin, *, url: URL, name: str, stored_version: int, stream: TextIO | None = None) -> str | None:
    """Run every pending step from ``stored_version`` on; returns (and prints) the summary line.

    ``begin`` opens one write transaction (BEGIN IMMEDIATE on SQLite) and yields its connection.
    None when another process had already upgraded the database.
    """
    backup: str | None = None
    start: int | None = None
    reached: int | None = None
    notes: list[str] = []
    for step in (m for m in MIGRATIONS if m.target > stored_version):
        with begin() as conn:
            lock_schema(conn)
            current = _read_version(conn)
            if current >= step.target:
                continue  # another process upgraded it while we waited for the lock
            if backup is None:
                backup, start = _backup(conn, current), current
            ctx = StepContext(conn)
            step.apply(ctx)
            conn.execute(update(_META).where(_META.c.key == "schema_version").values(value=str(step.target)))
        reached = step.target
        notes.extend(ctx.notes)
        for action in ctx.after_commit:
            phrase = action()
            if phrase:
                notes.append(phrase)
    if reached is None:
        return None
    line = f"reidbench: upgraded {name} from schema {start} to {reached} (backup: {backup})"
    line = "; ".join([line, *notes]).replace("\n", " ")
    print(line, file=stream or sys.stderr, flush=True)
    return line


def lock_schema(conn: Connection) -> None:
    """PostgreSQL: hold the schema lock until this transaction ends (one upgrader or creator at a time).

    SQLite needs none: its write transactions (BEGIN IMMEDIATE) already exclude each other.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})


def _read_version(conn: Connection) -> int:
    value = conn.execute(select(_META.c.value).where(_META.c.key == "schema_version")).scalar_one()
    return int(value)


# ---------------------------------------------------------------------- backups


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")


def _free_path(path: str) -> str:
    """``path``, or ``path-2``, ``path-3``...: a retry within the same second keeps the first backup."""
    candidate, n = path, 1
    while os.path.exists(candidate):
        n += 1
        candidate = f"{path}-{n}"
    return candidate


def _backup(conn: Connection, from_version: int) -> str:
    if conn.dialect.name == "sqlite":
        return _sqlite_backup(conn, from_version)
    return _json_backup(conn, from_version, Path.cwd())


def _sqlite_backup(conn: Connection, from_version: int) -> str:
    """An online copy of the whole database, WAL content included.

    Copied through a second, read-only connection: SQLite refuses (SQLITE_LOCKED, which Python's
    backup() retries forever) to back up from a connection that holds a write transaction, as
    ``conn`` does. That reader sees exactly what ``conn`` is about to migrate: nothing is written
    yet, and our write lock keeps every other writer out until the migration commits.
    """
    main = next((row[2] for row in conn.exec_driver_sql("PRAGMA database_list") if row[1] == "main"), "")
    if not main:
        return "none (in-memory database)"
    target = _free_path(f"{main}.schema{from_version}-backup-{_stamp()}")
    partial = target + ".partial"  # a crash mid-copy must not leave a half file under the real name
    source = sqlite3.connect(f"{Path(main).as_uri()}?mode=ro", uri=True)
    try:
        dest = sqlite3.connect(partial)
        try:
            source.backup(dest)
        finally:
            dest.close()
    finally:
        source.close()
    os.replace(partial, target)
    return target


def _json_value(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).hex()
    return str(value)


def _json_backup(conn: Connection, from_version: int, folder: Path) -> str:
    """Every ``rb_`` table's rows as JSON (column → value); floats keep their exact repr."""
    quote = conn.dialect.identifier_preparer.quote
    tables: dict[str, list[dict[str, Any]]] = {}
    for table in sorted(n for n in inspect(conn).get_table_names() if n.startswith("rb_")):
        tables[table] = [dict(row) for row in conn.execute(text(f"SELECT * FROM {quote(table)}")).mappings()]
    target = _free_path(str(folder / f"reidbench-backup-schema{from_version}-{_stamp()}.json"))
    partial = target + ".partial"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump({"schema_version": from_version, "tables": tables}, handle, default=_json_value, sort_keys=True)
    os.replace(partial, target)
    return target


# ---------------------------------------------------------------------- schema 2 snapshot

_V2 = MetaData()
_META = Table("rb_meta", _V2, Column("key", String(64), primary_key=True), Column("value", Text, nullable=False))
_RUNS = Table(
    "rb_runs", _V2,
    Column("id", Integer, primary_key=True),
    Column("run_hash", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("spec", JSONText, nullable=False),
    Column("provenance", JSONText),
    Column("created_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("out_dir", Text),
    Column("train_fingerprint", String(128)),
)
_ALIASES = Table(
    "rb_run_aliases", _V2,
    Column("alias_hash", String(128), primary_key=True),
    Column("run_id", Integer, ForeignKey("rb_runs.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("created_at", UTCDateTime, nullable=False),
)
_EVALUATIONS = Table(
    "rb_evaluations", _V2,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("rb_runs.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("key", String(64), nullable=False),
    Column("test_set", String(200), nullable=False),
    Column("test_fingerprint", String(128)),
    Column("variant", String(200), nullable=False, server_default=text("''")),
    Column("settings", JSONText, nullable=False),
    Column("status", String(16), nullable=False),
    Column("error", Text),
    Column("features_path", Text),
    Column("seconds", Float),
    Column("created_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    UniqueConstraint("run_id", "key", name="uq_rb_evaluations"),
)
_METRICS = Table(
    "rb_metrics", _V2,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, nullable=False),
    Column("evaluation_id", Integer, ForeignKey("rb_evaluations.id", ondelete="CASCADE")),
    Column("test_set", String(200), nullable=False),
    Column("metric", String(200), nullable=False),
    Column("value", Float, nullable=False),
    Column("step", Integer),
)
_METRICS_INDEXES = (
    Index("ix_rb_metrics_evaluation_id", _METRICS.c.evaluation_id),
    Index("uq_rb_metrics_eval_final", _METRICS.c.evaluation_id, _METRICS.c.metric, unique=True,
          sqlite_where=text("step IS NULL"), postgresql_where=text("step IS NULL")),
)
_EPOCHS = Table("rb_epochs", _V2, Column("id", Integer, primary_key=True), Column("run_id", Integer, nullable=False))
_ABLATIONS = Table(
    "rb_ablations", _V2,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("base", Text, nullable=False),
    Column("mode", String(64), nullable=False),
    Column("meta", JSONText, nullable=False),
)
_MEMBERS = Table(
    "rb_ablation_members", _V2,
    Column("id", Integer, primary_key=True),
    Column("ablation_id", Integer, nullable=False),
    Column("position", Integer, nullable=False),
    Column("run_id", Integer, nullable=False),
)


# ---------------------------------------------------------------------- step 1 → 2


def _upgrade_run(**kwargs: Any) -> Any:
    # Imported lazily: the spec code is only needed when an old database is actually opened.
    from reidbench.harness.spec.legacy import upgrade_v1_run

    return upgrade_v1_run(**kwargs)


def _upgrade_ablation_name(**kwargs: Any) -> Any:
    from reidbench.harness.spec.legacy import upgrade_v1_ablation_name

    return upgrade_v1_ablation_name(**kwargs)


@dataclass(frozen=True)
class _Evaluation:
    key: str
    test_set: str
    test_fingerprint: str | None
    variant: str
    settings: dict[str, Any]
    metrics: tuple[tuple[str, float], ...]
    features_path: str | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class _Plan:
    """What becomes of one schema-1 run."""

    run_id: int
    old_hash: str
    new_hash: str
    status: str
    out_dir: str | None
    created_at: datetime
    finished_at: datetime | None
    evaluations: tuple[_Evaluation, ...]
    spec: dict[str, Any] | None = None  # None: the run keeps its spec (and hash)
    train_fingerprint: str | None = None
    kept_because: str | None = None  # why the run could not be upgraded


def _to_v2(ctx: StepContext) -> None:
    _ddl_v2(ctx.conn)
    plans = _plan_runs(ctx.conn)
    merged = _apply_runs(ctx.conn, plans)
    renamed = _rename_ablations(ctx.conn)
    upgraded = [p for p in plans if p.spec is not None and p.new_hash != p.old_hash]
    kept = [p for p in plans if p.kept_because is not None]
    ctx.notes.append(f"{len(upgraded)} run(s) re-hashed")
    if merged:
        ctx.notes.append(f"{merged} run(s) merged into a run with the same training")
    if renamed:
        ctx.notes.append(f"{renamed} ablation(s) renamed")
    ctx.after_commit.append(lambda: _rewrite_run_folders(upgraded))
    if kept:
        listed = ", ".join(f"{p.old_hash[:12]} ({p.kept_because})" for p in kept[:KEPT_LISTED])
        more = ", ..." if len(kept) > KEPT_LISTED else ""
        # appended after the folder phrase: the list of reasons is the line's tail
        ctx.after_commit.append(lambda: f"{len(kept)} run(s) kept as they were: {listed}{more}")


def _ddl_v2(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE rb_runs ADD COLUMN train_fingerprint VARCHAR(128)"))
    _ALIASES.create(conn)
    _EVALUATIONS.create(conn)
    conn.execute(text("ALTER TABLE rb_metrics ADD COLUMN evaluation_id INTEGER "
                      "REFERENCES rb_evaluations (id) ON DELETE CASCADE"))
    # Several evaluations of one test set would break the old one-row-per-(run, test set, metric)
    # index; the table-level UNIQUE (run_id, test_set, metric, step) stays (SQLite cannot drop it
    # without a rebuild) and never fires for final metrics: their step is NULL.
    conn.execute(text("DROP INDEX IF EXISTS uq_rb_metrics_final"))
    for index in _METRICS_INDEXES:
        index.create(conn)


def _plan_runs(conn: Connection) -> list[_Plan]:
    finals: dict[int, dict[str, dict[str, float]]] = {}
    stmt = (select(_METRICS.c.run_id, _METRICS.c.test_set, _METRICS.c.metric, _METRICS.c.value)
            .where(_METRICS.c.step.is_(None)).order_by(_METRICS.c.id))
    for run_id, test_set, metric, value in conn.execute(stmt):
        finals.setdefault(run_id, {}).setdefault(test_set, {})[metric] = float(value)
    runs = conn.execute(select(_RUNS).order_by(_RUNS.c.id)).all()
    return [_plan_run(row, finals.get(row.id, {})) for row in runs]


def _plan_run(row: Any, metrics: dict[str, dict[str, float]]) -> _Plan:
    base = dict(run_id=row.id, old_hash=row.run_hash, status=row.status, out_dir=row.out_dir,
                created_at=row.created_at, finished_at=row.finished_at)
    try:
        # deep copies: the upgrade function must not be able to change what we compare against.
        # Only ValueError means "this spec cannot be upgraded"; anything else is a bug and aborts.
        upgraded = _upgrade_run(run_hash=row.run_hash, spec=copy.deepcopy(row.spec),
                                provenance=copy.deepcopy(row.provenance or {}), metrics=copy.deepcopy(metrics))
    except ValueError as err:
        return _kept(base, row.run_hash, metrics, err)
    try:
        new_hash = _text(getattr(upgraded, "run_hash", None), "run_hash", 128)
        spec = getattr(upgraded, "spec", None)
        if not isinstance(spec, Mapping):
            raise ValueError(f"upgraded spec is {type(spec).__name__}, not a mapping")
        dumps(dict(spec))  # raises ValueError/TypeError on what JSON cannot hold
        fingerprint = getattr(upgraded, "train_fingerprint", None)
        if fingerprint is not None:
            fingerprint = _text(fingerprint, "train_fingerprint", 128)
        evaluations = _checked_evaluations(getattr(upgraded, "evaluations", None), metrics)
    except (ValueError, TypeError) as err:  # our checks of what came back (dumps raises TypeError)
        return _kept(base, row.run_hash, metrics, err)
    return _Plan(**base, new_hash=new_hash, evaluations=evaluations, spec=dict(spec), train_fingerprint=fingerprint)


def _kept(base: dict[str, Any], run_hash: str, metrics: dict[str, dict[str, float]], err: Exception) -> _Plan:
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return _Plan(**base, new_hash=run_hash, evaluations=_default_evaluations(metrics), kept_because=reason)


def _text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ValueError(f"upgraded {what} {value!r} is not a string of 1 to {limit} characters")
    return value


def _checked_evaluations(raw: Any, old: dict[str, dict[str, float]]) -> tuple[_Evaluation, ...]:
    """The upgrade's evaluations, validated; every old number must be among them, bit for bit."""
    if raw is None or isinstance(raw, (str, Mapping)):
        raise ValueError("upgraded evaluations are not a list")
    out: list[_Evaluation] = []
    for ev in raw:
        key = _text(getattr(ev, "key", None), "evaluation key", 64)
        test_set = _text(getattr(ev, "test_set", None), f"evaluation {key!r} test_set", 200)
        variant = getattr(ev, "variant", "") or ""
        settings = getattr(ev, "settings", None) or {}
        metrics = getattr(ev, "metrics", None) or {}
        if not isinstance(variant, str) or not isinstance(settings, Mapping) or not isinstance(metrics, Mapping):
            raise ValueError(f"upgraded evaluation {key!r} has a malformed variant, settings or metrics")
        dumps(dict(settings))
        values: list[tuple[str, float]] = []
        for name, value in metrics.items():
            if (not isinstance(name, str) or not name or isinstance(value, bool)
                    or not isinstance(value, (int, float)) or not math.isfinite(value)):
                raise ValueError(f"upgraded evaluation {key!r} has metric {name!r} = {value!r}")
            values.append((name, float(value)))
        fingerprint = getattr(ev, "test_fingerprint", None)
        if fingerprint is not None:
            fingerprint = _text(fingerprint, "test_fingerprint", 128)
        features = getattr(ev, "features_path", None)
        seconds = getattr(ev, "seconds", None)
        out.append(_Evaluation(key=key, test_set=test_set, test_fingerprint=fingerprint,
                               variant=variant, settings=dict(settings), metrics=tuple(values),
                               features_path=None if features is None else str(features),
                               seconds=None if seconds is None else float(seconds)))
    keys = [e.key for e in out]
    if len(set(keys)) != len(keys):
        raise ValueError("upgraded evaluations repeat a key")
    for test_set, per_metric in old.items():
        have = Counter(v.hex() for e in out if e.test_set == test_set for _, v in e.metrics)
        for metric, value in per_metric.items():
            if have[value.hex()] == 0:
                raise ValueError(f"the upgrade would lose metric {test_set}/{metric} = {value!r}")
            have[value.hex()] -= 1
    return tuple(out)


def _default_evaluations(old: dict[str, dict[str, float]]) -> tuple[_Evaluation, ...]:
    """A run that keeps its old hash: its metrics as the default evaluation of each test set."""
    return tuple(_Evaluation(key=default_evaluation_key(test_set), test_set=test_set, test_fingerprint=None,
                             variant="", settings={}, metrics=tuple(per_metric.items()))
                 for test_set, per_metric in old.items())


def _group_by_new_hash(plans: list[Any]) -> list[tuple[Any, list[Any]]]:
    """Plans (anything with ``new_hash`` and ``status``) that end with one hash: (kept run, the others).

    The kept run is the first finished one (plans in id order), else the first.
    """
    groups: dict[str, list[Any]] = {}
    for plan in plans:
        groups.setdefault(plan.new_hash, []).append(plan)
    keepers: list[tuple[Any, list[Any]]] = []
    for group in groups.values():
        keeper = next((p for p in group if p.status == "done"), group[0])
        keepers.append((keeper, [p for p in group if p is not keeper]))
    return keepers


def _rehash(conn: Connection, keepers: list[tuple[Any, list[Any]]], values: Callable[[Any], dict[str, Any] | None]
            ) -> None:
    """Give every kept run its new hash (``values(plan)``: the columns to write, None = keep the row),
    then alias each old hash (its own and its merged runs') to it."""
    changing = [k for k, _ in keepers if k.new_hash != k.old_hash]
    remaining = {k.old_hash for k, _ in keepers}
    if any(k.new_hash in remaining for k in changing):
        # a new hash equal to another run's old one: park them all first, the UNIQUE column allows no swap
        for keeper in changing:
            parked = f"~upgrading-{keeper.run_id}"
            conn.execute(update(_RUNS).where(_RUNS.c.id == keeper.run_id).values(run_hash=parked))
    for keeper, _ in keepers:
        row = values(keeper)
        if row is not None:
            conn.execute(update(_RUNS).where(_RUNS.c.id == keeper.run_id).values(run_hash=keeper.new_hash, **row))
    now = datetime.now(timezone.utc)
    for keeper, others in keepers:
        aliases = [{"alias_hash": p.old_hash, "run_id": keeper.run_id, "created_at": now}
                   for p in (keeper, *others) if p.old_hash != keeper.new_hash]
        if aliases:
            conn.execute(insert(_ALIASES), aliases)


def _apply_runs(conn: Connection, plans: list[_Plan]) -> int:
    """Write the plans: merge runs that now share a hash, re-hash, alias, evaluations. Returns merges."""
    keepers = _group_by_new_hash(plans)
    merged = 0
    for keeper, others in keepers:
        for other in others:  # its evaluations move below; members now point at the kept run
            conn.execute(update(_MEMBERS).where(_MEMBERS.c.run_id == other.run_id).values(run_id=keeper.run_id))
            for table in (_METRICS, _EPOCHS):
                conn.execute(delete(table).where(table.c.run_id == other.run_id))
            conn.execute(delete(_RUNS).where(_RUNS.c.id == other.run_id))
            merged += 1
        conn.execute(delete(_METRICS).where(_METRICS.c.run_id == keeper.run_id, _METRICS.c.step.is_(None)))

    _rehash(conn, keepers, lambda k: None if k.spec is None else
            {"spec": k.spec, "train_fingerprint": k.train_fingerprint})
    for keeper, others in keepers:
        seen: set[str] = set()
        for plan in (keeper, *others):
            for ev in plan.evaluations:
                if ev.key not in seen:  # a merged run's evaluation under a key the kept run has: skipped
                    seen.add(ev.key)
                    _insert_evaluation(conn, keeper.run_id, plan, ev)
    return merged


def _insert_evaluation(conn: Connection, run_id: int, plan: _Plan, ev: _Evaluation) -> None:
    evaluation_id = conn.execute(insert(_EVALUATIONS).values(
        run_id=run_id, key=ev.key, test_set=ev.test_set, test_fingerprint=ev.test_fingerprint, variant=ev.variant,
        settings=ev.settings, status="done", error=None, features_path=ev.features_path, seconds=ev.seconds,
        created_at=plan.finished_at or plan.created_at, finished_at=plan.finished_at,
    )).inserted_primary_key[0]
    if ev.metrics:
        conn.execute(insert(_METRICS), [
            {"run_id": run_id, "evaluation_id": evaluation_id, "test_set": ev.test_set, "metric": name,
             "value": value, "step": None}
            for name, value in ev.metrics
        ])


def _v1_ablation_name(row: Any, members: list[tuple[int, str]]) -> Any:
    return _upgrade_ablation_name(name=row.name, base=row.base, mode=row.mode, meta=copy.deepcopy(row.meta or {}),
                                  member_hashes=[h for _, h in members])


def _rename_ablations(conn: Connection, namer: Callable[[Any, list[tuple[int, str]]], Any] = _v1_ablation_name) -> int:
    """Each ablation's name from the upgrade: ``namer(row, [(run id, new hash) of its members in position
    order])``; None or a ValueError keeps the name."""
    members: dict[int, list[tuple[int, str]]] = {}
    stmt = (select(_MEMBERS.c.ablation_id, _RUNS.c.id, _RUNS.c.run_hash).join(_RUNS, _MEMBERS.c.run_id == _RUNS.c.id)
            .order_by(_MEMBERS.c.ablation_id, _MEMBERS.c.position))
    for ablation_id, run_id, run_hash in conn.execute(stmt):
        members.setdefault(ablation_id, []).append((run_id, run_hash))
    renamed = 0
    for row in conn.execute(select(_ABLATIONS).order_by(_ABLATIONS.c.id)).all():
        try:
            name = namer(row, members.get(row.id, []))
        except ValueError:
            continue  # an ablation whose name cannot be upgraded keeps it; its members are what matters
        if isinstance(name, str) and name and len(name) <= 200 and name != row.name:
            conn.execute(update(_ABLATIONS).where(_ABLATIONS.c.id == row.id).values(name=name))
            renamed += 1
    return renamed


def _rewrite_run_folders(plans: list[_Plan]) -> str:
    """spec.json of each re-hashed run's folder, when it still names the old hash; nothing else there.

    Relative ``out_dir`` paths are relative to the current folder, as the runner wrote them.
    """
    rewritten = missing = failed = 0
    for plan in plans:
        if not plan.out_dir:
            continue
        folder = Path(plan.out_dir).expanduser()
        if not folder.is_dir():
            missing += 1
            continue
        spec_file = folder / "spec.json"
        try:
            current = json.loads(spec_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # no spec.json, or not ours: leave the folder alone
        if not isinstance(current, dict) or current.get("run_hash") != plan.old_hash:
            continue
        earlier = [h for h in current.get("legacy_run_hashes") or [] if isinstance(h, str) and h != plan.new_hash]
        payload = {"run_hash": plan.new_hash, "legacy_run_hashes": [*earlier, plan.old_hash], "spec": plan.spec}
        partial = spec_file.with_name(spec_file.name + ".upgrading")
        try:
            partial.write_text(json.dumps(payload, sort_keys=True, indent=2), encoding="utf-8")
            os.replace(partial, spec_file)
            rewritten += 1
        except OSError:
            failed += 1
    phrase = f"{rewritten} run folder(s) rewritten, {missing} missing"
    return phrase + (f", {failed} not writable" if failed else "")


# ---------------------------------------------------------------------- step 2 → 3

def _to_v3(ctx: StepContext) -> None:
    """A table for per-query results. Evaluations recorded before have none: reports fill them in
    from the saved features when they need them (or say that they lack them)."""
    # Plain DDL, frozen here: the same table (and foreign key) a new schema-3 database gets.
    ctx.conn.execute(text(
        "CREATE TABLE rb_query_scores (evaluation_id INTEGER NOT NULL PRIMARY KEY "
        "REFERENCES rb_evaluations (id) ON DELETE CASCADE, num_queries INTEGER NOT NULL, "
        f"payload {'BYTEA' if ctx.conn.dialect.name == 'postgresql' else 'BLOB'} NOT NULL)"))
    count = ctx.conn.execute(select(func.count()).select_from(_EVALUATIONS)).scalar_one()
    ctx.notes.append(f"{count} evaluation(s) without per-query results (filled in from saved features on demand)")


# ---------------------------------------------------------------------- step 3 → 4

_V3 = MetaData()
_RUNS_V3 = Table(
    "rb_runs", _V3,
    Column("id", Integer, primary_key=True),
    Column("run_hash", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("spec", JSONText, nullable=False),
    Column("model_info", JSONText),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    Column("out_dir", Text),
    Column("train_fingerprint", String(128)),
)
_QUERY_SCORES_V3 = Table("rb_query_scores", _V3, Column("evaluation_id", Integer, primary_key=True))
MERGED_VARIANT = "merged"  # label of a merged run's evaluation whose numbers differ from the kept run's


def _rekey_run(**kwargs: Any) -> Any:
    # Today's identity code, imported lazily (only an old database needs it).
    from reidbench.harness.spec.rekey import rekey_stored_run

    return rekey_stored_run(**kwargs)


def _rekey_ablation_name(**kwargs: Any) -> Any:
    from reidbench.harness.spec.rekey import rekeyed_ablation_name

    return rekeyed_ablation_name(**kwargs)


@dataclass(frozen=True)
class _Rekey:
    """What becomes of one stored run when its identity is recomputed."""

    run_id: int
    old_hash: str
    new_hash: str
    status: str
    out_dir: str | None
    spec: dict[str, Any] | None = None  # None: the row stays as it is
    kept_because: str | None = None


def _to_v4(ctx: StepContext) -> None:
    """Every stored run re-keyed with today's identity (old hashes kept as aliases): the digest of the
    pretrained weights it recorded enters (``harness/spec/rekey.py``), and so does whatever else today's
    code computes differently from a stored spec. Runs that end with one identity are merged."""
    conn = ctx.conn
    old_members = _member_hashes(conn)
    plans = [_plan_rekey(row) for row in conn.execute(select(_RUNS_V3).order_by(_RUNS_V3.c.id)).all()]
    keepers = _group_by_new_hash(plans)
    merged = _MergeCounts()
    for keeper, others in keepers:
        for other in others:
            _merge_run(conn, keeper.run_id, other, merged)
    _rehash(conn, keepers, lambda k: None if k.spec is None else {"spec": k.spec})

    def namer(row: Any, members: list[tuple[int, str]]) -> Any:
        return _rekey_ablation_name(name=row.name, base=row.base, mode=row.mode, meta=copy.deepcopy(row.meta or {}),
                                    old_member_hashes=old_members.get(row.id, []),
                                    new_member_hashes=[h for _, h in members])

    renamed = _rename_ablations(conn, namer)
    upgraded = [p for p in plans if p.spec is not None and p.new_hash != p.old_hash]
    kept = [p for p in plans if p.kept_because is not None]
    ctx.notes.append(f"{len(upgraded)} run(s) re-keyed with the digest of their pretrained weights and "
                     f"today's spec")
    if merged.runs:
        ctx.notes.append(f"{merged.runs} run(s) merged into a run with the same training")
    if merged.relabelled:
        ctx.notes.append(f"{merged.relabelled} evaluation(s) of merged runs with other numbers kept as variant "
                         f"{MERGED_VARIANT}:<old hash>")
    if merged.logs_left:
        ctx.notes.append(f"{merged.logs_left} merged run(s)' per-epoch logs left in their run folders and the "
                         f"backup")
    if renamed:
        ctx.notes.append(f"{renamed} ablation(s) renamed")
    if upgraded:
        ctx.after_commit.append(lambda: _rewrite_run_folders(upgraded))
    if kept:
        listed = ", ".join(f"{p.old_hash[:12]} ({p.kept_because})" for p in kept[:KEPT_LISTED])
        more = ", ..." if len(kept) > KEPT_LISTED else ""
        ctx.after_commit.append(lambda: f"{len(kept)} run(s) kept their old hash: {listed}{more}")


def _member_hashes(conn: Connection) -> dict[int, list[str]]:
    stmt = (select(_MEMBERS.c.ablation_id, _RUNS.c.run_hash).join(_RUNS, _MEMBERS.c.run_id == _RUNS.c.id)
            .order_by(_MEMBERS.c.ablation_id, _MEMBERS.c.position))
    out: dict[int, list[str]] = {}
    for ablation_id, run_hash in conn.execute(stmt):
        out.setdefault(ablation_id, []).append(run_hash)
    return out


def _plan_rekey(row: Any) -> _Rekey:
    base = dict(run_id=row.id, old_hash=row.run_hash, status=row.status, out_dir=row.out_dir)
    try:
        # deep copies: the identity code must not be able to change what is compared and written.
        # Only ValueError means "this run cannot be re-keyed"; anything else is a bug and aborts.
        out = _rekey_run(run_hash=row.run_hash, spec=copy.deepcopy(row.spec),
                         train_fingerprint=row.train_fingerprint, model_info=copy.deepcopy(row.model_info),
                         started_at=row.started_at or row.created_at)
        new_hash = _text(getattr(out, "run_hash", None), "run_hash", 128)
        spec = getattr(out, "spec", None)
        if not isinstance(spec, Mapping):
            raise ValueError(f"re-keyed spec is {type(spec).__name__}, not a mapping")
        dumps(dict(spec))
    except (ValueError, TypeError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return _Rekey(**base, new_hash=row.run_hash, kept_because=reason)
    if new_hash == row.run_hash:
        return _Rekey(**base, new_hash=new_hash)
    return _Rekey(**base, new_hash=new_hash, spec=dict(spec))


@dataclass
class _MergeCounts:
    runs: int = 0
    relabelled: int = 0
    logs_left: int = 0


def _evaluations_of(conn: Connection, run_id: int) -> dict[str, tuple[int, str, dict[str, str]]]:
    """key → (evaluation id, variant, {metric: value.hex()}) of a run's evaluations."""
    out: dict[str, tuple[int, str, dict[str, str]]] = {}
    for ev in conn.execute(select(_EVALUATIONS.c.id, _EVALUATIONS.c.key, _EVALUATIONS.c.variant)
                           .where(_EVALUATIONS.c.run_id == run_id).order_by(_EVALUATIONS.c.id)):
        values = conn.execute(select(_METRICS.c.metric, _METRICS.c.value).where(
            _METRICS.c.evaluation_id == ev.id, _METRICS.c.step.is_(None))).all()
        out[ev.key] = (ev.id, ev.variant, {m: float(v).hex() for m, v in values})
    return out


def _drop_evaluation(conn: Connection, evaluation_id: int) -> None:
    conn.execute(delete(_QUERY_SCORES_V3).where(_QUERY_SCORES_V3.c.evaluation_id == evaluation_id))
    conn.execute(delete(_METRICS).where(_METRICS.c.evaluation_id == evaluation_id))
    conn.execute(delete(_EVALUATIONS).where(_EVALUATIONS.c.id == evaluation_id))


def _move_evaluation(conn: Connection, evaluation_id: int, run_id: int, **changes: Any) -> None:
    conn.execute(update(_EVALUATIONS).where(_EVALUATIONS.c.id == evaluation_id).values(run_id=run_id, **changes))
    conn.execute(update(_METRICS).where(_METRICS.c.evaluation_id == evaluation_id).values(run_id=run_id))


def _merge_run(conn: Connection, keeper_id: int, other: _Rekey, counts: _MergeCounts) -> None:
    """Move ``other`` into the kept run, losing no evaluation number, then delete its row.

    An evaluation the kept run lacks moves as it is; one it has with the same numbers is a duplicate
    and goes; one with other numbers moves under variant ``merged:<old hash>[:variant]``. Per-epoch
    rows (``rb_epochs``, periodic metrics) move when the kept run has none, else stay in the other
    run's folder (train.log, TensorBoard) and the backup.
    """
    mine = _evaluations_of(conn, keeper_id)
    for key, (evaluation_id, variant, values) in _evaluations_of(conn, other.run_id).items():
        have = mine.get(key)
        if have is None:
            _move_evaluation(conn, evaluation_id, keeper_id)
        elif have[2] == values:
            _drop_evaluation(conn, evaluation_id)
        elif not have[2]:  # the kept run's evaluation recorded nothing (failed): the other's takes its place
            _drop_evaluation(conn, have[0])
            _move_evaluation(conn, evaluation_id, keeper_id)
        else:
            label = f"{MERGED_VARIANT}:{other.old_hash[:12]}" + (f":{variant}" if variant else "")
            relabelled = hashlib.sha256(f"{key}|{other.old_hash}".encode()).hexdigest()[:32]
            _move_evaluation(conn, evaluation_id, keeper_id, key=relabelled, variant=label[:200])
            counts.relabelled += 1
    logs_left = False
    for table, mine_filter, theirs_filter in (
            (_EPOCHS, _EPOCHS.c.run_id == keeper_id, _EPOCHS.c.run_id == other.run_id),
            (_METRICS, (_METRICS.c.run_id == keeper_id) & _METRICS.c.step.isnot(None),
             _METRICS.c.run_id == other.run_id)):
        theirs = conn.execute(select(func.count()).select_from(table).where(theirs_filter)).scalar_one()
        if not theirs:
            continue
        if conn.execute(select(func.count()).select_from(table).where(mine_filter)).scalar_one():
            conn.execute(delete(table).where(theirs_filter))
            logs_left = True
        else:
            conn.execute(update(table).where(theirs_filter).values(run_id=keeper_id))
    counts.logs_left += logs_left
    conn.execute(update(_MEMBERS).where(_MEMBERS.c.run_id == other.run_id).values(run_id=keeper_id))
    conn.execute(update(_ALIASES).where(_ALIASES.c.run_id == other.run_id).values(run_id=keeper_id))
    conn.execute(delete(_RUNS).where(_RUNS.c.id == other.run_id))
    counts.runs += 1


# ---------------------------------------------------------------------- step → 5 (convergence)

_EPOCH_VALUES = Table("rb_epochs", MetaData(), Column("id", Integer, primary_key=True),
                      Column("run_id", Integer, nullable=False), Column("epoch", Integer, nullable=False),
                      Column("values", JSONText))


def _to_v5(ctx: StepContext) -> None:
    """A convergence record per finished run (``harness/train/convergence.py``), computed from what the
    database already holds: the run's per-epoch history (losses, LR, periodic mAP) and its default
    evaluation's final mAP on its first test set. Runs whose history cannot tell get ``unknown``
    with the reason; unfinished runs get no row (a later result writes one). Nothing else changes."""
    from reidbench.harness.train.convergence import assess_run  # lazy: only when an old database is opened

    conn = ctx.conn
    conn.execute(text(
        "CREATE TABLE rb_convergence (run_id INTEGER NOT NULL PRIMARY KEY "
        "REFERENCES rb_runs (id) ON DELETE CASCADE, status VARCHAR(16) NOT NULL, first_epoch INTEGER, "
        "last_epoch INTEGER, loss_change FLOAT, map_change FLOAT, detail TEXT NOT NULL)"))
    done = conn.execute(select(_RUNS.c.id, _RUNS.c.spec).where(_RUNS.c.status == "done").order_by(_RUNS.c.id)).all()
    history: dict[int, list[dict[str, Any]]] = {}
    for run_id, epoch, values in conn.execute(
            select(_EPOCH_VALUES.c.run_id, _EPOCH_VALUES.c.epoch, _EPOCH_VALUES.c["values"])
            .order_by(_EPOCH_VALUES.c.run_id, _EPOCH_VALUES.c.epoch)):
        history.setdefault(run_id, []).append({"epoch": int(epoch), **dict(values or {})})
    finals: dict[int, dict[str, dict[str, float]]] = {}
    stmt = (select(_METRICS.c.run_id, _METRICS.c.test_set, _METRICS.c.metric, _METRICS.c.value)
            .join(_EVALUATIONS, _METRICS.c.evaluation_id == _EVALUATIONS.c.id)
            .where(_METRICS.c.step.is_(None), _EVALUATIONS.c.variant == "").order_by(_METRICS.c.id))
    for run_id, test_set, metric, value in conn.execute(stmt):
        finals.setdefault(run_id, {}).setdefault(test_set, {})[metric] = float(value)
    counts: Counter[str] = Counter()
    for run_id, spec in done:
        record = assess_run(dict(spec or {}), history.get(run_id, []), finals.get(run_id, {}))
        counts[record.status] += 1
        conn.execute(text("INSERT INTO rb_convergence (run_id, status, first_epoch, last_epoch, loss_change, "
                          "map_change, detail) VALUES (:run_id, :status, :a, :b, :loss, :map, :detail)"),
                     {"run_id": run_id, "status": record.status,
                      "a": record.epochs[0] if record.epochs else None,
                      "b": record.epochs[1] if record.epochs else None,
                      "loss": record.loss_change, "map": record.map_change, "detail": dumps(record.to_dict())})
    ctx.notes.append(f"convergence of {len(done)} finished run(s) read from their stored history "
                     f"({counts['yes']} converged, {counts['no']} not, {counts['unknown']} unknown)")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(2, "evaluations own the final metrics; run hashes identify the training only (old ones kept as "
                 "aliases)", _to_v2),
    Migration(3, "per-query results of evaluations (rb_query_scores)", _to_v3),
    Migration(4, "every run re-keyed with today's identity: the digest of its pretrained weights enters (old "
                 "hashes kept as aliases; runs with one identity merged)", _to_v4),
    Migration(5, "a convergence record per finished run (rb_convergence), from its stored history", _to_v5),
)
