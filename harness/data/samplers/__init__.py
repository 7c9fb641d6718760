"""Batch samplers: a registry (``data.sampler``), one module per sampler in this folder.

A sampler's ``build(context)`` returns a batch sampler: iterating yields lists of dataset indices
(one list per batch); it has ``set_epoch(epoch)`` (called before every epoch, so an epoch's
batches depend only on (seed, epoch) — the resume contract) and an exact ``len()``. It may read
``context.progress`` (epoch, fraction of the run) for curricula.

Adding one = a new module exporting ``SAMPLER`` + one line in ``_register_builtin``; a test or a
user module can call ``register_sampler(entry)`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from reidbench.models.registry import Registry


@dataclass(frozen=True)
class SamplerContext:
    pids: Sequence[int]  # training label of every dataset index
    ids_per_batch: int  # P
    imgs_per_id: int  # K
    seed: int
    params: Any = None  # the sampler's parameter dataclass instance
    progress: Any = field(default=None)  # models.terms.TrainProgress while training


@dataclass(frozen=True)
class SamplerEntry:
    name: str
    summary: str
    build: Callable[[SamplerContext], Any]
    params: type | None = None


SAMPLERS: Registry[SamplerEntry] = Registry("data.sampler")


def register_sampler(entry: SamplerEntry, *, replace: bool = False) -> SamplerEntry:
    return SAMPLERS.register(entry.name, entry, replace=replace)


def build_sampler(name: str, options: Any, pids: Sequence[int], ids_per_batch: int, imgs_per_id: int, seed: int,
                  progress: Any = None) -> Any:
    from reidbench.models.registry import build_params

    entry = SAMPLERS.get(name)
    params = build_params(entry.params, dict(options or ()), "data")
    return entry.build(SamplerContext(pids=list(pids), ids_per_batch=ids_per_batch, imgs_per_id=imgs_per_id,
                                      seed=seed, params=params, progress=progress))


def _register_builtin() -> None:
    from reidbench.harness.data.samplers import pk

    register_sampler(pk.SAMPLER)


_register_builtin()

__all__ = ["SAMPLERS", "SamplerContext", "SamplerEntry", "build_sampler", "register_sampler"]
