"""Store: the run life cycle (claim, heartbeat, release, failure) and concurrent claiming, on an
SQLite file and on a real PostgreSQL database (``db_url`` in conftest.py)."""

from __future__ import annotations

import multiprocessing
import textwrap

import pytest

from reidbench.harness.store import Store, StoreError

H = "c" * 64


def _result(rhash: str) -> dict:
    return {"run_hash": rhash, "spec": {}, "metrics": {"synth-a": {"R1": 0.5, "mAP": 0.25}}, "history": [],
            "provenance": {}, "model_info": {}, "environment": {}, "seconds_train": 1.0, "seconds_eval": 1.0,
            "out_dir": "/tmp/x"}


@pytest.fixture
def store(db_url) -> Store:
    s = Store(db_url)
    s.ensure_run(H, {"k": 1}, "base")
    return s


@pytest.fixture
def age_heartbeat(store, run_sql):
    def age(rhash: str) -> None:
        """Pretend the owner stopped beating long ago (raw SQL, independent of the store's code)."""
        changed = run_sql(store.url, "UPDATE rb_runs SET heartbeat_at = '2000-01-01 00:00:00.000000' "
                                     "WHERE run_hash = :h", h=rhash)
        assert changed == 1

    return age


def test_pending_run_is_claimed_once(store):
    assert store.claim(H, "a")
    assert not store.claim(H, "b")
    assert not store.claim(H, "a")  # not even by its owner: a second worker with the same name must not run it twice
    run = store.get_run(H)
    assert (run.status, run.owner, run.attempts) == ("running", "a", 1)
    assert run.started_at is not None and run.heartbeat_at is not None


def test_heartbeat_only_for_the_owner(store):
    store.claim(H, "a")
    before = store.get_run(H).heartbeat_at
    assert store.heartbeat(H, "a")
    assert store.get_run(H).heartbeat_at >= before
    assert not store.heartbeat(H, "b")


def test_stale_claim_is_taken_over(store, age_heartbeat):
    assert store.claim(H, "a")
    first_start = store.get_run(H).started_at
    assert not store.claim(H, "b", stale_after_s=120.0)  # fresh heartbeat
    age_heartbeat(H)
    assert store.claim(H, "b", stale_after_s=120.0)
    run = store.get_run(H)
    assert (run.owner, run.attempts, run.started_at) == ("b", 2, first_start)
    # The old owner has lost it: its heartbeat, release and failure change nothing.
    assert not store.heartbeat(H, "a")
    store.release(H, "a")
    store.mark_failed(H, "a", "boom")
    run = store.get_run(H)
    assert (run.status, run.owner, run.error) == ("running", "b", None)


def test_done_run_is_never_claimed(store, age_heartbeat):
    assert store.claim(H, "a")
    store.record_result(H, "a", _result(H))
    age_heartbeat(H)
    assert not store.claim(H, "b", stale_after_s=0.0)
    assert store.get_run(H).status == "done"


def test_failed_run_is_claimable_again_and_attempts_count(store):
    assert store.claim(H, "a")
    store.mark_failed(H, "a", "Traceback ...\nRuntimeError: CUDA out of memory")
    run = store.get_run(H)
    assert run.status == "failed" and run.error.endswith("CUDA out of memory") and run.finished_at is not None
    assert store.claim(H, "b")
    assert store.get_run(H).attempts == 2
    store.mark_failed(H, "b", "again")
    assert store.claim(H, "c")
    done = store.record_result(H, "c", _result(H))
    assert (done.status, done.attempts, done.error, done.owner) == ("done", 3, None, "c")


def test_release_returns_run_to_pending(store):
    assert store.claim(H, "a")
    store.release(H, "a")
    run = store.get_run(H)
    assert (run.status, run.owner) == ("pending", None)
    assert store.claim(H, "b")
    assert store.get_run(H).attempts == 2


def test_claiming_an_unknown_run_is_an_error(store):
    with pytest.raises(StoreError, match="no run"):
        store.claim("d" * 64, "a")


