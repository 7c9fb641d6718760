"""Trick registry contract (generated over the registry) and ablation expansion."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from reidbench.harness.ablation.expand import expand, spec_diff
from reidbench.harness.spec.hashing import run_hash
from reidbench.harness.spec import load_spec_file, replace_section, spec_from_json, with_epochs
from reidbench.tricks import PAPER_ORDER, get_trick, registered_tricks, parse_trick_list, trick_versions

BOT = Path(__file__).resolve().parent.parent / "experiments" / "bot.yaml"


@pytest.fixture(scope="module")
def base():
    return load_spec_file(BOT, "paper")


@pytest.mark.parametrize("trick", registered_tricks(), ids=lambda t: t.name)
def test_each_trick_patches_base_into_a_valid_serialisable_hash_changing_spec(trick, base):
    patched = trick.apply(base)
    assert trick.name in patched.tricks
    assert spec_from_json(patched.to_json()) == patched
    assert run_hash(patched, trick_versions(patched.tricks)) != run_hash(base)
    assert patched != dataclasses.replace(base, tricks=patched.tricks), "the patch must change a field"
    assert trick.summary and "\n" not in trick.summary and trick.version >= 1


@pytest.mark.parametrize("trick", registered_tricks(), ids=lambda t: t.name)
def test_adding_a_trick_the_base_already_has_is_an_error(trick, base):
    with pytest.raises(ValueError, match="already applied"):
        trick.apply(trick.apply(base))


def test_the_six_tricks_set_the_reference_values(base):
    spec = base
    for t in parse_trick_list(PAPER_ORDER):  # BoT's six (the registry also holds AGW's, some conflicting)
        spec = t.apply(spec)
    assert spec.schedule.warmup_epochs == 10 and spec.schedule.warmup_factor == 0.01
    assert spec.data.random_erasing_prob == 0.5
    ce, triplet, center = spec.loss.terms
    assert (ce.kind, ce.reads, dict(ce.options)) == ("ce", "logits", {"label_smoothing": 0.1})
    assert (triplet.kind, triplet.reads, dict(triplet.options)) == ("triplet", "f_t", {})  # margin 0.3 = default
    assert spec.model.last_stride == 1 and spec.model.neck == "bnneck"
    assert (center.kind, center.reads, center.weight, dict(center.options)) == ("center", "f_t", 0.0005, {})


def test_a_patch_that_changes_nothing_is_an_error(base):
    already = replace_section(base, "model", neck="bnneck")  # a base that has BNNeck without saying so
    with pytest.raises(ValueError, match="changes nothing"):
        get_trick("bnneck").apply(already)


def test_names_aliases_and_unknown_names():
    # BoT's six in the paper's order first; the seed systems' tricks (two-step, ...) follow them.
    assert PAPER_ORDER[:6] == ("warmup", "rea", "ls", "stride", "bnneck", "center")
    assert [t.name for t in parse_trick_list("label-smoothing,last-stride,center-loss")] == ["ls", "stride", "center"]
    with pytest.raises(ValueError) as info:
        parse_trick_list("bnneck,dropout")
    assert "'dropout'" in str(info.value) and "warmup, rea, ls, stride, bnneck, center" in str(info.value)
    with pytest.raises(ValueError, match="twice"):
        parse_trick_list("ls,label-smoothing")


def test_warmup_scales_with_a_short_schedule(base):
    # --epochs makes the run step-granular: the warmup is exactly 10/120 of it, fractional
    short = get_trick("warmup").apply(with_epochs(base, 12))
    assert short.schedule.warmup_epochs == 1 and short.schedule.max_epochs == 12
    assert get_trick("warmup").apply(with_epochs(base, 6)).schedule.warmup_epochs == 0.5
    # epoch granularity keeps today's whole epochs, at least 2 (stored runs keep matching)
    epoch12 = replace_section(base, "schedule", max_epochs=12, milestones=(4, 7))
    assert get_trick("warmup").apply(epoch12).schedule.warmup_epochs == 2


def test_cumulative_single_and_leave_one_out_rows(base):
    tricks = parse_trick_list("bnneck,center")
    cum = expand(base, tricks, "cumulative", [0])
    assert [s.step for s in cum] == ["Baseline", "+BNNeck", "+center loss"]
    assert [s.added for s in cum] == [(), ("bnneck",), ("bnneck", "center")]
    single = expand(base, parse_trick_list("warmup,rea,ls"), "single", [0])
    assert [s.added for s in single] == [(), ("warmup",), ("rea",), ("ls",)]
    loo = expand(base, parse_trick_list("warmup,rea,ls"), "leave-one-out", [0])
    assert [s.step for s in loo] == ["All tricks", "−warmup", "−REA", "−LS"]
    assert loo[2].added == ("warmup", "ls")
    # the all-tricks run of leave-one-out is the same run as the last cumulative row
    assert loo[0].run_hash == expand(base, parse_trick_list("warmup,rea,ls"), "cumulative", [0])[-1].run_hash


def test_seeds_multiply_rows_and_change_hashes(base):
    steps = expand(base, parse_trick_list("bnneck"), "cumulative", [0, 1, 2])
    assert len(steps) == 6 and len({s.run_hash for s in steps}) == 6
    assert [s.seed for s in steps] == [0, 1, 2, 0, 1, 2]


def test_spec_diff_names_what_changed(base):
    patched = get_trick("stride").apply(base)
    assert spec_diff(base, patched) == ["model.last_stride: 2 → 1"]


def test_expand_is_fast_for_100_runs(base):
    import time

    t0 = time.perf_counter()
    steps = expand(base, parse_trick_list(PAPER_ORDER), "cumulative", list(range(15)))  # 7 rows × 15 seeds = 105 runs
    assert len(steps) == 105
    assert time.perf_counter() - t0 < 1.0
    json.dumps([s.spec.to_dict() for s in steps])
