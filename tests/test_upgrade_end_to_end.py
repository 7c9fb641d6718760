"""A results.db + runs/ written by the schema-1 code, opened by today's code: nothing retrained, same numbers.

tests/fixtures/db-v1/ was written by commit 82b2239 (see its README.md). Its runs trained on two
tiny Market-layout folders given with relative paths (``--data tiny=data/tiny``); the folders
are regenerated here byte for byte, so the upgrade can fingerprint the data the runs saw. It runs on
the SQLite file and on a real PostgreSQL database holding the same rows (``db_url`` in conftest.py).
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from reidbench.harness.cli import main
from reidbench.harness.store import Store

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "db-v1"
COMMAND = ["ablate", "--base", "tiny.yaml", "--add", "bnneck,center", "--data", "tiny=data/tiny",
           "--data", "tiny2=data/tiny2", "--runs-dir", "runs", "--profile", "cpu", "--device", "cpu", "--workers", "0"]


def _old_values(db: Path) -> dict[tuple[str, str, str], float]:
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT r.run_hash, m.test_set, m.metric, m.value FROM rb_metrics m "
                           "JOIN rb_runs r ON r.id = m.run_id WHERE m.step IS NULL").fetchall()
    return {(h, t, m): v for h, t, m, v in rows}


def test_the_same_ablate_command_trains_nothing_and_report_prints_the_same_numbers(
        old_project, same_numbers, db_url, copy_sqlite_database):
    work = old_project(FIXTURE.name)
    old = _old_values(work / "results.db")
    old_hashes = sorted({h for h, _, _ in old})
    url = "sqlite:///results.db"
    if not db_url.startswith("sqlite"):  # the same database, as the old code would have kept it on PostgreSQL
        copy_sqlite_database(work / "results.db", db_url)
        url = db_url
    command = COMMAND + ["--db", url]

    result = CliRunner().invoke(main, command)
    assert result.exit_code == 0, result.output
    assert "3 run(s), 3 cached, 0 to run" in result.output
    # Nothing trained (no "epoch  1/6" log line, no resume) and nothing re-scored.
    assert not re.search(r"epoch +\d+/\d+", result.output) and "need new evaluations" not in result.output
    backups = "results.db.schema1-backup-*" if url.startswith("sqlite") else "reidbench-backup-schema1-*.json"
    assert list(work.glob(backups)), "a backup is made before the upgrade"

    report = CliRunner().invoke(main, ["report", "--format", "csv", "--db", url])
    assert report.exit_code == 0, report.output
    assert same_numbers(report.stdout, FIXTURE / "report-v1.csv")

    # Every old value is still there, bit for bit, under the run its old hash resolves to.
    store = Store(url)
    for old_hash in old_hashes:
        record = store.get_run(old_hash)
        assert record.status == "done" and old_hash in record.aliases and record.run_hash != old_hash
        assert record.train_fingerprint and record.train_fingerprint.startswith("dir:")
        for e in store.evaluations([record.run_hash]):
            prefix = "rerank_" if e.variant == "rerank" else ""
            for metric, value in e.metrics.items():
                assert old[(old_hash, e.test_set, prefix + metric)] == value
        assert sum(len(e.metrics) for e in store.evaluations([record.run_hash])) == \
            sum(1 for (h, _, _) in old if h == old_hash)

    # Once more: still nothing to do.
    again = CliRunner().invoke(main, command)
    assert again.exit_code == 0 and "3 cached, 0 to run" in again.output
