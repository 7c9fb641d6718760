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
    torchrun) and at most ``max_parallel`` (default: number of GPU groups, else 4) tasks at once.
    """

    def __init__(self, kind: str, folder: str | Path, gpus: Sequence[str] = (), timeout_min: int = 24 * 60,
                 slurm_partition: str | None = None, max_parallel: int | None = None,
                 log: Callable[[str], None] | None = None, poll_s: float = 1.0, gpus_per_run: int = 1) -> None:
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
            self.executor = submitit.AutoExecutor(folder=str(self.folder), cluster="slurm")
            params = {"timeout_min": timeout_min, "gpus_per_node": gpus_per_run, "tasks_per_node": 1,
                      "slurm_array_parallelism": max_parallel or len(groups) or 4}
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
        jobs = [dataclasses.replace(j, gpus_per_run=self.gpus_per_run) for j in jobs]
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


def build_executor(kind: str, folder: str | Path, gpus: Sequence[str] = (), timeout_min: int = 24 * 60,
                   log: Callable[[str], None] | None = None, gpus_per_run: int = 1):
    if kind == "local":
        return LocalExecutor(gpus=gpus, log=log, gpus_per_run=gpus_per_run)
    if kind in ("submitit", "slurm"):
        return SubmititExecutor(kind, folder, gpus=gpus, timeout_min=timeout_min, log=log, gpus_per_run=gpus_per_run)
    raise ValueError(f"--executor {kind!r} is not valid: {', '.join(EXECUTORS)}")
