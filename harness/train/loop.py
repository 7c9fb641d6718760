"""The training loop. It fits on one screen; checkpointing, evaluation, logging and timing are hooks.

Reproducibility contract: every epoch starts from ``seed_epoch(seed, epoch)`` (torch, numpy and
Python RNGs) and ``set_epoch(epoch)`` on the batch sampler, so an epoch's batches and
augmentations depend only on (seed, epoch) and on the weights it starts from; which parameters
an epoch trains depends only on its stage. A run resumed from an epoch-boundary checkpoint
therefore ends with the same weights as an uninterrupted one (CPU), mid-stage included.

Hooks are objects with any of ``before_epoch(components, epoch)``, ``after_step(components,
step, losses)`` and ``on_epoch_end(components, stats)``. Loss terms and samplers that need to
know where training is read ``components.train_progress`` (epoch, step, fraction of the run).

Batches are ``(images, pids, camids, indices)``, or with part masks a fifth element that is passed
on as ``model(images, masks=masks)`` (architectures that pool with masks, ``spreid``).
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from reidbench.models.terms import TrainProgress


@dataclass(frozen=True)
class StagePlan:
    """Stages as (name, first epoch, last epoch, frozen parameter names, LR scale), covering the run."""

    stages: tuple[tuple[str, int, int, frozenset[str], float], ...]

    def index(self, epoch: int) -> int:
        for i, (_, first, last, _, _) in enumerate(self.stages):
            if first <= epoch <= last:
                return i
        return len(self.stages) - 1

    def name(self, epoch: int) -> str:
        return self.stages[self.index(epoch)][0]

    def frozen(self, epoch: int) -> frozenset[str]:
        return self.stages[self.index(epoch)][3]

    def lr_scale(self, epoch: int) -> float:
        return self.stages[self.index(epoch)][4]


@dataclass
class TrainComponents:
    """Everything one training step touches. Built by ``train.build`` from a spec."""

    model: nn.Module
    objective: nn.Module  # (outputs, labels) -> dict of weighted loss terms
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: Iterable[Any]
    device: torch.device
    own_optimizers: list[Any] = field(default_factory=list)  # loss terms' private optimisers (OwnOptimizer)
    amp_dtype: torch.dtype | None = None  # autocast dtype on CUDA; None = float32
    scaler: Any = None  # torch.amp.GradScaler for fp16
    channels_last: bool = False
    progress: bool = False  # show a progress bar
    grad_clip_norm: float | None = None
    stages: StagePlan | None = None
    train_progress: TrainProgress = field(default_factory=TrainProgress)
    _trainable: dict[str, bool] = field(default_factory=dict, repr=False)


@dataclass
class EpochStats:
    epoch: int
    losses: dict[str, float]
    lr: float
    images: int
    seconds: float
    data_wait_seconds: float
    extra: dict[str, float] = field(default_factory=dict)
    stage: str | None = None

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def data_wait_fraction(self) -> float:
        return self.data_wait_seconds / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {"epoch": self.epoch, "losses": dict(self.losses), "lr": self.lr, "images": self.images,
               "seconds": self.seconds, "data_wait_seconds": self.data_wait_seconds,
               "images_per_s": self.images_per_s, "extra": dict(self.extra)}
        if self.stage is not None:
            out["stage"] = self.stage
        return out


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


def apply_stage(c: TrainComponents, epoch: int) -> None:
    """Freeze this epoch's frozen parameters (no update) and put their modules' BatchNorm in eval mode.

    Parameters frozen by construction (e.g. the BNNeck bias) stay frozen in every stage.
    """
    if c.stages is None:
        return
    if not c._trainable:
        c._trainable = {n: p.requires_grad for n, p in c.model.named_parameters()}
    frozen = c.stages.frozen(epoch)
    for name, parameter in c.model.named_parameters():
        parameter.requires_grad_(c._trainable[name] and name not in frozen)
    if not frozen:
        return
    for name, module in c.model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            own = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
            if own and all(p in frozen for p in own):
                module.eval()  # frozen = no update, running statistics included


def _step(c: TrainComponents, loss: torch.Tensor) -> None:
    """Backward and every optimiser step; under fp16 each step goes through the scaler's inf check."""
    from reidbench.harness.train.optim import clip_gradients

    c.optimizer.zero_grad(set_to_none=True)
    for own in c.own_optimizers:
        own.optimizer.zero_grad(set_to_none=True)
    if c.scaler is not None:
        c.scaler.scale(loss).backward()
    else:
        loss.backward()
    if c.grad_clip_norm is not None:
        params = [p for g in c.optimizer.param_groups for p in g["params"] if p.grad is not None]
        clip_gradients(params, c.grad_clip_norm, scaler=c.scaler, optimizer=c.optimizer)
    if c.scaler is not None:
        c.scaler.step(c.optimizer)
        for own in c.own_optimizers:
            c.scaler.unscale_(own.optimizer)
            if own.before_step is not None:
                own.before_step()
            c.scaler.step(own.optimizer)
        c.scaler.update()
    else:
        c.optimizer.step()
        for own in c.own_optimizers:
            if own.before_step is not None:
                own.before_step()
            own.optimizer.step()


