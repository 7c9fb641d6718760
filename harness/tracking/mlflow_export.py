"""Export the results database to MLflow: ``reidbench runs export --to mlflow``.

Each reidbench run becomes one MLflow run:

- params: the flattened spec (``model.backbone``, ``loss.terms.0.kind``, ...; lists of plain
  values as JSON);
- metrics: every epoch scalar at step = epoch and every final metric (each test set, each
  evaluation variant) at step = the last epoch, named as in ``tracking.scalars`` (fractions, as in
  the database);
- tags: ``reidbench.hash``, the tricks, the data provenance (synthetic or real, per dataset with
  its fingerprint), whether the schedule was shortened, the ImageNet weights' source (or none),
  git commit, device; a failed run is FAILED with its error's first line.

An ablation becomes a parent run (its name, base, mode and meta as params) with its member runs
nested under it (``mlflow.parentRunId``). A reidbench run that belongs to two ablations appears
under each parent; one in no ablation appears once, at the top level. Runs not finished yet
(pending, running) are left out and counted.

Re-exporting creates nothing twice: every exported run carries ``reidbench.export_key`` (run hash
plus its ablation, or the ablation alone for a parent) and a digest of what was exported. An
existing MLflow run with the same key and digest is left alone; with another digest (a run
finished since, a new evaluation variant) it is updated in place: new params and tags, and only
the metric points it does not hold yet.

Pure parts (``RunExport`` builders) read only store records; ``export_to_mlflow`` receives the
store and an ``MlflowClient`` and does the writing. Needs ``mlflow-skinny`` (``pip install
'reidbench[mlflow]'``), imported only here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

from reidbench.harness.tracking.scalars import epoch_scalars, final_scalars, safe_name

INSTALL_HINT = "pip install 'reidbench[mlflow]'"
HASH_TAG = "reidbench.hash"
KEY_TAG = "reidbench.export_key"
DIGEST_TAG = "reidbench.export_digest"
PARENT_TAG = "mlflow.parentRunId"
# MLflow's limits (mlflow.utils.validation), fixed here so the pure part needs no mlflow import.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_PER_BATCH = 100  # params or tags per log_batch call
MAX_METRICS_PER_BATCH = 1000


class MlflowMissing(ValueError):
    """MLflow is not installed: a one-line user error naming the extra."""


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


@dataclass
class ExportSummary:
    tracking_uri: str
    experiment: str
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    left_out: dict[str, int] = field(default_factory=dict)  # status → runs not exported (not finished)

    def line(self) -> str:
        out = (f"MLflow {self.tracking_uri}, experiment {self.experiment!r}: {self.created} runs created, "
               f"{self.updated} updated, {self.unchanged} unchanged")
        if self.left_out:
            out += " (left out, not finished: " + ", ".join(f"{n} {s}" for s, n in sorted(self.left_out.items())) + ")"
        return out


# ------------------------------------------------------------------------------ pure part


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


# ------------------------------------------------------------------------------ writing


def mlflow_client(tracking_uri: str | None) -> tuple[Any, str]:
    """(``MlflowClient``, the tracking URI it writes to); a one-line error when MLflow is missing."""
    try:
        import mlflow
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise MlflowMissing(f"runs export --to mlflow needs MLflow, which is not installed: {INSTALL_HINT}") from None
    import logging

    from mlflow.exceptions import MlflowException

    # MLflow configures its logger at import; its INFO lines (creating database tables) are noise here.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = tracking_uri or mlflow.get_tracking_uri()
    try:
        return MlflowClient(tracking_uri=uri), str(uri)
    except MlflowException as exc:  # e.g. a file: store that MLflow 3 only opens with MLFLOW_ALLOW_FILE_STORE=true
        raise ValueError(f"--tracking-uri {uri}: {str(exc.message).splitlines()[0]}") from None


def _experiment_id(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        if getattr(found, "lifecycle_stage", "active") != "active":
            raise ValueError(f"--experiment {name!r} is deleted in MLflow; restore it or choose another name")
        return str(found.experiment_id)
    return str(client.create_experiment(name))


def _existing(client: Any, experiment_id: str) -> dict[str, Any]:
    """Exported MLflow runs of the experiment by their export key (the oldest when there are several)."""
    found: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` != ''", max_results=1000,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        for run in page:
            found[run.data.tags[KEY_TAG]] = run  # later (older) runs overwrite: the oldest wins
        token = page.token
        if not token:
            return found


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _write(client: Any, run_id: str, export: RunExport, parent_id: str | None, new: bool) -> None:
    from mlflow.entities import Metric, Param, RunTag

    tags = dict(export.tags)
    if parent_id is not None:
        tags[PARENT_TAG] = parent_id
    tags[DIGEST_TAG] = export.digest
    metrics = list(export.metrics)
    params = dict(export.params)
    if not new:
        current = client.get_run(run_id).data
        params = {k: v for k, v in params.items() if k not in current.params}  # params never change in MLflow
        held: set[tuple[str, float, int, int]] = set()
        for key in {m[0] for m in metrics} & set(current.metrics):
            held.update((key, h.value, h.step, h.timestamp) for h in client.get_metric_history(run_id, key))
        metrics = [m for m in metrics if m not in held]
    for chunk in _batches(sorted(params.items()), MAX_PER_BATCH):
        client.log_batch(run_id, params=[Param(k, v) for k, v in chunk])
    for chunk in _batches(metrics, MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v, step, ts in chunk])
    # the digest tag last: a run interrupted while written is written again by the next export
    ordered = sorted((k, v) for k, v in tags.items() if k != DIGEST_TAG) + [(DIGEST_TAG, tags[DIGEST_TAG])]
    for chunk in _batches(ordered, MAX_PER_BATCH):
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in chunk])
    client.set_terminated(run_id, status=export.status, end_time=export.end_ms)


def _sync(client: Any, experiment_id: str, existing: dict[str, Any], export: RunExport, parent_id: str | None,
          summary: ExportSummary) -> str:
    run = existing.get(export.key)
    if run is None:
        created = client.create_run(experiment_id, start_time=export.start_ms, run_name=export.name,
                                    tags={KEY_TAG: export.key})
        run_id = created.info.run_id
        _write(client, run_id, export, parent_id, new=True)
        summary.created += 1
    else:
        run_id = run.info.run_id
        if (run.data.tags.get(DIGEST_TAG) == export.digest and run.data.tags.get(PARENT_TAG) == parent_id
                and run.info.status == export.status):
            summary.unchanged += 1
        else:
            _write(client, run_id, export, parent_id, new=False)
            summary.updated += 1
    for child in export.children:
        _sync(client, experiment_id, existing, child, run_id, summary)
    return run_id


def export_to_mlflow(store: Any, client: Any, tracking_uri: str, experiment: str = "reidbench",
                     ablation_ref: int | str | None = None) -> ExportSummary:
    """Write the store's runs and ablations (or one ablation) into MLflow experiment ``experiment``."""
    top, left_out = plan_export(store, ablation_ref)
    summary = ExportSummary(tracking_uri=tracking_uri, experiment=experiment, left_out=left_out)
    experiment_id = _experiment_id(client, experiment)
    existing = _existing(client, experiment_id)
    for export in top:
        _sync(client, experiment_id, existing, export, None, summary)
    return summary