WORKER = textwrap.dedent('''
    from reidbench.harness.store import Store

    def claim_all(url, hashes, owner, barrier, queue):
        try:
            barrier.wait(timeout=60)
            store = Store(url)  # both processes create the same fresh database at once
            for h in hashes:
                store.ensure_run(h, {}, "")
            barrier.wait(timeout=60)  # then both race for the same runs
            queue.put((owner, [h for h in hashes if store.claim(h, owner)]))
        except BaseException as err:
            barrier.abort()  # never leave the other process waiting
            queue.put((owner, f"{type(err).__name__}: {err}"))
''')


def test_two_processes_claim_each_run_exactly_once(db_url, tmp_path, monkeypatch):
    url = db_url
    hashes = [f"{i:064x}" for i in range(20)]
    # The worker lives in its own module so spawned children can import it by name.
    (tmp_path / "claim_worker.py").write_text(WORKER)
    monkeypatch.syspath_prepend(str(tmp_path))
    import claim_worker

    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=claim_worker.claim_all, args=(url, hashes, owner, barrier, queue))
             for owner in ("p1", "p2")]
    for p in procs:
        p.start()
    try:
        claimed = dict(queue.get(timeout=90) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    assert all(isinstance(got, list) for got in claimed.values()), claimed
    assert set(claimed["p1"]).isdisjoint(claimed["p2"])
    assert sorted(claimed["p1"] + claimed["p2"]) == hashes
    store = Store(url)
    assert len(store.list_runs()) == 20
    for h in hashes:
        run = store.get_run(h)
        assert run.attempts == 1 and run.status == "running"
        assert h in claimed[run.owner]


def test_ensure_run_racing_another_insert_returns_the_stored_run(store):
    """Another process inserts the same run and commits while ``ensure_run`` writes: PostgreSQL
    makes our INSERT wait for it and then fail on the unique hash (the savepoint path); SQLite
    makes our write transaction wait, then find the row. Either way the stored run comes back."""
    import threading
    import time

    from sqlalchemy import create_engine, text

    from reidbench.harness.store.engine import driver_url

    other = "d" * 64
    engine = create_engine(driver_url(store.url))
    try:
        with engine.connect() as conn:
            transaction = conn.begin()
            conn.execute(text("INSERT INTO rb_runs (run_hash, label, status, spec, created_at, attempts) "
                              "VALUES (:h, 'theirs', 'pending', '{\"k\": 2}', '2024-01-01 00:00:00', 0)"), {"h": other})
            got = {}

            def ensure() -> None:
                try:
                    got["record"] = store.ensure_run(other, {"k": 3}, "ours")
                except Exception as err:  # noqa: BLE001 - shown by the assertion below
                    got["error"] = err

            racer = threading.Thread(target=ensure)
            racer.start()
            time.sleep(1.0)  # our ensure_run is now waiting on the uncommitted row (or write lock)
            assert racer.is_alive()
            transaction.commit()
            racer.join(timeout=30)
    finally:
        engine.dispose()
    assert "error" not in got, got
    record = got["record"]
    assert (record.label, record.spec, record.status) == ("theirs", {"k": 2}, "pending")
    assert [r.run_hash for r in store.list_runs()].count(other) == 1


def test_a_lost_claim_is_failed_only_for_its_own_attempt(store):
    """What an executor does when a job died silently (scancel, kill -9): fail the run it claimed."""
    from reidbench.harness.execution.jobs import Job, fail_lost_claim

    job = Job(run_hash=H, label="base", spec_json="{}", trick_versions={}, db_url=store.url, out_dir="/x",
              claim_tag="a1b2c3d4")
    assert not fail_lost_claim(job, "job 7_0 CANCELLED")  # not claimed at all: stays pending
    assert store.get_run(H).status == "pending"
    assert store.claim(H, "node-2:4242:ffff0000")  # another attempt holds it
    assert not fail_lost_claim(job, "job 7_0 CANCELLED") and store.get_run(H).status == "running"
    store.release(H, "node-2:4242:ffff0000")
    assert store.claim(H, "node-1:99:a1b2c3d4")  # this attempt's claim (its tag ends the owner)
    assert not fail_lost_claim(Job(**{**job.__dict__, "claim_tag": ""}), "x")  # untagged: never guessed
    assert fail_lost_claim(job, "job 7_0 CANCELLED")
    run = store.get_run(H)
    assert (run.status, run.error, run.owner) == ("failed", "job 7_0 CANCELLED", "node-1:99:a1b2c3d4")
    assert store.claim(H, "node-1:100:0000beef")  # the next invocation retries it
