"""Store: atomic writes, damaged or foreign files, locks, schema versions and bad URLs.

Tests that take ``db_url`` run on an SQLite file and on a real PostgreSQL database (conftest.py).
"""

from __future__ import annotations

import math
import os
import sqlite3
import time

import pytest

from reidbench.harness.store import Store, StoreError
from reidbench.harness.store.store import Store as StoreImpl

H = "e" * 64


def _result(map_b: object = 0.25, commit: str = "new") -> dict:
    return {"run_hash": H, "spec": {"k": 1},
            "metrics": {"synth-a": {"R1": 0.5, "mAP": 0.375}, "synth-b": {"R1": 0.125, "mAP": map_b}},
            "history": [{"epoch": 1, "losses": {"id": float("nan")}, "lr": 0.1, "extra": {}}],
            "provenance": {"synth-a": {"synthetic": True}}, "model_info": {"pretrained_source": None},
            "environment": {"git_commit": commit, "versions": {}, "device": "cpu", "host": "h"},
            "seconds_train": 1.0, "seconds_eval": 1.0, "out_dir": "/x"}


@pytest.fixture
def db(tmp_path):
    return tmp_path / "results.db"


def _table_names(url: str) -> set[str]:
    from sqlalchemy import create_engine, inspect

    from reidbench.harness.store.engine import driver_url

    engine = create_engine(driver_url(url))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.3", None])
def test_failed_record_result_writes_nothing(db_url, run_sql, bad):
    store = Store(db_url)
    store.ensure_run(H, {"k": 1}, "base")
    assert store.claim(H, "w")
    before = store.get_run(H)
    # synth-a's rows and the run's new columns reach the database before synth-b's bad value is met.
    with pytest.raises(StoreError, match="synth-b/mAP"):
        store.record_result(H, "w", _result(map_b=bad))
    assert store.get_run(H) == before
    assert run_sql(db_url, "SELECT count(*) FROM rb_metrics") == run_sql(db_url, "SELECT count(*) FROM rb_epochs") == [(0,)]


def test_failure_after_metrics_rolls_back_and_keeps_previous_results(db_url, monkeypatch):
    store = Store(db_url)
    done = store.record_result(H, None, _result(commit="old"))
    old_metrics = store.metrics()
    assert len(old_metrics) == 4 and done.status == "done"
    assert math.isnan(store.epochs(H)[0].values["loss/id"])  # a diverged loss is kept as recorded

    def explode(self, session, row, parsed):
        raise RuntimeError("disk gone")

    monkeypatch.setattr(StoreImpl, "_write_epochs", explode)
    with pytest.raises(RuntimeError, match="disk gone"):
        store.record_result(H, None, _result(commit="new"))
    assert store.get_run(H) == done and store.get_run(H).git_commit == "old"
    assert store.metrics() == old_metrics and len(store.epochs(H)) == 1


def test_corrupt_file_is_refused_and_left_unchanged(tmp_path):
    path = tmp_path / "results.db"
    payload = b"not sqlite " + os.urandom(4096)
    path.write_bytes(payload)
    with pytest.raises(StoreError) as info:
        Store(f"sqlite:///{path}")
    message = str(info.value)
    assert message == f"{path}: not a reidbench results database (file is not a database)"
    assert path.read_bytes() == payload


def test_locked_database_raises_instead_of_hanging(db):
    store = Store(f"sqlite:///{db}", busy_timeout_s=0.2)
    store.ensure_run(H, {}, "base")
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("UPDATE rb_runs SET label = 'held'")
        start = time.perf_counter()
        with pytest.raises(StoreError) as info:
            store.claim(H, "w")
        waited = time.perf_counter() - start
        message = str(info.value)
        assert message.startswith(f"{db} is locked by another process") and "\n" not in message
        assert 0.15 <= waited < 5.0
        # WAL: readers never wait for the writer, also from a freshly opened store.
        assert store.get_run(H).label == "base"
        assert Store(f"sqlite:///{db}", busy_timeout_s=0.2).statuses([H]) == {H: "pending"}
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.claim(H, "w") and store.get_run(H).attempts == 1


def test_sqlite_connections_use_wal_and_busy_timeout(db):
    store = Store(f"sqlite:///{db}", busy_timeout_s=1.5)
    with store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1500


