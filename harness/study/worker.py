"""Running a study: create it, queue its grid, and work through trials in one or more processes.

Every trial goes through the same cached runner as ``reidbench ablate``: the trial's spec is
hashed, recorded in the results store, and ``scheduler.run_job`` claims → trains → records it
(returning at once for a run already ``done``, whose stored metrics are then used). The run hash
is the trial's ``run_hash`` user attribute and the run's label names the study and trial.

How trials are handed out, so that no grid point is evaluated twice:

- grid: every point is queued up front as a WAITING trial (``enqueue_trial`` with a ``grid_point``
  user attribute); workers pop queued trials (Optuna moves WAITING → RUNNING atomically) and stop
  when the queue is empty. The study's sampler is a GridSampler over the exact point list, but it
  never has to draw: GridSampler alone picks a random unvisited point per trial and, as Optuna
  warns, re-evaluates points when several workers run at once.
- tpe: workers ask TPE for new trials until the study holds ``trials`` live ones (complete,
  pruned, running or queued).
- Local workers take turns (``AskLock``) between "is there work left?" and "ask". A trial created
  anyway by a race between machines is marked ``surplus`` and failed before it trains anything.
- A trial whose worker died (SIGKILL, OOM, a lost node) is failed and re-queued with the same
  params: by Optuna's heartbeats (RDB storages) or, for workers on this machine, at once by its
  process id (``reap_dead_trials``; JournalStorage has no heartbeats). The re-queued trial claims
  the run that the dead worker left ``running`` and resumes it from its checkpoint.
- Trials that failed on their own are re-queued when the study command is run again.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Mapping

import optuna
from optuna.trial import TrialState

from reidbench.harness.execution.jobs import Job, new_owner, owner_is_dead_here, run_job, wait_for_others
from reidbench.harness.spec import spec_from_stored
from reidbench.harness.study.plan import StudyPlan
from reidbench.harness.study.space import StudySpace
from reidbench.harness.study.storage import AskLock, is_local_storage, open_storage, retry_callback
from reidbench.tricks import trick_versions

# A RUNNING trial without a worker attribute (its process died between ask and the first write)
# is taken for dead after this long.
ORPHAN_AFTER_S = 600.0
LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)

Log = Callable[[str], None]


class RunFailed(RuntimeError):
    """The trial's run failed (recorded in the store with its error); the trial is failed."""


class RunPruned(RuntimeError):
    """Raised from the runner's per-epoch hook to stop a run the pruner gave up on."""


class _Surplus(RuntimeError):
    """A trial created beyond the grid or the budget by a race between workers; it does nothing."""


def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- samplers


def _queued_grid_sampler(search_space: Mapping[str, list[str]], seed: int | None) -> Any:
    class QueuedGridSampler(optuna.samplers.GridSampler):
        """GridSampler over the exact point list, fed through the study's queue.

        ``after_trial`` is a no-op: whether the study is finished is decided by the queue (a
        GridSampler would stop the loop and, for a one-point grid, look up a grid id that queued
        trials do not carry).
        """

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return QueuedGridSampler(dict(search_space), seed=seed)


