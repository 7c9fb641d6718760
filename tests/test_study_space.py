"""Study search spaces and plans: the paper's grids, CPU scaling, parameter encoding, patched specs."""

from __future__ import annotations

import pytest

from reidbench.harness.spec.hashing import run_hash
from reidbench.harness.spec import RunSpec, replace_section
from reidbench.harness.study.plan import patched_base, plan_study
from reidbench.harness.study.space import (
    PAPER_BATCHES,
    StudySpace,
    build_space,
    parse_pair,
    parse_pair_list,
    profile_image_sizes,
    scale_batches,
)
from reidbench.tricks import parse_trick_list, trick_versions


def test_paper_grids_and_cpu_sizes() -> None:
    assert [f"{p}x{k}" for p, k in PAPER_BATCHES] == [
        "8x3", "8x4", "8x6", "8x8", "16x3", "16x4", "16x6", "16x8", "32x3", "32x4"]
    assert profile_image_sizes("paper") == ((256, 128), (224, 224), (384, 128), (384, 192))
    assert profile_image_sizes("cpu") == ((128, 64), (112, 112), (192, 64), (192, 96))


def test_scale_batches_keeps_ratios_and_drops_collapsed_rows() -> None:
    same, note = scale_batches(PAPER_BATCHES, 180)
    assert same == PAPER_BATCHES and note is None
    scaled, note = scale_batches(PAPER_BATCHES, 20)  # P' = floor(P * 20 / 32): 8→5, 16→10, 32→20
    assert scaled == ((5, 3), (5, 4), (5, 6), (5, 8), (10, 3), (10, 4), (10, 6), (10, 8), (20, 3), (20, 4))
    assert "20 identities" in note
    tiny, _ = scale_batches(PAPER_BATCHES, 3)  # 8→2 (floor 0, at least 2), 16→2 (floor 1), 32→3
    assert tiny == ((2, 3), (2, 4), (2, 6), (2, 8), (3, 3), (3, 4))
    with pytest.raises(ValueError, match="at least 2"):
        scale_batches(PAPER_BATCHES, 1)


def test_build_space_notes_and_errors() -> None:
    space, notes = build_space("both", "grid", "cpu", (16, 4), (128, 64), num_train_ids=180)
    assert len(space.grid_points()) == 40
    assert space.grid_points()[:2] == [{"batch": "8x3", "image_size": "128x64"},
                                       {"batch": "8x3", "image_size": "112x112"}]
    assert any("halved" in n for n in notes)
    with pytest.raises(ValueError, match="--batches 8x2: P is larger than the 6"):
        build_space("batch-size", "grid", "cpu", (3, 2), (32, 16), batches=[(8, 2), (3, 2)], num_train_ids=6)


def test_pair_parsing() -> None:
    assert parse_pair("16x4", "--batches") == (16, 4)
    assert parse_pair("256×128", "--image-sizes") == (256, 128)
    assert parse_pair_list("3x2, 2x3", "--batches") == ((3, 2), (2, 3))
    with pytest.raises(ValueError, match="--batches '16by4' is not valid"):
        parse_pair("16by4", "--batches")
    with pytest.raises(ValueError, match="twice"):
        parse_pair_list("3x2,3x2", "--batches")


def test_grid_and_tpe_suggestions() -> None:
    import optuna

    grid = StudySpace("batch-size", "grid", ((8, 3), (32, 4)), ((128, 64),), (16, 4), (128, 64))
    assert grid.grid_search_space() == {"batch": ["8x3", "32x4"]}
    point = grid.suggest(optuna.trial.FixedTrial({"batch": "32x4"}))
    assert (point.ids_per_batch, point.imgs_per_id, point.image_size) == (32, 4, (128, 64))
    assert point.attrs() == {"P": 32, "K": 4, "batch": "32x4", "image_size": "128x64"}

    tpe = StudySpace("both", "tpe", ((8, 3), (16, 8), (32, 4)), ((128, 64), (192, 96)), (16, 4), (128, 64))
    assert tpe.p_range == (8, 32) and tpe.k_range == (3, 8)
    assert tpe.num_points() == 25 * 6 * 2
    point = tpe.suggest(optuna.trial.FixedTrial({"P": 12, "K": 5, "image_size": "192x96"}))
    assert (point.batch, point.size) == ("12x5", "192x96")
    size_only = StudySpace("image-size", "tpe", PAPER_BATCHES, ((128, 64), (192, 96)), (16, 4), (128, 64))
    assert size_only.suggest(optuna.trial.FixedTrial({"image_size": "192x96"})).batch == "16x4"
    assert StudySpace.from_attrs(tpe.to_attrs()) == tpe


def _base() -> RunSpec:
    spec = RunSpec(profile="cpu")
    return replace_section(spec, "data", train="tiny", test=("tiny",))


def test_plan_point_specs_hash_like_a_hand_patched_run() -> None:
    base = _base()
    tricks = parse_trick_list("warmup,ls,bnneck")
    space, notes = build_space("both", "grid", "cpu", (16, 4), (128, 64), batches=[(8, 3)], image_sizes=[(192, 96)])
    plan = plan_study(base, "bot", tricks, space, "r1", notes=notes)
    point = space.point_from_params(plan.grid_params()[0])
    # Independent path: tricks one by one, then the three data fields by hand.
    manual = base
    for t in tricks:
        manual = t.apply(manual)
    manual = replace_section(manual, "data", ids_per_batch=8, imgs_per_id=3, image_size=(192, 96))
    assert plan.point_spec(point) == manual
    assert plan.point_hash(point) == run_hash(manual, trick_versions(manual.tricks))
    assert plan.metric == "R1" and plan.first_test == "tiny" and plan.trials == 1
    # The default name is stable for the same setup and changes with it.
    again = plan_study(base, "bot", tricks, space, "r1")
    other = plan_study(base, "bot", tricks, space, "map")
    assert again.name == plan.name and other.name != plan.name
    assert plan.name.startswith("bot-both-grid-")


def test_plan_budget_and_prune() -> None:
    space, _ = build_space("batch-size", "grid", "cpu", (16, 4), (128, 64), num_train_ids=180)
    plan = plan_study(_base(), "bot", (), space, "map", trials=3)
    assert plan.trials == 3 and [p["batch"] for p in plan.grid_params()] == ["8x3", "8x4", "8x6"]
    assert plan_study(_base(), "bot", (), space, "map", trials=99).trials == 10
    pruned = patched_base(replace_section(_base(), "schedule", max_epochs=120), (), prune=True)
    assert pruned.eval.every_epochs == 10  # about 12 evaluations per run
    with pytest.raises(ValueError, match="--trials 0"):
        plan_study(_base(), "bot", (), space, "map", trials=0)


def test_study_command_imports_stay_light() -> None:
    """`reidbench --help` imports the study command: no torch, optuna or pandas at import time."""
    import subprocess
    import sys

    code = ("import sys, reidbench.harness.cli.study, reidbench.harness.study.space, reidbench.harness.study.plan; "
            "print(sorted(m for m in ('torch', 'optuna', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
