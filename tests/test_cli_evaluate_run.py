"""``reidbench evaluate --run``: re-score a stored run from its checkpoint, recorded as an evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from reidbench.harness.cli import main
from reidbench.harness.store import Store


@pytest.fixture(scope="module")
def trained(tiny_market, tiny_spec_file, tmp_path_factory):
    """A tiny cumulative ablation (Baseline, +BNNeck), one epoch each; returns (db url, +BNNeck run)."""
    root = tmp_path_factory.mktemp("evaluate-run")
    db = f"sqlite:///{root / 'results.db'}"
    args = ["ablate", "--base", str(tiny_spec_file), "--add", "bnneck", "--data", f"tiny={tiny_market}",
            "--profile", "cpu", "--epochs", "1", "--db", db, "--runs-dir", str(root / "runs"), "--workers", "0",
            "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    store = Store(db)
    run = next(r for r in store.list_runs() if r.spec["model"].get("neck") == "bnneck")
    return db, run, tiny_market


def _evaluate(db: str, *extra: str):
    return CliRunner().invoke(main, ["evaluate", "--db", db, "--device", "cpu", *extra])


def _json(db: str, *extra: str) -> list[dict]:
    result = _evaluate(db, *extra, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_default_settings_reproduce_the_stored_metrics_without_a_duplicate(trained):
    db, run, _ = trained
    store = Store(db)
    before = store.evaluations([run.run_hash])
    stored = next(e for e in before if e.variant == "" and e.test_set == "tiny")
    out = _json(db, "--run", run.run_hash[:10])
    assert len(out) == 1 and out[0]["test_set"] == "tiny" and out[0]["variant"] == ""
    assert out[0]["key"] == stored.key and out[0]["test_fingerprint"] == stored.test_fingerprint
    assert out[0]["metrics"] == pytest.approx(stored.metrics, abs=0, rel=0)
    after = store.evaluations([run.run_hash])
    assert len(after) == len(before)
    # naming the architecture's test feature explicitly is still the default evaluation
    explicit = _json(db, "--run", run.run_hash[:10], "--feature", stored.settings["feature"])
    assert explicit[0]["variant"] == "" and explicit[0]["key"] == stored.key
    assert len(store.evaluations([run.run_hash])) == len(before)


def test_a_variant_is_recorded_and_rescored_from_cached_features(trained):
    db, run, _ = trained
    store = Store(db)
    n_before = len(store.evaluations([run.run_hash]))
    settings = ("--feature", "f_t", "--metric", "euclidean", "--no-normalize")
    first = _json(db, "--run", run.run_hash[:10], *settings)
    assert len(first) == 1 and first[0]["variant"] == "f_t-euclidean"
    assert first[0]["settings"]["feature"] == "f_t" and first[0]["settings"]["metric"] == "euclidean"
    assert first[0]["settings"]["normalize"] is False
    recorded = store.evaluations([run.run_hash], variant="f_t-euclidean")
    assert len(recorded) == 1 and len(store.evaluations([run.run_hash])) == n_before + 1
    features = Path(recorded[0].features_path)
    assert features.is_file() and features.name == "features-tiny-f_t.npz"
    mtime = features.stat().st_mtime_ns

    again = _json(db, "--run", run.run_hash[:10], *settings)
    assert features.stat().st_mtime_ns == mtime  # served from the saved features
    assert again[0]["metrics"] == first[0]["metrics"] and again[0]["key"] == first[0]["key"]
    assert len(store.evaluations([run.run_hash])) == n_before + 1

    table = _evaluate(db, "--run", run.run_hash[:10], *settings)
    assert table.exit_code == 0 and "f_t-euclidean" in table.stdout and "mAP" in table.stdout


def test_rerank_matches_scoring_the_saved_features_directly(trained):
    from reidbench.harness.evaluation.protocol import score

    db, run, _ = trained
    store = Store(db)
    out = _json(db, "--run", run.run_hash[:10], "--rerank")
    assert len(out) == 1 and out[0]["variant"] == "rerank" and out[0]["settings"]["rerank"] is True
    default = next(e for e in store.evaluations([run.run_hash], variant="") if e.test_set == "tiny")
    with np.load(default.features_path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in ("q_feats", "g_feats", "q_pids", "g_pids", "q_camids", "g_camids")}
    s = default.settings
    expected = score(**arrays, metric=s["metric"], normalize=s["normalize"], rerank=True)
    for k in ("R1", "R5", "R10", "mAP", "mINP"):
        assert out[0]["metrics"][k] == pytest.approx(float(expected[k]), abs=1e-12)
    assert store.evaluations([run.run_hash], variant="rerank")[0].metrics == out[0]["metrics"]


def test_errors_are_one_line(trained, tmp_path):
    db, run, _ = trained
    cases = [
        ("--run", "ffffffffffff"),
        ("--run", run.run_hash[:10], "--features", str(tmp_path / "f.npz")),
        (),
        ("--run", run.run_hash[:10], "--metric", "cosine", "--feature", "f_t+"),
    ]
    for extra in cases:
        result = _evaluate(db, *extra)
        assert result.exit_code == 2, (extra, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("reidbench: error:"), (extra, result.output)
    result = CliRunner().invoke(main, ["evaluate", "--features", str(tmp_path / "f.npz"), "--test-on", "tiny"])
    assert result.exit_code == 2 and "--test-on needs --run" in result.output


def test_missing_checkpoint_is_one_line(trained, tmp_path):
    from reidbench.harness.train.checkpoint import CHECKPOINT_NAME

    db, run, _ = trained
    ckpt = Path(run.out_dir) / CHECKPOINT_NAME
    moved = tmp_path / CHECKPOINT_NAME
    ckpt.rename(moved)
    try:
        # Cached features of these settings (f_i, no flip: the default evaluation's) need no checkpoint.
        cached = _evaluate(db, "--run", run.run_hash[:10], "--feature", "f_i", "--metric", "cosine")
        result = _evaluate(db, "--run", run.run_hash[:10], "--feature", "f_i", "--flip")
    finally:
        moved.rename(ckpt)
    assert cached.exit_code == 0, cached.output
    assert result.exit_code == 2 and "no checkpoint" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_plot_ranks_uses_the_recorded_features_file(trained, tmp_path):
    pytest.importorskip("matplotlib")
    db, run, _ = trained
    assert not (Path(run.out_dir) / "features-tiny.npz").exists()  # only the recorded name is there
    out = tmp_path / "ranks.png"
    result = CliRunner().invoke(main, ["plot", "ranks", "--run", run.run_hash[:10], "--db", db, "--out", str(out),
                                       "-n", "2", "--top", "3"])
    assert result.exit_code == 0, result.output
    assert out.is_file()


def test_settings_recorded_under_another_name_keep_that_name(trained):
    """An ablation's variant (e.g. ``ft-cosine`` from a base file) re-scored from the CLI is updated,
    not renamed or duplicated: same settings, same key."""
    db, run, _ = trained
    store = Store(db)
    settings = ("--feature", "f_t", "--metric", "cosine")
    first = _json(db, "--run", run.run_hash[:10], *settings)
    assert first[0]["variant"] == "f_t-cosine"
    store.record_evaluation(run.run_hash, {**first[0], "variant": "ft-cosine"})  # as an ablation names it
    n = len(store.evaluations([run.run_hash]))
    again = _json(db, "--run", run.run_hash[:10], *settings)
    assert again[0]["variant"] == "ft-cosine" and again[0]["key"] == first[0]["key"]
    assert len(store.evaluations([run.run_hash])) == n
    assert [e.variant for e in store.evaluations([run.run_hash]) if e.key == first[0]["key"]] == ["ft-cosine"]
