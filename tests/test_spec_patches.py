"""Labelled patches (harness/spec/patches.py): each key's effect on the spec, order, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from reidbench.harness.spec import SpecError, load_base_file
from reidbench.harness.spec.patches import (
    apply_patch,
    apply_with_tricks,
    parse_patch,
    parse_presets,
    parse_step_lists,
)

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


@pytest.fixture(scope="module")
def mgn():
    return load_base_file(EXPERIMENTS / "mgn.yaml", "cpu")


@pytest.fixture(scope="module")
def bot_cpu():
    return load_base_file(EXPERIMENTS / "bot.yaml", "cpu")[0]


def _terms(spec):
    return [(t.kind, t.read_names, t.combine, t.weight, dict(t.options)) for t in spec.loss.terms]


def test_set_changes_section_fields_and_component_options(mgn):
    spec, _ = mgn
    patched = apply_patch(spec, parse_patch({"set": {"model.branches": ["g", "p2"], "data.image_size": [96, 32],
                                                     "optim.base_lr": 0.02}}, "p"))
    assert dict(patched.model.options) == {"branches": ("g", "p2")}
    assert patched.data.image_size == (96, 32) and patched.optim.base_lr == 0.02
    assert patched.model.backbone == spec.model.backbone and patched.loss == spec.loss  # the rest untouched


def test_term_merges_into_every_term_of_that_kind_and_drop_removes(mgn):
    spec, _ = mgn
    one = apply_patch(spec, parse_patch({"term": {"triplet": {"reads": ["f_g"], "margin": None}}}, "p"))
    assert _terms(one) == [("ce", ("logits_*",), "sum", 1.0, {}), ("triplet", ("f_g",), "sum", 1.0, {"margin": None})]
    dropped = apply_patch(spec, parse_patch({"drop": ["triplet"]}, "p"))
    assert _terms(dropped) == [("ce", ("logits_*",), "sum", 1.0, {})]


def test_terms_replace_the_list_and_names_address_terms(mgn):
    spec, _ = mgn
    patch = parse_patch({"terms": [{"kind": "ce", "reads": "logits_*", "combine": "sum"},
                                   {"kind": "triplet", "name": "parts", "reads": ["f_p2_1", "f_p2_2"],
                                    "combine": "concat"}],
                         "term": {"parts": {"weight": 0.5}}}, "p")
    patched = apply_patch(spec, patch)
    assert _terms(patched) == [("ce", ("logits_*",), "sum", 1.0, {}),
                               ("triplet", ("f_p2_1", "f_p2_2"), "concat", 0.5, {})]


def test_base_and_keep_start_from_another_base_with_fields_of_this_one(mgn, bot_cpu):
    spec, _ = mgn
    patched = apply_patch(spec, parse_patch({"base": "bot", "keep": ["data.image_size"]}, "p"),
                          load_base=lambda name: {"bot": bot_cpu}[name])
    assert patched.model.arch == "bot" and patched.optim == bot_cpu.optim and patched.loss == bot_cpu.loss
    assert patched.data.image_size == spec.data.image_size != bot_cpu.data.image_size


def test_preset_applies_first_then_set_wins(mgn):
    spec, extras = mgn
    presets = parse_presets(extras["presets"], "presets")
    patched = apply_patch(spec, parse_patch({"preset": "fastreid", "set": {"model.pool": "avg"}}, "p"), presets=presets)
    options = dict(patched.model.options)
    assert options["ce_on"] == "reduced" and options["pool"] == "avg"  # the step's own set after the preset
    assert patched.model.neck == "bnneck" and patched.model.last_stride == 1


def test_tricks_are_applied_after_the_patch_and_recorded(mgn):
    spec, _ = mgn
    patched = apply_with_tricks(spec, parse_patch({"set": {"model.branches": ["g"]}, "term": {"triplet": {"reads": "f_g"}},
                                                   "tricks": ["ls"]}, "p"))
    assert patched.tricks == ("ls",) and dict(patched.loss.terms[0].options) == {"label_smoothing": 0.1}


@pytest.mark.parametrize("raw,message", [
    ({"colour": 1}, r"p\.colour is not a known field; valid: label, base"),
    ({"set": {"branches": ["g"]}}, r"p\.set must map dotted fields"),
    ({"keep": ["data.image_size"]}, r"p\.keep is only read with p\.base"),
    ({"term": {"triplet": 3}}, r"p\.term must map a term kind or name to fields"),
    ({"drop": 5}, r"p\.drop=5 is not valid: a list of names"),
    ({"terms": "ce"}, r"p\.terms must be a list of loss terms"),
])
def test_malformed_patches_fail_in_one_line(raw, message):
    with pytest.raises(SpecError, match=message) as error:
        parse_patch(raw, "p")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("raw,message", [
    ({"set": {"model.colour": "red"}}, r"model\.colour is not a known field"),
    ({"set": {"modle.branches": ["g"]}}, r"'modle\.branches' names no spec section"),
    ({"set": {"model.branches": ["g", "x"]}}, r"model\.branches=\['g', 'x'\] is invalid"),
    ({"term": {"center": {"weight": 1.0}}}, r"p\.term\.center: the spec has no loss term of that kind or name"),
    ({"drop": ["center"]}, r"p\.drop: the spec has no loss term 'center' to drop"),
    ({"preset": "nope"}, r"p\.preset='nope' is not a preset of this base; valid: fastreid"),
])
def test_patches_that_do_not_fit_the_spec_fail_in_one_line_naming_the_patch(mgn, raw, message):
    spec, extras = mgn
    with pytest.raises(SpecError, match=message) as error:
        apply_patch(spec, parse_patch(raw, "p"), presets=parse_presets(extras["presets"], "presets"))
    assert "\n" not in str(error.value) and str(error.value).startswith("p")


def test_a_trick_that_does_not_fit_a_step_names_the_step(mgn):
    spec, _ = mgn
    with pytest.raises(SpecError, match=r"p\.tricks: trick 'center' pulls the features the triplet term reads"):
        apply_with_tricks(spec, parse_patch({"drop": ["triplet"], "tricks": ["center"]}, "p"))


def test_step_lists_need_labels_and_unique_ones():
    with pytest.raises(SpecError, match=r"a\.x\.steps\[1\] needs a label"):
        parse_step_lists({"x": {"steps": [{"label": "A"}, {}]}}, "a")
    with pytest.raises(SpecError, match=r"step label 'A' is used twice"):
        parse_step_lists({"x": {"steps": [{"label": "A"}, {"label": "A", "drop": ["triplet"]}]}}, "a")
    with pytest.raises(SpecError, match=r"a\.x must be a mapping with a non-empty list of steps"):
        parse_step_lists({"x": {"steps": []}}, "a")
    lists = parse_step_lists({"x": {"summary": "s", "steps": [{"label": "A"}, {"label": "B", "drop": ["t"]}]}}, "a")
    assert [s.label for s in lists["x"].steps] == ["A", "B"] and lists["x"].summary == "s"
