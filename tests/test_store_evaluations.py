"""Store: evaluations as first-class rows — recorded with a result, upserted later, queried by variant
(SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from reidbench.harness.store import EvaluationRecord, MetricRecord, Store, StoreError
from reidbench.harness.store.results import default_evaluation_key

H = "a" * 64


def _evaluation(test_set: str, variant: str = "", **metrics: float) -> dict:
    return {"key": f"{variant or 'default'}:{test_set}", "test_set": test_set, "test_fingerprint": f"fp-{test_set}",
            "variant": variant, "settings": {"rerank": variant == "rerank", "metric": "cosine"},
            "metrics": metrics or {"R1": 0.5, "mAP": 0.25}, "features_path": f"/runs/x/features-{test_set}.npz",
            "seconds": 1.5}


def _result(evaluations: list[dict] | None = None) -> dict:
    return {"run_hash": H, "spec": {"k": 1}, "metrics": {"old-style": {"R1": 0.0}}, "history": [],
            "evaluations": evaluations if evaluations is not None else [
                _evaluation("synth-a", R1=0.5, mAP=0.375), _evaluation("synth-a", "rerank", R1=0.625, mAP=0.5),
                _evaluation("synth-b", R1=0.125, mAP=0.0625)],
            "provenance": {}, "model_info": {}, "environment": {}, "train_fingerprint": "tfp-1"}


@pytest.fixture
def store(db_url) -> Store:
    return Store(db_url)


def test_result_with_evaluations_and_metrics_by_variant(store):
    record = store.record_result(H, "w", _result())
    assert record.train_fingerprint == "tfp-1" and record.aliases == ()
    # evaluations win over the older "metrics" field when a result carries both
    assert store.metrics() == [
        MetricRecord(H, "synth-a", "R1", 0.5, None, "", "default:synth-a"),
        MetricRecord(H, "synth-a", "mAP", 0.375, None, "", "default:synth-a"),
        MetricRecord(H, "synth-b", "R1", 0.125, None, "", "default:synth-b"),
        MetricRecord(H, "synth-b", "mAP", 0.0625, None, "", "default:synth-b"),
    ]
    assert [(m.test_set, m.metric, m.value) for m in store.metrics([H], variant="rerank")] == [
        ("synth-a", "R1", 0.625), ("synth-a", "mAP", 0.5)]
    assert [m.variant for m in store.metrics(variant=None)] == ["", "", "rerank", "rerank", "", ""]
    assert store.metrics(variant="flip") == []
    evaluations = store.evaluations()
    assert [e.key for e in evaluations] == ["default:synth-a", "rerank:synth-a", "default:synth-b"]
    first = evaluations[0]
    assert isinstance(first, EvaluationRecord)
    assert (first.run_hash, first.test_set, first.test_fingerprint, first.variant, first.status) == (
        H, "synth-a", "fp-synth-a", "", "done")
    assert first.settings == {"rerank": False, "metric": "cosine"} and first.metrics == {"R1": 0.5, "mAP": 0.375}
    assert (first.features_path, first.seconds, first.error) == ("/runs/x/features-synth-a.npz", 1.5, None)
    assert first.created_at.tzinfo is not None and first.finished_at is not None
    assert [e.key for e in store.evaluations([H], variant="rerank")] == ["rerank:synth-a"]
    assert store.find_evaluation(H, "rerank:synth-a") == evaluations[1]
    assert store.find_evaluation(H, "nope") is None and store.find_evaluation("f" * 64, "default:synth-a") is None
    frame = store.to_frame()
    assert len(frame) == 6 and set(frame.variant) == {"", "rerank"}
    row = frame[(frame.variant == "rerank") & (frame.metric == "mAP")].iloc[0]
    assert row.test_set == "synth-a" and row.value == 0.5


def test_record_evaluation_adds_and_replaces_one_evaluation(store, run_sql):
    store.record_result(H, None, _result())
    flip = _evaluation("synth-b", "flip", R1=0.25, mAP=0.125, mINP=0.0625)
    added = store.record_evaluation(H, flip)
    assert added.metrics == {"R1": 0.25, "mAP": 0.125, "mINP": 0.0625} and added.variant == "flip"
    replaced = store.record_evaluation(H, dict(flip, metrics={"mAP": 0.75}, seconds=None))
    assert replaced.metrics == {"mAP": 0.75} and replaced.seconds is None
    assert replaced.created_at == added.created_at and replaced.finished_at >= added.finished_at
    assert store.find_evaluation(H, "flip:synth-b") == replaced
    assert [(m.metric, m.value) for m in store.metrics([H], variant="flip")] == [("mAP", 0.75)]
    assert len(store.evaluations()) == 4
    # a failed evaluation is recorded with its error and no metrics
    failed = store.record_evaluation(H, {"key": "big:synth-a", "test_set": "synth-a", "variant": "big",
                                         "status": "failed", "error": "out of memory"})
    assert (failed.status, failed.error, failed.metrics) == ("failed", "out of memory", {})
    # recording the run's result again replaces every evaluation, later ones included
    store.record_result(H, None, _result([_evaluation("synth-a")]))
    assert [e.key for e in store.evaluations()] == ["default:synth-a"]
    assert run_sql(store.url, "SELECT count(*) FROM rb_metrics") == [(2,)]


def test_record_evaluation_refuses_bad_input_and_writes_nothing(store):
    store.ensure_run("b" * 64, {}, "pending one")
    with pytest.raises(StoreError, match=r"run bbbbbbbbbbbb is pending; only a done run can be evaluated"):
        store.record_evaluation("b" * 64, _evaluation("synth-a"))
    with pytest.raises(StoreError, match="no run ffffffffffff"):
        store.record_evaluation("f" * 64, _evaluation("synth-a"))
    store.record_result(H, None, _result())
    before = store.evaluations()
    bad = [
        ({"test_set": "synth-a", "metrics": {"R1": 1.0}}, "has no 'key'"),
        ({"key": "k" * 65, "test_set": "synth-a", "metrics": {"R1": 1.0}}, "longer than 64"),
        ({"key": "x", "test_set": "synth-a"}, "has no metrics"),
        ({"key": "x", "test_set": "synth-a", "metrics": {"R1": 1.0}, "status": "maybe"}, "valid: done, failed"),
        ({"key": "x", "test_set": "synth-a", "metrics": {"R1": 1.0}, "settings": {"f": object()}}, "JSON"),
    ]
    for evaluation, fragment in bad:
        with pytest.raises(StoreError, match=fragment) as info:
            store.record_evaluation(H, evaluation)
        assert "\n" not in str(info.value)
    # a bad value met after the upsert started rolls the whole evaluation back
    with pytest.raises(StoreError, match="synth-a/mAP"):
        store.record_evaluation(H, dict(_evaluation("synth-a", "rerank"), metrics={"R1": 0.0, "mAP": float("nan")}))
    assert store.evaluations() == before


def test_result_evaluations_are_validated(store):
    twice = [_evaluation("synth-a"), _evaluation("synth-a")]
    with pytest.raises(StoreError, match="evaluation key 'default:synth-a' appears twice"):
        store.record_result(H, None, _result(twice))
    with pytest.raises(StoreError, match="evaluation 0 'default:synth-a' has no metrics"):
        store.record_result(H, None, _result([dict(_evaluation("synth-a"), metrics={})]))
    assert store.find_run(H) is None


def test_old_style_result_gives_default_evaluations(store):
    raw = _result()
    raw["evaluations"] = []  # a runner result without evaluations: its metrics per test set count
    raw["metrics"] = {"synth-a": {"R1": 0.5}, "x" * 100: {"R1": 0.25}}
    store.record_result(H, None, raw)
    keys = [e.key for e in store.evaluations()]
    assert keys == ["default:synth-a", default_evaluation_key("x" * 100)]
    assert len(keys[1]) == 64 and keys[1] != default_evaluation_key("x" * 99 + "y")
    assert [e.variant for e in store.evaluations()] == ["", ""]


def test_ensure_run_keeps_the_train_fingerprint(store):
    record = store.ensure_run(H, {"k": 1}, "base", train_fingerprint="tfp-9")
    assert record.train_fingerprint == "tfp-9" and store.get_run(H).train_fingerprint == "tfp-9"
    with pytest.raises(StoreError, match="train_fingerprint must be a non-empty string"):
        store.ensure_run("c" * 64, {}, "", train_fingerprint="")
