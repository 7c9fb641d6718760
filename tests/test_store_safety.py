"""Store: atomic writes, damaged or foreign files, locks, schema versions and bad URLs."""

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


def _count(db, table: str) -> int:
    with sqlite3.connect(db) as con:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.fixture
def db(tmp_path):
    return tmp_path / "results.db"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.3", None])
def test_failed_record_result_writes_nothing(db, bad):
    store = Store(f"sqlite:///{db}")
    store.ensure_run(H, {"k": 1}, "base")
    assert store.claim(H, "w")
    before = store.get_run(H)
    # synth-a's rows and the run's new columns reach the database before synth-b's bad value is met.
    with pytest.raises(StoreError, match="synth-b/mAP"):
        store.record_result(H, "w", _result(map_b=bad))
    assert store.get_run(H) == before
    assert _count(db, "rb_metrics") == 0 and _count(db, "rb_epochs") == 0


def test_failure_after_metrics_rolls_back_and_keeps_previous_results(db, monkeypatch):
    store = Store(f"sqlite:///{db}")
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


def test_newer_schema_version_is_refused(db):
    Store(f"sqlite:///{db}")
    with sqlite3.connect(db) as con:
        con.execute("UPDATE rb_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        Store(f"sqlite:///{db}")
    with sqlite3.connect(db) as con:  # a newer schema without one of our tables: still not touched
        con.execute("DROP TABLE rb_epochs")
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        Store(f"sqlite:///{db}")
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'rb_epochs'").fetchone()[0] == 0


def test_foreign_tables_in_the_same_file_are_left_alone(db):
    with sqlite3.connect(db) as con:  # e.g. Optuna's tables sharing results.db
        con.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY, study_name TEXT)")
        con.execute("INSERT INTO studies VALUES (1, 'bot')")
    store = Store(f"sqlite:///{db}")
    store.ensure_run(H, {}, "")
    with sqlite3.connect(db) as con:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert con.execute("SELECT study_name FROM studies").fetchall() == [("bot",)]
    assert names - {"studies"} == {"rb_meta", "rb_runs", "rb_run_aliases", "rb_evaluations", "rb_metrics",
                                   "rb_epochs", "rb_ablations", "rb_ablation_members", "rb_query_scores"}


@pytest.mark.parametrize("url, fragment", [
    ("nosuchdb://host/db", "unknown database dialect 'nosuchdb'"),
    ("sqlite:////definitely/not/a/folder/results.db", "does not exist"),
])
def test_bad_urls_are_one_line_errors(url, fragment):
    with pytest.raises(StoreError) as info:
        Store(url)
    assert fragment in str(info.value) and "\n" not in str(info.value)
