"""Where a study's trials live (Optuna storage), and the small lock that hands out trials locally.

- Default: Optuna's RDB tables in the results database itself (``--db``, sqlite:///results.db).
  Our tables are ``rb_``-prefixed, so Optuna's (``studies``, ``trials``, ..., its own
  ``alembic_version``) sit beside them. RDB storages get heartbeats: a trial whose worker stops
  beating for ``GRACE_PERIOD_S`` is failed and re-queued (RetryHeartbeatStaleTrialCallback,
  called RetryFailedTrialCallback before Optuna 4.9) by the next worker that asks for a trial.
- ``--workers N > 1`` with an SQLite database: Optuna's journal file (``JournalFileBackend``,
  ``JournalFileStorage`` before Optuna 4.0) at ``<runs-dir>/optuna-journal/<name>.log``, because
  several processes writing Optuna's RDB tables in one SQLite file fail with "database is locked".
  A study found in a journal file keeps using it (and one found in the database keeps the database).
  Optuna's JournalStorage has no heartbeats; a dead local worker's trial is found by its process
  id instead (``worker.reap_dead_trials``), so journal studies are for workers on one machine.
- ``--storage URL``: any Optuna storage URL, e.g. postgresql://user@host/db for workers on many
  machines (Optuna's documented distributed mode; heartbeats as above), or ``journal:PATH``.

The study commands name a journal storage ``journal:<path>``; everything else is an SQLAlchemy URL.
"""

from __future__ import annotations

import inspect
import re
import time
import warnings
from pathlib import Path
from typing import Any

JOURNAL_PREFIX = "journal:"
JOURNAL_FOLDER = "optuna-journal"
HEARTBEAT_INTERVAL_S = 30  # as our run claims beat every 20 s and go stale after 120 s
GRACE_PERIOD_S = 120
MAX_RETRY = 3  # a trial whose worker died is re-queued at most this many times
SQLITE_BUSY_TIMEOUT_S = 60.0
CREATE_ATTEMPTS = 4
# What a process sees when another creates Optuna's tables at the same moment.
RACE_ERRORS = ("already exists", "unique constraint", "duplicate key", "database is locked")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "study"


def journal_path(runs_dir: str | Path, name: str) -> Path:
    return (Path(runs_dir) / JOURNAL_FOLDER / f"{_safe_name(name)}.log").resolve()


def lock_path(runs_dir: str | Path, name: str) -> Path:
    return (Path(runs_dir) / JOURNAL_FOLDER / f"{_safe_name(name)}.lock").resolve()


def journal_url(path: str | Path) -> str:
    return f"{JOURNAL_PREFIX}{Path(path).resolve()}"


def is_journal(url: str) -> bool:
    return url.startswith(JOURNAL_PREFIX)


def _journal_file(url: str) -> Path:
    return Path(url[len(JOURNAL_PREFIX):]).expanduser()


def normalize_storage(url: str) -> str:
    """``journal:PATH`` or a path ending in .log → journal; a bare path → SQLite; URLs unchanged."""
    text = str(url).strip()
    if not text:
        raise ValueError("--storage is empty: give e.g. postgresql://user@host/db or journal:runs/study.log")
    if is_journal(text):
        return journal_url(_journal_file(text))
    if "://" not in text:
        return journal_url(text) if text.endswith(".log") else f"sqlite:///{text}"
    return text


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def is_local_storage(url: str) -> bool:
    """SQLite files and journal files: every worker that can use them runs on this machine."""
    return is_journal(url) or is_sqlite(url)


def describe_storage(url: str) -> str:
    """The storage for messages (password hidden)."""
    if is_journal(url):
        return f"journal file {_journal_file(url)}"
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _driver_url(url: str) -> str:
    """The SQLAlchemy URL with an installed driver (``postgresql://`` → psycopg 3 without psycopg2)."""
    from reidbench.harness.store.engine import driver_url

    return driver_url(url)


def _retry_callback() -> Any:
    import optuna

    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    return cls(max_retry=MAX_RETRY)


def retry_callback() -> Any:
    """The callback that re-queues a trial whose worker died (shared by heartbeats and the pid check)."""
    return _retry_callback()


