"""What ``runs export --to mlflow`` writes, computed from the results database alone (pure: no mlflow import).

Each reidbench run becomes one ``RunExport``:

- params: the flattened spec (``model.backbone``, ``loss.terms.0.kind``, ...; values other than
  strings as JSON);
- metrics: every epoch scalar at step = epoch and every final metric (each test set, each
  evaluation variant) at step = the last epoch, named as in ``tracking.scalars`` (fractions, as in
  the database);
- tags: ``reidbench.hash``, the tricks, the data provenance (synthetic or real, per dataset with
  its fingerprints), whether the schedule was shortened, the ImageNet weights' source (or none),
  git commit, device; a failed run is FAILED with its error's first line.

An ablation becomes a parent ``RunExport`` (its name, base, mode and meta as params) holding its
member runs as children. A reidbench run that belongs to two ablations appears under each parent;
one in no ablation appears once, at the top level. Runs not finished (pending, running) are left
out and counted.

``export_key`` (``KEY_TAG``) identifies an exported run across exports: the run hash, plus
``@<ablation>`` under a parent; ``digest`` says whether what it holds changed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

from reidbench.harness.tracking.scalars import epoch_scalars, final_scalars, safe_name

HASH_TAG = "reidbench.hash"
KEY_TAG = "reidbench.export_key"
# MLflow's limits (mlflow.utils.validation), fixed here so that this module needs no mlflow import.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000


@dataclass(frozen=True)
class RunExport:
    """What one MLflow run should hold, computed from the store alone."""

    key: str  # KEY_TAG value: identity across exports
    name: str
    status: str  # FINISHED | FAILED
    params: dict[str, str]
    metrics: tuple[tuple[str, float, int, int], ...]  # (key, value, step, timestamp in ms)
    tags: dict[str, str]
    start_ms: int | None = None
    end_ms: int | None = None
    children: tuple["RunExport", ...] = ()

    @property
    def digest(self) -> str:
        content = [self.name, self.status, sorted(self.params.items()), sorted(self.metrics),
                   sorted(self.tags.items()), self.start_ms, self.end_ms]
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def _ms(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # the store hands out UTC; a naive value from an older driver is UTC too
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def _text(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def flatten_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested spec → {"model.backbone": "resnet50", "loss.terms.0.kind": "id", ...}.

    Mappings and lists of mappings are walked; other values are written as JSON (strings as they
    are), so ``data.image_size`` reads ``[256, 128]``, ``model.pretrained`` ``true``, an unset
    value ``null``.
    """
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, name + "."))
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
            for index, item in enumerate(value):
                out.update(flatten_params(item, f"{name}.{index}."))
        else:
            out[safe_name(name)] = _text(value, MAX_PARAM_VALUE)
    return out


def _provenance_tags(record: Any) -> dict[str, str]:
    tags: dict[str, str] = {}
    kinds = set()
    for name, prov in sorted((record.provenance or {}).items()):
        if not isinstance(prov, Mapping):
            continue
        synthetic = bool(prov.get("synthetic"))
        kinds.add("synthetic" if synthetic else "real")
        fingerprint = prov.get("fingerprint") or {}
        parts = ["synthetic" if synthetic else "real", f"format {prov.get('format')}"]
        if isinstance(fingerprint, Mapping) and fingerprint.get("train"):
            parts.append(f"train fingerprint {str(fingerprint['train'])[:12]}")
        if isinstance(fingerprint, Mapping) and fingerprint.get("test"):
            parts.append(f"test fingerprint {str(fingerprint['test'])[:12]}")
        tags[f"reidbench.data.{safe_name(name)}"] = _text("; ".join(parts), MAX_TAG_VALUE)
    tags["reidbench.data"] = "mixed" if len(kinds) > 1 else (kinds.pop() if kinds else "unknown")
    return tags


def _run_tags(record: Any) -> dict[str, str]:
    spec = record.spec or {}
    schedule = spec.get("schedule") or {}
    epochs, full = schedule.get("max_epochs"), spec.get("full_epochs")
    weights = record.model_info.get("pretrained_source")
    tags = {
        HASH_TAG: record.run_hash,
        "reidbench.short_hash": record.short_hash,
        "reidbench.label": record.label or "",
        "reidbench.status": record.status,
        "reidbench.profile": str(spec.get("profile")),
        "reidbench.tricks": ", ".join(spec.get("tricks") or ()) or "none",
        "reidbench.shortened": f"{epochs} of {full} epochs" if full and epochs and epochs < full else "no",
        "reidbench.pretrained": "true" if weights else "false",
        "reidbench.weights": _text(weights or "none (trained from scratch)", MAX_TAG_VALUE),
        "mlflow.source.name": "reidbench",
    }
    if record.train_fingerprint:
        tags["reidbench.train_fingerprint"] = record.train_fingerprint
    for key, value in (("reidbench.git_commit", record.git_commit), ("reidbench.device", record.device),
                       ("reidbench.host", record.host), ("reidbench.out_dir", record.out_dir)):
        if value:
            tags[key] = _text(str(value), MAX_TAG_VALUE)
    if record.error:
        tags["reidbench.error"] = _text(record.error.splitlines()[0], MAX_TAG_VALUE)
    tags.update(_provenance_tags(record))
    return tags