def train_one_epoch(c: TrainComponents, epoch: int, max_epochs: int, hooks: Sequence[Any] = ()) -> EpochStats:
    from tqdm import tqdm

    c.model.train()
    c.objective.train()
    apply_stage(c, epoch)
    sums: dict[str, float] = {}
    steps = images = 0
    wait = 0.0
    lr = c.optimizer.param_groups[0]["lr"]
    total = len(c.loader) if hasattr(c.loader, "__len__") else None
    c.train_progress.epoch, c.train_progress.step = epoch, 0
    c.train_progress.max_epochs, c.train_progress.steps_per_epoch = max_epochs, total or 0
    bar = tqdm(total=total, desc=f"epoch {epoch}/{max_epochs}", disable=not c.progress, leave=False, unit="batch")
    start = time.perf_counter()
    for batch, waited in _timed(c.loader):
        imgs, pids = batch[0], batch[1]
        masks = batch[4] if len(batch) > 4 else None
        wait += waited
        imgs = imgs.to(c.device, non_blocking=True)
        if c.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        pids = pids.to(c.device, non_blocking=True)
        autocast = (torch.autocast(device_type=c.device.type, dtype=c.amp_dtype) if c.amp_dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            if masks is None:
                outputs = c.model(imgs)
            else:
                outputs = c.model(imgs, masks=masks.to(c.device, non_blocking=True))
        # Losses in float32: the triplet distances and center terms are sensitive to half precision.
        outputs = {k: v.float() for k, v in outputs.items()}
        terms = c.objective(outputs, pids)
        _step(c, torch.stack(list(terms.values())).sum())
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        steps += 1
        images += imgs.shape[0]
        c.train_progress.step = steps
        for hook in hooks:
            if hasattr(hook, "after_step"):
                hook.after_step(c, steps, terms)
        bar.update(1)
        if c.progress:
            bar.set_postfix(loss=f"{sum(sums.values()) / steps:.3f}")
    bar.close()
    seconds = time.perf_counter() - start
    if steps == 0:
        raise ValueError("the training loader produced no batch: fewer identities than ids_per_batch?")
    stage = c.stages.name(epoch) if c.stages is not None and len(c.stages.stages) > 1 else None
    return EpochStats(epoch, {k: v / steps for k, v in sums.items()}, lr, images, seconds, wait, stage=stage)


def run_training(
    c: TrainComponents, start_epoch: int, max_epochs: int, seed: int, hooks: Sequence[Any] = ()
) -> list[EpochStats]:
    """Train epochs ``start_epoch+1 .. max_epochs``; the scheduler steps once per epoch, at its end."""
    history: list[EpochStats] = []
    for epoch in range(start_epoch + 1, max_epochs + 1):
        seed_epoch(seed, epoch)
        sampler = getattr(c.loader, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        for hook in hooks:
            if hasattr(hook, "before_epoch"):
                hook.before_epoch(c, epoch)
        stats = train_one_epoch(c, epoch, max_epochs, hooks)
        c.scheduler.step()
        history.append(stats)
        for hook in hooks:
            if hasattr(hook, "on_epoch_end"):
                hook.on_epoch_end(c, stats)
    return history

