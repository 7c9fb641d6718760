"""RunSpec loading/validation, hashing and the --epochs scaling."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from reidbench.harness.spec.hashing import run_hash, training_identity
from reidbench.harness.spec import (
    ModelSpec,
    RunSpec,
    SpecError,
    load_spec_file,
    replace_section,
    spec_from_dict,
    spec_from_json,
    with_epochs,
)

from reidbench.tricks import get_trick

BOT = Path(__file__).resolve().parent.parent / "experiments" / "bot.yaml"


def test_bot_base_matches_reference_baseline_s():
    spec = load_spec_file(BOT, "paper")
    assert spec.model.backbone == "resnet50" and spec.model.last_stride == 2 and spec.model.neck == "plain"
    assert spec.data.image_size == (256, 128)
    assert (spec.data.ids_per_batch, spec.data.imgs_per_id) == (16, 4)
    assert spec.optim.base_lr == 3.5e-4 and spec.optim.weight_decay == 5e-4
    assert spec.schedule.milestones == (40, 70) and spec.schedule.max_epochs == 120
    assert spec.schedule.warmup_epochs == 0 and spec.data.random_erasing_prob == 0.0
    ce, triplet = spec.loss.terms
    assert (ce.kind, ce.reads, ce.weight, ce.options) == ("ce", "logits", 1.0, ())  # no label smoothing
    assert (triplet.kind, triplet.reads, triplet.weight, triplet.options) == ("triplet", "f_t", 1.0, ())  # margin 0.3
    assert spec.model.arch == "bot" and spec.data.sampler == "pk" and spec.schedule.kind == "multistep"
    assert spec.eval.normalize and spec.eval.metric == "sqeuclidean"


def test_cpu_profile_overlay_changes_only_what_it_names():
    paper = load_spec_file(BOT, "paper")
    cpu = load_spec_file(BOT, "cpu")
    assert cpu.profile == "cpu" and cpu.data.image_size == (96, 48)
    assert cpu.loss == paper.loss  # the recipe's losses; the optimiser keeps its kind, at a higher LR
    assert cpu.optim == dataclasses.replace(paper.optim, base_lr=1.0e-3)
    assert run_hash(cpu) != run_hash(paper)


def test_hash_is_pinned_for_a_fixed_spec():
    # If this fails, every cached run in every user's results.db stops matching: never change an
    # existing field's default or the hashed payload by accident (see harness/spec/hashing.py).
    assert run_hash(RunSpec()) == run_hash(spec_from_json(RunSpec().to_json()))
    assert run_hash(RunSpec(), train_fingerprint="dir:0123456789abcdef01234567") == \
        "6291bd95b6bde308641f1277d4347dceb3f4af759e654b6fee292aecf6549c7a"
    assert training_identity(RunSpec(), train_fingerprint="dir:x") == {
        "schema": 2, "spec": {}, "data": {"train": "dir:x"}, "tricks": {}}


def test_a_field_added_later_with_its_default_does_not_change_any_hash():
    # Growth: a new default-off field in a section, in a loss term and a new component option.
    Grown = dataclasses.make_dataclass("Grown", [("dropout", float, dataclasses.field(default=0.0))],
                                       bases=(ModelSpec,), frozen=True)
    for spec in (RunSpec(), load_spec_file(BOT, "cpu"), get_trick("bnneck").apply(load_spec_file(BOT, "cpu"))):
        grown = dataclasses.replace(spec, model=Grown(**{f.name: getattr(spec.model, f.name)
                                                         for f in dataclasses.fields(ModelSpec)}))
        assert run_hash(grown, train_fingerprint="dir:a") == run_hash(spec, train_fingerprint="dir:a")
        assert run_hash(dataclasses.replace(grown, model=dataclasses.replace(grown.model, dropout=0.5)),
                        train_fingerprint="dir:a") != run_hash(spec, train_fingerprint="dir:a")
    # A value written out but equal to the default is no change either.
    explicit = spec_from_dict({"loss": {"terms": [{"kind": "ce", "reads": "logits", "label_smoothing": 0.0},
                                                  {"kind": "triplet", "reads": "f_t", "margin": 0.3}]}})
    assert run_hash(explicit) == run_hash(RunSpec())


def test_fields_that_do_not_change_the_weights_are_not_hashed():
    base = RunSpec()
    same = [replace_section(base, "eval", metric="cosine", flip=True, rerank=True, batch_size=7, every_epochs=2),
            replace_section(base, "train", checkpoint_every_epochs=5),
            replace_section(base, "data", test=("market",), train="renamed")]
    for spec in same:
        assert run_hash(spec, train_fingerprint="dir:a") == run_hash(base, train_fingerprint="dir:a")
    assert run_hash(base, train_fingerprint="dir:a") != run_hash(base, train_fingerprint="dir:b")


def test_old_style_loss_fields_load_as_the_same_terms():
    old = spec_from_dict({"loss": {"id_weight": 1.0, "label_smoothing": 0.1, "triplet_weight": 1.0,
                                   "triplet_margin": 0.3, "center_weight": 0.0005, "center_lr": 0.5}})
    new = spec_from_dict({"loss": {"terms": [{"kind": "ce", "reads": "logits", "label_smoothing": 0.1},
                                             {"kind": "triplet", "reads": "f_t"},
                                             {"kind": "center", "reads": "f_t", "weight": 0.0005}]}})
    assert old == new and run_hash(old) == run_hash(new)
    with pytest.raises(SpecError, match="old-style field"):
        spec_from_dict({"loss": {"id_weight": 1.0, "terms": []}})


def test_an_unknown_trick_in_a_spec_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tricks: [warmup, teleport]\n")
    with pytest.raises(SpecError) as info:
        load_spec_file(bad)
    assert "teleport" in str(info.value) and "bad.yaml" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(SpecError, match="not registered"):
        run_hash(dataclasses.replace(RunSpec(), tricks=("teleport",)))


def test_hash_ignores_trick_order_but_not_trick_versions():
    a = dataclasses.replace(RunSpec(), tricks=("bnneck", "warmup"))
    b = spec_from_dict({"tricks": ["warmup", "bnneck"]})
    assert a.tricks == b.tricks and run_hash(a) == run_hash(b)
    assert run_hash(a, {"bnneck": 1, "warmup": 1}) != run_hash(a, {"bnneck": 2, "warmup": 1})


def test_hash_changes_with_any_hashed_field():
    base = RunSpec()
    assert run_hash(get_trick("ls").apply(base)) != run_hash(base)
    assert run_hash(replace_section(base, "data", image_size=(384, 128))) != run_hash(base)
    assert run_hash(replace_section(base, "optim", grad_clip_norm=5.0)) != run_hash(base)


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"model": {"last_stride": 3}}, "model.last_stride=3"),
        ({"model": {"neck": "bn"}}, "plain or bnneck"),
        ({"model": {"colour": 1}}, "model.colour is not a known field"),
        ({"data": {"ids_per_batch": 1}}, "data.ids_per_batch=1"),
        ({"data": {"random_erasing_prob": 1.5}}, "probability"),
        ({"loss": {"label_smoothing": "lots"}}, "loss.label_smoothing='lots'"),
        ({"loss": {"terms": [{"kind": "ce", "reads": "logits", "label_smoothing": 1.5}]}},
         "loss.terms[0].label_smoothing=1.5"),
        ({"loss": {"terms": [{"kind": "arcface", "reads": "logits"}]}}, "loss.terms[].kind='arcface' is unknown"),
        ({"loss": {"terms": [{"kind": "triplet", "reads": "f_t", "margn": 1}]}}, "loss.terms[0].margn is not a known"),
        ({"model": {"arch": "nope"}}, "model.arch='nope' is unknown; valid: bot"),
        ({"data": {"sampler": "nope"}}, "data.sampler='nope' is unknown"),
        ({"schedule": {"kind": "cosine", "power": 2}}, "schedule.power is not a known field"),
        ({"optim": {"name": "lamb"}}, "optim.name='lamb'"),
        ({"stages": [{"epochs": 120, "frozen": ["backbone"], "train_only": ["new"]}]}, "stages[0].train_only"),
        ({"stages": [{"epochs": 5}]}, "add up to schedule.max_epochs=120"),
        ({"profile": "cpu v2"}, "profile='cpu v2'"),
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
    spec = spec_from_dict({"loss": {"terms": [{"kind": "ce", "reads": "logits"}, {"kind": "triplet", "reads": "f_t",
                                                                                "margin": None}]}})
    assert dict(spec.loss.terms[1].options) == {"margin": None}
    assert dict(spec_from_dict({"loss": {"triplet_margin": None}}).loss.terms[1].options) == {"margin": None}


def test_with_epochs_scales_milestones_and_records_the_full_length():
    spec = load_spec_file(BOT, "paper")
    short = with_epochs(spec, 12)
    # step granularity, every phase exact: milestone m of 120 -> 1 + (m - 1) * 12/120 (its decay at x = m - 1)
    assert short.schedule.granularity == "step" and spec.schedule.granularity == "epoch"
    assert short.schedule.max_epochs == 12 and short.schedule.milestones == (4.9, 7.9)
    assert short.full_epochs == 120 and short.shortened
    warm = with_epochs(replace_section(spec, "schedule", warmup_epochs=10), 12)
    assert warm.schedule.warmup_epochs == 1  # 10/120 of the run, no "at least 2"
    assert with_epochs(replace_section(spec, "schedule", warmup_epochs=10), 6).schedule.warmup_epochs == 0.5
    assert run_hash(short) != run_hash(spec)
    assert not with_epochs(spec, 120).shortened and with_epochs(spec, 120) == spec  # nothing to scale: as it is


def test_with_epochs_keeps_every_milestones_share_of_the_run():
    spec = load_spec_file(BOT, "cpu")  # milestones (2.95, 4.45) of 6: decays after 1.95/6 and 3.45/6 of the run
    for epochs in (1, 2, 5, 17):
        short = with_epochs(spec, epochs).schedule
        assert [(m - 1) / epochs for m in short.milestones] == pytest.approx([1.95 / 6, 3.45 / 6], abs=1e-6)
        assert all(m >= 1 for m in short.milestones)  # never a decay before the first step
