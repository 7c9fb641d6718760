"""The results database, read without changing it: reachable, at which schema version, and whether the
next command that opens it would upgrade it.

Opening it through ``Store`` would create missing tables and upgrade an older schema in place, so
the doctor reads ``rb_meta`` itself: SQLite through a read-only connection, any other dialect
(PostgreSQL) in a READ ONLY transaction that is rolled back.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reidbench.harness.doctor.record import FAIL, OK, WARN, Check

CONNECT_TIMEOUT_S = 5


@dataclass(frozen=True)
class DatabaseState:
    """What the doctor learnt about a results database."""

    shown: str                        # the path (SQLite) or the password-free URL
    dialect: str
    exists: bool                      # False: the first command creates it
    schema_version: int | None = None  # None: no reidbench tables yet
    runs: int | None = None
    other_tables: int = 0             # tables that are not reidbench's (Optuna's, ...)
    writable: bool | None = None      # None: not known (servers)
    error: str | None = None          # why it cannot be used


def _first_line(err: BaseException) -> str:
    orig = getattr(err, "orig", None)
    text = str(orig if orig is not None else err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _read_tables(execute: Any, tables: set[str]) -> tuple[int | None, int | None]:
    """(schema_version, runs) from ``rb_meta``/``rb_runs`` through ``execute(sql) -> rows``."""
    if "rb_meta" not in tables:
        return None, None
    rows = execute("SELECT value FROM rb_meta WHERE key = 'schema_version'")
    if not rows:
        return None, None
    version = int(rows[0][0])  # ValueError: not an integer, reported by the caller
    runs = execute("SELECT COUNT(*) FROM rb_runs")[0][0] if "rb_runs" in tables else 0
    return version, int(runs)


def read_sqlite(path: Path) -> DatabaseState:
    """Read an SQLite results database without writing to it (nor creating it)."""
    shown = str(path)
    if not path.exists():
        folder = path.expanduser().resolve().parent
        if not folder.is_dir():
            return DatabaseState(shown, "sqlite", False, error=f"folder {folder} does not exist: create it or "
                                                                "choose another --db")
        writable = os.access(folder, os.W_OK | os.X_OK)
        return DatabaseState(shown, "sqlite", False, writable=writable)
    if not path.is_file():
        return DatabaseState(shown, "sqlite", True, error="not a file")
    # Read-only. Without a -wal file everything is in the main file: immutable=1 then reads it without
    # creating -wal/-shm files beside it (a plain read-only open of a WAL database leaves them behind).
    # With one, a writer may be active and its WAL must be read: mode=ro.
    wal = path.with_name(path.name + "-wal")
    uri = f"{path.resolve().as_uri()}?{'mode=ro' if wal.exists() else 'immutable=1'}"
    try:
        con = sqlite3.connect(uri, uri=True, timeout=CONNECT_TIMEOUT_S)
    except sqlite3.Error as err:
        return DatabaseState(shown, "sqlite", True, error=f"cannot open it ({_first_line(err)})")
    try:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version, runs = _read_tables(lambda sql: con.execute(sql).fetchall(), tables)
    except sqlite3.Error as err:
        return DatabaseState(shown, "sqlite", True, error=f"cannot read it ({_first_line(err)})")
    except ValueError:
        return DatabaseState(shown, "sqlite", True, error="rb_meta schema_version is not an integer")
    finally:
        con.close()
    # Writing needs the file and its folder (SQLite's -wal and -shm files go beside it).
    writable = os.access(path, os.W_OK) and os.access(path.resolve().parent, os.W_OK | os.X_OK)
    others = len([t for t in tables if not t.startswith(("rb_", "sqlite_"))])
    return DatabaseState(shown, "sqlite", True, version, runs, others, writable)


def read_server(url: Any) -> DatabaseState:
    """Read a server database (a SQLAlchemy URL) in a READ ONLY transaction that is rolled back."""
    from sqlalchemy import create_engine, exc, inspect, text
    from sqlalchemy.pool import NullPool

    from reidbench.harness.store.engine import describe, with_driver
    from reidbench.harness.store.errors import StoreError

    shown, dialect = describe(url), url.get_backend_name()
    try:
        driver = with_driver(url)
    except StoreError as err:
        return DatabaseState(shown, dialect, False, error=str(err).split(": ", 1)[-1])
    args = {"connect_timeout": CONNECT_TIMEOUT_S} if dialect == "postgresql" else {}
    try:
        engine = create_engine(driver, poolclass=NullPool, connect_args=args)
    except exc.NoSuchModuleError:
        return DatabaseState(shown, dialect, False, error=f"unknown database dialect {url.drivername!r}; use "
                                                          "sqlite:///path.db or postgresql://user@host/db")
    except ModuleNotFoundError as err:
        return DatabaseState(shown, dialect, False, error=f"database driver {err.name!r} is not installed "
                                                          "(pip install it)")
    except Exception as err:  # noqa: BLE001 - an invalid URL argument: one line
        return DatabaseState(shown, dialect, False, error=_first_line(err))
    try:
        with engine.connect() as conn:
            if dialect == "postgresql":
                conn.execute(text("SET TRANSACTION READ ONLY"))
            tables = set(inspect(conn).get_table_names())
            version, runs = _read_tables(lambda sql: conn.execute(text(sql)).all(), tables)
            conn.rollback()
    except ValueError:
        return DatabaseState(shown, dialect, True, error="rb_meta schema_version is not an integer")
    except Exception as err:  # noqa: BLE001 - every driver error becomes the line
        return DatabaseState(shown, dialect, False, error=f"cannot connect ({_first_line(err)})")
    finally:
        engine.dispose()
    others = len([t for t in tables if not t.startswith("rb_")])
    return DatabaseState(shown, dialect, True, version, runs, others)


def read_database(url: str) -> DatabaseState:
    """``url`` as ``--db`` takes it (a bare path means an SQLite file)."""
    from reidbench.harness.store.engine import is_sqlite, parse_url
    from reidbench.harness.store.errors import StoreError

    url = str(url).strip()
    if not url:
        return DatabaseState("''", "?", False, error="empty database URL; use e.g. sqlite:///results.db")
    try:
        parsed = parse_url(url if "://" in url else f"sqlite:///{url}")  # as Store does
    except StoreError as err:
        return DatabaseState(url, "?", False, error=str(err))
    if is_sqlite(parsed):
        database = parsed.database or ":memory:"
        if database == ":memory:" or database.startswith("file:"):
            return DatabaseState(database, "sqlite", False)
        return read_sqlite(Path(database).expanduser())
    return read_server(parsed)


def database_check(url: str, origin: str = "") -> Check:
    """The ``database`` line; ``origin``: where the URL came from when not from --db ("default",
    "$REIDBENCH_DB"), shown after it."""
    from reidbench.harness.store.tables import SCHEMA_VERSION

    state = read_database(url)
    data = {"url": state.shown, "dialect": state.dialect, "exists": state.exists,
            "schema_version": state.schema_version, "current_schema": SCHEMA_VERSION, "runs": state.runs,
            "would_upgrade": state.schema_version is not None and state.schema_version < SCHEMA_VERSION}
    head = f"{state.shown} ({origin})" if origin else state.shown
    if state.error:
        return Check("database", FAIL, f"{head}: {state.error}", data)
    if state.writable is False:
        return Check("database", FAIL, f"{head}: not writable for this user (the file or its folder); choose "
                                       "another --db or fix the permissions", data)
    if state.shown == ":memory:" or (state.dialect == "sqlite" and state.shown.startswith("file:")):
        return Check("database", WARN, f"{head}: an in-memory or URI database; nothing is kept between commands",
                     data)
    if not state.exists:
        return Check("database", OK, f"{head}: not created yet; the first command creates it (schema "
                                     f"{SCHEMA_VERSION})", data)
    if state.schema_version is None:
        others = f" beside {state.other_tables} other tables" if state.other_tables else ""
        return Check("database", OK, f"{head}: reachable, no reidbench tables yet; the first command creates them"
                                     f"{others} (schema {SCHEMA_VERSION})", data)
    if state.schema_version > SCHEMA_VERSION:
        return Check("database", FAIL, f"{head}: schema {state.schema_version} is newer than this reidbench "
                                       f"supports ({SCHEMA_VERSION}): upgrade reidbench", data)
    if state.schema_version < SCHEMA_VERSION:
        return Check("database", WARN, f"{head}: schema {state.schema_version}, {_runs(state.runs)}: the next command "
                                       f"upgrades it in place to {SCHEMA_VERSION} (backup first; doctor changed "
                                       "nothing)", data)
    return Check("database", OK, f"{head}: schema {SCHEMA_VERSION} (current), {_runs(state.runs)}", data)


def _runs(count: int | None) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"
