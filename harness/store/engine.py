"""Engine construction and error translation for the results database.

SQLite (the default) gets, on every new connection: WAL journal (readers never wait for the
writer), a busy timeout (writers queue instead of failing at once) and foreign keys on. Python's
sqlite3 driver is told not to open transactions itself; SQLAlchemy's ``begin`` event emits
``BEGIN`` for reads and ``BEGIN IMMEDIATE`` for writes, so a write transaction takes the write
lock before its first read and can never fail half-way with an unwaitable SQLITE_BUSY.
WAL needs every process on one machine (shared memory): use PostgreSQL across machines.

PostgreSQL: a plain ``postgresql://`` URL uses psycopg2 when it is installed (SQLAlchemy's
default) and psycopg 3 (``pip install 'reidbench[postgres]'``) otherwise; an explicit driver
(``postgresql+psycopg://``, ``postgresql+psycopg2://``) is used as given.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.engine.url import URL

from reidbench.harness.store.errors import StoreError

WRITE_OPTION = "reidbench_write"  # execution option that asks for BEGIN IMMEDIATE on SQLite


def parse_url(url: str) -> URL:
    try:
        return make_url(url)
    except (exc.ArgumentError, ValueError):
        raise StoreError(
            f"{url!r}: not a database URL; use e.g. sqlite:///results.db or postgresql://user@host/db"
        ) from None


def describe(url: URL) -> str:
    """What messages call the database: the file path for SQLite, the password-free URL otherwise."""
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return url.render_as_string(hide_password=True)


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def with_driver(url: URL) -> URL:
    """``url`` with a PostgreSQL driver that is installed: psycopg2 if present, else psycopg 3.

    Only a bare ``postgresql://`` is changed; other dialects and explicit drivers are kept.
    """
    if url.drivername != "postgresql" or _installed("psycopg2"):
        return url
    if _installed("psycopg"):
        return url.set(drivername="postgresql+psycopg")
    raise StoreError(f"{describe(url)}: no PostgreSQL driver is installed; pip install 'reidbench[postgres]' "
                     "(psycopg 3) or psycopg2")


def driver_url(url: str) -> str:
    """``with_driver`` for a URL string (password kept): what Optuna's storages are given."""
    return with_driver(parse_url(url)).render_as_string(hide_password=False)


def build_engine(url: URL, busy_timeout_s: float) -> Engine:
    shown = describe(url)
    if is_sqlite(url) and url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        folder = Path(url.database).expanduser().resolve().parent
        if not folder.is_dir():
            raise StoreError(f"{url.database}: folder {folder} does not exist; create it or choose another database path")
    try:
        engine = create_engine(with_driver(url))
    except exc.NoSuchModuleError:
        raise StoreError(
            f"{shown}: unknown database dialect {url.drivername!r}; use sqlite:///path.db or postgresql://..."
        ) from None
    except ModuleNotFoundError as err:
        raise StoreError(f"{shown}: database driver {err.name!r} is not installed (pip install it)") from None
    except exc.ArgumentError as err:
        raise StoreError(f"{shown}: invalid database URL ({_first_line(err)})") from None
    if is_sqlite(url):
        _configure_sqlite(engine, busy_timeout_s)
    elif url.get_backend_name() == "postgresql":
        _configure_postgresql(engine, busy_timeout_s)
    return engine


def _configure_postgresql(engine: Engine, busy_timeout_s: float) -> None:
    """A statement that waits longer than ``busy_timeout_s`` for a lock fails (as on SQLite)
    instead of waiting forever, e.g. behind a transaction someone left open in psql."""
    lock_ms = max(1, int(round(busy_timeout_s * 1000)))  # 0 would mean "wait forever"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"SET lock_timeout = {lock_ms}")
        finally:
            cursor.close()
        dbapi_connection.commit()  # a session setting, kept only once its transaction commits


def _configure_sqlite(engine: Engine, busy_timeout_s: float) -> None:
    busy_ms = max(0, int(round(busy_timeout_s * 1000)))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see module docstring)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA journal_mode = WAL")  # reads the header: fails on a non-database file
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _first_line(err: BaseException) -> str:
    orig = getattr(err, "orig", None)
    text = str(orig if orig is not None else err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def translate(err: BaseException, url: URL, busy_timeout_s: float) -> StoreError:
    """Map a driver or SQLAlchemy error to a one-line StoreError naming the database."""
    shown = describe(url)
    message = _first_line(err)
    lowered = message.lower()
    if "database is locked" in lowered or "database table is locked" in lowered or "lock timeout" in lowered:
        return StoreError(
            f"{shown} is locked by another process (waited {busy_timeout_s:g} s for its write to finish); "
            "retry later or raise busy_timeout_s"
        )
    if any(text in lowered for text in ("connection to server", "could not translate host name",
                                        "failed to resolve host")):  # libpq, psycopg 3
        return StoreError(f"{shown}: cannot connect to the database server ({message})")
    if "not a database" in lowered:
        return StoreError(f"{shown}: not a reidbench results database (file is not a database)")
    if "unable to open database file" in lowered:
        return StoreError(f"{shown}: cannot open the database file (check the path and its permissions)")
    if "readonly database" in lowered or "read-only" in lowered:
        return StoreError(f"{shown}: the database is read-only for this user")
    if "disk i/o error" in lowered or "database or disk is full" in lowered:
        return StoreError(f"{shown}: {message}; nothing of this transaction was written")
    if "malformed" in lowered:
        return StoreError(f"{shown}: the database file is damaged ({message})")
    return StoreError(f"{shown}: database error: {message}")


def driver_errors(engine: Engine) -> tuple[type[BaseException], ...]:
    """Errors worth translating: SQLAlchemy's own plus the raw DBAPI ones (raised from connect hooks)."""
    dbapi = getattr(engine.dialect, "loaded_dbapi", None)
    base = getattr(dbapi, "Error", None)
    return (exc.SQLAlchemyError,) + ((base,) if isinstance(base, type) else ())
