"""Executors hand jobs to workers: in this process (``local``), or through submitit — its local
executor (``submitit``) or Slurm job arrays (``slurm``). Every job records its own result in the
store, so the parent only waits. A job that dies without a word (``scancel``, a time limit, a lost
node, kill -9) is recorded as failed by the parent (``fail_lost_claim``); it leaves a checkpoint
that the next invocation resumes from.

Slurm jobs are watched with ``squeue`` (the controller's own view), not with submitit's ``sacct``
calls: a cluster without accounting storage (no slurmdbd) has no sacct, and a cancelled job would
then be waited for forever.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable, Sequence

from reidbench.harness.execution.jobs import Job, JobOutcome, fail_lost_claim, run_job

EXECUTORS = ("local", "submitit", "slurm")
# Slurm job states after which a job runs no more (squeue --states=all).
SLURM_ENDED = ("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
               "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT")


class LocalExecutor:
    """Runs jobs one after another in this process (on the first of ``gpus`` when given)."""

    def __init__(self, gpus: Sequence[str] = (), log: Callable[[str], None] | None = None) -> None:
        self.gpus = tuple(gpus)
        self.log = log

    def run(self, jobs: Sequence[Job]) -> list[JobOutcome]:
        outcomes = []
        for i, job in enumerate(jobs):
            if self.gpus:
                job = dataclasses.replace(job, device=f"cuda:{self.gpus[0]}")
            if self.log:
                self.log(f"[{i + 1}/{len(jobs)}] {job.label}  run {job.run_hash[:12]}")
            outcome = run_job(job, log=self.log)
            if outcome.status == "failed" and self.log:
                self.log(f"run {job.run_hash[:12]} FAILED: {outcome.error} (recorded; re-run to retry)")
            outcomes.append(outcome)
        return outcomes


def _submitit_entry(job: Job) -> JobOutcome:
    """Entry point executed inside a submitit job (module-level so it pickles by reference)."""
    return run_job(job, log=lambda line: print(line, flush=True))


class SubmititExecutor:
    """Fans jobs out with submitit, one job per run and one GPU per job.

    ``kind="submitit"``: submitit's LocalExecutor (job processes on this machine). GPUs come from a
    slot pool: at most one running job per id in ``gpus``, each seeing only its own GPU
    (CUDA_VISIBLE_DEVICES); without GPUs, ``max_parallel`` CPU jobs at a time (default 1, because
    one training run already uses every core). ``kind="slurm"``: one Slurm job array, one GPU per
    task (none with ``device="cpu"``: a cluster without GPUs refuses a GPU request) and at most
    ``max_parallel`` (default: number of ``gpus``, else 4) tasks at once.
    """

    # After Slurm says a job completed (or forgot it), how long its result file may take to show up
    # (a shared file system's attribute cache) before the job counts as dead; after any other end
    # (cancelled, failed, timed out, ...) a result can only come from a job that was finishing anyway.
    result_grace_s = 15.0
    ended_grace_s = 3.0

    def __init__(self, kind: str, folder: str | Path, gpus: Sequence[str] = (), timeout_min: int = 24 * 60,
                 slurm_partition: str | None = None, max_parallel: int | None = None,
                 log: Callable[[str], None] | None = None, poll_s: float = 1.0, device: str = "auto") -> None:
        try:
            import submitit
        except ImportError:
            raise ValueError("--executor submitit/slurm needs submitit: pip install 'reidbench[slurm]'") from None
        if kind not in ("submitit", "slurm"):
            raise ValueError(f"executor {kind!r} is not valid: {', '.join(EXECUTORS)}")
        self.kind, self.log, self.poll_s = kind, log, poll_s
        self.folder = Path(folder)
        self.gpus = tuple(int(g) for g in gpus)
        if kind == "submitit":
            self.executor = submitit.LocalExecutor(folder=str(self.folder))
            self.executor.update_parameters(timeout_min=timeout_min)
            self.slots: list[int | None] = list(self.gpus) or [None] * max(1, max_parallel or 1)
        else:
            import shutil

            missing = [tool for tool in ("sbatch", "squeue", "srun") if shutil.which(tool) is None]
            if missing:
                raise ValueError(f"--executor slurm needs the Slurm commands on PATH ({', '.join(missing)} not found)")
            self.executor = submitit.AutoExecutor(folder=str(self.folder), cluster="slurm")
            params = {"timeout_min": timeout_min, "gpus_per_node": 0 if device == "cpu" else 1, "tasks_per_node": 1,
                      "slurm_array_parallelism": max_parallel or len(self.gpus) or 4}
            if slurm_partition:
                params["slurm_partition"] = slurm_partition
            self.executor.update_parameters(**params)

    def _outcome(self, job: Job, handle, ended: str | None = None) -> JobOutcome:
        """The job's own outcome, or ``failed`` when it died without one (``ended``: Slurm's word for how)."""
        if ended is None:
            try:
                return handle.result()
            except Exception as exc:  # the job died (timeout, OOM, node failure): its run is retried next time
                text = str(exc).strip()
                ended = text.splitlines()[-1] if text else type(exc).__name__
        error = f"job {handle.job_id} {ended}"
        recorded = fail_lost_claim(job, error)
        if self.log:
            self.log(f"run {job.run_hash[:12]} job {handle.job_id} died: {ended}"
                     + (" (recorded as failed; re-run to resume it)" if recorded else ""))
        return JobOutcome(job.run_hash, "failed", error)

    def run(self, jobs: Sequence[Job]) -> list[JobOutcome]:
        if not jobs:
            return []
        # Each attempt's claim carries a tag, so that a job that dies silently can be recorded as failed.
        jobs = [dataclasses.replace(job, claim_tag=uuid.uuid4().hex[:8]) for job in jobs]
        if self.kind == "slurm":
            return self._run_array(jobs)
        return self._run_with_slots(jobs)

    def _run_array(self, jobs: list[Job]) -> list[JobOutcome]:
        from submitit.core.utils import FailedJobError

        try:
            handles = self.executor.map_array(_submitit_entry, jobs)
        except FailedJobError as err:  # sbatch said no: its message is the user's answer
            said = " ".join(str(err).split()) or "no message"
            hint = " (a cluster without GPUs: pass --device cpu)" if "gres" in said.lower() else ""
            raise ValueError(f"Slurm refused the job array: {said}{hint}") from None
        if self.log:
            self.log(f"submitted a Slurm array of {len(handles)} job(s) ({handles[0].job_id.split('_')[0]}); "
                     f"logs in {self.folder}")
        outcomes: dict[int, JobOutcome] = {}
        ended_at: dict[int, tuple[float, str]] = {}
        while len(outcomes) < len(jobs):
            states = _squeue_states({h.job_id.split("_")[0] for h in handles})
            now = time.monotonic()
            for index, (job, handle) in enumerate(zip(jobs, handles)):
                if index in outcomes:
                    continue
                if handle.paths.result_pickle.exists():
                    outcomes[index] = self._outcome(job, handle)
                    continue
                state = None if states is None else states.get(handle.job_id, "gone from the queue")
                if state is None or state not in SLURM_ENDED + ("gone from the queue",):
                    continue  # pending, running, completing, or squeue did not answer this time
                since, _ = ended_at.setdefault(index, (now, state))
                grace = self.result_grace_s if state in ("COMPLETED", "gone from the queue") else self.ended_grace_s
                if now - since > grace:
                    outcomes[index] = self._outcome(job, handle, ended=state)
            if len(outcomes) < len(jobs):
                time.sleep(self.poll_s)
        return [outcomes[i] for i in range(len(jobs))]

    def _run_with_slots(self, jobs: list[Job]) -> list[JobOutcome]:
        import time

        outcomes: dict[int, JobOutcome] = {}
        free = list(self.slots)
        running: list[tuple[int, Job, object, int | None]] = []
        queue = list(enumerate(jobs))
        while queue or running:
            while queue and free:
                index, job = queue.pop(0)
                slot = free.pop(0)
                if slot is None:
                    self.executor.update_parameters(gpus_per_node=0, visible_gpus=())
                else:
                    self.executor.update_parameters(gpus_per_node=1, visible_gpus=(slot,))
                    job = dataclasses.replace(job, device="cuda")
                handle = self.executor.submit(_submitit_entry, job)
                if self.log:
                    where = "CPU" if slot is None else f"GPU {slot}"
                    self.log(f"[{index + 1}/{len(jobs)}] {job.label}: job {handle.job_id} on {where}")
                running.append((index, job, handle, slot))
            still = []
            for index, job, handle, slot in running:
                if handle.done():
                    outcomes[index] = self._outcome(job, handle)
                    free.append(slot)
                else:
                    still.append((index, job, handle, slot))
            running = still
            if running:
                time.sleep(self.poll_s)
        return [outcomes[i] for i in range(len(jobs))]


def _squeue_states(array_ids: set[str]) -> dict[str, str] | None:
    """State of every task of these job arrays (``"123_4": "RUNNING"``), finished ones included
    while the controller remembers them (MinJobAge). An array it forgot is absent; None when
    squeue could not answer (the caller asks again)."""
    command = ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T", f"--jobs={','.join(sorted(array_ids))}"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return {} if "invalid job id" in done.stderr.lower() else None
    states = {}
    for line in done.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id and state:
            states[job_id] = state.split()[0].rstrip("+")
    return states


def build_executor(kind: str, folder: str | Path, gpus: Sequence[str] = (), timeout_min: int = 24 * 60,
                   log: Callable[[str], None] | None = None, device: str = "auto"):
    if kind == "local":
        return LocalExecutor(gpus=gpus, log=log)
    if kind in ("submitit", "slurm"):
        return SubmititExecutor(kind, folder, gpus=gpus, timeout_min=timeout_min, log=log, device=device)
    raise ValueError(f"--executor {kind!r} is not valid: {', '.join(EXECUTORS)}")
