"""Re-scorers: a registry (evaluation setting ``rescore``) of stages that re-order a trained run's ranking.

A re-scorer runs after the base features are extracted: it may learn something of its own from the
run's *training* set (SGGNN trains a graph network on pairs of training images), then gives each
query a new distance row. An evaluation names one with ``rescore: NAME`` and its parameters with
``rescore_options: {key: value}`` (only the values that differ from the defaults are kept, so a
parameter added later never changes an existing evaluation key).

An entry's ``distances(context)`` returns ``(blocks, info)``: ``blocks`` yields
``(first query row, query-rows x gallery distances)`` covering the queries in order (smaller =
more similar; the protocol scores them block by block, so the full matrix is never held) and
``info`` says what was done (weights file, whether it trained, seconds) for the log.

Adding one = a new module exporting ``RESCORER`` + one line in ``_register_builtin``; a test or a
user module can call ``register_rescorer(entry)`` instead. Pure Python here: entries import torch
only when they run, so validating settings never loads it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from reidbench.models.registry import Registry


@dataclass(frozen=True)
class RescoreContext:
    """What a re-scorer gets: the base features as the evaluation ranks them, and its training data lazily."""

    q_feats: Any  # float32 queries x D (L2-normalised when the evaluation normalises or ranks by cosine)
    g_feats: Any  # float32 gallery x D, same treatment
    metric: str  # the evaluation's base distance (euclidean, sqeuclidean, cosine)
    params: Any  # the entry's parameter dataclass
    out_dir: Path  # the run folder: learned weights are saved here
    identity: Mapping[str, Any]  # what stored weights are keyed by (run hash, training fingerprint, base settings)
    # () -> (features N x D treated like q/g, training identity labels, camera ids); extracting them
    # costs a forward pass over the training set, so it is called only when weights must be trained.
    train: Callable[[], tuple[Any, Any, Any]]
    device: Any = None
    log: Callable[[str], None] = field(default=lambda line: None)


@dataclass(frozen=True)
class Rescorer:
    name: str
    summary: str
    distances: Callable[[RescoreContext], tuple[Iterable[tuple[int, Any]], dict[str, Any]]]
    params: type | None = None


RESCORERS: Registry[Rescorer] = Registry("rescore")


def register_rescorer(entry: Rescorer, *, replace: bool = False) -> Rescorer:
    return RESCORERS.register(entry.name, entry, replace=replace)


def rescorer_params(name: str, options: Mapping[str, Any] | Iterable[tuple[str, Any]], where: str = "rescore_options"
                    ) -> Any:
    """The parameter dataclass of re-scorer ``name`` from its options (unknown keys/values: one line)."""
    from reidbench.models.registry import build_params

    return build_params(RESCORERS.get(name).params, dict(options or ()), where)


def sparse_options(name: str, options: Mapping[str, Any] | Iterable[tuple[str, Any]], where: str = "rescore_options"
                   ) -> tuple[tuple[str, Any], ...]:
    """Validated options of ``name`` holding only values that differ from its defaults, sorted by key."""
    params = rescorer_params(name, options, where)
    if params is None:
        return ()
    defaults = type(params)()
    return tuple(sorted((f.name, getattr(params, f.name)) for f in dataclasses.fields(params)
                        if getattr(params, f.name) != getattr(defaults, f.name)))


def _register_builtin() -> None:
    from reidbench.harness.evaluation.rescorers import sggnn

    register_rescorer(sggnn.RESCORER)


_register_builtin()

__all__ = ["RESCORERS", "RescoreContext", "Rescorer", "register_rescorer", "rescorer_params", "sparse_options"]
