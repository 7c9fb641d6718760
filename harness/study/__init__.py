"""Optuna studies over batch size (P×K) and image size, run through the cached runner.

Modules: ``space`` (the paper's grids, CPU scaling, parameter encoding), ``plan`` (patched base →
one spec per point), ``storage`` (where trials live, the local ask lock), ``worker`` (queueing,
trial → run, worker processes, dead-worker recovery), ``results`` (trials ↔ runs, tidy frame).

The names below are imported on first use, so importing this package (or ``space``/``plan``)
does not import optuna or pandas.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "PAPER_BATCHES": "space", "PAPER_IMAGE_SIZES": "space", "Point": "space", "StudySpace": "space",
    "build_space": "space", "parse_pair_list": "space",
    "DEFAULT_TRICKS": "plan", "StudyPlan": "plan", "plan_study": "plan",
    "choose_storage": "storage", "locate_study": "storage", "list_studies": "storage", "open_storage": "storage",
    "journal_path": "storage", "lock_path": "storage",
    "WorkerConfig": "worker", "prepare_study": "worker", "run_worker": "worker", "run_workers": "worker",
    "runner_supports_epoch_hook": "worker", "RunPruned": "worker",
    "study_attrs": "results", "study_frame": "results", "study_runs": "results", "study_run_hashes": "results",
    "run_studies": "results", "study_table_lines": "results",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
