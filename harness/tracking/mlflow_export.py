"""Write the results database into MLflow: ``reidbench runs export --to mlflow``.

What each MLflow run holds is computed by ``mlflow_plan`` (params = the flattened spec, metrics per
epoch and final per test set and variant, provenance tags; ablations as parent runs with their
member runs nested through ``mlflow.parentRunId``). This module finds what an earlier export
wrote and writes only the difference.

Re-exporting creates nothing twice: every exported run carries ``reidbench.export_key`` and a
digest of what was exported (``reidbench.export_digest``). An existing MLflow run with the same
key and digest is left alone; with another digest (a run finished since, a new evaluation
variant) it is updated in place: new params and tags, and only the metric points it does not hold
yet.

``export_to_mlflow`` receives the store and an ``MlflowClient``. Needs ``mlflow-skinny``
(``pip install 'reidbench[mlflow]'``), imported only inside ``mlflow_client`` and ``_write``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from reidbench.harness.tracking.mlflow_plan import HASH_TAG, KEY_TAG, RunExport, plan_export

INSTALL_HINT = "pip install 'reidbench[mlflow]'"
DIGEST_TAG = "reidbench.export_digest"
PARENT_TAG = "mlflow.parentRunId"
MAX_PER_BATCH = 100  # params or tags per log_batch call (MLflow's limit)
MAX_METRICS_PER_BATCH = 1000

__all__ = ["HASH_TAG", "INSTALL_HINT", "ExportSummary", "MlflowMissing", "export_to_mlflow", "mlflow_client"]


class MlflowMissing(ValueError):
    """MLflow is not installed: a one-line user error naming the extra."""


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
