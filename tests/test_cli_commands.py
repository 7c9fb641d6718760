"""The thin CLI commands on top of the library: data check/synth/list/preview, evaluate, runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from reidbench.harness.cli import main


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_data_check_clean_folder_exits_0(tiny_market):
    result = _invoke("data", "check", str(tiny_market), "--format", "market")
    assert result.exit_code == 0, result.output
    assert "query" in result.output and "gallery" in result.output.lower()


def test_data_check_reports_each_problem_on_one_line_and_exits_1(tiny_market, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_market, broken)
    shutil.rmtree(broken / "query")
    (broken / "bounding_box_train" / "garbage_name.jpg").write_bytes(b"not an image")
    result = _invoke("data", "check", str(broken), "--format", "market")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    text = result.output.lower()
    assert "query" in text and "missing" in text
    assert "garbage_name.jpg" in result.output


def test_data_check_missing_path_is_a_user_error(tmp_path):
    result = _invoke("data", "check", str(tmp_path / "nope"))
    assert result.exit_code == 2 and "no such folder" in result.output


def test_data_synth_writes_a_market_folder_the_parser_reads(tmp_path):
    from reidbench.harness.data.formats import load_dataset

    out = tmp_path / "synth"
    result = _invoke("data", "synth", "--out", str(out), "--domain", "B", "--ids", "6", "--size", "64x32")
    assert result.exit_code == 0, result.output
    ds = load_dataset(out, "market")
    assert len(ds.train) > 0 and len(ds.query) > 0 and len(ds.gallery) > 0
    assert {r.camid for r in ds.gallery} <= set(range(8))
    bad = _invoke("data", "synth", "--out", str(tmp_path / "x"), "--domain", "Z")
    assert bad.exit_code == 2 and "A" in bad.output


def test_data_preview_and_list(tmp_path, monkeypatch):
    out = tmp_path / "synth"
    assert _invoke("data", "synth", "--out", str(out), "--ids", "6", "--size", "64x32").exit_code == 0
    png = tmp_path / "grid.png"
    result = _invoke("data", "preview", "mine", "--data", f"mine={out}", "--out", str(png), "--ids", "3")
    assert result.exit_code == 0, result.output
    from PIL import Image

    img = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert img.shape[0] > 50 and img.std() > 10
    monkeypatch.setenv("REIDBENCH_DATA", str(tmp_path / "cache"))
    listed = _invoke("data", "list", "--data", f"mine={out}")
    assert listed.exit_code == 0
    assert "synth-a" in listed.output and "synth-b" in listed.output and "mine" in listed.output


def _features(path, rng):
    q_pids = np.array([1, 2, 3, 4])
    g_pids = np.array([1, 2, 3, 4, 1, 2, 3, 4, 0])
    centres = rng.normal(size=(5, 8))
    np.savez(path, q_feats=centres[q_pids] + 0.01 * rng.normal(size=(4, 8)),
             g_feats=centres[g_pids] + 0.01 * rng.normal(size=(9, 8)), q_pids=q_pids, g_pids=g_pids,
             q_camids=np.zeros(4, int), g_camids=np.ones(9, int))


def test_evaluate_scores_an_npz_as_json(tmp_path):
    path = tmp_path / "f.npz"
    _features(path, np.random.default_rng(0))
    result = _invoke("evaluate", "--features", str(path), "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    # clustered features: every query's nearest gallery item is its identity → perfect scores
    assert scores["R1"] == pytest.approx(1.0) and scores["mAP"] == pytest.approx(1.0)
    assert set(scores) >= {"R1", "R5", "R10", "mAP", "mINP"}
    text = _invoke("evaluate", "--features", str(path), "--metric", "cosine")
    assert text.exit_code == 0 and "R1 100.0" in text.output


def test_evaluate_bad_file_is_one_line(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, q_feats=np.zeros((2, 3)))
    result = _invoke("evaluate", "--features", str(path))
    assert result.exit_code == 2 and "missing array" in result.output and result.output.count("\n") == 1


def test_runs_commands_on_an_empty_database(tmp_path):
    db = f"sqlite:///{tmp_path / 'r.db'}"
    assert _invoke("runs", "list", "--db", db).exit_code == 0
    missing = _invoke("runs", "show", "abc", "--db", db)
    assert missing.exit_code == 2 and "Traceback" not in missing.output


def test_tricks_lists_every_registered_trick_bots_six_first():
    from reidbench.tricks import registered_tricks

    result = _invoke("tricks")
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.output.strip().splitlines()]
    assert names[:6] == ["warmup", "rea", "ls", "stride", "bnneck", "center"]
    assert names == [t.name for t in registered_tricks()]


def test_components_lists_every_registry_entry():
    from reidbench.harness.data.samplers import SAMPLERS
    from reidbench.harness.train.optim import OPTIMIZERS
    from reidbench.harness.train.schedules import SCHEDULES
    from reidbench.models.architectures import ARCHITECTURES
    from reidbench.models.terms import LOSS_TERMS

    result = CliRunner().invoke(main, ["components"])
    assert result.exit_code == 0, result.output
    names = {line.split()[0] for line in result.output.splitlines() if line.startswith("  ")}
    assert names == set(ARCHITECTURES) | set(LOSS_TERMS) | set(SAMPLERS) | set(SCHEDULES) | set(OPTIMIZERS)
    assert "margin=0.3" in result.output and "label_smoothing=0.0" in result.output  # options with defaults


def test_train_and_ablate_give_one_spec_the_same_hash(study_spec_file, tiny_market, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trained = CliRunner().invoke(main, ["train", str(study_spec_file), "--data", f"tiny={tiny_market}", "--epochs", "1",
                                        "--device", "cpu", "--workers", "0"])
    assert trained.exit_code == 0, trained.output
    train_hash = next(line.split()[1].rstrip(":") for line in trained.output.splitlines() if line.startswith("run "))
    planned = CliRunner().invoke(main, ["ablate", "--base", str(study_spec_file), "--add", "", "--data",
                                        f"tiny={tiny_market}", "--epochs", "1", "--profile", "cpu", "--dry-run",
                                        "--db", f"sqlite:///{tmp_path / 'r.db'}"])
    assert planned.exit_code == 0, planned.output
    baseline = next(line for line in planned.output.splitlines() if line.strip().startswith("Baseline"))
    assert baseline.split()[3] == train_hash  # "Baseline (seed 0) <hash12> [new]"


def test_models_counts_parameters_against_an_independent_count():
    import json

    import timm

    result = CliRunner().invoke(main, ["models", "--backbone", "timm:test_resnet", "--num-classes", "7", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    trunk = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    width = trunk.num_features
    # bot, plain head: the backbone + Linear(width, 7) with bias; the default loss terms (ce, triplet) have none.
    assert rows["bot"]["params"] == sum(p.numel() for p in trunk.parameters()) + width * 7 + 7
    assert rows["bot"]["feature_dim"] == width and rows["bot"]["test_feature"] == ["f_t"]
    from reidbench.models.architectures import ARCHITECTURES

    assert set(rows) == set(ARCHITECTURES)
