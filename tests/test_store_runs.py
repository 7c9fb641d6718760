"""Store: result round trip, ensure_run, lookups, listing, deletion and status queries.

Every test that takes ``store`` runs twice: on an SQLite file and on a real PostgreSQL database
(``db_url`` in conftest.py).
"""

from __future__ import annotations

import pickle
import time
from datetime import timezone

import pytest

from reidbench.harness.spec.hashing import run_hash
from reidbench.harness.train.runner import RunResult
from reidbench.harness.spec import RunSpec
from reidbench.harness.store import EpochRecord, MetricRecord, RunRecord, Store, StoreError


def _result(pretrained_source: str | None = None, map_a: float = 0.4) -> tuple[str, dict]:
    spec = RunSpec()
    rhash = run_hash(spec)
    history = [
        {"epoch": 1, "losses": {"id": 6.5, "triplet": 0.9}, "lr": 3.5e-5, "images": 640, "seconds": 10.0,
         "data_wait_seconds": 0.5, "images_per_s": 64.0, "extra": {}},
        {"epoch": 2, "losses": {"id": 5.25, "triplet": 0.75}, "lr": 7.0e-5, "images": 640, "seconds": 8.0,
         "data_wait_seconds": 0.25, "images_per_s": 80.0, "extra": {"synth-a/mAP": 0.125, "synth-a/R1": 0.25}},
    ]
    result = RunResult(
        run_hash=rhash, spec=spec,
        metrics={"synth-a": {"R1": 0.5, "R5": 0.75, "R10": 0.875, "mAP": map_a, "mINP": 0.125},
                 "synth-b": {"R1": 0.25, "R5": 0.375, "R10": 0.5, "mAP": 0.1875, "mINP": 0.0625}},
        history=history,
        provenance={"synth-a": {"name": "synth-a", "root": "/data/a", "format": "synth", "synthetic": True},
                    "synth-b": {"name": "synth-b", "root": "/data/b", "format": "synth", "synthetic": True}},
        model_info={"backbone": "resnet50", "pretrained_source": pretrained_source},
        environment={"git_commit": "0123abcd+dirty", "versions": {"python": "3.11.7", "torch": "2.3.0"},
                     "device": "cpu:x86_64 x2 threads", "host": "node-1"},
        seconds_train=18.0, seconds_eval=2.5, out_dir="/runs/abc",
    )
    return rhash, result.to_dict()


@pytest.fixture
def store(db_url) -> Store:
    return Store(db_url)


def test_full_result_round_trip(store, run_sql):
    rhash, raw = _result()
    store.ensure_run(rhash, raw["spec"], "baseline")
    assert store.claim(rhash, "worker-1")
    record = store.record_result(rhash, "worker-1", raw)
    assert isinstance(record, RunRecord)
    again = store.get_run(rhash)
    assert again == record
    assert again.status == "done" and again.error is None and again.label == "baseline"
    assert again.spec == raw["spec"]
    assert again.git_commit == "0123abcd+dirty"
    assert again.versions == {"python": "3.11.7", "torch": "2.3.0"}
    assert (again.device, again.host) == ("cpu:x86_64 x2 threads", "node-1")
    assert again.provenance["synth-b"]["root"] == "/data/b"
    assert (again.seconds_train, again.seconds_eval, again.out_dir) == (18.0, 2.5, "/runs/abc")
    assert again.synthetic and not again.pretrained
    assert again.short_hash == rhash[:12]
    assert again.attempts == 1 and again.owner == "worker-1"
    for moment in (again.created_at, again.started_at, again.finished_at):
        assert moment.tzinfo == timezone.utc
    assert again.created_at <= again.started_at <= again.finished_at

    expected = [("synth-a", "R1", 0.5), ("synth-a", "R5", 0.75), ("synth-a", "R10", 0.875), ("synth-a", "mAP", 0.4),
                ("synth-a", "mINP", 0.125), ("synth-b", "R1", 0.25), ("synth-b", "R5", 0.375),
                ("synth-b", "R10", 0.5), ("synth-b", "mAP", 0.1875), ("synth-b", "mINP", 0.0625)]
    assert store.metrics() == [MetricRecord(rhash, t, m, v, None, "", f"default:{t}") for t, m, v in expected]
    assert store.epochs(rhash) == [
        EpochRecord(rhash, 1, {"loss/id": 6.5, "loss/triplet": 0.9, "lr": 3.5e-5, "images": 640, "seconds": 10.0,
                               "data_wait_seconds": 0.5, "images_per_s": 64.0}),
        EpochRecord(rhash, 2, {"loss/id": 5.25, "loss/triplet": 0.75, "lr": 7.0e-5, "images": 640, "seconds": 8.0,
                               "data_wait_seconds": 0.25, "images_per_s": 80.0, "synth-a/mAP": 0.125,
                               "synth-a/R1": 0.25}),
    ]
    # Times are stored as UTC: the raw column (text on SQLite, a timestamp on PostgreSQL) equals
    # the record's UTC wall time.
    ((stored,),) = run_sql(store.url, "SELECT finished_at FROM rb_runs")
    assert str(stored).startswith(again.finished_at.strftime("%Y-%m-%d %H:%M:%S"))


