"""Tricks declare the fields they write; two tricks writing one field are refused unless one refines the other.

The contract (``check_trick_contract``) runs over every registered trick on every shipped base ×
profile where the trick applies, and over a trick registered from this file (the way a user adds
one, with ``register_trick``): what the patch changed (``written_paths``, computed independently
of the declaration) lies within ``writes``; the result is valid, serialisable and hash-changing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from reidbench.harness.spec import RunSpec, load_base_file, replace_section, spec_from_dict, spec_from_json
from reidbench.harness.spec.hashing import run_hash
from reidbench.tricks import (Trick, find_trick, get_trick, parse_trick_list, register_trick, registered_tricks,
                              trick_versions, unregister_trick)
from reidbench.tricks.base import covered, overlapping, set_term_options, written_paths

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
BASES = [(p.stem, profile) for p in sorted(EXPERIMENTS.glob("*.yaml")) for profile in ("paper", "cpu")]


@pytest.fixture(scope="module")
def bases() -> dict[tuple[str, str], RunSpec]:
    return {(name, profile): load_base_file(EXPERIMENTS / f"{name}.yaml", profile)[0] for name, profile in BASES}


def check_trick_contract(trick: Trick, base: RunSpec) -> bool:
    """True when ``trick`` applied to ``base`` and kept its contract; False when it (rightly) refused."""
    try:
        patched = trick.apply(base)
    except ValueError as exc:
        message = str(exc)
        assert "\n" not in message and (trick.name in message or "trick" in message), message
        return False
    changed = written_paths(base, patched)
    assert changed, f"{trick.name}: the patch must change a field"
    outside = [p for p in changed if not covered(p, trick.writes)]
    assert not outside, f"{trick.name} wrote {outside} beyond its declared writes {sorted(trick.writes)}"
    assert trick.name in patched.tricks
    assert spec_from_json(patched.to_json()) == patched
    assert run_hash(patched, trick_versions(patched.tricks)) != run_hash(base, trick_versions(base.tricks))
    return True


@pytest.mark.parametrize("trick", registered_tricks(), ids=lambda t: t.name)
def test_every_trick_keeps_its_declared_writes_on_every_shipped_base(trick, bases):
    assert trick.writes, f"{trick.name} declares no writes"
    applied = [key for key, base in bases.items() if trick.name not in base.tricks and check_trick_contract(trick, base)]
    assert applied, f"{trick.name} applies to no shipped base"


def test_written_paths_by_hand():
    base = spec_from_dict({"schedule": {"max_epochs": 6, "milestones": [4, 6]}})
    after = replace_section(base, "schedule", warmup_epochs=2)
    # warmup_factor is read (and so shown) only once there is a warmup
    assert written_paths(base, after) == ["schedule.warmup_epochs", "schedule.warmup_factor"]
    smoothed = set_term_options(base, "ce", "toy", label_smoothing=0.2)
    assert written_paths(base, smoothed) == ["loss.terms[ce].label_smoothing"]
    centred = get_trick("center").apply(base)
    assert written_paths(base, centred) == ["loss.terms[center]"]  # ``tricks`` is not a written field
    cosine = get_trick("cosine").apply(base)
    # gamma and the milestones are no longer read (they leave the spec's plain data)
    assert written_paths(base, cosine) == ["schedule.delay_epochs", "schedule.delay_from", "schedule.gamma",
                                           "schedule.kind", "schedule.milestones", "schedule.min_factor"]


def test_overlap_and_cover():
    assert covered("loss.terms[ce].label_smoothing", {"loss.terms[ce]"})
    assert not covered("loss.terms[ce]", {"loss.terms[ce].label_smoothing"})
    assert not covered("model.neck_x", {"model.neck"})
    assert overlapping({"loss.terms[ce]"}, {"loss.terms[ce].label_smoothing"}) == ["loss.terms[ce]"]
    assert overlapping({"schedule.kind"}, {"schedule.warmup_epochs"}) == []


@pytest.fixture
def toy():
    """Register tricks from outside the package, as a user would; unregistered afterwards."""
    made: list[str] = []

    def make(name: str, patch, writes, **kwargs) -> Trick:
        trick = Trick(name=name, version=1, summary=f"{name} toy", label=f"+{name}", patch=patch,
                      writes=frozenset(writes), **kwargs)
        register_trick(trick)
        made.append(name)
        return trick

    yield make
    for name in made:
        unregister_trick(name)
    assert all(find_trick(n) is None for n in made)


def _margin(value):
    return lambda spec: set_term_options(spec, "triplet", "toy", margin=value)


def test_a_trick_registered_from_outside_keeps_the_contract_and_is_listed(toy, bases):
    trick = toy("margin-half", _margin(0.5), {"loss.terms[triplet].margin"})
    assert trick in registered_tricks() and get_trick("margin-half") is trick
    assert check_trick_contract(trick, bases[("bot", "cpu")])
    spec = parse_trick_list("margin-half")[0].apply(bases[("bot", "cpu")])
    assert dict(spec.loss.terms[1].options) == {"margin": 0.5}


def test_a_later_trick_writing_the_same_field_is_refused_naming_both(toy, bases):
    toy("margin-half", _margin(0.5), {"loss.terms[triplet].margin"})
    soft = get_trick("soft-margin").apply(bases[("bot", "cpu")])
    with pytest.raises(ValueError) as info:
        get_trick("margin-half").apply(soft)
    message = str(info.value)
    assert "'margin-half' and 'soft-margin' both write loss.terms[triplet].margin" in message


def test_a_trick_that_refines_another_may_write_its_field(toy, bases):
    toy("margin-soft-then-half", _margin(0.5), {"loss.terms[triplet].margin"}, refines=frozenset({"soft-margin"}))
    soft = get_trick("soft-margin").apply(bases[("bot", "cpu")])
    refined = get_trick("margin-soft-then-half").apply(soft)
    assert dict(refined.loss.terms[1].options) == {"margin": 0.5}


def test_a_trick_that_writes_beyond_its_declaration_is_refused(toy, bases):
    toy("sneaky", lambda s: replace_section(set_term_options(s, "triplet", "toy", margin=0.5), "data",
                                            random_erasing_prob=0.1), {"loss.terms[triplet].margin"})
    with pytest.raises(ValueError, match=r"trick 'sneaky' changed data.random_erasing_prob, which it does not declare"):
        get_trick("sneaky").apply(bases[("bot", "cpu")])


def test_names_and_aliases_are_unique(toy):
    with pytest.raises(ValueError, match="already registered"):
        register_trick(dataclasses.replace(get_trick("ls"), summary="another"))
    with pytest.raises(ValueError, match="'label-smoothing' already names trick 'ls'"):
        toy("smooth", _margin(0.5), {"loss.terms[triplet].margin"}, aliases=frozenset({"label-smoothing"}))


@pytest.mark.parametrize("first, second, allowed", [
    ("soft-margin", "curriculum", True),  # curriculum keeps the term's (soft) margin: it refines soft-margin
    ("wrt", "curriculum", False),  # ... but would drop wrt's weighted mining
    ("ls", "circle", True),  # circle carries the label smoothing over
    ("focal", "circle", False),  # both replace the ce terms
])
def test_the_shipped_tricks_that_overlap(first, second, allowed, bases):
    spec = get_trick(first).apply(bases[("bot", "cpu")])
    if allowed:
        get_trick(second).apply(spec)
    else:
        with pytest.raises(ValueError, match="both write"):
            get_trick(second).apply(spec)
