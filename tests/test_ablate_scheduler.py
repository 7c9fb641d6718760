"""`reidbench ablate` end to end on a tiny dataset: caching, failures, kills, concurrency, executors.

Two concurrent ablate processes also share a real PostgreSQL database (``db_url`` in conftest.py);
the Slurm executor is in test_slurm_cluster.py."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from reidbench.harness.cli import main
from reidbench.harness.store import Store


def _args(spec: Path, data: Path, db: Path | str, runs: Path, *extra: str, add: str = "bnneck") -> list[str]:
    """``db``: an SQLite file, or any database URL."""
    url = db if isinstance(db, str) else f"sqlite:///{db}"
    return ["ablate", "--base", str(spec), "--add", add, "--data", f"tiny={data}", "--profile", "cpu",
            "--epochs", "2", "--db", url, "--runs-dir", str(runs), "--workers", "0", "--device", "cpu",
            *extra]


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "reidbench.harness.cli", *args]


@pytest.fixture(scope="module")
def done_ablation(tiny_market, tiny_spec_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate")
    db, runs = root / "results.db", root / "runs"
    result = CliRunner().invoke(main, _args(tiny_spec_file, tiny_market, db, runs))
    assert result.exit_code == 0, result.output
    return db, runs, result.output


def test_ablation_trains_each_row_once_and_prints_the_table(done_ablation):
    db, runs, output = done_ablation
    assert "Baseline" in output and "+BNNeck" in output and "tiny R1" in output and "tiny mAP" in output
    store = Store(f"sqlite:///{db}")
    recs = store.list_runs()
    assert len(recs) == 2 and all(r.status == "done" and r.attempts == 1 for r in recs)
    assert {m.test_set for m in store.metrics()} == {"tiny"}
    abl = store.get_ablation("latest")
    assert [m["step"] for m in abl.members] == ["Baseline", "+BNNeck"]
    assert abl.meta["profile"] == "cpu" and abl.meta["epochs"] == 2


def test_rerunning_trains_nothing(done_ablation, tiny_market, tiny_spec_file):
    db, runs, first = done_ablation
    result = CliRunner().invoke(main, _args(tiny_spec_file, tiny_market, db, runs))
    assert result.exit_code == 0, result.output
    assert "2 cached, 0 to run" in result.output
    assert [r.attempts for r in Store(f"sqlite:///{db}").list_runs()] == [1, 1]
    # same table both times
    assert first.strip().splitlines()[-3:] == result.output.strip().splitlines()[-3:]


def test_dry_run_shows_hash_diff_and_cache_status(done_ablation, tiny_market, tiny_spec_file):
    db, runs, _ = done_ablation
    result = CliRunner().invoke(main, _args(tiny_spec_file, tiny_market, db, runs, "--dry-run", add="bnneck,center"))
    assert result.exit_code == 0, result.output
    assert result.output.count("[cached]") == 2 and result.output.count("[new]") == 1
    assert "model.neck: plain → bnneck" in result.output and "loss.terms: ce(logits) + triplet(f_t) → ce(logits) + triplet(f_t) + center(f_t){weight: 0.0005}" in result.output


def test_adding_a_trick_the_base_has_is_an_error(tiny_market, tiny_spec_file, tmp_path):
    spec = tmp_path / "with_bnneck.yaml"
    spec.write_text(tiny_spec_file.read_text().replace("neck: plain", "neck: bnneck"))
    result = CliRunner().invoke(main, _args(spec, tiny_market, tmp_path / "r.db", tmp_path / "runs", "--dry-run"))
    assert result.exit_code == 2 and "changes nothing" in result.output


def test_a_failed_run_is_recorded_and_retried(tiny_market, tiny_spec_file, tmp_path, monkeypatch):
    import reidbench.harness.train.runner as runner

    real = runner.execute

    def flaky(spec, runtime, trick_versions=None, **kwargs):
        if spec.model.neck == "bnneck":
            raise RuntimeError("out of memory (simulated)")
        return real(spec, runtime, trick_versions, **kwargs)

    monkeypatch.setattr(runner, "execute", flaky)
    args = _args(tiny_spec_file, tiny_market, tmp_path / "r.db", tmp_path / "runs")
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 1
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    failed = store.list_runs(status="failed")
    assert len(failed) == 1 and "out of memory (simulated)" in failed[0].error
    assert len(store.list_runs(status="done")) == 1
    monkeypatch.setattr(runner, "execute", real)
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    assert "1 cached, 1 to run" in second.output
    assert {r.status for r in store.list_runs()} == {"done"}
    assert store.find_run(failed[0].run_hash).attempts == 2


def test_two_concurrent_ablate_processes_train_each_run_once(tiny_market, tiny_spec_file, tmp_path, db_url):
    args = _args(tiny_spec_file, tiny_market, db_url, tmp_path / "runs")
    procs = [subprocess.Popen(_cli(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    store = Store(db_url)
    recs = store.list_runs()
    assert len(recs) == 2 and all(r.status == "done" and r.attempts == 1 for r in recs)
    for r in recs:
        log = (Path(r.out_dir) / "train.log").read_text()
        assert log.count(": training ") == 1, log
    # both processes print the same, complete table
    assert outs[0][0].splitlines()[-3:] == outs[1][0].splitlines()[-3:]


def test_kill_9_during_ablate_then_rerun_gives_the_same_metrics(done_ablation, tiny_market, tiny_spec_file, tmp_path):
    ref_store = Store(f"sqlite:///{done_ablation[0]}")
    reference = {(m.run_hash, m.test_set, m.metric): m.value for m in ref_store.metrics()}
    args = _args(tiny_spec_file, tiny_market, tmp_path / "r.db", tmp_path / "runs")
    proc = subprocess.Popen(_cli(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list((tmp_path / "runs").glob("*/checkpoint.pt")):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    assert any(r.status == "running" for r in store.list_runs()), "nothing was interrupted; the test proves nothing"
    rerun = subprocess.run(_cli(args), capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming after epoch 1/2" in rerun.stderr
    got = {(m.run_hash, m.test_set, m.metric): m.value for m in store.metrics()}
    assert got == reference


def test_corrupt_database_gives_one_line_error_and_is_left_untouched(tiny_market, tiny_spec_file, tmp_path):
    db = tmp_path / "results.db"
    db.write_bytes(os.urandom(4096))
    before = db.read_bytes()
    result = CliRunner().invoke(main, _args(tiny_spec_file, tiny_market, db, tmp_path / "runs"))
    assert result.exit_code == 2
    assert "not a reidbench results database" in result.output and "Traceback" not in result.output
    assert db.read_bytes() == before


def test_locked_database_gives_a_clear_error_not_a_hang(done_ablation, tmp_path):
    db = tmp_path / "locked.db"
    with sqlite3.connect(done_ablation[0]) as src, sqlite3.connect(db) as dst:
        src.backup(dst)  # a plain file copy would miss what is still in the WAL file
    holder = sqlite3.connect(db, timeout=0.1)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(ValueError, match="is locked by another process") as info:
            Store(f"sqlite:///{db}", busy_timeout_s=0.3).ensure_run("f" * 64, {"x": 1}, "new")
        assert "\n" not in str(info.value)
    finally:
        holder.rollback()
        holder.close()
    assert len(Store(f"sqlite:///{db}").list_runs()) == 2  # nothing lost


def test_submitit_local_executor_runs_jobs_for_real(done_ablation, tiny_market, tiny_spec_file, tmp_path):
    pytest.importorskip("submitit")
    args = _args(tiny_spec_file, tiny_market, tmp_path / "r.db", tmp_path / "runs", "--executor", "submitit")
    result = subprocess.run(_cli(args), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "job" in result.stderr and "on CPU" in result.stderr
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    recs = store.list_runs()
    assert len(recs) == 2 and all(r.status == "done" for r in recs)
    reference = {(m.run_hash, m.test_set, m.metric): m.value for m in Store(f"sqlite:///{done_ablation[0]}").metrics()}
    assert {(m.run_hash, m.test_set, m.metric): m.value for m in store.metrics()} == reference
    assert list((tmp_path / "runs" / "_submitit").glob("*_log.out"))


def _check_105_cached_runs(tiny_spec_file, tmp_path) -> float:
    """Plan an ablation whose 105 runs are all done; nothing may be scheduled. Returns the seconds taken."""
    from reidbench.harness.ablation.plan import plan_ablation, run_plan
    from reidbench.harness.spec import load_spec_file
    from reidbench.tricks import PAPER_ORDER, parse_trick_list

    tricks = parse_trick_list(PAPER_ORDER)  # BoT's six: 7 rows x 15 seeds
    plan = plan_ablation(load_spec_file(tiny_spec_file), "tiny", tricks, "cumulative", list(range(15)))
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    for s in plan.steps:  # record 105 finished runs without training them
        store.ensure_run(s.run_hash, s.spec.to_dict(), s.step)
        store.claim(s.run_hash, "filler")
        store.record_result(s.run_hash, "filler", {
            "run_hash": s.run_hash, "spec": s.spec.to_dict(), "metrics": {"tiny": {"R1": 0.5, "mAP": 0.25}},
            "history": [], "provenance": {}, "model_info": {}, "environment": {}, "seconds_train": 1.0,
            "seconds_eval": 1.0, "out_dir": str(tmp_path)})

    class MustNotRun:
        def run(self, jobs):
            raise AssertionError(f"{len(jobs)} cached runs were scheduled again")

    t0 = time.perf_counter()
    plan = plan_ablation(load_spec_file(tiny_spec_file), "tiny", tricks, "cumulative", list(range(15)))
    run_plan(plan, store, MustNotRun(), tmp_path / "runs", device="cpu", num_workers=0, data_paths={}, meta={},
             progress=False, log=lambda s: None)
    return time.perf_counter() - t0



def test_105_cached_runs_schedule_nothing(tiny_spec_file, tmp_path):
    _check_105_cached_runs(tiny_spec_file, tmp_path)


@pytest.mark.perf
def test_checking_105_cached_runs_takes_under_a_second(tiny_spec_file, tmp_path):
    assert _check_105_cached_runs(tiny_spec_file, tmp_path) < 1.0


@pytest.mark.perf
def test_rerunning_a_cached_ablation_takes_under_ten_seconds(done_ablation, tiny_market, tiny_spec_file):
    db, runs, _ = done_ablation
    t0 = time.perf_counter()
    result = CliRunner().invoke(main, _args(tiny_spec_file, tiny_market, db, runs))
    assert result.exit_code == 0 and time.perf_counter() - t0 < 10

def test_slurm_executor_without_slurm_commands_is_a_one_line_error(tiny_market, tiny_spec_file, tmp_path):
    pytest.importorskip("submitit")
    args = _args(tiny_spec_file, tiny_market, tmp_path / "r.db", tmp_path / "runs", "--executor", "slurm")
    bare = dict(os.environ, PATH=str(tmp_path / "empty"))  # no sbatch anywhere
    result = subprocess.run(_cli(args), capture_output=True, text=True, timeout=300, env=bare)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        "reidbench: error: --executor slurm needs the Slurm commands on PATH (sbatch, squeue, srun not found)"
