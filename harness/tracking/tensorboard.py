"""TensorBoard logs of one run, written into its run folder while it trains.

``tensorboard --logdir runs/`` then shows every run (named by its folder, the short hash) with the
scalars of ``tracking.scalars``: each epoch's loss terms, LR, throughput and data-wait fraction,
the periodic evaluation, and the final metrics of every test set and evaluation variant. A text
entry ``run`` holds the hash, tricks, data and weights provenance.

An evaluation added later to a stored run (``reidbench evaluate``, ``ablate --eval``) is appended
to the same folder by ``log_later_evaluations`` at the run's last epoch, when the run already has
event files (a run trained without TensorBoard gets none afterwards).

The learning rate of every optimizer step (the schedule that really ran: a warmup ramp inside
the first epoch, a milestone between two steps in step granularity) is the scalar ``lr_step`` at
global step = the optimizer step of the run, 1-based (``train_progress.optimizer_steps``; a P×K
epoch's length may vary, so it is the count, not ``(epoch - 1) * steps_per_epoch + step``).
It lives in the subfolder ``steps/`` of the run folder (TensorBoard shows it as the run
``<folder>/steps``), because TensorBoard purges a resumed run by step number across all the tags
of one folder, and epochs and optimizer steps are different numbers.

A resumed run opens its writers with ``purge_step`` = the first epoch it trains again (``steps/``:
its first optimizer step, counted on from the checkpoint): TensorBoard then drops what an interrupted attempt had logged
from there on, so no epoch or step appears twice (the killed attempt may have trained past its
last checkpoint). Each epoch is flushed at once, so a live run and a killed one both show what
they trained.

Needs the ``tensorboard`` package (``pip install 'reidbench[tensorboard]'``); without it the
runner logs one line and trains without TensorBoard logs.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from reidbench.harness.tracking.scalars import epoch_scalars, final_scalars

INSTALL_HINT = "pip install 'reidbench[tensorboard]'"
STEPS_FOLDER = "steps"  # the per-optimizer-step scalars (lr_step), beside the per-epoch ones


def tensorboard_available() -> bool:
    """True when torch.utils.tensorboard can write (it needs the tensorboard package)."""
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardHook:
    """Training-loop hook (``after_step``, ``on_epoch_end``) plus ``log_final`` and ``close``; see the module doc."""

    def __init__(self, log_dir: Path, first_epoch: int, run_text: str | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir, self.first_epoch = Path(log_dir), first_epoch
        # purge_step: on resume, events of this epoch and later from an interrupted attempt are discarded.
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=first_epoch)
        self.step_writer: Any = None  # opened at the first step, when the steps per epoch are known
        if run_text:
            self.writer.add_text("run", run_text, global_step=first_epoch)
            self.writer.flush()

    def after_step(self, c: Any, step: int, losses: Any) -> None:
        """``lr_step``: the LR this optimizer step trained with (the first parameter group's, as ``lr``)."""
        global_step = c.train_progress.optimizer_steps  # this step's number in the run, 1-based
        if self.step_writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: on resume, the steps an interrupted attempt logged from here on are discarded.
            self.step_writer = SummaryWriter(log_dir=str(self.log_dir / STEPS_FOLDER), purge_step=global_step)
        self.step_writer.add_scalar("lr_step", c.optimizer.param_groups[0]["lr"], global_step=global_step)

    def on_epoch_end(self, c: Any, stats: Any) -> None:
        from reidbench.harness.store.results import flatten_epoch

        self.log_epoch(stats.epoch, flatten_epoch(stats.to_dict()))
        if self.step_writer is not None:
            self.step_writer.flush()

    def log_epoch(self, epoch: int, values: Mapping[str, Any]) -> None:
        for tag, value in epoch_scalars(values).items():
            self.writer.add_scalar(tag, value, global_step=epoch)
        self.writer.flush()

    def log_final(self, step: int, evaluations: Iterable[Mapping[str, Any]]) -> None:
        for tag, value in final_scalars(evaluations).items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        if self.step_writer is not None:
            self.step_writer.close()


def log_later_evaluations(run_dir: Path, step: int, evaluations: Iterable[Mapping[str, Any]]) -> bool:
    """Append the final scalars of ``evaluations`` to the TensorBoard logs in ``run_dir``; False (and
    nothing written) when the folder holds no event file or the package is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not any(run_dir.glob("events.out.tfevents.*")) or not tensorboard_available():
        return False
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run_dir))  # no purge_step: the training's events stay
    try:
        for tag, value in final_scalars(evaluations).items():
            writer.add_scalar(tag, value, global_step=step)
    finally:
        writer.close()
    return True


def run_text(run_hash: str, spec: Mapping[str, Any], provenance: Mapping[str, Any],
             model_info: Mapping[str, Any]) -> str:
    """Markdown shown under the run's TEXT tab: what the numbers are (hash, tricks, data, weights)."""
    tricks = ", ".join(spec.get("tricks") or ()) or "none"
    data = ", ".join(f"{name} ({'synthetic' if (p or {}).get('synthetic') else 'real'})"
                     for name, p in provenance.items()) or "unknown"
    weights = model_info.get("pretrained_source") or "none (trained from scratch)"
    schedule = spec.get("schedule") or {}
    epochs = f"{schedule.get('max_epochs')} epochs"
    if spec.get("full_epochs") and schedule.get("max_epochs", 0) < spec["full_epochs"]:
        epochs += f" (shortened from {spec['full_epochs']})"
    lines = [f"run {run_hash}", f"profile {spec.get('profile')}; tricks: {tricks}", f"data: {data}",
             f"backbone {(spec.get('model') or {}).get('backbone')}, ImageNet weights: {weights}", epochs,
             "spec: " + json.dumps(spec, sort_keys=True)]
    return "  \n".join(lines)
