"""Scheduler: hash each planned run → skip those already ``done`` in the store → run the rest
through an executor → the job itself records its result.

Safety: a job claims its run atomically in the store before training and sends heartbeats while
it trains, so two ``ablate`` processes on one database never train the same run twice; a claim
whose heartbeat went stale (or whose owner process on this host is gone) is taken over, and the
new owner resumes from the run folder's checkpoint.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

HEARTBEAT_EVERY_S = 20.0
STALE_AFTER_S = 120.0


def new_owner(tag: str = "") -> str:
    """``host:pid:tag`` of this process; ``tag`` (default: random) tells one attempt from another."""
    return f"{socket.gethostname()}:{os.getpid()}:{tag or uuid.uuid4().hex[:8]}"


def owner_is_dead_here(owner: str | None) -> bool:
    """True when ``owner`` names a process on this host that no longer exists (killed, crashed)."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True)
class Job:
    """Everything a worker (this process, a submitit job, a Slurm array task) needs. Picklable."""

    run_hash: str
    label: str
    spec_json: str
    trick_versions: Mapping[str, int]
    db_url: str
    out_dir: str
    device: str = "auto"
    num_workers: int | None = None
    data_paths: Mapping[str, str] = field(default_factory=dict)
    progress: bool | None = None
    variants: tuple = ()  # evaluation variants (harness.evaluation.settings.Variant) besides the default
    legacy_hashes: tuple[str, ...] = ()  # earlier hashes of the run (its folder may carry them)
    gpus_per_run: int = 1  # > 1: trained by that many processes through torchrun (execution/torchrun.py)
    visible_gpus: tuple[str, ...] = ()  # GPU ids those processes use (CUDA_VISIBLE_DEVICES); () = all visible
    claim_tag: str = ""  # ends the owner name of this attempt's claim, so the submitter can find it (fail_lost_claim)


@dataclass(frozen=True)
class JobOutcome:
    run_hash: str
    status: str  # done | failed | skipped (claimed elsewhere)
    error: str | None = None


class _Heartbeat:
    def __init__(self, store, run_hash: str, owner: str, every_s: float) -> None:
        self.store, self.run_hash, self.owner, self.every_s = store, run_hash, owner, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{run_hash[:8]}")

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.store.heartbeat(self.run_hash, self.owner)
            except Exception:  # a busy database must not kill training; the next beat retries
                pass

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_job(job: Job, log: Callable[[str], None] | None = None, store=None,
            on_epoch: Callable[[int, dict], None] | None = None) -> JobOutcome:
    """Claim, train/evaluate, record. Runs wherever the executor puts it; writes to the store itself.

    ``on_epoch`` is handed to the runner (``RuntimeOptions.on_epoch``); it is not part of ``Job``
    because a callable does not pickle into a submitit job.
    """
    from reidbench.harness.train.runner import RuntimeOptions, execute
    from reidbench.harness.spec import spec_from_json
    from reidbench.harness.store import Store

    store = store or Store(job.db_url)
    owner = new_owner(job.claim_tag)
    current = store.find_run(job.run_hash)
    if current is not None and current.status == "done":
        return JobOutcome(job.run_hash, "done")
    stale = 0.0 if current is not None and current.status == "running" and owner_is_dead_here(current.owner) \
        else STALE_AFTER_S
    if not store.claim(job.run_hash, owner, stale_after_s=stale):
        return JobOutcome(job.run_hash, "skipped")
    spec = spec_from_json(job.spec_json)
    runtime = RuntimeOptions(out_dir=Path(job.out_dir), device=job.device, num_workers=job.num_workers,
                             data_paths=dict(job.data_paths), progress=job.progress, log=log,
                             on_epoch=on_epoch, variants=tuple(job.variants), legacy_hashes=tuple(job.legacy_hashes))
    try:
        with _Heartbeat(store, job.run_hash, owner, HEARTBEAT_EVERY_S):
            if job.gpus_per_run > 1:  # this process stays the owner; the ranks never open the store
                from reidbench.harness.execution.torchrun import execute_distributed

                result = execute_distributed(spec, runtime, job.gpus_per_run, job.trick_versions,
                                             expected_hash=job.run_hash, visible_gpus=job.visible_gpus)
            else:
                result = execute(spec, runtime, job.trick_versions, expected_hash=job.run_hash)
        store.record_result(job.run_hash, owner, result.to_dict())
    except KeyboardInterrupt:
        store.release(job.run_hash, owner)
        raise
    except Exception as exc:  # recorded with its error; the next invocation retries it
        first_line = f"{type(exc).__name__}: {exc}".splitlines()[0]
        store.mark_failed(job.run_hash, owner, first_line + "\n" + traceback.format_exc(limit=20))
        return JobOutcome(job.run_hash, "failed", first_line)
    return JobOutcome(job.run_hash, "done")


def fail_lost_claim(job: Job, error: str, store=None) -> bool:
    """Record the run of a job that died without a word (cancelled, killed, lost node) as failed.

    Only a claim made by this very attempt (owner ending in ``:<claim_tag>``) is failed, and only
    while it is still ``running``: a run another process took over or finished is left alone. The
    next invocation retries the failed run, resuming from its checkpoint. True when recorded.
    """
    if not job.claim_tag:
        return False
    from reidbench.harness.store import Store

    store = store or Store(job.db_url)
    record = store.find_run(job.run_hash)
    if record is None or record.status != "running" or not (record.owner or "").endswith(":" + job.claim_tag):
        return False
    store.mark_failed(job.run_hash, record.owner, error)  # conditional on the owner: no race with a takeover
    return store.statuses([job.run_hash]).get(job.run_hash) == "failed"


def wait_for_others(store, hashes: Sequence[str], poll_s: float = 5.0,
                    log: Callable[[str], None] | None = None) -> list[str]:
    """Block while other processes hold some of ``hashes``; return those that became claimable here
    (their owner died or went stale, or released them unfinished) so the caller can run them itself.
    Failed runs are not returned: they are retried by the next invocation, not in a loop."""
    announced = False
    while True:
        statuses = store.statuses(hashes)
        pending = [h for h, s in statuses.items() if s == "running"]
        if not pending:
            return [h for h, s in statuses.items() if s == "pending"]
        takeover = []
        for h in pending:
            rec = store.find_run(h)
            if rec is None:
                continue
            age = (time.time() - rec.heartbeat_at.timestamp()) if rec.heartbeat_at else float("inf")
            if owner_is_dead_here(rec.owner) or age > STALE_AFTER_S:
                takeover.append(h)
        if takeover:
            return takeover
        if log and not announced:
            log(f"waiting for {len(pending)} run(s) being trained by another process ...")
            announced = True
        time.sleep(poll_s)
