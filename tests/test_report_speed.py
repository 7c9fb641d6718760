"""Training-speed report: each step's img/s from its stored epochs, against hand-computed medians and ratios."""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

from reidbench.harness.ablation.expand import expand
from reidbench.harness.report.speed import run_speed, speed_frame, speed_lines, speed_table
from reidbench.harness.spec import RunSpec, replace_section, with_epochs
from reidbench.harness.store import Store
from reidbench.harness.store.records import EpochRecord
from reidbench.tricks import parse_trick_list

# (step, seed) → img/s of epochs 1..4; epoch 1 (cache filling) is slow on purpose and must be ignored.
SPEEDS = {
    ("Baseline", 0): (5.0, 100.0, 110.0, 90.0),   # median of 100, 110, 90 = 100
    ("Baseline", 1): (5.0, 120.0, 120.0, 60.0),   # median 120
    ("+warmup", 0): (5.0, 50.0, 55.0, 45.0),      # median 50
    ("+warmup", 1): (5.0, 60.0, 60.0, 80.0),      # median 60
}


def record(store, host="box-1"):
    base = with_epochs(replace_section(RunSpec(profile="cpu"), "data", train="synth-a", test=("synth-a",)), 4)
    steps = expand(base, parse_trick_list("warmup"), "cumulative", [0, 1])
    for s in steps:
        store.ensure_run(s.run_hash, s.spec.to_dict(), s.label)
        assert store.claim(s.run_hash, "test")
        history = [{"epoch": e + 1, "losses": {"id": 1.0}, "lr": 1e-4, "images_per_s": v, "extra": {}}
                   for e, v in enumerate(SPEEDS[(s.step, s.seed)])]
        store.record_result(s.run_hash, "test", {
            "run_hash": s.run_hash, "spec": s.spec.to_dict(), "metrics": {"synth-a": {"R1": 0.5, "mAP": 0.4}},
            "history": history, "provenance": {}, "model_info": {}, "environment": {"device": "cpu", "host": host},
            "seconds_train": 1.0, "seconds_eval": 1.0, "out_dir": "/nonexistent"})
    return store.record_ablation("abl", "bot", "cumulative", {"seeds": [0, 1]}, [
        {"position": s.position, "run_hash": s.run_hash, "label": s.label, "step": s.step, "seed": s.seed}
        for s in steps])


@pytest.fixture()
def store(tmp_path):
    st = Store(f"sqlite:///{tmp_path / 'results.db'}")
    yield st
    st.close()


def test_run_speed_is_the_median_after_the_first_epoch():
    epochs = [EpochRecord("h", e + 1, {"images_per_s": v}) for e, v in enumerate((1.0, 10.0, 30.0, 20.0))]
    assert run_speed(epochs) == 20.0
    assert run_speed(epochs[:1]) == 1.0  # a one-epoch run has nothing else
    assert math.isnan(run_speed([]))


def test_speed_frame_means_over_seeds_and_ratio_to_the_first_row(store):
    ablation_id = record(store)
    frame = speed_frame(store, store.get_ablation(ablation_id))
    assert list(frame["step"]) == ["Baseline", "+warmup"]
    assert list(frame["seeds"]) == [2, 2]
    assert frame["images_per_s"].tolist() == pytest.approx([110.0, 55.0])
    assert frame["images_per_s_std"].tolist() == pytest.approx([math.sqrt(200), math.sqrt(50)])
    assert frame["ratio"].tolist() == pytest.approx([1.0, 0.5])
    lines = speed_lines(frame)
    assert "×0.50" in lines[2] and "55.0" in lines[2]
    table = speed_table(frame)
    assert table[("training speed", "% of base", "mean")].tolist() == pytest.approx([100.0, 50.0])


def test_report_speed_cli_markdown(store, tmp_path):
    from reidbench.harness.cli import main

    record(store)
    url = store.url
    store.close()
    result = CliRunner().invoke(main, ["report", "--speed", "--format", "markdown", "--db", url])
    assert result.exit_code == 0, result.output
    assert "| +warmup | 55.0±7.1 | 50.0 |" in result.output
    assert "median over epochs 2..N" in result.output
