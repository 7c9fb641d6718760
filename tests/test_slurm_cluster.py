"""`reidbench ablate --executor slurm` on a real one-node Slurm cluster (``slurm_cluster`` in
conftest.py: Debian's slurm-wlm and munge, started by the test session in a temporary folder).

A job array of tiny runs lands in the results database; a job cancelled with ``scancel`` is
recorded as failed and resumes on the next invocation, without training from scratch. Skipped,
with the reason, where no cluster can be started (docs/services.md says what the fixture needs).
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reidbench.harness.store import Store

pytestmark = pytest.mark.slurm


def _ablate(spec: Path, data: Path, db: str, runs: Path, epochs: int, add: str) -> list[str]:
    return [sys.executable, "-m", "reidbench.harness.cli", "ablate", "--base", str(spec), "--add", add,
            "--data", f"tiny={data}", "--profile", "cpu", "--epochs", str(epochs), "--db", db,
            "--runs-dir", str(runs), "--workers", "0", "--device", "cpu", "--executor", "slurm"]


def _array_id(stderr: str, jobs: int) -> str:
    found = re.search(rf"submitted a Slurm array of {jobs} job\(s\) \((\d+)\)", stderr)
    assert found, stderr
    return found.group(1)


def test_ablate_submits_a_job_array_whose_runs_land_in_the_database(slurm_cluster, tiny_market, study_spec_file,
                                                                      tmp_path):
    db, runs = f"sqlite:///{tmp_path / 'results.db'}", tmp_path / "runs"
    done = subprocess.run(_ablate(study_spec_file, tiny_market, db, runs, 2, "bnneck"), capture_output=True,
                          text=True, timeout=600, env=slurm_cluster.env)
    assert done.returncode == 0, done.stderr
    array = _array_id(done.stderr, 2)
    assert "Baseline" in done.stdout and "+BNNeck" in done.stdout
    # Slurm ran both tasks of the array to completion ...
    assert slurm_cluster.states(array) == {f"{array}_0": "COMPLETED", f"{array}_1": "COMPLETED"}
    # ... and each task trained one run, which it recorded in the database itself.
    store = Store(db)
    records = store.list_runs()
    assert len(records) == 2 and all(r.status == "done" and r.attempts == 1 for r in records)
    logs = {task: (runs / "_submitit" / f"{array}_{task}_0_log.out").read_text() for task in (0, 1)}
    for record in records:
        trained_by = [task for task, log in logs.items() if f"run {record.run_hash[:12]}: training" in log]
        assert len(trained_by) == 1, logs
        assert {m.test_set for m in store.metrics([record.run_hash])} == {"tiny"}


def test_a_cancelled_job_is_recorded_as_failed_and_resumes_on_the_next_invocation(
        slurm_cluster, tiny_market, study_spec_file, tmp_path):
    db, runs = f"sqlite:///{tmp_path / 'results.db'}", tmp_path / "runs"
    command = _ablate(study_spec_file, tiny_market, db, runs, 20, "")  # one run: the base
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=slurm_cluster.env)
    holder = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and first.poll() is None and not list(runs.glob("*/checkpoint.pt")):
            time.sleep(0.1)
        assert list(runs.glob("*/checkpoint.pt")), "the job never saved a checkpoint"
        # Hold the database's write lock across the cancellation: submitit ignores scancel's SIGTERM
        # and SIGKILL follows KillWait later, time enough for a tiny run to finish; held, the job
        # cannot record a result however fast it trains, whatever the machine.
        holder = sqlite3.connect(tmp_path / "results.db", isolation_level=None, timeout=60)
        holder.execute("BEGIN IMMEDIATE")
        jobs = slurm_cluster.active_jobs()
        assert len(jobs) == 1, jobs
        cancelled = slurm_cluster.command("scancel", jobs[0])
        assert cancelled.returncode == 0, cancelled.stderr
        while time.monotonic() < deadline and slurm_cluster.active_jobs():
            time.sleep(0.2)  # until its processes are gone (the job leaves COMPLETING)
        assert not slurm_cluster.active_jobs()
        holder.execute("ROLLBACK")
        out, err = first.communicate(timeout=180)
    finally:
        if holder is not None:
            holder.close()
        if first.poll() is None:
            first.kill()
    assert first.returncode == 1, err  # the ablation finished with a run not done
    assert f"job {jobs[0]} died: CANCELLED (recorded as failed; re-run to resume it)" in err
    assert "1 run(s) not done" in err and "(failed)" in out
    store = Store(db)
    (record,) = store.list_runs()
    assert record.status == "failed" and record.attempts == 1
    assert record.error.startswith(f"job {jobs[0]} CANCELLED")
    log = runs / record.run_hash[:12] / "train.log"

    again = subprocess.run(command, capture_output=True, text=True, timeout=600, env=slurm_cluster.env)
    assert again.returncode == 0, again.stderr
    job = _array_id(again.stderr, 1)
    assert list(slurm_cluster.states(job).values()) == ["COMPLETED"]  # submitit sends one job as a plain job
    record = store.get_run(record.run_hash)
    assert record.status == "done" and record.attempts == 2 and record.error is None
    # Resumed, not started over: from the last checkpoint when the kill came mid-training, from the
    # run folder's finished result when it came while the job waited to record it.
    trained = log.read_text()
    assert trained.count("epoch   1/20") == 1 and trained.count("epoch  20/20") == 1, trained
    assert {m.metric for m in store.metrics([record.run_hash])} >= {"R1", "mAP"}


def test_a_gpu_request_on_a_cluster_without_gpus_is_a_one_line_error(slurm_cluster, tiny_market, study_spec_file,
                                                                     tmp_path):
    command = _ablate(study_spec_file, tiny_market, f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "runs", 1, "")
    command[command.index("--device") + 1] = "auto"  # one GPU per task: this cluster has none
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=slurm_cluster.env)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == ("reidbench: error: Slurm refused the job array: sbatch: error: Invalid generic resource (gres) "
                    "specification (a cluster without GPUs: pass --device cpu)")
    assert "Traceback" not in done.stderr and slurm_cluster.active_jobs() == []


def test_sbatch_input_variables_choose_the_partition(slurm_cluster, tiny_market, study_spec_file, tmp_path):
    """No partition/account options of our own: sbatch reads SBATCH_PARTITION, SBATCH_ACCOUNT, ... itself."""
    command = _ablate(study_spec_file, tiny_market, f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "runs", 1, "")
    env = dict(slurm_cluster.env, SBATCH_PARTITION="no-such-partition")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "reidbench: error: Slurm refused the job array: sbatch: error: invalid partition specified: "
        "no-such-partition sbatch: error: Batch job submission failed: Invalid partition name specified")
