"""Turn a runner result dict (``RunResult.to_dict()``) or one evaluation into validated values.

Pure: no database access. Every problem raises a one-line StoreError naming the run and field.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping

from reidbench.harness.store.errors import StoreError
from reidbench.harness.store.tables import EVALUATION_STATUSES, HASH_CHARS, KEY_CHARS, NAME_CHARS, dumps

DEFAULT_KEY_PREFIX = "default:"


def default_evaluation_key(test_set: str) -> str:
    """Key of the default evaluation of ``test_set`` when a caller gives only metrics per test set.

    ``"default:" + test_set``; a name too long for the key column ends in a digest instead, so the
    key stays unique per test set.
    """
    key = DEFAULT_KEY_PREFIX + test_set
    if len(key) <= KEY_CHARS:
        return key
    digest = hashlib.sha256(test_set.encode("utf-8")).hexdigest()[:16]
    return key[:KEY_CHARS - 17] + "~" + digest


@dataclass(frozen=True)
class ParsedEvaluation:
    key: str
    test_set: str
    test_fingerprint: str | None
    variant: str
    settings: dict[str, Any]
    metrics: tuple[tuple[str, Any], ...]  # (metric, raw value): values are checked row by row when written
    features_path: str | None
    seconds: float | None
    status: str = "done"
    error: str | None = None
    per_query: bytes | None = None  # compressed npz (evaluation/per_query.py), validated


@dataclass(frozen=True)
class ParsedResult:
    spec: dict[str, Any] | None
    evaluations: tuple[ParsedEvaluation, ...]  # in the result's order
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
    train_fingerprint: str | None


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


def _seconds(run_hash: str, raw: Mapping[str, Any], key: str, what: str = "result field") -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise StoreError(f"run {run_hash[:12]}: {what} {key!r} = {value!r} is not a number of seconds")
    return float(value)


def _text(run_hash: str, raw: Mapping[str, Any], key: str, what: str, *, limit: int | None = None,
          required: bool = False, default: str | None = None) -> str | None:
    value = raw.get(key, default)
    if value is None:
        if required:
            raise StoreError(f"run {run_hash[:12]}: {what} has no {key!r}")
        return None
    if not isinstance(value, str) or (required and not value):
        raise StoreError(f"run {run_hash[:12]}: {what} field {key!r} must be a non-empty string, got {value!r}")
    if limit is not None and len(value) > limit:
        raise StoreError(f"run {run_hash[:12]}: {what} field {key!r} is longer than {limit} characters")
    return value


def parse_evaluation(run_hash: str, raw: Mapping[str, Any], what: str = "evaluation") -> ParsedEvaluation:
    """One evaluation: key, test_set, optional test_fingerprint, variant, settings, metrics, ...

    A done evaluation needs at least one metric; a failed one (``status: failed``) may have none
    and carries ``error``.
    """
    if not isinstance(raw, Mapping):
        raise StoreError(f"run {run_hash[:12]}: {what} must be a mapping, got {type(raw).__name__}")
    key = str(_text(run_hash, raw, "key", what, limit=KEY_CHARS, required=True))
    what = f"{what} {key!r}"
    test_set = str(_text(run_hash, raw, "test_set", what, limit=NAME_CHARS, required=True))
    status = raw.get("status") or "done"
    if status not in EVALUATION_STATUSES:
        raise StoreError(f"run {run_hash[:12]}: {what} has status {status!r}; valid: {', '.join(EVALUATION_STATUSES)}")
    settings = raw.get("settings") or {}
    if not isinstance(settings, Mapping):
        raise StoreError(f"run {run_hash[:12]}: {what} field 'settings' must be a mapping, "
                         f"got {type(settings).__name__}")
    try:
        dumps(dict(settings))
    except (TypeError, ValueError) as err:
        raise StoreError(f"run {run_hash[:12]}: {what} settings are not JSON serialisable ({err})") from None
    metrics = raw.get("metrics") or {}
    if not isinstance(metrics, Mapping):
        raise StoreError(f"run {run_hash[:12]}: {what} field 'metrics' must be a mapping of metric → value")
    if status == "done" and not metrics:
        raise StoreError(f"run {run_hash[:12]}: {what} has no metrics; a done evaluation needs at least one")
    for name in metrics:
        if not isinstance(name, str) or not name or len(name) > NAME_CHARS:
            raise StoreError(f"run {run_hash[:12]}: {what} has metric name {name!r}; use a non-empty string")
    error = raw.get("error")
    per_query = None
    if raw.get("per_query") is not None:
        from reidbench.harness.evaluation.per_query import from_text, unpack

        try:
            value = raw["per_query"]
            per_query = bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else from_text(value)
            unpack(per_query)
        except ValueError as err:
            raise StoreError(f"run {run_hash[:12]}: {what} field 'per_query': {err}") from None
    return ParsedEvaluation(
        key=key, test_set=test_set,
        test_fingerprint=_text(run_hash, raw, "test_fingerprint", what, limit=HASH_CHARS),
        variant=str(_text(run_hash, raw, "variant", what, limit=NAME_CHARS, default="") or ""),
        settings=dict(settings), metrics=tuple(metrics.items()),
        features_path=None if raw.get("features_path") is None else str(raw["features_path"]),
        seconds=_seconds(run_hash, raw, "seconds", what), status=status,
        error=None if error is None else str(error), per_query=per_query,
    )


def _evaluations(run_hash: str, raw: Mapping[str, Any]) -> tuple[ParsedEvaluation, ...]:
    """``evaluations`` when the result carries any, else the older ``metrics`` per test set.

    The older form is the default evaluation of each test set (variant "", no settings).
    """
    listed = raw.get("evaluations")
    if listed:
        if isinstance(listed, (str, bytes, Mapping)) or not hasattr(listed, "__iter__"):
            raise StoreError(f"run {run_hash[:12]}: result field 'evaluations' must be a list of mappings")
        parsed = tuple(parse_evaluation(run_hash, item, f"evaluation {index}") for index, item in enumerate(listed))
        keys = [e.key for e in parsed]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise StoreError(f"run {run_hash[:12]}: evaluation key {twice[0]!r} appears twice in the result")
        if not any(e.metrics for e in parsed):
            raise StoreError(f"run {run_hash[:12]}: result has no metrics; a run is only done with its metrics")
        return parsed
    metrics_raw = raw.get("metrics")
    if not isinstance(metrics_raw, Mapping) or not metrics_raw:
        raise StoreError(f"run {run_hash[:12]}: result has no metrics; a run is only done with its metrics")
    out: list[ParsedEvaluation] = []
    for test_set, per_metric in metrics_raw.items():
        if not isinstance(per_metric, Mapping) or not per_metric:
            raise StoreError(f"run {run_hash[:12]}: metrics of test set {test_set!r} must be a non-empty mapping")
        out.append(ParsedEvaluation(
            key=default_evaluation_key(str(test_set)), test_set=str(test_set), test_fingerprint=None, variant="",
            settings={}, metrics=tuple((str(name), value) for name, value in per_metric.items()),
            features_path=None, seconds=None))
    return tuple(out)


def parse_result(run_hash: str, raw: Mapping[str, Any]) -> ParsedResult:
    """Validate the structure; metric values are checked later, row by row, inside the transaction."""
    if not isinstance(raw, Mapping):
        raise StoreError(f"run {run_hash[:12]}: result must be a dict (RunResult.to_dict()), got {type(raw).__name__}")
    stated = raw.get("run_hash")
    if stated is not None and stated != run_hash:
        raise StoreError(f"run {run_hash[:12]}: result belongs to run {str(stated)[:12]}")
    evaluations = _evaluations(run_hash, raw)
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
        evaluations=evaluations,
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
        train_fingerprint=_text(run_hash, raw, "train_fingerprint", "result", limit=HASH_CHARS),
    )
