"""One name for each scalar a run produces, shared by the TensorBoard hook and the MLflow export.

Per epoch (step = epoch), from a stored or live epoch record flattened by
``store.results.flatten_epoch``:

- ``loss/<term>`` for every weighted loss term and ``loss/total``, their sum (the value the loop
  back-propagates, averaged over the epoch's steps);
- ``lr`` (first parameter group), ``images_per_s``, ``data_wait_fraction`` (time waiting for the
  loader / epoch time), ``seconds``;
- ``<test set>/<metric>`` for the periodic evaluation on the first test set (``eval.every_epochs``).

Final (step = the run's last epoch), from its evaluations: ``<test set>/<metric>`` for the
default evaluation — the same key as the periodic one, so its curve ends in the final value — and
``<test set>/<variant>/<metric>`` for each evaluation variant. Values are fractions (0.9 = 90 %),
as in the results database.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any, Iterable, Mapping

# Flattened epoch fields that are bookkeeping, not curves: the image count is images_per_s × seconds,
# and data_wait_seconds is shown as a fraction of the epoch.
_NOT_PLOTTED = frozenset({"images", "data_wait_seconds", "stage"})
# What MLflow accepts in a metric or parameter name (letters, digits, _ - . space : /).
_UNSAFE = re.compile(r"[^\w.\- :/]")


def safe_name(name: str) -> str:
    """``name`` with every character MLflow rejects replaced by ``_`` (TensorBoard accepts all)."""
    return _UNSAFE.sub("_", str(name))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def epoch_scalars(values: Mapping[str, Any]) -> dict[str, float]:
    """Scalars of one epoch from its flattened values (``EpochRecord.values``); non-numbers skipped."""
    out: dict[str, float] = {}
    losses = {k: _number(v) for k, v in values.items() if k.startswith("loss/")}
    for key, value in losses.items():
        if value is not None:
            out[safe_name(key)] = value
    if losses and all(v is not None for v in losses.values()):
        out["loss/total"] = float(sum(v for v in losses.values() if v is not None))
    seconds, waited = _number(values.get("seconds")), _number(values.get("data_wait_seconds"))
    if seconds and waited is not None:
        out["data_wait_fraction"] = waited / seconds
    for key, value in values.items():
        if key.startswith("loss/") or key in _NOT_PLOTTED:
            continue
        number = _number(value)
        if number is not None:
            out[safe_name(key)] = number
    return out


def final_key(test_set: str, variant: str, metric: str) -> str:
    """Key of a final metric: ``<test>/<metric>`` for the default evaluation, else ``<test>/<variant>/<metric>``."""
    parts = [test_set, variant, metric] if variant else [test_set, metric]
    return "/".join(safe_name(p) for p in parts)


def final_scalars(evaluations: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Final metrics of evaluations (each with ``test_set``, ``variant`` and ``metrics``); failed ones skipped."""
    out: dict[str, float] = {}
    for evaluation in evaluations:
        if (evaluation.get("status") or "done") != "done":
            continue
        for metric, value in (evaluation.get("metrics") or {}).items():
            number = _number(value)
            if number is not None:
                out[final_key(str(evaluation["test_set"]), str(evaluation.get("variant") or ""), str(metric))] = number
    return out
