"""`reidbench study` end to end on a tiny dataset: a 2×2 grid, its links to the runs, re-running it."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from reidbench.harness.cli.study import study
from reidbench.harness.store import Store
from reidbench.harness.study.results import study_frame, study_run_hashes, study_runs

NAME = "grid2x2"


def study_args(spec: Path, data: Path, db: Path, runs: Path, *extra: str) -> list[str]:
    return ["--base", str(spec), "--tricks", "ls,bnneck", "--space", "both", "--batches", "3x2,2x3",
            "--image-sizes", "32x16,48x24", "--data", f"tiny={data}", "--train-on", "tiny", "--test-on", "tiny",
            "--epochs", "1", "--profile", "cpu", "--device", "cpu", "--loader-workers", "0", "--db", f"sqlite:///{db}",
            "--runs-dir", str(runs), "--name", NAME, *extra]


@pytest.fixture(scope="module")
def grid_study(tiny_market, study_spec_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    spec = study_spec_file
    db, runs = root / "results.db", root / "runs"
    result = CliRunner().invoke(study, study_args(spec, tiny_market, db, runs))
    assert result.exit_code == 0, result.output
    return spec, db, runs, result.output


def _study(db: Path):
    return optuna.load_study(study_name=NAME, storage=f"sqlite:///{db}")


def test_grid_study_trains_each_point_once(grid_study):
    spec, db, runs, output = grid_study
    trials = _study(db).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    points = sorted((t.params["batch"], t.params["image_size"]) for t in trials)
    assert points == [("2x3", "32x16"), ("2x3", "48x24"), ("3x2", "32x16"), ("3x2", "48x24")]
    store = Store(f"sqlite:///{db}")
    recs = store.list_runs()
    assert len(recs) == 4 and all(r.status == "done" and r.attempts == 1 for r in recs)
    for t in trials:
        run = store.get_run(t.user_attrs["run_hash"])
        data = run.spec["data"]
        # the trial's configuration is what the run trained, with the tricks applied
        assert f"{data['ids_per_batch']}x{data['imgs_per_id']}" == t.params["batch"] == t.user_attrs["batch"]
        assert "x".join(map(str, data["image_size"])) == t.params["image_size"]
        assert run.spec["tricks"] == ["bnneck", "ls"] and run.spec["loss"]["terms"][0]["label_smoothing"] == 0.1
        assert run.label.startswith(f"study {NAME} #{t.number}")
        final = {(m.test_set, m.metric): m.value for m in store.metrics([run.run_hash])}
        assert t.value == final[("tiny", "mAP")]
        assert t.user_attrs["metrics"]["tiny"]["R1"] == final[("tiny", "R1")]
    assert "← best" in output and "tiny mAP" in output and "4 complete" in output


def test_trials_and_runs_link_both_ways(grid_study):
    spec, db, runs, _ = grid_study
    url = f"sqlite:///{db}"
    store = Store(url)
    listed = study_runs(url, NAME)
    assert [n for n, *_ in listed] == [0, 1, 2, 3]
    assert sorted(h for *_, h, _ in listed) == sorted(r.run_hash for r in store.list_runs())
    assert study_run_hashes(url, NAME) == [h for *_, h, _ in listed]
    frame = study_frame(url, NAME, store)
    assert {"P", "K", "batch", "image_size", "run_hash", "test_set", "metric", "value", "seed"} <= set(frame.columns)
    assert len(frame) == 4 * 5  # four trials × (R1, R5, R10, mAP, mINP) on one test set
    for row in frame.itertuples():
        assert f"{row.P}x{row.K}" == row.batch
        stored = [m.value for m in store.metrics([row.run_hash]) if m.metric == row.metric and m.test_set == "tiny"]
        assert stored == [row.value]
    assert set(frame["seed"]) == {0}


def test_rerunning_the_study_trains_and_asks_nothing(grid_study, tiny_market):
    spec, db, runs, _ = grid_study
    store = Store(f"sqlite:///{db}")
    before = {r.run_hash: (r.attempts, r.finished_at) for r in store.list_runs()}
    result = CliRunner().invoke(study, study_args(spec, tiny_market, db, runs))
    assert result.exit_code == 0, result.output
    assert len(_study(db).get_trials()) == 4
    assert {r.run_hash: (r.attempts, r.finished_at) for r in store.list_runs()} == before


def test_dry_run_lists_points_with_cache_status(grid_study, tiny_market):
    spec, db, runs, _ = grid_study
    result = CliRunner().invoke(study, study_args(spec, tiny_market, db, runs, "--dry-run"))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.lstrip()[:1].isdigit()]
    assert len(lines) == 4 and all("[cached]" in line for line in lines)
    # another objective is another study (and its own default name); its points are the same runs
    result = CliRunner().invoke(study, study_args(spec, tiny_market, db, runs, "--dry-run", "--objective", "r1"))
    assert result.exit_code == 0 and result.output.count("[cached]") == 4


def test_user_errors_are_one_line(grid_study, tiny_market):
    spec, db, runs, _ = grid_study
    result = CliRunner().invoke(study, study_args(spec, tiny_market, db, runs, "--objective", "r1"))
    assert result.exit_code == 2
    assert "study 'grid2x2' was created for another setup (differs in metric)" in result.output
    result = CliRunner().invoke(study, study_args(spec, tiny_market, db, runs, "--batches", "9x2"))
    assert result.exit_code == 2 and "--batches 9x2: P is larger than the 6 training identities" in result.output
    assert "Traceback" not in result.output


def test_report_and_plots_render_a_study(grid_study, tmp_path):
    from reidbench.harness.cli import main

    spec, db, runs, _ = grid_study
    store = Store(f"sqlite:///{db}")
    result = CliRunner().invoke(main, ["report", "--study", NAME, "--db", f"sqlite:///{db}", "--runs-dir", str(runs),
                                       "--format", "csv"])
    assert result.exit_code == 0, result.output
    # space "both": one P×K table per image size, each with both batch rows and the stored mAP
    assert result.output.count("2×3") == 2 and result.output.count("3×2") == 2
    maps = sorted(round(100 * m.value, 1) for m in store.metrics() if m.metric == "mAP")
    for value in maps:
        assert f"{value:.1f}" in result.output
    out = tmp_path / "bs.png"
    plotted = CliRunner().invoke(main, ["plot", "batch-size", "--study", NAME, "--db", f"sqlite:///{db}",
                                        "--runs-dir", str(runs), "--where", "data.image_size=32x16",
                                        "--out", str(out)])
    assert plotted.exit_code == 0, plotted.output
    assert out.stat().st_size > 1000 and "(2 runs)" in plotted.output
