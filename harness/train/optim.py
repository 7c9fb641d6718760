"""Optimisers and the learning-rate schedule of the reference (bot.md "warmup").

The LR changes once per epoch, at its start: epoch t (1-based) trains at
``base_lr * lr_multiplier(t, ...)``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn


def lr_multiplier(
    epoch: int,
    milestones: Sequence[int],
    gamma: float = 0.1,
    warmup_epochs: int = 0,
    warmup_factor: float = 0.01,
) -> float:
    """LR multiplier for 1-based training epoch ``epoch``.

    ``w(t) * gamma ** (number of milestones <= t)`` with the reference's linear warmup
    ``w(t) = warmup_factor * (1 - t/W) + t/W`` for ``t < W`` and 1 afterwards. So with W=10 and
    milestones (40, 70), epoch 1 gets 0.109, epoch 10 gets 1, epoch 40 already 0.1.
    """
    if epoch < 1:
        raise ValueError(f"epoch={epoch} is not valid: epochs are 1-based")
    if warmup_epochs > 0 and epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        warm = warmup_factor * (1.0 - alpha) + alpha
    else:
        warm = 1.0
    decays = sum(1 for m in milestones if m <= epoch)
    return warm * gamma**decays


def build_optimizer(
    params: Iterable[nn.Parameter], name: str, base_lr: float, weight_decay: float, betas: tuple[float, float]
) -> torch.optim.Optimizer:
    """Adam with coupled L2 decay (``torch.optim.Adam(weight_decay=...)``, not AdamW), as the reference."""
    trainable = [p for p in params if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(trainable, lr=base_lr, weight_decay=weight_decay, betas=betas)
    raise ValueError(f"optim.name={name!r} is not valid: adam")


def build_epoch_scheduler(
    optimizer: torch.optim.Optimizer,
    milestones: Sequence[int],
    gamma: float,
    warmup_epochs: int,
    warmup_factor: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per epoch; its internal counter 0 corresponds to training epoch 1."""
    ms = tuple(milestones)

    def factor(index0: int) -> float:
        return lr_multiplier(index0 + 1, ms, gamma, warmup_epochs, warmup_factor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)
