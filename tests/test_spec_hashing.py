"""RunSpec loading/validation, hashing and the --epochs scaling."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from reidbench.harness.spec.hashing import run_hash
from reidbench.harness.spec import (
    RunSpec,
    SpecError,
    load_spec_file,
    replace_section,
    spec_from_dict,
    spec_from_json,
    with_epochs,
)

BOT = Path(__file__).resolve().parent.parent / "experiments" / "bot.yaml"


def test_bot_base_matches_reference_baseline_s():
    spec = load_spec_file(BOT, "paper")
    assert spec.model.backbone == "resnet50" and spec.model.last_stride == 2 and spec.model.neck == "plain"
    assert spec.data.image_size == (256, 128)
    assert (spec.data.ids_per_batch, spec.data.imgs_per_id) == (16, 4)
    assert spec.optim.base_lr == 3.5e-4 and spec.optim.weight_decay == 5e-4
    assert spec.schedule.milestones == (40, 70) and spec.schedule.max_epochs == 120
    assert spec.schedule.warmup_epochs == 0 and spec.data.random_erasing_prob == 0.0
    assert spec.loss.label_smoothing == 0.0 and spec.loss.center_weight == 0.0
    assert spec.loss.triplet_margin == 0.3
    assert spec.eval.normalize and spec.eval.metric == "sqeuclidean"


def test_cpu_profile_overlay_changes_only_what_it_names():
    paper = load_spec_file(BOT, "paper")
    cpu = load_spec_file(BOT, "cpu")
    assert cpu.profile == "cpu" and cpu.data.image_size == (128, 64)
    assert cpu.loss == paper.loss and cpu.optim == paper.optim
    assert run_hash(cpu) != run_hash(paper)


def test_hash_is_pinned_for_a_fixed_spec():
    # If this fails, every cached run in every user's results.db stops matching: bump
    # SCHEMA_VERSION deliberately instead of changing the hash by accident.
    assert run_hash(RunSpec()) == run_hash(spec_from_json(RunSpec().to_json()))
    assert run_hash(RunSpec()) == "67299ddca762c4d4b0e4f3d726bbd01c2c8577a63429807d27f6c1b5156912d6"


def test_hash_ignores_trick_order_but_not_trick_versions():
    a = dataclasses.replace(RunSpec(), tricks=("bnneck", "warmup"))
    b = spec_from_dict({"tricks": ["warmup", "bnneck"]})
    assert a.tricks == b.tricks and run_hash(a) == run_hash(b)
    assert run_hash(a, {"bnneck": 1, "warmup": 1}) != run_hash(a, {"bnneck": 2, "warmup": 1})


def test_hash_changes_with_any_spec_field():
    base = RunSpec()
    assert run_hash(replace_section(base, "loss", label_smoothing=0.1)) != run_hash(base)
    assert run_hash(replace_section(base, "data", image_size=(384, 128))) != run_hash(base)


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"model": {"last_stride": 3}}, "model.last_stride=3"),
        ({"model": {"neck": "bn"}}, "plain or bnneck"),
        ({"model": {"colour": 1}}, "model.colour is not a known field"),
        ({"data": {"ids_per_batch": 1}}, "data.ids_per_batch=1"),
        ({"data": {"random_erasing_prob": 1.5}}, "probability"),
        ({"loss": {"label_smoothing": "lots"}}, "loss.label_smoothing='lots'"),
        ({"profile": "gpu"}, "profile='gpu'"),
        ({"schedule": {"milestones": [70, 40]}}, "schedule.milestones"),
        ({"bogus": 1}, "unknown field 'bogus'"),
    ],
)
def test_bad_fields_fail_with_a_message_naming_them(raw, fragment):
    with pytest.raises(SpecError) as info:
        spec_from_dict(raw)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {backbone: resnet50\n")
    with pytest.raises(SpecError, match="bad.yaml"):
        load_spec_file(bad)
    with pytest.raises(SpecError, match="not found"):
        load_spec_file(tmp_path / "missing.yaml")


def test_soft_margin_null_is_accepted():
    assert spec_from_dict({"loss": {"triplet_margin": None}}).loss.triplet_margin is None


def test_with_epochs_scales_milestones_and_records_the_full_length():
    spec = load_spec_file(BOT, "paper")
    short = with_epochs(spec, 12)
    assert short.schedule.max_epochs == 12 and short.schedule.milestones == (4, 7)
    assert short.full_epochs == 120 and short.shortened
    warm = with_epochs(replace_section(spec, "schedule", warmup_epochs=10), 12)
    assert warm.schedule.warmup_epochs == 2  # one epoch of warmup would be none
    assert run_hash(short) != run_hash(spec)
    assert not with_epochs(spec, 120).shortened


def test_with_epochs_never_decays_before_the_first_epoch():
    spec = load_spec_file(BOT, "cpu")  # milestones (4, 7) of 12
    assert with_epochs(spec, 2).schedule.milestones == (2,)
    assert with_epochs(spec, 1).schedule.milestones == (2,)  # past the end: never fires
