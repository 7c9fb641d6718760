"""One run on G processes (``--gpus-per-run G``): the launcher side, around torchrun.

The process that owns the run — ``run_job`` (which claimed it in the store and keeps its
heartbeat) or ``reidbench train`` — stays its owner while it trains elsewhere:

1. it checks the run folder and returns a finished run's result at once (as ``runner.execute``);
2. it writes the job (``ddp-job.pkl``) into the run folder and starts
   ``python -m torch.distributed.run --standalone --nproc-per-node G -m
   reidbench.harness.execution.ddp_rank <job file>``: G ranks on this machine, NCCL on CUDA
   (rank r on the r-th visible GPU), gloo on CPU;
3. it waits; per-epoch statistics that rank 0 appends to ``ddp-epochs.jsonl`` are handed to the
   caller's ``on_epoch`` (a study's pruner), and an exception from it stops the ranks;
4. when torchrun exits it reads rank 0's ``result.json`` and returns it; the caller records it.

So the store is opened by the owner only, never by a rank; rank 0 alone writes the run folder
(log, checkpoints, features, result). A failed rank leaves its first error line in
``ddp-error-rank<r>.txt``; the launcher raises :class:`DistributedRunFailed` with it. Killed, the
whole group resumes from rank 0's last checkpoint when run again (with any G: checkpoints do not
depend on it).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

RANK_MODULE = "reidbench.harness.execution.ddp_rank"
JOB_FILE = "ddp-job.pkl"
EPOCHS_FILE = "ddp-epochs.jsonl"
ERROR_PREFIX = "ddp-error-rank"
LAUNCHER_PID_ENV = "REIDBENCH_LAUNCHER_PID"


class DistributedRunFailed(RuntimeError):
    """A rank of a distributed run failed (its error line is in the message); the run can be resumed."""


@dataclass(frozen=True)
class RankJob:
    """What every rank needs (pickled into the run folder): the spec and the runtime options that travel."""

    spec_json: str
    run_hash: str
    out_dir: str
    device: str  # cuda | cpu (each rank picks cuda:LOCAL_RANK)
    trick_versions: Mapping[str, int] | None = None
    num_workers: int | None = None
    data_paths: Mapping[str, str] = field(default_factory=dict)
    progress: bool | None = None
    variants: tuple = ()
    legacy_hashes: tuple[str, ...] = ()
    relay_epochs: bool = False  # rank 0 appends each epoch's statistics to EPOCHS_FILE


def rank_device_type(device: str, gpus_per_run: int, visible_gpus: Sequence[str] = ()) -> str:
    """``cuda`` or ``cpu`` for every rank of a G-process run; a clear error when it cannot be."""
    if gpus_per_run < 2:
        raise ValueError(f"--gpus-per-run {gpus_per_run}: a distributed run needs 2 or more processes")
    import torch

    if device.startswith("cuda:"):
        raise ValueError(f"--device {device} names one GPU; with --gpus-per-run {gpus_per_run} rank r uses the r-th "
                         "visible GPU: use --device cuda (and --gpus or CUDA_VISIBLE_DEVICES to choose them)")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    count = len(visible_gpus) if visible_gpus else torch.cuda.device_count()
    if count < gpus_per_run:
        raise ValueError(f"--gpus-per-run {gpus_per_run} needs {gpus_per_run} GPUs; {count} visible")
    return "cuda"


def torchrun_command(job_file: Path, gpus_per_run: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(gpus_per_run),
            "-m", RANK_MODULE, str(job_file)]


def launch_environment(gpus_per_run: int, visible_gpus: Sequence[str] = (),
                       base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    if visible_gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in visible_gpus[:gpus_per_run])
    # torchrun would set 1 thread per rank; CPU ranks share the cores instead (a user's setting wins).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // gpus_per_run)))
    env[LAUNCHER_PID_ENV] = str(os.getpid())
    return env


class _EpochRelay:
    """Reads the lines rank 0 appends to EPOCHS_FILE since the launch and hands them to ``on_epoch``."""

    def __init__(self, path: Path, on_epoch: Callable[[int, dict[str, Any]], None] | None) -> None:
        self.path, self.on_epoch = path, on_epoch
        self.offset = path.stat().st_size if path.exists() else 0

    def poll(self) -> None:
        if self.on_epoch is None or not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # complete lines only: rank 0 may be writing the next one
        self.offset += end
        for line in data[:end].splitlines():
            if line.strip():
                record = json.loads(line)
                self.on_epoch(int(record["epoch"]), record["stats"])


def _stop(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM torchrun (it stops its ranks), then SIGKILL if it does not end in ``grace_s``."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _first_error(out_dir: Path) -> str | None:
    files = sorted(out_dir.glob(f"{ERROR_PREFIX}*.txt"), key=lambda p: p.stat().st_mtime)
    for path in files:  # the earliest failure is the cause; the others were stopped because of it
        text = path.read_text().strip()
        if text:
            return f"rank {path.stem.removeprefix(ERROR_PREFIX)}: {text.splitlines()[0]}"
    return None


def execute_distributed(spec: Any, runtime: Any, gpus_per_run: int, trick_versions: Mapping[str, int] | None = None,
                        expected_hash: str | None = None, visible_gpus: Sequence[str] = ()) -> Any:
    """``runner.execute`` for a run trained by ``gpus_per_run`` processes; returns rank 0's RunResult."""
    from reidbench.harness.train.distributed import check_batch_split
    from reidbench.harness.train.runner import RESULT_NAME, _check_run_folder, identify, load_cached_result

    check_batch_split(spec.data.ids_per_batch, gpus_per_run)
    device_type = rank_device_type(runtime.device, gpus_per_run, visible_gpus)
    rhash, _ = identify(spec, runtime.data_paths, trick_versions)
    if expected_hash is not None and expected_hash != rhash:
        raise ValueError(f"run {expected_hash[:12]}: its training data changed since it was planned (now "
                         f"{rhash[:12]}); run the command again")
    out_dir = Path(runtime.out_dir)
    log = runtime.log or (lambda line: print(line, file=sys.stderr, flush=True))
    cached = load_cached_result(out_dir, rhash)
    if cached is not None:
        log(f"run {rhash[:12]}: already done, results from {out_dir / RESULT_NAME}")
        return cached
    _check_run_folder(out_dir, spec, rhash, runtime.legacy_hashes)
    for stale in out_dir.glob(f"{ERROR_PREFIX}*.txt"):
        stale.unlink()
    job = RankJob(spec_json=spec.to_json(), run_hash=rhash, out_dir=str(out_dir), device=device_type,
                  trick_versions=dict(trick_versions) if trick_versions is not None else None,
                  num_workers=runtime.num_workers, data_paths=dict(runtime.data_paths), progress=runtime.progress,
                  variants=tuple(runtime.variants), legacy_hashes=tuple(runtime.legacy_hashes),
                  relay_epochs=runtime.on_epoch is not None)
    job_file = out_dir / JOB_FILE
    tmp = job_file.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(job))
    os.replace(tmp, job_file)
    relay = _EpochRelay(out_dir / EPOCHS_FILE, runtime.on_epoch)
    proc = subprocess.Popen(torchrun_command(job_file, gpus_per_run),
                            env=launch_environment(gpus_per_run, visible_gpus if device_type == "cuda" else ()))
    try:
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                relay.poll()
        relay.poll()
    except BaseException:  # the caller's on_epoch stopped the run (a pruner), or Ctrl-C
        _stop(proc)
        raise
    if code != 0:
        cause = _first_error(out_dir) or f"torchrun exit code {code}"
        raise DistributedRunFailed(f"run {rhash[:12]} on {gpus_per_run} processes failed: {cause}")
    result = load_cached_result(out_dir, rhash)
    if result is None:
        raise DistributedRunFailed(f"run {rhash[:12]}: the {gpus_per_run} processes ended without {RESULT_NAME}")
    return result