def test_recording_again_replaces_metrics_and_pretrained_flag(store):
    rhash, raw = _result()
    store.record_result(rhash, None, raw)  # an unknown run is created from the result's spec
    _, newer = _result(pretrained_source="imagenet:resnet50", map_a=0.625)
    newer["history"] = newer["history"][:1]
    record = store.record_result(rhash, None, newer)
    assert record.pretrained and record.status == "done"
    values = {(m.test_set, m.metric): m.value for m in store.metrics([rhash])}
    assert len(values) == 10 and values[("synth-a", "mAP")] == 0.625
    assert [e.epoch for e in store.epochs(rhash)] == [1]


def test_record_result_without_metrics_is_refused(store):
    rhash, raw = _result()
    store.ensure_run(rhash, raw["spec"], "x")
    raw["metrics"] = {}
    with pytest.raises(StoreError, match="no metrics"):
        store.record_result(rhash, None, raw)
    assert store.get_run(rhash).status == "pending"
    other = dict(raw, run_hash="f" * 64)
    with pytest.raises(StoreError, match="belongs to run"):
        store.record_result(rhash, None, other)


def test_ensure_run_is_idempotent_and_never_overwrites(store):
    first = store.ensure_run("a" * 64, {"x": 1}, "first")
    second = store.ensure_run("a" * 64, {"x": 2}, "second")
    assert second == first and second.spec == {"x": 1} and second.label == "first"
    assert len(store.list_runs()) == 1 and first.status == "pending" and first.attempts == 0


def test_get_run_by_prefix_and_ambiguity(store):
    store.ensure_run("abc1" + "0" * 60, {}, "one")
    store.ensure_run("abc2" + "0" * 60, {}, "two")
    assert store.get_run("abc1").label == "one"
    assert store.get_run("abc2" + "0" * 60).label == "two"
    with pytest.raises(StoreError) as info:
        store.get_run("abc")
    message = str(info.value)
    assert "\n" not in message and "ambiguous" in message and "2 runs" in message
    assert "abc1" in message and "abc2" in message
    with pytest.raises(StoreError, match="no run"):
        store.get_run("ffff")
    with pytest.raises(StoreError, match="no run"):
        store.get_run("%")  # LIKE wildcards are escaped, not a match-all
    assert store.find_run("abc") is None


def test_list_runs_newest_first_and_filtered(store):
    for i in range(4):
        store.ensure_run(f"{i:064x}", {}, f"run{i}")
    store.claim(f"{2:064x}", "w")
    assert [r.label for r in store.list_runs()] == ["run3", "run2", "run1", "run0"]
    assert [r.label for r in store.list_runs(limit=2)] == ["run3", "run2"]
    assert [r.label for r in store.list_runs(status="running")] == ["run2"]
    with pytest.raises(StoreError, match="pending, running, done, failed"):
        store.list_runs(status="finished")


