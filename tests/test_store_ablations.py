"""Store: ablations recorded as ordered member runs, found by id, name or "latest" (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from reidbench.harness.store import AblationRecord, Store, StoreError

RUNS = [f"{i:064x}" for i in range(4)]


@pytest.fixture
def store(db_url) -> Store:
    s = Store(db_url)
    for i, h in enumerate(RUNS):
        s.ensure_run(h, {"i": i}, f"run{i}")
    return s


def _members(hashes, steps):
    # Given out of order on purpose: positions, not insertion order, define the ablation's order.
    rows = [{"position": k, "run_hash": h, "label": f"+{s}", "step": s, "seed": 7} for k, (h, s) in
            enumerate(zip(hashes, steps))]
    return list(reversed(rows))


def test_record_and_get_by_id_name_and_latest(store):
    meta = {"profile": "smoke", "epochs": 2, "tricks": ["warmup", "rea"], "train": "synth-a",
            "test": ["synth-a", "synth-b"], "command": "reidbench ablate bot.yaml --add warmup,rea"}
    first = store.record_ablation("bot", "bot.yaml", "cumulative", meta, _members(RUNS[:3], ["base", "warmup", "rea"]))
    other = store.record_ablation("other", "x.yaml", "one-at-a-time", {}, _members(RUNS[2:], ["base", "ls"]))
    second = store.record_ablation("bot", "bot.yaml", "cumulative", {"epochs": 3}, _members(RUNS[:2], ["base", "warmup"]))
    assert len({first, other, second}) == 3

    record = store.get_ablation(first)
    assert isinstance(record, AblationRecord)
    assert (record.id, record.name, record.base, record.mode, record.meta) == (first, "bot", "bot.yaml", "cumulative", meta)
    assert record.members == (
        {"position": 0, "run_hash": RUNS[0], "label": "+base", "step": "base", "seed": 7},
        {"position": 1, "run_hash": RUNS[1], "label": "+warmup", "step": "warmup", "seed": 7},
        {"position": 2, "run_hash": RUNS[2], "label": "+rea", "step": "rea", "seed": 7},
    )
    assert record.created_at.tzinfo is not None
    assert store.get_ablation("bot").id == second  # latest with that name
    assert store.get_ablation("latest").id == second
    assert store.get_ablation().id == second
    assert store.get_ablation("other").mode == "one-at-a-time"
    assert store.get_ablation(str(other)).id == other  # an id typed on the command line
    assert [a.id for a in store.list_ablations()] == [second, other, first]


def test_unknown_ablation_lists_known_names(store):
    with pytest.raises(StoreError, match="none recorded yet"):
        store.get_ablation()
    store.record_ablation("bot", "bot.yaml", "cumulative", {}, _members(RUNS[:1], ["base"]))
    with pytest.raises(StoreError, match="known: bot"):
        store.get_ablation("nope")
    with pytest.raises(StoreError, match="no ablation 99"):
        store.get_ablation(99)


def test_member_must_be_a_known_run_and_nothing_is_written_otherwise(store):
    members = _members([RUNS[0], "9" * 64], ["base", "warmup"])
    with pytest.raises(StoreError, match="no run 999999999999"):
        store.record_ablation("bot", "bot.yaml", "cumulative", {}, members)
    assert store.list_ablations() == []
    with pytest.raises(StoreError, match="position 0 appears twice"):
        store.record_ablation("bot", "bot.yaml", "cumulative", {},
                              [{"position": 0, "run_hash": RUNS[0]}, {"position": 0, "run_hash": RUNS[1]}])
