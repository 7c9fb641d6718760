"""Shared by the training benchmarks: a loader cut to its first N batches."""

from __future__ import annotations

import itertools


class Limited:
    """The first ``steps`` batches of a loader, with a length (what train_one_epoch expects)."""

    def __init__(self, loader, steps: int) -> None:
        self.loader, self.steps = loader, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.steps)