def run_export(record: Any, epochs: Sequence[Any], evaluations: Sequence[Any], *, ablation_key: str = "",
               member: Mapping[str, Any] | None = None, name: str | None = None) -> RunExport:
    """One reidbench run (a store ``RunRecord`` with its ``EpochRecord``s and ``EvaluationRecord``s)."""
    end = _ms(record.finished_at) or _ms(record.created_at)
    metrics: list[tuple[str, float, int, int]] = []
    for epoch in epochs:
        metrics.extend((key, value, int(epoch.epoch), end or 0) for key, value in epoch_scalars(epoch.values).items())
    last = int((record.spec.get("schedule") or {}).get("max_epochs") or max((e.epoch for e in epochs), default=0))
    for evaluation in evaluations:
        stamp = _ms(evaluation.finished_at) or _ms(evaluation.created_at) or end or 0
        scored = {"test_set": evaluation.test_set, "variant": evaluation.variant, "metrics": evaluation.metrics,
                  "status": evaluation.status}
        metrics.extend((key, value, last, stamp) for key, value in final_scalars([scored]).items())
    tags = _run_tags(record)
    if ablation_key:
        tags["reidbench.ablation"] = ablation_key
    for field_name in ("position", "step", "seed"):
        if member is not None and member.get(field_name) not in (None, ""):
            tags[f"reidbench.{field_name}"] = str(member[field_name])
    tags[KEY_TAG] = f"{record.run_hash}@{ablation_key}" if ablation_key else record.run_hash
    return RunExport(key=tags[KEY_TAG], name=name or record.label or record.short_hash,
                     status="FINISHED" if record.status == "done" else "FAILED",
                     params=flatten_params(record.spec or {}), metrics=tuple(metrics), tags=tags,
                     start_ms=_ms(record.started_at) or _ms(record.created_at), end_ms=end)


def ablation_key(ablation: Any) -> str:
    """Identity of an ablation across exports: id, name and creation time in its database."""
    return f"{ablation.id}:{ablation.name}:{_ms(ablation.created_at)}"


def _kind(flags: Iterable[bool], yes: str, no: str) -> str:
    values = set(flags)
    return "unknown" if not values else ("mixed" if len(values) > 1 else (yes if values.pop() else no))


def ablation_export(ablation: Any, children: Sequence[RunExport], records: Sequence[Any]) -> RunExport:
    """The parent run of an ablation (a store ``AblationRecord``), its member runs as ``children``."""
    key = ablation_key(ablation)
    params = {"name": ablation.name, "base": ablation.base, "mode": ablation.mode,
              "members": str(len(ablation.members))}
    params.update(flatten_params(ablation.meta or {}, "meta."))
    done = [r for r in records if r.status == "done"]
    seeds = sorted({m["seed"] for m in ablation.members if m.get("seed") is not None})
    tags = {
        KEY_TAG: f"ablation:{key}", "reidbench.ablation": key, "reidbench.kind": "ablation",
        "reidbench.data": _kind((r.synthetic for r in done), "synthetic", "real"),
        "reidbench.pretrained": _kind((r.pretrained for r in done), "true", "false"),
        "reidbench.weights": _text(", ".join(sorted({r.model_info.get("pretrained_source") or "none" for r in done}))
                                   or "unknown", MAX_TAG_VALUE),
        "reidbench.seeds": ", ".join(map(str, seeds)) or "none",
        "mlflow.source.name": "reidbench",
    }
    return RunExport(key=tags[KEY_TAG], name=f"ablation {ablation.name} (id {ablation.id})", status="FINISHED",
                     params=params, metrics=(), tags=tags, start_ms=_ms(ablation.created_at),
                     end_ms=max((c.end_ms for c in children if c.end_ms), default=_ms(ablation.created_at)),
                     children=tuple(children))


def plan_export(store: Any, ablation_ref: int | str | None = None) -> tuple[list[RunExport], dict[str, int]]:
    """What to export: every ablation (or only ``ablation_ref``) as a parent with its finished member
    runs, plus (without ``ablation_ref``) every finished run in no ablation. Returns the top-level
    exports and the count of runs left out by status."""
    left_out: dict[str, set[str]] = {}
    ablations = [store.get_ablation(ablation_ref)] if ablation_ref is not None else store.list_ablations()
    cache: dict[str, tuple[Any, list[Any], list[Any]]] = {}

    def load(run_hash: str) -> tuple[Any, list[Any], list[Any]] | None:
        if run_hash not in cache:
            record = store.find_run(run_hash)
            if record is None:
                return None
            finished = record.status == "done"
            cache[run_hash] = (record, store.epochs(run_hash) if finished else [],
                               store.evaluations([run_hash]) if finished else [])
        return cache[run_hash]

    def exportable(run_hash: str) -> tuple[Any, list[Any], list[Any]] | None:
        loaded = load(run_hash)
        if loaded is None or loaded[0].status not in ("done", "failed"):
            left_out.setdefault("missing" if loaded is None else loaded[0].status, set()).add(run_hash)
            return None
        return loaded

    top: list[RunExport] = []
    members_seen: set[str] = set()
    for ablation in reversed(ablations):  # oldest first: MLflow lists the newest on top
        key = ablation_key(ablation)
        several_seeds = len({m.get("seed") for m in ablation.members}) > 1
        children, records = [], []
        for member in ablation.members:
            members_seen.add(member["run_hash"])
            loaded = exportable(member["run_hash"])
            if loaded is None:
                continue
            record, epochs, evaluations = loaded
            name = member.get("label") or record.label or record.short_hash
            if several_seeds and member.get("seed") is not None:
                name = f"{name} seed {member['seed']}"
            children.append(run_export(record, epochs, evaluations, ablation_key=key, member=member, name=name))
            records.append(record)
        top.append(ablation_export(ablation, children, records))
    if ablation_ref is None:
        for record in reversed(store.list_runs()):
            if record.run_hash in members_seen:
                continue
            loaded = exportable(record.run_hash)
            if loaded is not None:
                top.append(run_export(*loaded))
    return top, {status: len(hashes) for status, hashes in left_out.items()}