def _sqlite_write_lock_first(engine: Any) -> None:
    """Make every transaction of Optuna's SQLite engine take the write lock up front and wait for it.

    pysqlite's deferred transactions fail at once with "database is locked" when a read turns into a
    write while another connection (our store's run heartbeats) has written; BEGIN IMMEDIATE with a
    busy timeout makes them queue instead, the same recipe as the results store.
    """
    from sqlalchemy import event

    busy_ms = int(SQLITE_BUSY_TIMEOUT_S * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while Optuna created its tables lack the listeners


def open_storage(url: str, *, heartbeat: bool = True) -> Any:
    """An Optuna storage object for ``url`` (see the module doc for the kinds)."""
    import optuna

    if is_journal(url):
        path = _journal_file(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            from optuna.storages.journal import JournalFileBackend as Backend
        except ImportError:  # Optuna < 4.0
            Backend = optuna.storages.JournalFileStorage  # noqa: N806
        return optuna.storages.JournalStorage(Backend(str(path)))
    kwargs: dict[str, Any] = {}
    if is_sqlite(url):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    if heartbeat:
        params = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
        kwargs["heartbeat_interval"] = HEARTBEAT_INTERVAL_S
        kwargs["grace_period"] = GRACE_PERIOD_S
        new_name = "heartbeat_stale_trial_callback"  # Optuna >= 4.9; failed_trial_callback before
        kwargs[new_name if new_name in params else "failed_trial_callback"] = _retry_callback()
    target = _driver_url(url)  # a missing driver is said as it is, not as "cannot open"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for attempt in range(CREATE_ATTEMPTS):
            try:
                storage = optuna.storages.RDBStorage(target, **kwargs)
                break
            except ImportError as err:
                raise ValueError(f"{describe_storage(url)}: database driver {err.name!r} is not installed") from None
            except Exception as err:  # Optuna wraps driver errors in its own types
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                # Two processes creating Optuna's tables at once: the loser finds them on a retry.
                racing = any(text in first.lower() for text in RACE_ERRORS)
                if racing and attempt + 1 < CREATE_ATTEMPTS:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                raise ValueError(f"{describe_storage(url)}: cannot open as an Optuna storage ({first})") from None
    if is_sqlite(url):
        _sqlite_write_lock_first(storage.engine)
    return storage


def _rdb_has_studies_table(url: str) -> bool:
    """Without creating Optuna's tables: does this database hold any Optuna study table?"""
    from sqlalchemy import create_engine, inspect as sa_inspect

    if is_sqlite(url):
        from sqlalchemy.engine import make_url

        database = make_url(url).database
        if not database or database == ":memory:" or not Path(database).exists():
            return False
    engine = create_engine(_driver_url(url), connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S} if is_sqlite(url) else {})
    try:
        return sa_inspect(engine).has_table("studies")
    finally:
        engine.dispose()


def list_studies(url: str) -> list[str]:
    """Names of the studies in storage ``url`` (none when the storage does not exist yet)."""
    import optuna

    if is_journal(url):
        if not _journal_file(url).exists():
            return []
    elif not _rdb_has_studies_table(url):
        return []
    return sorted(optuna.get_all_study_names(storage=open_storage(url, heartbeat=False)))


def choose_storage(name: str, db_url: str, runs_dir: str | Path, storage: str | None = None,
                   workers: int = 1) -> str:
    """The storage ``reidbench study`` uses for study ``name`` (see the module doc)."""
    if storage:
        return normalize_storage(storage)
    journal = journal_path(runs_dir, name)
    if journal.exists():
        return journal_url(journal)
    if workers > 1 and is_sqlite(db_url):
        if name in list_studies(db_url):
            return db_url  # started single-worker in the database: it stays there
        return journal_url(journal)
    return db_url


def locate_study(name: str, db_url: str, runs_dir: str | Path = "runs", storage: str | None = None) -> str:
    """The storage URL that holds study ``name``: ``storage`` if given, else the study's journal
    file under ``runs_dir``, else the results database. Fails listing the studies it found."""
    candidates = [normalize_storage(storage)] if storage else [journal_url(journal_path(runs_dir, name)), db_url]
    found: list[str] = []
    for url in candidates:
        names = list_studies(url)
        if name in names:
            return url
        found.extend(names)
    where = " or ".join(describe_storage(u) for u in candidates)
    listed = ", ".join(sorted(set(found))) or "none"
    raise ValueError(f"no study {name!r} in {where}; studies there: {listed} (give --storage for another place)")


class AskLock:
    """An exclusive lock file (fcntl) held while a local worker picks its next trial.

    Workers on this machine take turns between "is there work left?" and "ask Optuna for a trial",
    so they never create a trial beyond the grid or the budget. Workers on other machines
    (``--storage postgresql://...``) are not covered; a trial created by such a race is marked
    surplus and failed before it trains anything (``worker``).
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = None if path is None else Path(path)
        self._fh: Any = None

    def acquire(self) -> None:
        if self.path is None or self._fh is not None:
            return
        try:
            import fcntl
        except ImportError:  # not on POSIX: no local lock, the surplus check still holds
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        self._fh = fh

    def release(self) -> None:
        if self._fh is None:
            return
        import fcntl

        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        finally:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "AskLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
