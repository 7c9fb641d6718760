"""Executors hand jobs to workers: in this process (``local``), or through submitit — its local
executor (``submitit``) or Slurm job arrays (``slurm``). Every job records its own result in the
store, so the parent only waits; a job killed by a timeout leaves a checkpoint and a stale claim
that the next invocation resumes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

from reidbench.harness.execution.jobs import Job, JobOutcome, run_job

EXECUTORS = ("local", "submitit", "slurm")


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
    one training run already uses every core). ``kind="slurm"``: one Slurm job array with
    ``gpus_per_node=1`` and at most ``max_parallel`` (default: number of ``gpus``, else 4) tasks at once.
    """

    def __init__(self, kind: str, folder: str | Path, gpus: Sequence[str] = (), timeout_min: int = 24 * 60,
                 slurm_partition: str | None = None, max_parallel: int | None = None,
                 log: Callable[[str], None] | None = None, poll_s: float = 1.0) -> None:
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
            self.executor = submitit.AutoExecutor(folder=str(self.folder), cluster="slurm")
            params = {"timeout_min": timeout_min, "gpus_per_node": 1, "tasks_per_node": 1,
                      "slurm_array_parallelism": max_parallel or len(self.gpus) or 4}
            if slurm_partition:
                params["slurm_partition"] = slurm_partition
            self.executor.update_parameters(**params)

    def _outcome(self, job: Job, handle) -> JobOutcome:
        try:
            return handle.result()
        except Exception as exc:  # the job died (timeout, OOM, node failure): its run is retried next time
            text = str(exc).strip()
            first = text.splitlines()[-1] if text else type(exc).__name__
            if self.log:
                self.log(f"run {job.run_hash[:12]} job {handle.job_id} died: {first}")
            return JobOutcome(job.run_hash, "failed", f"job {handle.job_id}: {first}")

    def run(self, jobs: Sequence[Job]) -> list[JobOutcome]:
        if not jobs:
            return []
        if self.kind == "slurm":
            handles = self.executor.map_array(_submitit_entry, list(jobs))
            if self.log:
                self.log(f"submitted a Slurm array of {len(handles)} job(s); logs in {self.folder}")
            return [self._outcome(j, h) for j, h in zip(jobs, handles)]
        return self._run_with_slots(list(jobs))

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


def build_executor(kind: str, folder: str | Path, gpus: Sequence[str] = (), timeout_min: int = 24 * 60,
                   log: Callable[[str], None] | None = None):
    if kind == "local":
        return LocalExecutor(gpus=gpus, log=log)
    if kind in ("submitit", "slurm"):
        return SubmititExecutor(kind, folder, gpus=gpus, timeout_min=timeout_min, log=log)
    raise ValueError(f"--executor {kind!r} is not valid: {', '.join(EXECUTORS)}")
