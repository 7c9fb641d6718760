"""One rank of a distributed run: ``python -m reidbench.harness.execution.ddp_rank JOB_FILE``, started by torchrun.

Reads the job the launcher wrote (``torchrun.RankJob``), joins the process group (NCCL on
``cuda:LOCAL_RANK``, gloo on CPU) and calls ``runner.execute`` as this rank. A failure leaves its
first line in ``ddp-error-rank<r>.txt`` for the launcher, then re-raises (torchrun stops the
other ranks). A rank whose launcher or torchrun agent died stops too (at once on Linux), so no
orphan keeps writing to a run folder that a new owner resumes.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable


def _die_with_parent() -> None:
    """Linux: the kernel kills this rank the moment torchrun's agent dies (SIGKILLed with the launcher).

    torchrun starts every rank in a session of its own, so killing the launcher's process group
    does not reach the ranks; without this they would train on, orphaned, into a folder a new
    owner is resuming.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the agent died before the call
        os._exit(1)


def _watch_launcher(pid: int, every_s: float = 0.5) -> None:
    """Stop when the launcher (the run's owner, holding its claim) is gone, even if the agent survived it."""

    def watch() -> None:
        while True:
            time.sleep(every_s)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)  # the owner is gone: its claim will be taken over and resumed
            except PermissionError:
                return

    if pid > 0:
        threading.Thread(target=watch, daemon=True, name="launcher-watch").start()


def _epoch_writer(path: Path) -> Callable[[int, dict[str, Any]], None]:
    def write(epoch: int, stats: dict[str, Any]) -> None:
        with open(path, "a") as fh:
            fh.write(json.dumps({"epoch": epoch, "stats": stats}) + "\n")

    return write


def main(argv: list[str]) -> None:
    from reidbench.harness.execution.torchrun import EPOCHS_FILE, ERROR_PREFIX, LAUNCHER_PID_ENV

    if len(argv) != 1:
        raise SystemExit("usage: python -m reidbench.harness.execution.ddp_rank JOB_FILE (started by torchrun)")
    job = pickle.loads(Path(argv[0]).read_bytes())
    out_dir = Path(job.out_dir)
    _die_with_parent()
    _watch_launcher(int(os.environ.get(LAUNCHER_PID_ENV, "0") or 0))
    rank = int(os.environ.get("RANK", "0"))
    try:
        import torch

        from reidbench.harness.spec import spec_from_json
        from reidbench.harness.train import distributed
        from reidbench.harness.train.runner import RuntimeOptions, execute

        ctx = distributed.context_from_env("nccl" if job.device == "cuda" else "gloo")
        device = torch.device(f"cuda:{ctx.local_rank}" if job.device == "cuda" else "cpu")
        distributed.init_process_group(ctx, device)
        try:
            runtime = RuntimeOptions(
                out_dir=out_dir, device=str(device), num_workers=job.num_workers, data_paths=dict(job.data_paths),
                progress=job.progress, variants=tuple(job.variants), legacy_hashes=tuple(job.legacy_hashes),
                on_epoch=_epoch_writer(out_dir / EPOCHS_FILE) if job.relay_epochs and ctx.is_main else None,
                distributed=ctx,
            )
            execute(spec_from_json(job.spec_json), runtime, job.trick_versions, expected_hash=job.run_hash)
        finally:
            distributed.destroy_process_group()
    except BaseException as exc:
        line = f"{type(exc).__name__}: {exc}".splitlines()[0]
        try:
            (out_dir / f"{ERROR_PREFIX}{rank}.txt").write_text(line + "\n")
        except OSError:
            pass
        raise


if __name__ == "__main__":
    main(sys.argv[1:])
