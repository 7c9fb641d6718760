"""Per-query results: every new evaluation stores them; a schema-2 database is upgraded in place (backup
first) with every number kept, and its evaluations get them from their saved features on demand.

Tests that take ``db_url`` or ``v2_url`` run on SQLite and on a real PostgreSQL database (conftest.py)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from reidbench.harness.cli import main
from reidbench.harness.evaluation.fill import fill_missing
from reidbench.harness.evaluation.per_query import from_text, pack, to_text, unpack
from reidbench.harness.store import Store, StoreError
from reidbench.harness.store.tables import SCHEMA_VERSION

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "db-v2"


def _aggregates(per_query: dict[str, np.ndarray]) -> dict[str, float]:
    """R1, mAP, mINP by hand: means over the valid queries (rank 1 = a true match first)."""
    valid = per_query["valid"]
    return {"R1": float(np.mean(per_query["first_match_rank"][valid] == 1)),
            "mAP": float(np.mean(per_query["ap"][valid].astype(np.float64))),
            "mINP": float(np.mean(per_query["inp"][valid].astype(np.float64)))}


def test_pack_round_trip_and_bad_payloads():
    per_query = {"ap": [0.5, np.nan], "inp": [0.25, np.nan], "first_match_rank": [2, 0], "valid": [True, False]}
    arrays = unpack(from_text(to_text(pack(per_query, [7, 9]))))
    assert arrays["q_pids"].tolist() == [7, 9] and arrays["first_match_rank"].dtype == np.int32
    assert arrays["ap"][0] == np.float32(0.5) and np.isnan(arrays["ap"][1])
    with pytest.raises(ValueError, match="different lengths"):
        pack({**per_query, "ap": [0.5]}, [7, 9])
    with pytest.raises(ValueError, match="lack valid"):
        pack({k: v for k, v in per_query.items() if k != "valid"}, [7, 9])
    with pytest.raises(ValueError, match="starting with 'b64npz:'"):
        from_text("npz:abc")
    with pytest.raises(ValueError, match="not a readable npz"):
        unpack(b"not an npz")


def test_a_new_evaluation_stores_per_query_results_that_give_its_metrics(tmp_path, db_url, tiny_market, study_spec_file):
    db = db_url
    result = CliRunner().invoke(main, ["ablate", "--base", str(study_spec_file), "--add", "", "--data",
                                       f"tiny={tiny_market}", "--profile", "cpu", "--epochs", "1", "--db", db,
                                       "--runs-dir", str(tmp_path / "runs"), "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    store = Store(db)
    (run,) = store.list_runs()
    (evaluation,) = store.evaluations([run.run_hash])
    assert evaluation.has_per_query
    arrays = store.query_scores(run.run_hash, evaluation.key)
    with np.load(evaluation.features_path) as npz:
        assert arrays["q_pids"].tolist() == npz["q_pids"].tolist()
    for metric, value in _aggregates(arrays).items():
        assert value == pytest.approx(evaluation.metrics[metric], abs=1e-6)
    # A payload that is not per-query results is refused, naming the field; nothing is written.
    with pytest.raises(StoreError, match="per_query"):
        store.record_evaluation(run.run_hash, {"key": "k", "test_set": "tiny", "metrics": {"R1": 0.5},
                                               "per_query": "b64npz:AAAA"})
    assert [e.key for e in store.evaluations([run.run_hash])] == [evaluation.key]
    store.close()


@pytest.fixture
def v2(old_project):
    return old_project(FIXTURE.name)


@pytest.fixture
def v2_url(v2, db_url, copy_sqlite_database) -> str:
    """The schema-2 database to open: the fixture's SQLite file, or the same tables and rows on PostgreSQL."""
    if db_url.startswith("sqlite"):
        return "sqlite:///results.db"
    copy_sqlite_database(v2 / "results.db", db_url)
    return db_url


VALUES = ("SELECT r.run_hash, e.key, e.variant, e.test_set, m.metric, m.value FROM rb_metrics m "
          "JOIN rb_evaluations e ON e.id = m.evaluation_id JOIN rb_runs r ON r.id = e.run_id ORDER BY 1, 2, 5")


def _values(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(VALUES).fetchall()


def test_a_schema_2_database_is_upgraded_in_place_and_filled_from_saved_features(v2, v2_url, run_sql, capfd,
                                                                                 same_numbers):
    before = _values(v2 / "results.db")  # the fixture's numbers (also what was laid into PostgreSQL)
    assert run_sql(v2_url, VALUES) == before
    store = Store(v2_url)
    err = capfd.readouterr().err
    backups = list(v2.glob("results.db.schema2-backup-*" if v2_url.startswith("sqlite")
                           else "reidbench-backup-schema2-*.json"))
    assert len(backups) == 1 and f"from schema 2 to {SCHEMA_VERSION}" in err
    assert "12 evaluation(s) without per-query results" in err
    if v2_url.startswith("sqlite"):
        assert _values(backups[0]) == before  # the backup is the schema-2 database as it was
    else:  # a JSON dump of every table: the metrics' values, bit for bit
        dumped = json.loads(backups[0].read_text())["tables"]
        assert sorted(float(m["value"]).hex() for m in dumped["rb_metrics"]) == sorted(v[5].hex() for v in before)
    # every number kept, bit for bit, under the hash each run had (schema 4 re-keys the cpu runs:
    # the profile name is a label now; the old hash is an alias)
    current = {store.get_run(old).run_hash: old for old in {row[0] for row in before}}

    def values_by_old_hash() -> list[tuple]:
        return sorted((current[row[0]], *row[1:]) for row in run_sql(v2_url, VALUES))

    assert values_by_old_hash() == before
    evaluations = store.evaluations()
    assert len(evaluations) == 12 and not any(e.has_per_query for e in evaluations)

    # One run's features damaged: its evaluations stay without per-query results, and say why.
    damaged = store.evaluations()[0]
    folder = Path(store.find_run(damaged.run_hash).out_dir)
    for path in folder.glob("features-*.npz"):
        with np.load(path) as npz:
            arrays = dict(npz)
        arrays["q_feats"] = arrays["q_feats"][::-1].copy()  # the queries' features swapped around
        np.savez(path, **arrays)
    lacking = fill_missing(store, store.evaluations())
    assert {run for run, _ in lacking} == {damaged.run_hash} and len(lacking) == 4
    assert all("not the stored" in why for why in lacking.values())
    assert values_by_old_hash() == before  # filling in never changes a stored number
    for e in store.evaluations():
        assert e.has_per_query == (e.run_hash != damaged.run_hash)
        if e.has_per_query:
            arrays = store.query_scores(e.run_hash, e.key)
            for metric, value in _aggregates(arrays).items():
                assert value == pytest.approx(e.metrics[metric], abs=1e-6)
    assert fill_missing(store, store.evaluations()) == lacking  # idempotent: nothing new to fill

    # The report: the old numbers, column for column, plus the intervals of the comparisons it could make.
    report = CliRunner().invoke(main, ["report", "--format", "csv", "--db", v2_url])
    assert report.exit_code == 0 and same_numbers(report.stdout, v2 / "report-v2.csv")
    assert "tiny mAP significant" in report.stdout.splitlines()[0]
    store.close()