def test_newer_schema_version_is_refused(db_url, run_sql):
    Store(db_url)
    run_sql(db_url, "UPDATE rb_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        Store(db_url)
    run_sql(db_url, "DROP TABLE rb_epochs")  # a newer schema without one of our tables: still not touched
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        Store(db_url)
    assert "rb_epochs" not in _table_names(db_url)


def test_foreign_tables_in_the_same_file_are_left_alone(db_url, run_sql):
    # e.g. Optuna's tables sharing results.db
    run_sql(db_url, "CREATE TABLE studies (study_id INTEGER PRIMARY KEY, study_name TEXT)")
    run_sql(db_url, "INSERT INTO studies VALUES (1, 'bot')")
    store = Store(db_url)
    store.ensure_run(H, {}, "")
    names = _table_names(db_url)
    assert run_sql(db_url, "SELECT study_name FROM studies") == [("bot",)]
    assert names - {"studies"} == {"rb_meta", "rb_runs", "rb_run_aliases", "rb_evaluations", "rb_metrics",
                                   "rb_epochs", "rb_ablations", "rb_ablation_members", "rb_query_scores",
                                   "rb_convergence"}


@pytest.mark.parametrize("url, fragment", [
    ("nosuchdb://host/db", "unknown database dialect 'nosuchdb'"),
    ("sqlite:////definitely/not/a/folder/results.db", "does not exist"),
])
def test_bad_urls_are_one_line_errors(url, fragment):
    with pytest.raises(StoreError) as info:
        Store(url)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_a_held_lock_fails_after_the_busy_timeout_and_reads_go_on(db_url):
    """Another connection holds a write (SQLite: the write lock; PostgreSQL: the run's row lock):
    a claim waits ``busy_timeout_s`` and fails with one line instead of waiting forever."""
    from sqlalchemy import create_engine, text

    from reidbench.harness.store.engine import driver_url

    store = Store(db_url, busy_timeout_s=0.3)
    store.ensure_run(H, {}, "base")
    engine = create_engine(driver_url(db_url))
    try:
        with engine.connect() as holder:
            transaction = holder.begin()
            holder.execute(text("UPDATE rb_runs SET label = 'held' WHERE run_hash = :h"), {"h": H})
            start = time.perf_counter()
            with pytest.raises(StoreError) as info:
                store.claim(H, "w")
            waited = time.perf_counter() - start
            message = str(info.value)
            assert " is locked by another process (waited 0.3 s" in message and "\n" not in message
            assert 0.25 <= waited < 5.0
            assert store.get_run(H).label == "base"  # readers see the last committed state, at once
            transaction.rollback()
    finally:
        engine.dispose()
    assert store.claim(H, "w") and store.get_run(H).attempts == 1


@pytest.mark.parametrize("installed, url, expected", [
    ({"psycopg2", "psycopg"}, "postgresql://u@h/db", "postgresql://u@h/db"),
    ({"psycopg"}, "postgresql://u:secret@h:5433/db", "postgresql+psycopg://u:secret@h:5433/db"),
    ({"psycopg"}, "postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),  # explicit: as given
    (set(), "sqlite:///x.db", "sqlite:///x.db"),
])
def test_postgresql_urls_get_an_installed_driver(monkeypatch, installed, url, expected):
    from reidbench.harness.store import engine

    monkeypatch.setattr(engine, "_installed", lambda module: module in installed)
    assert engine.driver_url(url) == expected


def test_no_postgresql_driver_is_a_one_line_error(monkeypatch):
    from reidbench.harness.store import engine

    monkeypatch.setattr(engine, "_installed", lambda module: False)
    with pytest.raises(StoreError) as info:
        Store("postgresql://me:secret@db.example/reid")
    assert str(info.value) == ("postgresql://me:***@db.example/reid: no PostgreSQL driver is installed; "
                               "pip install 'reidbench[postgres]' (psycopg 3) or psycopg2")


def test_an_unreachable_postgresql_server_is_a_one_line_error():
    pytest.importorskip("psycopg")
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StoreError) as info:
        Store(f"postgresql://me@127.0.0.1:{port}/reid")
    message = str(info.value)
    assert message.startswith(f"postgresql://me@127.0.0.1:{port}/reid: cannot connect to the database server (")
    assert "\n" not in message


@pytest.mark.postgres
def test_a_missing_postgresql_database_is_a_one_line_error(postgres_server):
    with pytest.raises(StoreError) as info:
        Store(postgres_server.url("no_such_database"))
    assert 'database "no_such_database" does not exist' in str(info.value) and "\n" not in str(info.value)
