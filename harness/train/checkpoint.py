"""Checkpoints: state_dicts + spec JSON + RNG state, written atomically, read with weights_only=True.

Never a pickled module: a checkpoint loads into code of any later version that builds the same
architecture, and loading one cannot execute code.

The layout of a training checkpoint (``training_state``) and its counterpart (``restore_training``,
``resume``) live side by side here; ``hooks.CheckpointHook`` writes it from the training loop.
Keys: ``run_hash``, ``spec_json``, ``epoch`` (the last finished epoch), ``stage`` (its stage name,
"" without stages), ``num_classes``, ``model``, ``objective``, ``optimizer``, ``scheduler``,
``rng``, ``history_json`` (the per-epoch records so far), ``optimizer_steps`` (the run's optimizer
steps so far: per-step logs continue their count; absent from checkpoints written before it,
then estimated), ``own_optimizer_<i>`` for each loss
term's private optimiser (checkpoints written before loss terms existed call the one centre
optimiser ``center_optimizer``) and ``scaler`` under fp16.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Sequence

import torch

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` via a temporary file + rename, so a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which file, not a traceback
        raise ValueError(f"{path}: not a readable reidbench checkpoint ({type(exc).__name__}: {exc})") from None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(c: Any, epoch: int, history: Sequence[dict[str, Any]] = (), *, run_hash: str = "",
                   spec_json: str = "", num_classes: int = 0) -> dict[str, Any]:
    """Everything needed to continue training ``c`` (``loop.TrainComponents``) after ``epoch``.

    ``run_hash``, ``spec_json`` and ``num_classes`` identify the run (``resume`` checks the hash;
    ``runner.evaluate_stored`` rebuilds the model from the spec and class count); they may stay
    empty outside reidbench's runner.
    """
    state = {
        "run_hash": run_hash,
        "spec_json": spec_json,
        "epoch": epoch,
        "stage": c.stages.name(epoch) if c.stages is not None else "",
        "num_classes": int(num_classes),
        "model": c.model.state_dict(),
        "objective": c.objective.state_dict(),
        "optimizer": c.optimizer.state_dict(),
        "scheduler": c.scheduler.state_dict(),
        "rng": rng_state(),
        "history_json": json.dumps(list(history)),
        "optimizer_steps": int(getattr(getattr(c, "train_progress", None), "optimizer_steps", 0)),
    }
    for i, own in enumerate(c.own_optimizers):
        state[f"own_optimizer_{i}"] = own.optimizer.state_dict()
    if c.scaler is not None:
        state["scaler"] = c.scaler.state_dict()
    return state


def restore_training(c: Any, state: dict[str, Any]) -> None:
    """Load a ``training_state`` into freshly built components ``c`` (and the global RNG)."""
    c.model.load_state_dict(state["model"])
    c.objective.load_state_dict(state["objective"])
    c.optimizer.load_state_dict(state["optimizer"])
    c.scheduler.load_state_dict(state["scheduler"])
    for i, own in enumerate(c.own_optimizers):
        key = f"own_optimizer_{i}" if f"own_optimizer_{i}" in state else "center_optimizer"
        own.optimizer.load_state_dict(state[key])
    if c.scaler is not None and "scaler" in state:
        c.scaler.load_state_dict(state["scaler"])
    progress = getattr(c, "train_progress", None)
    if progress is not None:  # older checkpoints: whole epochs of the loader's current length
        steps = state.get("optimizer_steps")
        progress.optimizer_steps = int(steps) if steps is not None else int(state["epoch"]) * len(c.loader)
    restore_rng_state(state.get("rng", {}))


@dataclass(frozen=True)
class ResumePoint:
    """Where a checkpoint left training: after ``epoch`` (in ``stage``), with the records of epochs 1..epoch."""

    epoch: int
    stage: str
    history: list[dict[str, Any]]


def resume(path: str | Path, c: Any, run_hashes: Collection[str] | None = None) -> ResumePoint | None:
    """Restore ``c`` from the checkpoint at ``path``; None (``c`` untouched) when there is none.

    ``run_hashes``: the hashes the checkpoint may carry (a run's hash and its aliases); a checkpoint
    of another run is an error. None = no check.
    """
    path = Path(path)
    if not path.exists():
        return None
    state = load_checkpoint(path)
    if run_hashes is not None and state.get("run_hash") not in run_hashes:
        raise ValueError(f"{path}: checkpoint of another run ({str(state.get('run_hash'))[:12]})")
    restore_training(c, state)
    return ResumePoint(int(state["epoch"]), str(state.get("stage") or ""), json.loads(state.get("history_json", "[]")))
