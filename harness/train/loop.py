"""The training loop. It fits on one screen; checkpointing, evaluation, logging and timing are hooks.

Reproducibility contract: every epoch starts from ``seed_epoch(seed, epoch)`` (torch, numpy and
Python RNGs) and ``set_epoch(epoch)`` on the batch sampler, so an epoch's batches and
augmentations depend only on (seed, epoch) and on the weights it starts from; which parameters
a step trains, with which loss terms and at which LR, depends only on (epoch, step): its stage and
schedule, changing once per epoch or, with ``schedule.granularity: step`` (``c.granularity``), at
the step (``StagePlan``, ``build.build_lr_scheduler``; the scheduler then steps after every
optimizer step). A run resumed from an
epoch-boundary checkpoint therefore ends with the same weights as an uninterrupted one (CPU),
mid-stage included.

One step's forward — the model under autocast, its outputs in float32, the objective — is one
module, :class:`TrainForward`, so a distributed run wraps it whole in DDP (``components.step_forward``,
see ``train/distributed.py``); a single-process run calls it as it is.

Hooks are objects with any of ``before_epoch(components, epoch)``, ``after_step(components,
step, losses)`` and ``on_epoch_end(components, stats)``; checkpointing, periodic evaluation and the
history with its log line are in ``train/hooks.py``, TensorBoard in ``tracking/tensorboard.py``. Loss terms and samplers that need to
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
    """Stages as (name, first epoch, last epoch, frozen parameter names, LR scale), covering the run.

    ``losses``: per stage, the labels of the loss terms it trains with (None: all); empty = all everywhere.
    ``warm_frozen`` are also frozen while training is less than ``warm_epochs`` epochs in (a
    fractional count, compared step by step: fast-reid's freeze-backbone warm-up; see
    ``frozen_at``).

    ``starts`` (step granularity, ``schedule.granularity: step``): the epochs elapsed, fractional,
    at which each stage begins; stage i then trains the steps with ``starts[i] <= x <
    starts[i + 1]``, x = (epoch - 1) + step / steps_per_epoch (harness/train/schedules.py), and
    (first, last) are only the epochs it touches. Empty: epoch granularity, whole-epoch stages.
    """

    stages: tuple[tuple[str, int, int, frozenset[str], float], ...]
    losses: tuple[frozenset[str] | None, ...] = ()
    warm_frozen: frozenset[str] = frozenset()
    warm_epochs: float = 0.0
    starts: tuple[float, ...] = ()

    @property
    def per_step(self) -> bool:
        """Whether stage boundaries fall between optimizer steps (step granularity)."""
        return bool(self.starts)

    def index(self, epoch: int) -> int:
        """The stage of ``epoch`` (step granularity: the one its first step trains in)."""
        if self.starts:
            return self.index_x(epoch - 1)
        for i, (_, first, last, _, _) in enumerate(self.stages):
            if first <= epoch <= last:
                return i
        return len(self.stages) - 1

    def index_x(self, x: float) -> int:
        """The stage training at ``x`` epochs elapsed (step granularity; the last one past the run)."""
        i = 0
        while i + 1 < len(self.starts) and self.starts[i + 1] <= x:
            i += 1
        return i

    def index_at(self, epoch: int, step: int = 0, steps_in_epoch: int = 0) -> int:
        """The stage of the step with 0-based index ``step`` of 1-based ``epoch``."""
        if not self.starts:
            return self.index(epoch)
        return self.index_x((epoch - 1) + (step / steps_in_epoch if steps_in_epoch else 0.0))

    def name(self, epoch: int) -> str:
        return self.stages[self.index(epoch)][0]

    def epoch_label(self, epoch: int, steps_in_epoch: int = 0) -> str:
        """The stage name of ``epoch``; in step granularity ``a→b`` when a boundary falls inside it."""
        first = self.stages[self.index_at(epoch, 0, steps_in_epoch)][0]
        if not self.starts or steps_in_epoch < 2:
            return first
        last = self.stages[self.index_at(epoch, steps_in_epoch - 1, steps_in_epoch)][0]
        return first if last == first else f"{first}→{last}"

    def frozen(self, epoch: int) -> frozenset[str]:
        return self.stages[self.index(epoch)][3]

    def frozen_at(self, epoch: int, step: int = 0, steps_in_epoch: int = 0) -> frozenset[str]:
        """Parameters frozen for the step with 0-based index ``step`` of 1-based ``epoch``.

        The warm-up freeze holds while ``(epoch - 1) + step / steps_in_epoch < warm_epochs``: with
        n steps per epoch, exactly the first ceil(warm_epochs * n) steps of the run (a loader of
        unknown length counts whole epochs). Stages follow the step in step granularity. It
        depends only on (epoch, step), so a resumed run freezes the same steps.
        """
        stage = self.stages[self.index_at(epoch, step, steps_in_epoch)][3]
        if self.warm_epochs <= 0 or not self.warm_frozen:
            return stage
        done = (epoch - 1) + (step / steps_in_epoch if steps_in_epoch else 0.0)
        return stage | self.warm_frozen if done < self.warm_epochs else stage

    def lr_scale(self, epoch: int) -> float:
        return self.stages[self.index(epoch)][4]

    def lr_scale_x(self, x: float) -> float:
        """The LR scale at ``x`` epochs elapsed (step granularity)."""
        return self.stages[self.index_x(x)][4]

    def active_losses(self, epoch: int, step: int = 0, steps_in_epoch: int = 0) -> frozenset[str] | None:
        """Labels of the loss terms this epoch (step granularity: this step) computes; None = all of them."""
        return self.losses[self.index_at(epoch, step, steps_in_epoch)] if self.losses else None


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
    # "epoch": the scheduler steps once per epoch, at its end; "step" (schedule.granularity: step):
    # after every optimizer step, its counter = the optimizer steps of the run so far.
    granularity: str = "epoch"
    # Distributed runs: the DDP-wrapped TrainForward and this rank's DistContext (None: one process).
    step_forward: nn.Module | None = None
    dist: Any = None
    _trainable: dict[str, bool] = field(default_factory=dict, repr=False)
    _frozen_now: frozenset[str] | None = field(default=None, repr=False)


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


class TrainForward(nn.Module):
    """(images, labels) → named weighted loss terms: one training step's forward.

    The model runs under autocast (``amp_dtype``, CUDA); the losses are computed in float32 (the
    triplet distances and center terms are sensitive to half precision). ``gather`` (distributed
    runs) turns this rank's outputs and labels into the global batch's before the objective.
    """

    def __init__(self, model: nn.Module, objective: nn.Module, amp_dtype: torch.dtype | None = None,
                 gather: Any = None) -> None:
        super().__init__()
        self.model, self.objective = model, objective
        self.amp_dtype, self.gather = amp_dtype, gather

    def forward(self, imgs: torch.Tensor, pids: torch.Tensor, active: Any = None,
                masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``active``: the loss terms this stage computes (None = all; see ``StagePlan``); ``masks``:
        the batch's part masks, for architectures that pool with them (spreid)."""
        autocast = (torch.autocast(device_type=imgs.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            outputs = self.model(imgs) if masks is None else self.model(imgs, masks=masks)
        outputs = {k: v.float() for k, v in outputs.items()}
        if self.gather is not None:
            outputs, pids = self.gather(outputs, pids)
        return self.objective(outputs, pids) if active is None else self.objective(outputs, pids, active=active)


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


def apply_stage(c: TrainComponents, epoch: int, step: int = 0, steps_in_epoch: int = 0) -> None:
    """Freeze this epoch's (and step's: ``StagePlan.frozen_at``) frozen parameters (no update) and put
    their modules' BatchNorm in eval mode. Call with the model in training mode.

    Parameters frozen by construction (e.g. the BNNeck bias) stay frozen in every stage.
    """
    if c.stages is None:
        return
    if not c._trainable:
        c._trainable = {n: p.requires_grad for n, p in c.model.named_parameters()}
    frozen = c.stages.frozen_at(epoch, step, steps_in_epoch)
    c._frozen_now = frozen
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
    total = len(c.loader) if hasattr(c.loader, "__len__") else None
    per_step = c.granularity == "step"
    if per_step and not total:
        raise ValueError("schedule.granularity=step needs a training loader with a length (steps per epoch)")
    # The step-granular LR of the next step is set from train_progress (schedule x), kept current here.
    apply_stage(c, epoch, 0, total or 0)
    # Freezing can change inside an epoch: the freeze warm-up ends, or (step granularity) a stage does.
    changing = c.stages is not None and (c.stages.warm_epochs > 0 or c.stages.per_step)
    sums: dict[str, float] = {}
    steps = images = 0
    wait = 0.0
    lr = c.optimizer.param_groups[0]["lr"]
    c.train_progress.epoch, c.train_progress.step = epoch, 0
    c.train_progress.max_epochs, c.train_progress.steps_per_epoch = max_epochs, total or 0
    bar = tqdm(total=total, desc=f"epoch {epoch}/{max_epochs}", disable=not c.progress, leave=False, unit="batch")
    forward = c.step_forward if c.step_forward is not None else TrainForward(c.model, c.objective, c.amp_dtype)
    ranks = c.dist.world_size if c.dist is not None else 1  # images counted over the global batch
    start = time.perf_counter()
    for batch, waited in _timed(c.loader):
        imgs, pids = batch[0], batch[1]
        masks = batch[4] if len(batch) > 4 else None
        wait += waited
        if changing and c.stages.frozen_at(epoch, steps, total or 0) != c._frozen_now:
            c.model.train()  # a freeze ends mid-epoch: its BatchNorm layers train again
            apply_stage(c, epoch, steps, total or 0)
        imgs = imgs.to(c.device, non_blocking=True)
        if c.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        pids = pids.to(c.device, non_blocking=True)
        if masks is not None:
            masks = masks.to(c.device, non_blocking=True)
        active = c.stages.active_losses(epoch, steps, total or 0) if c.stages is not None else None
        terms = forward(imgs, pids, active=active, masks=masks)
        _step(c, torch.stack(list(terms.values())).sum())
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        steps += 1
        images += imgs.shape[0] * ranks
        c.train_progress.step = steps
        c.train_progress.optimizer_steps += 1
        for hook in hooks:  # they see the LR this step trained with
            if hasattr(hook, "after_step"):
                hook.after_step(c, steps, terms)
        if per_step:
            c.scheduler.step()
        bar.update(1)
        if c.progress:
            bar.set_postfix(loss=f"{sum(sums.values()) / steps:.3f}")
    bar.close()
    seconds = time.perf_counter() - start
    if steps == 0:
        raise ValueError("the training loader produced no batch: fewer identities than ids_per_batch?")
    stage = c.stages.epoch_label(epoch, steps) if c.stages is not None and len(c.stages.stages) > 1 else None
    return EpochStats(epoch, {k: v / steps for k, v in sums.items()}, lr, images, seconds, wait, stage=stage)


def run_training(
    c: TrainComponents, start_epoch: int, max_epochs: int, seed: int, hooks: Sequence[Any] = ()
) -> list[EpochStats]:
    """Train epochs ``start_epoch+1 .. max_epochs``; the scheduler steps once per epoch, at its end
    (``c.granularity == "step"``: after every optimizer step, inside ``train_one_epoch``)."""
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
        if c.granularity != "step":
            c.scheduler.step()
        history.append(stats)
        for hook in hooks:
            if hasattr(hook, "on_epoch_end"):
                hook.on_epoch_end(c, stats)
    return history
