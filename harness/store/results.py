"""Turn a runner result dict (``RunResult.to_dict()``) into validated values for the store.

Pure: no database access. Every problem raises a one-line StoreError naming the run and field.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping

from reidbench.harness.store.errors import StoreError


@dataclass(frozen=True)
class ParsedResult:
    spec: dict[str, Any] | None
    metrics: tuple[tuple[str, str, float], ...]  # (test set, metric, value), in the result's order
    epochs: tuple[tuple[int, dict[str, Any]], ...]
    provenance: dict[str, Any]
    model_info: dict[str, Any]
    git_commit: str | None
    versions: dict[str, Any]
    device: str | None
    host: str | None
    seconds_train: float | None
    seconds_eval: float | None
    out_dir: str | None


def finite_metric(run_hash: str, test_set: str, metric: str, value: Any) -> float:
    """A final metric must be a real, finite number: a NaN mAP is a bug, never a result."""
    where = f"run {run_hash[:12]}: metric {test_set}/{metric}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise StoreError(f"{where} = {value!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise StoreError(f"{where} = {number} is not a finite number")
    return number


def flatten_epoch(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One history entry → flat values: losses as "loss/<term>", extras under their own names."""
    values: dict[str, Any] = {}
    for key, value in entry.items():
        if key == "epoch":
            continue
        if key == "losses" and isinstance(value, Mapping):
            values.update({f"loss/{term}": v for term, v in value.items()})
        elif key == "extra" and isinstance(value, Mapping):
            values.update(value)
        else:
            values[key] = value
    return values


def _mapping(run_hash: str, raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, Mapping):
        raise StoreError(f"run {run_hash[:12]}: result field {key!r} must be a mapping, got {type(value).__name__}")
    return dict(value)


def _seconds(run_hash: str, raw: Mapping[str, Any], key: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise StoreError(f"run {run_hash[:12]}: result field {key!r} = {value!r} is not a number of seconds")
    return float(value)


def parse_result(run_hash: str, raw: Mapping[str, Any]) -> ParsedResult:
    """Validate the structure; metric values are checked later, row by row, inside the transaction."""
    if not isinstance(raw, Mapping):
        raise StoreError(f"run {run_hash[:12]}: result must be a dict (RunResult.to_dict()), got {type(raw).__name__}")
    stated = raw.get("run_hash")
    if stated is not None and stated != run_hash:
        raise StoreError(f"run {run_hash[:12]}: result belongs to run {str(stated)[:12]}")
    metrics_raw = raw.get("metrics")
    if not isinstance(metrics_raw, Mapping) or not metrics_raw:
        raise StoreError(f"run {run_hash[:12]}: result has no metrics; a run is only done with its metrics")
    metrics: list[tuple[str, str, Any]] = []
    for test_set, per_metric in metrics_raw.items():
        if not isinstance(per_metric, Mapping) or not per_metric:
            raise StoreError(f"run {run_hash[:12]}: metrics of test set {test_set!r} must be a non-empty mapping")
        metrics.extend((str(test_set), str(name), value) for name, value in per_metric.items())
    epochs: list[tuple[int, dict[str, Any]]] = []
    for index, entry in enumerate(raw.get("history") or []):
        if not isinstance(entry, Mapping) or "epoch" not in entry:
            raise StoreError(f"run {run_hash[:12]}: history entry {index} has no 'epoch'")
        epoch = int(entry["epoch"])
        if any(seen == epoch for seen, _ in epochs):
            raise StoreError(f"run {run_hash[:12]}: history lists epoch {epoch} twice")
        epochs.append((epoch, flatten_epoch(entry)))
    env = _mapping(run_hash, raw, "environment")
    spec = raw.get("spec")
    out_dir = raw.get("out_dir")
    return ParsedResult(
        spec=dict(spec) if isinstance(spec, Mapping) else None,
        metrics=tuple(metrics),
        epochs=tuple(epochs),
        provenance=_mapping(run_hash, raw, "provenance"),
        model_info=_mapping(run_hash, raw, "model_info"),
        git_commit=None if env.get("git_commit") is None else str(env["git_commit"]),
        versions=dict(env.get("versions") or {}),
        device=None if env.get("device") is None else str(env["device"]),
        host=None if env.get("host") is None else str(env["host"]),
        seconds_train=_seconds(run_hash, raw, "seconds_train"),
        seconds_eval=_seconds(run_hash, raw, "seconds_eval"),
        out_dir=None if out_dir is None else str(out_dir),
    )
