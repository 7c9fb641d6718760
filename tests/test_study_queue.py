"""How study trials are handed out, without training: the grid queue, surplus trials, dead workers,
pruning, and where a study is stored.

Tests that take ``storage`` run on a journal file (what local workers on SQLite use) and on Optuna's
tables in a real PostgreSQL database (what workers on several machines use; conftest.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from reidbench.harness.spec import RunSpec, replace_section
from reidbench.harness.study.plan import plan_study
from reidbench.harness.study.space import build_space
from reidbench.harness.study.storage import (
    choose_storage,
    journal_path,
    journal_url,
    list_studies,
    locate_study,
    normalize_storage,
    open_storage,
)
from reidbench.harness.study.worker import (
    RunPruned,
    _is_surplus,
    _PruneHook,
    create_or_load,
    has_work,
    prepare_study,
    reap_dead_trials,
)


def _plan(sampler: str = "grid", trials: int | None = None, name: str = "q"):
    base = replace_section(RunSpec(profile="cpu"), "data", train="tiny", test=("tiny",))
    space, _ = build_space("both", sampler, "cpu", (3, 2), (32, 16), batches=[(3, 2), (2, 3)],
                           image_sizes=[(32, 16), (48, 24)])
    return plan_study(base, "tiny", (), space, "map", trials, name=name)


# Trials asked by hand here (the workers ask inside study.optimize, which beats for them).
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")


@pytest.fixture(params=["journal", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage(request, tmp_path):
    """``storage(name)``: where study ``name`` lives, a journal file or a fresh PostgreSQL database."""
    if request.param == "journal":
        return lambda name: journal_url(tmp_path / f"{name}.log")
    server = request.getfixturevalue("postgres_server")
    url = server.create_database()
    request.addfinalizer(lambda: server.drop_database(url))
    return lambda name: url


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_grid_is_queued_once_and_failed_points_again(storage) -> None:
    plan = _plan()
    url = storage("q")
    study = prepare_study(plan, url)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.user_attrs["grid_point"] for t in waiting) == [0, 1, 2, 3]
    prepare_study(plan, url)  # same command again: nothing new
    assert len(study.get_trials()) == 4
    trial = study.ask()  # pops the first queued point
    assert trial.user_attrs["grid_point"] == 0
    assert trial.suggest_categorical("batch", ["3x2", "2x3"]) == "3x2"
    study.tell(trial, state=TrialState.FAIL)
    prepare_study(plan, url)  # a failed point is queued again on the next run
    again = [t for t in study.get_trials(states=(TrialState.WAITING,)) if t.user_attrs["grid_point"] == 0]
    assert len(again) == 1
    assert len(study.get_trials()) == 5


def test_a_study_of_that_name_for_another_setup_is_refused(tmp_path: Path) -> None:
    url = journal_url(tmp_path / "q.log")
    prepare_study(_plan(), url)
    other = plan_study(replace_section(RunSpec(profile="cpu"), "data", train="tiny", test=("tiny",)), "tiny", (),
                       _plan().space, "r1", name="q")
    with pytest.raises(ValueError, match="created for another setup .*metric"):
        create_or_load(other, url)


def test_surplus_trials_beyond_the_grid_or_budget(storage) -> None:
    plan = _plan()
    study = prepare_study(plan, storage("q"))
    popped = [study.ask() for _ in range(4)]
    assert not any(_is_surplus(t, plan) for t in popped)
    assert not has_work(study, plan)
    extra = study.ask()  # the queue is empty: a race would create this one
    assert "grid_point" not in extra.user_attrs and _is_surplus(extra, plan)
    # A duplicate queued point (two machines queueing at once) yields to the earlier trial.
    study.enqueue_trial({"batch": "3x2", "image_size": "32x16"}, user_attrs={"grid_point": 0})
    dup = study.ask()
    assert dup.user_attrs["grid_point"] == 0 and _is_surplus(dup, plan)

    tpe = _plan("tpe", trials=2, name="t")
    study = prepare_study(tpe, storage("t"))
    first, second = study.ask(), study.ask()
    assert has_work(study, tpe) is False
    assert not _is_surplus(first, tpe) and not _is_surplus(second, tpe)
    third = study.ask()
    assert _is_surplus(third, tpe)
    study.tell(first, state=TrialState.FAIL)  # a failed trial leaves room for a new one
    assert not _is_surplus(third, tpe)


def test_dead_workers_trials_are_failed_and_requeued(storage) -> None:
    plan = _plan()
    study = prepare_study(plan, storage("q"))
    trial = study.ask()
    trial.suggest_categorical("batch", ["3x2", "2x3"])
    trial.set_user_attr("worker", f"{socket.gethostname()}:{_dead_pid()}:deadbeef")
    alive = study.ask()
    alive.set_user_attr("worker", f"{socket.gethostname()}:{1}:init")  # pid 1 exists
    assert reap_dead_trials(study) == [trial.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states[trial.number] == TrialState.FAIL and states[alive.number] == TrialState.RUNNING
    retry = [t for t in study.get_trials(states=(TrialState.WAITING,)) if t.user_attrs["grid_point"] == 0]
    assert len(retry) == 1 and retry[0].params == {"batch": "3x2"}
    assert reap_dead_trials(study) == []  # already handled
    # Killed between asking and writing its worker attribute: with every worker on this machine
    # (SQLite, journal file) and the ask lock held, nobody else can be in that window.
    orphan = study.ask()
    assert reap_dead_trials(study) == []  # on a shared server it gets ORPHAN_AFTER_S to show up
    assert reap_dead_trials(study, local_storage=True) == [orphan.number]
    # It died before suggesting its point, so it has no params; its retry still trains that point.
    point = orphan.user_attrs["grid_point"]
    assert orphan.params == {}
    waiting = len(study.get_trials(states=(TrialState.WAITING,)))
    for _ in range(waiting):  # the queue hands out the oldest waiting trial first
        again = study.ask()
        if again.user_attrs.get("grid_point") == point and again.number > orphan.number:
            break
    else:
        pytest.fail(f"no retry of grid point {point} was queued")
    expected = plan.space.point_from_params(plan.grid_params()[point])
    assert plan.space.suggest(again) == expected


def test_prune_hook_reports_and_stops_below_the_median() -> None:
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    done = study.ask()
    done.report(0.8, 1)
    study.tell(done, 0.8)
    good = _PruneHook(study.ask(), "tiny/mAP")
    good(1, {"extra": {"tiny/mAP": 0.9}})
    assert good.reported == {1} and good.pruned_at is None
    bad = _PruneHook(study.ask(), "tiny/mAP")
    bad(2, {"extra": {}})  # epochs without a periodic evaluation are skipped
    with pytest.raises(RunPruned, match="after epoch 1"):
        bad(1, {"extra": {"tiny/mAP": 0.2}})
    assert bad.pruned_at == 1


def test_storage_choice(tmp_path: Path, db_url) -> None:
    db = db_url
    runs = tmp_path / "runs"
    assert choose_storage("s", db, runs) == db
    # several local workers: a journal file beside an SQLite database, the database itself on PostgreSQL
    several = journal_url(journal_path(runs, "s")) if db.startswith("sqlite") else db
    assert choose_storage("s", db, runs, workers=2) == several
    assert choose_storage("s", "postgresql://u@h/db", runs, workers=4) == "postgresql://u@h/db"
    assert choose_storage("s", db, runs, storage="x.log") == journal_url(Path("x.log"))
    assert normalize_storage("journal:a/b.log") == journal_url(Path("a/b.log"))
    assert list_studies(db) == []  # does not create Optuna's tables to answer
    prepare_study(_plan(name="s"), db)
    assert list_studies(db) == ["s"]
    assert choose_storage("s", db, runs, workers=2) == db  # started in the database: stays there
    assert locate_study("s", db, runs) == db
    with pytest.raises(ValueError, match="no study 'nope'.*studies there: s"):
        locate_study("nope", db, runs)


def test_worker_loop_with_a_per_epoch_hook_prunes_live(tmp_path: Path, monkeypatch) -> None:
    """The worker against the proposed runner hook (``run_job(..., on_epoch=...)``), with a fake
    runner that replays per-epoch mAPs and records results like the real one, so no training."""
    from reidbench.harness.execution.jobs import JobOutcome
    from reidbench.harness.spec import with_epochs
    from reidbench.harness.store import Store
    from reidbench.harness.study import worker

    curves = {"3x2": [0.8, 0.9], "2x3": [0.1, 0.2], "2x2": [0.85, 0.95]}  # mAP after epochs 1 and 2
    trained: list[str] = []

    def fake_run_job(job, log=None, store=None, on_epoch=None):
        import json

        batch = "{ids_per_batch}x{imgs_per_id}".format(**json.loads(job.spec_json)["data"])
        trained.append(batch)
        history = []
        for epoch, value in enumerate(curves[batch], start=1):
            history.append({"epoch": epoch, "extra": {"tiny/mAP": value}})
            try:
                on_epoch(epoch, history[-1])
            except RunPruned as exc:
                return JobOutcome(job.run_hash, "failed", f"RunPruned: {exc}")
        store.record_result(job.run_hash, None, {"run_hash": job.run_hash, "history": history,
                                                 "metrics": {"tiny": {"R1": 1.0, "mAP": curves[batch][-1]}}})
        return JobOutcome(job.run_hash, "done")

    monkeypatch.setattr(worker, "run_job", fake_run_job)
    assert worker.runner_supports_epoch_hook()
    base = with_epochs(replace_section(RunSpec(profile="cpu"), "data", train="tiny", test=("tiny",)), 3)
    space, _ = build_space("batch-size", "grid", "cpu", (3, 2), (32, 16), batches=[(3, 2), (2, 3), (2, 2)])
    plan = plan_study(base, "tiny", (), space, "map", name="p", prune=True)
    url = journal_url(tmp_path / "p.log")
    db = f"sqlite:///{tmp_path / 'results.db'}"
    prepare_study(plan, url)
    config = worker.WorkerConfig(name="p", storage_url=url, db_url=db, runs_dir=str(tmp_path / "runs"))
    assert worker.run_worker(config, log=lambda line: None) == 3
    trials = {t.params["batch"]: t for t in optuna.load_study(study_name="p", storage=open_storage(url)).get_trials()}
    assert trials["3x2"].state == TrialState.COMPLETE and trials["3x2"].value == 0.9
    assert trials["3x2"].intermediate_values == {1: 0.8, 2: 0.9}
    # 0.1 after epoch 1 is below the median of the completed trial (0.8): stopped there
    assert trials["2x3"].state == TrialState.PRUNED and trials["2x3"].intermediate_values == {1: 0.1}
    assert trials["2x2"].state == TrialState.COMPLETE
    store = Store(db)
    assert store.statuses([trials["2x3"].user_attrs["run_hash"]]).get(trials["2x3"].user_attrs["run_hash"]) != "done"
    assert trained == ["3x2", "2x3", "2x2"]
    assert worker.run_worker(config, log=lambda line: None) == 0  # nothing left: no trial, no run
    assert trained == ["3x2", "2x3", "2x2"]


def test_failed_runs_fail_their_trial_and_are_retried_by_the_next_invocation(tmp_path: Path, monkeypatch) -> None:
    from reidbench.harness.execution.jobs import JobOutcome
    from reidbench.harness.store import Store
    from reidbench.harness.study import worker

    calls: list[str] = []

    def fake_run_job(job, log=None, store=None):
        import json

        batch = "{ids_per_batch}x{imgs_per_id}".format(**json.loads(job.spec_json)["data"])
        calls.append(batch)
        if batch == "2x3" and calls.count(batch) == 1:
            return JobOutcome(job.run_hash, "failed", "RuntimeError: out of memory")
        if batch == "2x2" and calls.count(batch) == 1:
            return JobOutcome(job.run_hash, "skipped")  # another process holds it and then gives it up
        store.record_result(job.run_hash, None, {"run_hash": job.run_hash, "metrics": {"tiny": {"mAP": 0.5}}})
        return JobOutcome(job.run_hash, "done")

    monkeypatch.setattr(worker, "run_job", fake_run_job)
    assert not worker.runner_supports_epoch_hook()
    base = replace_section(RunSpec(profile="cpu"), "data", train="tiny", test=("tiny",))
    space, _ = build_space("batch-size", "grid", "cpu", (3, 2), (32, 16), batches=[(3, 2), (2, 3), (2, 2)])
    plan = plan_study(base, "tiny", (), space, "map", name="f")
    url = journal_url(tmp_path / "f.log")
    config = worker.WorkerConfig(name="f", storage_url=url, db_url=f"sqlite:///{tmp_path / 'r.db'}",
                                 runs_dir=str(tmp_path / "runs"))
    prepare_study(plan, url)
    lines: list[str] = []
    worker.run_worker(config, log=lines.append)
    study = optuna.load_study(study_name="f", storage=open_storage(url))
    states = {t.params["batch"]: t.state for t in study.get_trials()}
    assert states == {"3x2": TrialState.COMPLETE, "2x3": TrialState.FAIL, "2x2": TrialState.COMPLETE}
    assert any("FAILED" in line for line in lines)
    assert calls == ["3x2", "2x3", "2x2", "2x2"]
    prepare_study(plan, url)  # the same command again: only the failed point is queued and run
    worker.run_worker(config, log=lines.append)
    assert calls[4:] == ["2x3"]
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert sorted(t.params["batch"] for t in complete) == ["2x2", "2x3", "3x2"]
    assert all(t.value == 0.5 for t in complete)
    assert len(Store(config.db_url).list_runs(status="done")) == 3


def test_a_study_from_before_the_database_upgrade_is_adopted_not_refused(tmp_path):
    import optuna

    plan = _plan(name="old")
    url = f"sqlite:///{tmp_path / 'o.db'}"
    # What reidbench wrote before data fingerprints: the same setup, an older fingerprint, no train_fingerprint.
    old = optuna.create_study(study_name="old", storage=url, direction="maximize")
    for key, value in plan.attrs().items():
        if key != "train_fingerprint":
            old.set_user_attr(key, value)
    old.set_user_attr("fingerprint", "0" * 64)
    study = create_or_load(plan, url)
    assert study.user_attrs["fingerprint"] == plan.fingerprint and "train_fingerprint" in study.user_attrs
    # Another setup under that name is still refused.
    other = _plan(name="old2")
    stale = optuna.create_study(study_name="old2", storage=url, direction="maximize")
    for key, value in other.attrs().items():
        if key != "train_fingerprint":
            stale.set_user_attr(key, value)
    stale.set_user_attr("fingerprint", "0" * 64)
    stale.set_user_attr("epochs", 99)
    with pytest.raises(ValueError, match="created for another setup"):
        create_or_load(other, url)
