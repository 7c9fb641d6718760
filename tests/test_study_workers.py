"""Studies under failure and concurrency: a SIGKILLed study resumes without repeating trials or
retraining finished runs; two worker processes share one study without duplicate trials.

Both run with the results database (and so Optuna's tables) on SQLite and on a real PostgreSQL
server (``db_url`` in conftest.py): with two workers, SQLite hands Optuna a journal file, while
PostgreSQL keeps the study in the database itself, Optuna's documented distributed setup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from click.testing import CliRunner

from reidbench.harness.cli.study import study
from reidbench.harness.store import Store
from reidbench.harness.study.storage import journal_path, journal_url, list_studies, open_storage

def _args(root: Path, data: Path, spec: Path, name: str, batches: str, db_url: str, *extra: str) -> list[str]:
    return ["--base", str(spec), "--tricks", "none", "--space", "batch-size", "--batches", batches,
            "--data", f"tiny={data}", "--train-on", "tiny", "--test-on", "tiny", "--epochs", "1", "--profile", "cpu",
            "--device", "cpu", "--loader-workers", "0", "--db", db_url,
            "--runs-dir", str(root / "runs"), "--name", name, *extra]


def _by_point(trials) -> dict[str, list]:
    """Trials grouped by their grid point. A trial killed after it left the queue but before it
    suggested its point has neither the ``batch`` attribute nor the param; its point is then the
    one it was queued with (Optuna's ``fixed_params``, which its re-queued retry inherits)."""
    out: dict[str, list] = {}
    for t in trials:
        point = (t.user_attrs.get("batch") or t.params.get("batch")
                 or t.system_attrs.get("fixed_params", {}).get("batch"))
        assert point is not None, (t.number, t.state.name, t.user_attrs, t.system_attrs)
        out.setdefault(point, []).append(t)
    return out


def test_killed_study_resumes_without_repeating_trials(tiny_market, study_spec_file, tmp_path, db_url):
    args = _args(tmp_path, tiny_market, study_spec_file, "killed", "3x2,2x3,2x2,3x1", db_url)
    code = "import sys; from reidbench.harness.cli.study import study; sys.exit(study())"
    err = open(tmp_path / "study.err", "w")
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.DEVNULL, stderr=err)
    url = db_url
    try:
        deadline = time.time() + 120
        storage = None
        polls: list[str] = []
        while time.time() < deadline and proc.poll() is None:
            try:
                if storage is None and "killed" in list_studies(url):  # without racing its table creation
                    storage = open_storage(url, heartbeat=False)
                if storage is not None:
                    trials = optuna.load_study(study_name="killed", storage=storage).get_trials()
                    if any(t.state.name == "COMPLETE" for t in trials):
                        break
            except Exception as exc:  # the study is being created right now: look again
                polls.append(repr(exc))
            time.sleep(0.2)
        assert proc.poll() is None, f"ended before it could be killed: {(tmp_path / 'study.err').read_text()} {polls}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        err.close()
    killed = optuna.load_study(study_name="killed", storage=storage).get_trials()
    done_before = [t for t in killed if t.state.name == "COMPLETE"]
    assert 1 <= len(done_before) < 4
    store = Store(url)
    runs_before = {r.run_hash: r for r in store.list_runs(status="done")}
    assert {t.user_attrs["run_hash"] for t in done_before} <= set(runs_before)

    result = CliRunner().invoke(study, args)
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="killed", storage=storage).get_trials()
    by_point = _by_point(trials)
    assert sorted(by_point) == ["2x2", "2x3", "3x1", "3x2"]
    for point, group in by_point.items():
        complete = [t for t in group if t.state.name == "COMPLETE"]
        assert len(complete) == 1, (point, [(t.number, t.state.name) for t in group])
        # a point's other trials are only the killed attempt (failed, then queued again)
        assert all(t.state.name == "FAIL" for t in group if t not in complete)
    for t in done_before:  # finished before the kill: neither asked again nor trained again
        assert by_point[t.user_attrs["batch"]] == [x for x in trials if x.number == t.number]
        run = store.get_run(t.user_attrs["run_hash"])
        assert run.attempts == 1 and run.finished_at == runs_before[run.run_hash].finished_at
    runs = store.list_runs()
    assert len(runs) == 4 and all(r.status == "done" and r.attempts <= 2 for r in runs)


def test_two_workers_share_a_study_without_duplicates(tiny_market, study_spec_file, tmp_path, db_url):
    result = CliRunner().invoke(study, _args(tmp_path, tiny_market, study_spec_file, "shared", "3x2,2x3,2x2,3x1",
                                             db_url, "--workers", "2"))
    assert result.exit_code == 0, result.output
    journal = journal_path(tmp_path / "runs", "shared")
    if db_url.startswith("sqlite"):
        assert journal.exists()  # several workers on an SQLite database: Optuna's journal file
        storage = open_storage(journal_url(journal))
    else:
        assert not journal.exists() and list_studies(db_url) == ["shared"]  # in the PostgreSQL database itself
        storage = open_storage(db_url)
    trials = optuna.load_study(study_name="shared", storage=storage).get_trials()
    assert sorted(t.params["batch"] for t in trials) == ["2x2", "2x3", "3x1", "3x2"]
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both processes took trials
    runs = Store(db_url).list_runs()
    assert len(runs) == 4 and all(r.status == "done" and r.attempts == 1 for r in runs)
    assert sorted(r.run_hash for r in runs) == sorted(t.user_attrs["run_hash"] for t in trials)