def test_delete_run_removes_its_rows(store, run_sql):
    rhash, raw = _result()
    store.record_result(rhash, None, raw)
    store.ensure_run("b" * 64, {}, "other")
    store.record_ablation("abl", "bot.yaml", "cumulative", {}, [{"position": 0, "run_hash": rhash, "label": "base",
                                                                 "step": "base", "seed": 0}])
    store.delete_run(rhash)
    assert store.find_run(rhash) is None and store.metrics() == []
    counts = [run_sql(store.url, f"SELECT count(*) FROM {t}")[0][0]
              for t in ("rb_metrics", "rb_epochs", "rb_ablation_members", "rb_runs")]
    assert counts == [0, 0, 0, 1]
    with pytest.raises(StoreError, match="no run"):
        store.delete_run(rhash)


def _statuses_of_100(store) -> tuple[dict, dict, float]:
    hashes = [f"{i:064x}" for i in range(100)]
    for h in hashes:
        store.ensure_run(h, {}, "")
    for h in hashes[:10]:
        assert store.claim(h, "w")
    expected = {h: ("running" if i < 10 else "pending") for i, h in enumerate(hashes)}
    queried = hashes + ["e" * 64]  # unknown hashes are simply absent
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        got = store.statuses(queried)
        best = min(best, time.perf_counter() - start)
    return got, expected, best


def test_statuses_for_100_runs(store):
    got, expected, _ = _statuses_of_100(store)
    assert got == expected


@pytest.mark.perf
def test_statuses_for_100_runs_is_one_fast_query(store):
    got, expected, best = _statuses_of_100(store)
    assert got == expected
    assert best < 0.05, f"statuses() of 100 runs took {1000 * best:.1f} ms"


def test_statuses_chunks_long_lists(store):
    hashes = [f"{i:064x}" for i in range(1203)]
    store.ensure_run(hashes[1202], {}, "")
    assert store.statuses(hashes) == {hashes[1202]: "pending"}


def test_to_frame_one_row_per_metric(store):
    rhash, raw = _result()
    store.record_result(rhash, None, raw)
    frame = store.to_frame()
    assert len(frame) == 10
    assert set(frame.columns) >= {"run_hash", "label", "status", "test_set", "metric", "value"}
    row = frame[(frame.test_set == "synth-b") & (frame.metric == "mAP")].iloc[0]
    assert row.value == 0.1875 and row.status == "done" and bool(row.synthetic)


def test_store_pickles_as_its_url(store):
    store.ensure_run("a" * 64, {"x": 1}, "first")
    clone = pickle.loads(pickle.dumps(store))
    assert clone.url == store.url and clone.busy_timeout_s == store.busy_timeout_s
    assert clone.get_run("a" * 64).label == "first"


def test_default_url_reads_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("REIDBENCH_DB", raising=False)
    assert Store.default_url() == "sqlite:///results.db"
    monkeypatch.setenv("REIDBENCH_DB", "postgresql://me@db/reid")
    assert Store.default_url() == "postgresql://me@db/reid"
    monkeypatch.setenv("REIDBENCH_DB", str(tmp_path / "x.db"))
    assert Store.default_url() == f"sqlite:///{tmp_path / 'x.db'}"
    assert Store(Store.default_url()).url == f"sqlite:///{tmp_path / 'x.db'}"


def test_summary_table_columns_line_up_with_cross_domain_tags():
    """`reidbench train`'s closing table: every row's numbers end in the header's columns, also
    when a cross-domain tag ("synth-a→synth-b", 15 characters) is wider than the default column."""
    _, raw = _result()
    lines = RunResult.from_dict(raw).summary_table().splitlines()[1:]
    header, rows = lines[0], lines[1:]
    assert [r.split()[0] for r in rows] == ["synth-a", "synth-a→synth-b"]
    assert {len(r) for r in rows} == {len(header)}
    assert rows[1].split()[1:] == ["25.0", "37.5", "50.0", "18.8", "6.2"]