def make_sampler(space: StudySpace, trials: int, seed: int | None = None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if space.sampler == "grid":
            return _queued_grid_sampler(space.grid_search_space(), seed)
        startup = max(1, min(10, trials // 2))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)


def make_pruner(prune: bool, max_epochs: int, trials: int) -> Any:
    if not prune:
        return optuna.pruners.NopPruner()
    # Compare only after a third of the schedule: early mAP mostly reflects the warmup.
    return optuna.pruners.MedianPruner(n_startup_trials=max(1, min(5, trials // 3)),
                                       n_warmup_steps=max(0, max_epochs // 3))


# --------------------------------------------------------------------------- plan ↔ study


def plan_from_attrs(name: str, attrs: Mapping[str, Any]) -> StudyPlan:
    """Rebuild the plan a study was created with from its user attributes (what workers use)."""
    if "base_spec" not in attrs or "space" not in attrs:
        raise ValueError(f"study {name!r} was not created by `reidbench study` (no base_spec/space attributes)")
    return StudyPlan(name=name, base_name=str(attrs.get("base", "")), base=spec_from_stored(attrs["base_spec"]),
                     space=StudySpace.from_attrs(dict(attrs)), metric=str(attrs["metric"]),
                     trials=int(attrs["trials"]), prune=bool(attrs.get("prune", False)), train_fingerprint=attrs.get("train_fingerprint"),
                     notes=tuple(attrs.get("notes", ())), weights_digest=attrs.get("weights_digest"))


def create_or_load(plan: StudyPlan, storage_url: str) -> Any:
    """Create the study (or load it, checking it measures what ``plan`` measures) and store the plan."""
    _quiet_optuna()
    storage = open_storage(storage_url)
    study = optuna.create_study(study_name=plan.name, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=make_sampler(plan.space, plan.trials))
    attrs = study.user_attrs
    have = attrs.get("fingerprint")
    if have is not None and have != plan.fingerprint and _is_pre_upgrade_twin(attrs, plan):
        # Created before the results database was upgraded (older run hashes, no data fingerprint):
        # the same setup, so it is adopted and re-keyed rather than refused.
        for key, value in plan.attrs().items():
            study.set_user_attr(key, value)
        attrs, have = study.user_attrs, plan.fingerprint
    if have is None and study.get_trials(deepcopy=False):
        raise ValueError(f"study {plan.name!r} exists and was not made by `reidbench study`; choose another --name")
    if have is not None and have != plan.fingerprint:
        differ = [k for k in ("base", "profile", "tricks", "train", "test", "epochs", "space", "sampler", "batches",
                              "image_sizes", "metric", "prune") if attrs.get(k) != plan.attrs().get(k)]
        raise ValueError(f"study {plan.name!r} was created for another setup (differs in "
                         f"{', '.join(differ) or 'the base spec'}); choose another --name or drop --name")
    if have is None:
        for key, value in plan.attrs().items():
            study.set_user_attr(key, value)
    if attrs.get("trials") != plan.trials:
        study.set_user_attr("trials", plan.trials)
    return study


def _is_pre_upgrade_twin(attrs: Mapping[str, Any], plan: StudyPlan) -> bool:
    """A study written by reidbench before data fingerprints (or weights digests) entered run hashes,
    measuring what ``plan`` measures."""
    if "base_spec" not in attrs:
        return False
    if "train_fingerprint" in attrs and ("weights_digest" in attrs or plan.weights_digest is None):
        return False
    try:
        same_base = spec_from_stored(attrs["base_spec"]) == plan.base
    except ValueError:
        return False
    mine = plan.attrs()
    keys = ("base", "profile", "tricks", "train", "test", "epochs", "space", "sampler", "batches", "image_sizes",
            "metric", "prune")
    return same_base and all(attrs.get(k) == mine.get(k) for k in keys)


def reap_dead_trials(study: Any, log: Log | None = None, local_storage: bool = False) -> list[int]:
    """Fail and re-queue RUNNING trials whose worker process is gone; returns their numbers.

    Heartbeat-stale trials of RDB storages (any machine) go through Optuna's ``fail_stale_trials``;
    trials of dead processes on this machine are failed at once by process id, which also covers
    JournalStorage (no heartbeats there).

    Call it holding the ``AskLock``: a local worker writes its ``worker`` attribute before it lets
    go of the lock, so with ``local_storage`` (SQLite or journal file: every worker is on this
    machine) a RUNNING trial without one belongs to a worker that died between asking and writing.
    Elsewhere such a trial is taken for dead after ``ORPHAN_AFTER_S``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    reaped = []
    now = datetime.now()
    retry = retry_callback()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker:
            dead = owner_is_dead_here(worker)
        elif local_storage:
            dead = True
        else:
            started = t.datetime_start
            dead = started is not None and (now - started).total_seconds() > ORPHAN_AFTER_S
        if not dead:
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker got there first
        frozen = next(x for x in study.get_trials(deepcopy=True) if x.number == t.number)
        retry(study, frozen)
        reaped.append(t.number)
        if log:
            log(f"trial {t.number}: its worker {worker or '(unknown)'} is gone; failed and queued again")
    return reaped


def queue_grid(study: Any, plan: StudyPlan, log: Log | None = None) -> int:
    """Queue every grid point that has no live trial (never run, or only failed); returns how many."""
    if plan.space.sampler != "grid":
        return 0
    trials = study.get_trials(deepcopy=False)
    live = {t.user_attrs.get("grid_point") for t in trials if t.state in LIVE}
    failed = {t.user_attrs.get("grid_point") for t in trials if t.state == TrialState.FAIL}
    queued = 0
    for index, params in enumerate(plan.grid_params()):
        if index in live:
            continue
        study.enqueue_trial(params, user_attrs={"grid_point": index})
        queued += 1
        if index in failed and log:
            log(f"grid point {index} ({', '.join(params.values())}) failed before: queued again")
    return queued


def prepare_study(plan: StudyPlan, storage_url: str, lock: AskLock | None = None, log: Log | None = None) -> Any:
    """Create/load the study, fail dead workers' trials and queue the missing grid points."""
    study = create_or_load(plan, storage_url)
    lock = lock or AskLock(None)
    with lock:
        reap_dead_trials(study, log, local_storage=is_local_storage(storage_url) and lock.path is not None)
        queue_grid(study, plan, log)
    return study


def has_work(study: Any, plan: StudyPlan) -> bool:
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return True
    if plan.space.sampler == "grid":
        return False
    return sum(t.state in LIVE for t in trials) < plan.trials


def _is_surplus(trial: Any, plan: StudyPlan) -> bool:
    """True for a trial a race created beyond the grid or the budget (checked before it suggests)."""
    others = [t for t in trial.study.get_trials(deepcopy=False) if t.number != trial.number]
    if plan.space.sampler == "grid":
        point = trial.user_attrs.get("grid_point")
        if point is None:
            return True  # not from the queue: the queue was empty when it was asked
        return any(t.user_attrs.get("grid_point") == point
                   and (t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                        or (t.state == TrialState.RUNNING and t.number < trial.number)) for t in others)
    live = [t for t in others if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING)
            or (t.state == TrialState.RUNNING and t.number < trial.number)]
    return len(live) >= plan.trials


# --------------------------------------------------------------------------- one trial


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker process needs (picklable: workers are spawned)."""

    name: str
    storage_url: str
    db_url: str
    runs_dir: str
    device: str = "auto"
    loader_workers: int | None = None
    data_paths: Mapping[str, str] = field(default_factory=dict)
    lock_path: str | None = None
    torch_threads: int | None = None
    sampler_seed: int = 0
    tag: str = ""  # prefix of this worker's log lines
    gpus_per_run: int = 1  # > 1: each trial's run trains on that many processes (torchrun)


class _PruneHook:
    """Per-epoch callback for the runner: report the periodic metric, stop the run when pruned."""

    def __init__(self, trial: Any, key: str) -> None:
        self.trial, self.key = trial, key
        self.reported: set[int] = set()
        self.pruned_at: int | None = None

    def __call__(self, epoch: int, values: Mapping[str, Any]) -> None:
        extra = values.get("extra") or {}
        value = extra.get(self.key, values.get(self.key))
        if value is None:
            return
        self.trial.report(float(value), int(epoch))
        self.reported.add(int(epoch))
        if self.trial.should_prune():
            self.pruned_at = int(epoch)
            raise RunPruned(f"pruned by study {self.trial.study.study_name!r} trial {self.trial.number} "
                            f"after epoch {epoch} ({self.key} {100 * float(value):.1f})")


def runner_supports_epoch_hook() -> bool:
    """Whether ``run_job`` forwards a per-epoch callback to the runner (needed for real pruning)."""
    return "on_epoch" in inspect.signature(run_job).parameters


class TrialRunner:
    """Turns trials into runs for one worker: spec → hash → store → run_job → metrics."""

    def __init__(self, plan: StudyPlan, config: WorkerConfig, store: Any, lock: AskLock, log: Log) -> None:
        self.plan, self.config, self.store, self.lock, self.log = plan, config, store, lock, log
        self.owner = new_owner()
        self.live_pruning = plan.prune and runner_supports_epoch_hook()
        self.current: int | None = None  # number of the trial this worker works on

    def job(self, spec: Any, run_hash: str, label: str) -> Job:
        from pathlib import Path

        return Job(run_hash=run_hash, label=label, spec_json=spec.to_json(),
                   trick_versions=dict(trick_versions(spec.tricks)), db_url=self.store.url,
                   out_dir=str(Path(self.config.runs_dir) / run_hash[:12]), device=self.config.device,
                   num_workers=self.config.loader_workers, data_paths=dict(self.config.data_paths), progress=False,
                   gpus_per_run=self.config.gpus_per_run)

    def __call__(self, trial: Any) -> float:
        self.current = trial.number
        # Claim the trial (a re-queued one still names its dead worker) before letting the next
        # local worker reap and ask: the lock is held since before this trial was asked.
        trial.set_user_attr("worker", self.owner)
        self.lock.release()
        if _is_surplus(trial, self.plan):
            trial.set_user_attr("surplus", True)
            raise _Surplus(f"trial {trial.number} was created by a race between workers; nothing left for it")
        plan = self.plan
        point = plan.space.suggest(trial)
        spec = plan.point_spec(point)
        rhash = plan.point_hash(point)
        for key, value in point.attrs().items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("seed", spec.train.seed)
        trial.set_user_attr("run_hash", rhash)
        label = f"study {plan.name} #{trial.number}: {point.batch} {point.size}"
        self.store.ensure_run(rhash, spec.to_dict(), label)
        cached = self.store.statuses([rhash]).get(rhash) == "done"
        trial.set_user_attr("cached", cached)
        self.log(f"trial {trial.number}: P×K {point.batch}, {point.size} → run {rhash[:12]}"
                 + (" (cached)" if cached else ""))
        key = f"{plan.first_test}/{plan.metric}"
        hook = _PruneHook(trial, key) if plan.prune else None
        self._run(trial, self.job(spec, rhash, label), hook)
        metrics: dict[str, dict[str, float]] = {}
        for m in self.store.metrics([rhash]):
            if m.step is None:
                metrics.setdefault(m.test_set, {})[m.metric] = m.value
        trial.set_user_attr("metrics", metrics)
        if hook is not None:
            # Cached runs, and runners without the per-epoch hook: the stored curve, after the fact.
            for e in self.store.epochs(rhash):
                value = e.values.get(key)
                if value is not None and e.epoch not in hook.reported:
                    trial.report(float(value), e.epoch)
        if plan.first_test not in metrics or plan.metric not in metrics[plan.first_test]:
            raise RunFailed(f"run {rhash[:12]} has no final {key}")
        value = metrics[plan.first_test][plan.metric]
        shown = "  ".join(f"{t} R1 {100 * v.get('R1', float('nan')):.1f} mAP {100 * v.get('mAP', float('nan')):.1f}"
                          for t, v in metrics.items())
        self.log(f"trial {trial.number}: {shown}")
        return value

    def _run(self, trial: Any, job: Job, hook: _PruneHook | None) -> None:
        kwargs: dict[str, Any] = {}
        if hook is not None and self.live_pruning:
            kwargs["on_epoch"] = hook
        for _ in range(3):
            outcome = run_job(job, log=self.log, store=self.store, **kwargs)
            if hook is not None and hook.pruned_at is not None:
                raise optuna.TrialPruned(f"pruned after epoch {hook.pruned_at}")
            if outcome.status == "done":
                return
            if outcome.status == "failed":
                raise RunFailed(f"run {job.run_hash[:12]} failed: {outcome.error}")
            # Another process trains this run (a study or an ablation): wait, then use or take it over.
            takeover = wait_for_others(self.store, [job.run_hash], log=self.log)
            if job.run_hash not in takeover:
                status = self.store.statuses([job.run_hash]).get(job.run_hash)
                if status == "done":
                    return
        raise RunFailed(f"run {job.run_hash[:12]} could not be claimed; see `reidbench runs show {job.run_hash[:12]}`")


# --------------------------------------------------------------------------- workers


def run_worker(config: WorkerConfig, log: Log | None = None) -> int:
    """Work through the study's trials until none is left; returns how many this worker finished."""
    from reidbench.harness.store import Store

    _quiet_optuna()
    tag = f"[{config.tag}] " if config.tag else ""
    out = log or _stderr
    say: Log = (lambda line: out(tag + line)) if tag else out
    if config.torch_threads:
        import torch

        torch.set_num_threads(config.torch_threads)
    storage = open_storage(config.storage_url)
    summary = optuna.load_study(study_name=config.name, storage=storage)
    plan = plan_from_attrs(config.name, summary.user_attrs)
    done_before = len(summary.get_trials(deepcopy=False))
    study = optuna.load_study(
        study_name=config.name, storage=storage,
        sampler=make_sampler(plan.space, plan.trials, seed=config.sampler_seed + done_before),
        pruner=make_pruner(plan.prune, plan.base.schedule.max_epochs, plan.trials))
    store = Store(config.db_url)
    lock = AskLock(config.lock_path)
    runner = TrialRunner(plan, config, store, lock, say)
    local = is_local_storage(config.storage_url) and config.lock_path is not None
    finished = 0
    while True:
        lock.acquire()
        runner.current = None
        try:
            reap_dead_trials(study, say, local_storage=local)
            if not has_work(study, plan):
                break
            # The objective releases the lock as its first step, once its trial exists.
            study.optimize(runner, n_trials=1, catch=(RunFailed, _Surplus), gc_after_trial=False)
        finally:
            lock.release()
        if runner.current is not None:
            last = next(t for t in study.get_trials(deepcopy=False) if t.number == runner.current)
            if last.state == TrialState.FAIL and not last.user_attrs.get("surplus"):
                say(f"trial {last.number}: FAILED (recorded; run the study again to retry)")
            elif last.state == TrialState.PRUNED:
                say(f"trial {last.number}: pruned")
            finished += last.state in (TrialState.COMPLETE, TrialState.PRUNED)
    return finished


def _worker_main(config: WorkerConfig) -> None:
    """Entry point of a spawned worker process."""
    try:
        run_worker(config)
    except KeyboardInterrupt:
        sys.exit(130)


def run_workers(config: WorkerConfig, workers: int, log: Log | None = None) -> None:
    """``workers`` == 1: work in this process. More: spawn that many worker processes and wait."""
    if workers < 1:
        raise ValueError(f"--workers {workers} is not valid: an integer >= 1")
    if workers == 1:
        run_worker(config, log)
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold torch threads
    threads = config.torch_threads or max(1, (os.cpu_count() or 1) // workers)
    procs = []
    for index in range(workers):
        cfg = dataclasses.replace(config, tag=f"worker {index}", torch_threads=threads,
                                  sampler_seed=config.sampler_seed + 1000 * index)
        proc = ctx.Process(target=_worker_main, args=(cfg,), name=f"reidbench-study-{index}")
        proc.start()
        procs.append(proc)
        time.sleep(0.1)
    try:
        for proc in procs:
            proc.join()
    except KeyboardInterrupt:
        for proc in procs:
            proc.join(timeout=30)  # children got the same SIGINT: they release their runs and exit
        raise
    bad = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode != 0]
    if bad:
        raise RuntimeError("study worker(s) " + ", ".join(f"{i} (exit code {c})" for i, c in bad) + " failed")
