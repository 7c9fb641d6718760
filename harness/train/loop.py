"""The training loop. It fits on one screen; checkpointing, evaluation, logging and timing are hooks.

Reproducibility contract: every epoch starts from ``seed_epoch(seed, epoch)`` (torch, numpy and
Python RNGs) and ``set_epoch(epoch)`` on the batch sampler, so an epoch's batches and
augmentations depend only on (seed, epoch) and on the weights it starts from. A run resumed from an
epoch-boundary checkpoint therefore ends with the same weights as an uninterrupted one (CPU).
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import nn


@dataclass
class TrainComponents:
    """Everything one training step touches. Built by the runner from a spec."""

    model: nn.Module
    objective: nn.Module  # (outputs, labels) -> dict of weighted loss terms
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: Iterable[Any]
    device: torch.device
    center_optimizer: torch.optim.Optimizer | None = None
    center_weight: float = 0.0
    amp_dtype: torch.dtype | None = None  # autocast dtype on CUDA; None = float32
    scaler: Any = None  # torch.amp.GradScaler for fp16
    channels_last: bool = False
    progress: bool = False


@dataclass
class EpochStats:
    epoch: int
    losses: dict[str, float]
    lr: float
    images: int
    seconds: float
    data_wait_seconds: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def data_wait_fraction(self) -> float:
        return self.data_wait_seconds / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "losses": dict(self.losses),
            "lr": self.lr,
            "images": self.images,
            "seconds": self.seconds,
            "data_wait_seconds": self.data_wait_seconds,
            "images_per_s": self.images_per_s,
            "extra": dict(self.extra),
        }


class Hook(Protocol):
    def on_epoch_end(self, components: TrainComponents, stats: EpochStats) -> None: ...


def seed_epoch(seed: int, epoch: int) -> None:
    """Seed every global RNG from (seed, epoch) so an epoch replays identically after a resume."""
    derived = (seed * 1_000_003 + epoch) % (2**31 - 1)
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)


def _timed(loader: Iterable[Any]) -> Iterator[tuple[Any, float]]:
    """Yield (batch, seconds spent waiting for it)."""
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        yield batch, time.perf_counter() - t0


def train_one_epoch(c: TrainComponents, epoch: int, max_epochs: int) -> EpochStats:
    from tqdm import tqdm

    c.model.train()
    c.objective.train()
    sums: dict[str, float] = {}
    steps = images = 0
    wait = 0.0
    lr = c.optimizer.param_groups[0]["lr"]
    total = len(c.loader) if hasattr(c.loader, "__len__") else None
    bar = tqdm(total=total, desc=f"epoch {epoch}/{max_epochs}", disable=not c.progress, leave=False, unit="batch")
    start = time.perf_counter()
    for (imgs, pids, _camids, _idx), waited in _timed(c.loader):
        wait += waited
        imgs = imgs.to(c.device, non_blocking=True)
        if c.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        pids = pids.to(c.device, non_blocking=True)
        autocast = (
            torch.autocast(device_type=c.device.type, dtype=c.amp_dtype)
            if c.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            outputs = c.model(imgs)
        # Losses in float32: the triplet distances and center terms are sensitive to half precision.
        outputs = {k: v.float() for k, v in outputs.items()}
        terms = c.objective(outputs, pids)
        loss = torch.stack(list(terms.values())).sum()
        c.optimizer.zero_grad(set_to_none=True)
        if c.center_optimizer is not None:
            c.center_optimizer.zero_grad(set_to_none=True)
        if c.scaler is not None:
            c.scaler.scale(loss).backward()
            c.scaler.step(c.optimizer)
            if c.center_optimizer is not None:
                c.scaler.unscale_(c.center_optimizer)
                _center_step(c)
            c.scaler.update()
        else:
            loss.backward()
            c.optimizer.step()
            if c.center_optimizer is not None:
                _center_step(c)
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        steps += 1
        images += imgs.shape[0]
        bar.update(1)
        if c.progress:
            bar.set_postfix(loss=f"{sum(sums.values()) / steps:.3f}")
    bar.close()
    seconds = time.perf_counter() - start
    if steps == 0:
        raise ValueError("the training loader produced no batch: fewer identities than ids_per_batch?")
    return EpochStats(epoch, {k: v / steps for k, v in sums.items()}, lr, images, seconds, wait)


def _center_step(c: TrainComponents) -> None:
    from reidbench.models.losses import center_sgd_step

    center_sgd_step(c.objective.center_loss, c.center_optimizer, c.center_weight)


def run_training(
    c: TrainComponents, start_epoch: int, max_epochs: int, seed: int, hooks: Sequence[Hook] = ()
) -> list[EpochStats]:
    """Train epochs ``start_epoch+1 .. max_epochs``; the scheduler steps once per epoch, at its end."""
    history: list[EpochStats] = []
    for epoch in range(start_epoch + 1, max_epochs + 1):
        seed_epoch(seed, epoch)
        sampler = getattr(c.loader, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        stats = train_one_epoch(c, epoch, max_epochs)
        c.scheduler.step()
        history.append(stats)
        for hook in hooks:
            hook.on_epoch_end(c, stats)
    return history
