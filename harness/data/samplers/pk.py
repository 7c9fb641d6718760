"""P×K identity batch sampler with the Bag-of-Tricks reference semantics.

Per epoch (reference ``RandomIdentitySampler``):

1. every identity's image indices are shuffled; an identity with fewer than K images is first
   drawn with replacement up to K images; the list is cut into chunks of K and an incomplete
   trailing chunk is dropped;
2. while at least P identities still have chunks, P distinct identities are drawn uniformly
   among them and each contributes its next chunk: one batch of P·K indices, grouped by
   identity in draw order. No partial batch is ever produced.

Differences from the reference, none of which changes the distribution: it is a *batch*
sampler (yields lists), randomness comes from a local NumPy generator seeded by
``(seed, epoch)`` instead of global ``random``/``np.random`` state, and ``len()`` is exact
(the reference returns an estimate, the number of indices before any identity runs out).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class PKSampler(Sampler[list[int]]):
    """Yields batches of ``ids_per_batch`` (P) identities × ``imgs_per_id`` (K) dataset indices.

    Determinism contract: the batches of an epoch are a pure function of ``(pids, P, K, seed,
    epoch)``. Call :meth:`set_epoch` before iterating each epoch (as with
    ``DistributedSampler``); without it every epoch repeats epoch 0. ``len()`` is the exact
    number of batches of the current epoch (computed once per epoch and cached).
    """

    def __init__(self, pids: Sequence[int], ids_per_batch: int, imgs_per_id: int, seed: int = 0) -> None:
        if ids_per_batch < 2:
            raise ValueError(f"ids_per_batch must be >= 2 (batch-hard triplets need negatives), got {ids_per_batch}")
        if imgs_per_id < 1:
            raise ValueError(f"imgs_per_id must be >= 1, got {imgs_per_id}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        pids = np.asarray(pids, dtype=np.int64)
        unique_pids, inverse = np.unique(pids, return_inverse=True)
        if len(unique_pids) < ids_per_batch:
            raise ValueError(f"ids_per_batch={ids_per_batch} but the training set has only "
                             f"{len(unique_pids)} identities; lower ids_per_batch")
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(unique_pids)))[:-1]
        # Dataset indices per identity, identities in sorted pid order, indices ascending.
        self._indices_by_id: list[np.ndarray] = np.split(order, bounds)
        self.ids_per_batch = ids_per_batch
        self.imgs_per_id = imgs_per_id
        self.seed = seed
        self.epoch = 0
        self._cached: tuple[int, list[list[int]]] | None = None

    @property
    def batch_size(self) -> int:
        return self.ids_per_batch * self.imgs_per_id

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def batches_for_epoch(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` (independent of the current epoch)."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        batches = self._make_batches(np.random.default_rng([self.seed, epoch]))
        self._cached = (epoch, batches)
        return batches

    def _make_batches(self, rng: np.random.Generator) -> list[list[int]]:
        k = self.imgs_per_id
        chunks_by_id: list[list[list[int]]] = []
        for indices in self._indices_by_id:
            if len(indices) < k:
                drawn = rng.choice(indices, size=k, replace=True)
            else:
                drawn = rng.permutation(indices)
            usable = len(drawn) - len(drawn) % k
            chunks_by_id.append(drawn[:usable].reshape(-1, k).tolist())
        next_chunk = [0] * len(chunks_by_id)
        available = list(range(len(chunks_by_id)))
        batches = []
        while len(available) >= self.ids_per_batch:
            picked = rng.choice(len(available), size=self.ids_per_batch, replace=False)
            batch: list[int] = []
            exhausted = []
            for position in picked:
                identity = available[position]
                batch.extend(chunks_by_id[identity][next_chunk[identity]])
                next_chunk[identity] += 1
                if next_chunk[identity] == len(chunks_by_id[identity]):
                    exhausted.append(position)
            for position in sorted(exhausted, reverse=True):
                del available[position]
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return (list(batch) for batch in self.batches_for_epoch(self.epoch))  # copies: cache stays intact

    def __len__(self) -> int:
        return len(self.batches_for_epoch(self.epoch))


def _build(context) -> PKSampler:
    return PKSampler(context.pids, context.ids_per_batch, context.imgs_per_id, context.seed)


def _entry():
    from reidbench.harness.data.samplers import SamplerEntry

    return SamplerEntry(name="pk", summary="P identities x K images per batch, the reference's RandomIdentitySampler",
                        build=_build)


SAMPLER = _entry()
