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


def gpu_groups(gpus: Sequence[str], gpus_per_run: int) -> list[tuple[str, ...]]:
    """``gpus`` cut into groups of ``gpus_per_run`` (one run each); an error when they do not divide."""
    if gpus_per_run < 1:
        raise ValueError(f"--gpus-per-run {gpus_per_run} is not valid: an integer >= 1")
    if len(gpus) % gpus_per_run:
        raise ValueError(f"--gpus {','.join(map(str, gpus))}: {len(gpus)} GPU(s) do not split into runs of "
                         f"--gpus-per-run {gpus_per_run}; give a multiple of {gpus_per_run}")
    return [tuple(gpus[i:i + gpus_per_run]) for i in range(0, len(gpus), gpus_per_run)]


class LocalExecutor:
    """Runs jobs one after another from this process: on the first of ``gpus`` when given, or, with
    ``gpus_per_run`` G > 1, on G processes (torchrun) using the first G of ``gpus``."""

    def __init__(self, gpus: Sequence[str] = (), log: Callable[[str], None] | None = None,
                 gpus_per_run: int = 1) -> None:
        self.gpus = tuple(gpus)
        self.log = log
        self.gpus_per_run = gpus_per_run
        if gpus_per_run < 1:
            raise ValueError(f"--gpus-per-run {gpus_per_run} is not valid: an integer >= 1")
        if gpus_per_run > 1 and self.gpus and len(self.gpus) < gpus_per_run:
            raise ValueError(f"--gpus {','.join(self.gpus)}: {len(self.gpus)} GPU(s) for --gpus-per-run {gpus_per_run}; "
                             f"give at least {gpus_per_run}")

    def run(self, jobs: Sequence[Job]) -> list[JobOutcome]:
        outcomes = []
        for i, job in enumerate(jobs):
            if self.gpus_per_run > 1:
                job = dataclasses.replace(job, gpus_per_run=self.gpus_per_run,
                                          visible_gpus=self.gpus[:self.gpus_per_run])
                if self.gpus:
                    job = dataclasses.replace(job, device="cuda")
            elif self.gpus:
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
    """Fans jobs out with submitit, one job per run and ``gpus_per_run`` (default 1) GPUs per job.

    ``kind="submitit"``: submitit's LocalExecutor (job processes on this machine). GPUs come from a
    slot pool: ``gpus`` cut into groups of ``gpus_per_run``, at most one running job per group, each
    seeing only its own GPUs (CUDA_VISIBLE_DEVICES); without GPUs, ``max_parallel`` CPU jobs at a
    time (default 1, because one training run already uses every core). ``kind="slurm"``: one Slurm
    job array with ``gpus_per_node=gpus_per_run`` (one task per job: the job starts its ranks with
    torchrun; none with ``device="cpu"``: a cluster without GPUs refuses a GPU request) and at most
    ``max_parallel`` (default: number of GPU groups, else 4) tasks at once.
    """

    # After Slurm says a job completed (or forgot it), how long its result file may take to show up
    # (a shared file system's attribute cache) before the job counts as dead; after any other end
    # (cancelled, failed, timed out, ...) a result can only come from a job that was finishing anyway.
    result_grace_s = 15.0
    ended_grace_s = 3.0

    def __init__(self, kind: str, folder: str | Path, gpus: Sequence[str] = (), timeout_min: int = 24 * 60,
                 slurm_partition: str | None = None, max_parallel: int | None = None,
                 log: Callable[[str], None] | None = None, poll_s: float = 1.0, gpus_per_run: int = 1,
                 device: str = "auto") -> None:
        try:
            import submitit
        except ImportError:
            raise ValueError("--executor submitit/slurm needs submitit: pip install 'reidbench[slurm]'") from None
        if kind not in ("submitit", "slurm"):
            raise ValueError(f"executor {kind!r} is not valid: {', '.join(EXECUTORS)}")
        self.kind, self.log, self.poll_s = kind, log, poll_s
        self.folder = Path(folder)
        self.gpus = tuple(int(g) for g in gpus)
        self.gpus_per_run = gpus_per_run
        groups = gpu_groups(self.gpus, gpus_per_run)
        if kind == "submitit":
            self.executor = submitit.LocalExecutor(folder=str(self.folder))
            self.executor.update_parameters(timeout_min=timeout_min)
            self.slots: list[tuple[int, ...] | None] = list(groups) or [None] * max(1, max_parallel or 1)
        else:
            import shutil

            missing = [tool for tool in ("sbatch", "squeue", "srun") if shutil.which(tool) is None]
            if missing:
                raise ValueError(f"--executor slurm needs the Slurm commands on PATH ({', '.join(missing)} not found)")
            self.executor = submitit.AutoExecutor(folder=str(self.folder), cluster="slurm")
            params = {"timeout_min": timeout_min, "gpus_per_node": 0 if device == "cpu" else gpus_per_run,
                      "tasks_per_node": 1, "slurm_array_parallelism": max_parallel or len(groups) or 4}
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
        jobs = [dataclasses.replace(job, gpus_per_run=self.gpus_per_run, claim_tag=uuid.uuid4().hex[:8])
                for job in jobs]
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
                else:  # the job sees only its GPUs, as cuda:0..G-1
                    self.executor.update_parameters(gpus_per_node=len(slot), visible_gpus=slot)
                    job = dataclasses.replace(job, device="cuda")
                handle = self.executor.submit(_submitit_entry, job)
                if self.log:
                    where = ("CPU" if self.gpus_per_run == 1 else f"{self.gpus_per_run} CPU processes") \
                        if slot is None else f"GPU {','.join(map(str, slot))}"
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
                   log: Callable[[str], None] | None = None, gpus_per_run: int = 1, device: str = "auto"):
    if kind == "local":
        return LocalExecutor(gpus=gpus, log=log, gpus_per_run=gpus_per_run)
    if kind in ("submitit", "slurm"):
        return SubmititExecutor(kind, folder, gpus=gpus, timeout_min=timeout_min, log=log, gpus_per_run=gpus_per_run,
                                device=device)
    raise ValueError(f"--executor {kind!r} is not valid: {', '.join(EXECUTORS)}")
