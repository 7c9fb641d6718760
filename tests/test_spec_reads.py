"""A spec means exactly what it says: a field that none of its components reads is an error.

Which component reads which field is declared by the components (``Architecture.model_fields``,
the optimisers' and schedules' parameter dataclasses); harness/spec/reads.py answers from those
declarations. Here: every way a value can come in (YAML, profile overlay, preset/step list,
trick, ``--epochs``), the messages, the stored-spec reading, and Adam's ``eps``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reidbench.harness.spec import SpecError, load_base_file, spec_from_dict, with_epochs
from reidbench.harness.spec.hashing import run_hash
from reidbench.harness.spec.loading import spec_from_stored, stored_spec_changes
from reidbench.harness.spec.patches import apply_patch, parse_patch
from reidbench.harness.spec.reads import owned_fields, unread_fields
from reidbench.tricks import get_trick

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
BASES = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))


def _error(raw: dict) -> str:
    with pytest.raises(SpecError) as info:
        spec_from_dict(raw)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("raw, field, readers", [
    ({"optim": {"name": "adam", "momentum": 0.95}}, "optim.momentum=0.95", "optim.name sgd"),
    ({"optim": {"name": "adam", "nesterov": True}}, "optim.nesterov=True", "optim.name sgd"),
    ({"optim": {"name": "sgd", "betas": [0.5, 0.9]}}, "optim.betas=[0.5, 0.9]", "optim.name adam, adamw"),
    ({"schedule": {"kind": "cosine", "milestones": [4, 6]}}, "schedule.milestones=[4, 6]", "schedule.kind multistep"),
    ({"schedule": {"kind": "poly", "gamma": 0.5}}, "schedule.gamma=0.5", "schedule.kind multistep"),
    ({"model": {"arch": "mancs", "neck": "bnneck"}}, "model.neck='bnneck'", "model.arch bot, mgn"),
])
def test_a_field_the_chosen_component_does_not_read_is_one_line_naming_who_would(raw, field, readers):
    message = _error(raw)
    assert message.startswith(field) and readers in message and "drop it" in message


@pytest.mark.parametrize("raw, field", [
    ({"optim": {"name": "adam", "momentum": 0.9}}, "optim.momentum=0.9"),  # SGD's default, written beside Adam
    ({"schedule": {"kind": "cosine", "milestones": [40, 70], "gamma": 0.1}}, "schedule.milestones=[40, 70]"),
    ({"model": {"arch": "mancs", "neck": "plain"}}, "model.neck='plain'"),
])
def test_a_written_unread_field_is_refused_even_at_its_default(raw, field):
    assert _error(raw).startswith(field)


@pytest.mark.parametrize("raw, field, when", [
    ({"schedule": {"warmup_factor": 0.1}}, "schedule.warmup_factor=0.1", "schedule.warmup_epochs > 0"),
    ({"schedule": {"freeze_modules": ["new"]}}, "schedule.freeze_modules=['new']", "schedule.freeze_epochs > 0"),
])
def test_a_field_read_only_when_another_switches_it_on(raw, field, when):
    message = _error(raw)
    assert message.startswith(field) and when in message
    # switched on, the same value is read and accepted
    on = {"schedule": {**raw["schedule"], ("warmup_epochs" if "warmup" in field else "freeze_epochs"): 2}}
    spec_from_dict(on)


def test_the_declarations_come_from_the_components():
    optim = owned_fields("optim")
    assert optim == {"betas": ("adam", "adamw"), "momentum": ("sgd",), "nesterov": ("sgd",)}
    schedule = owned_fields("schedule")
    assert schedule["milestones"] == ("multistep",) and schedule["gamma"] == ("multistep",)
    assert schedule["warmup_epochs"] == ("cosine", "multistep", "poly")
    assert owned_fields("model")["neck"] == ("bot", "mgn")


class NoTerms(torch.nn.Module):
    """An objective without parameters of its own."""

    def own_parameters(self) -> set[int]:
        return set()


def test_an_optimisers_own_parameter_beyond_the_section_reaches_the_optimiser():
    from reidbench.harness.train.build import build_optimizer_for

    spec = spec_from_dict({"optim": {"name": "adamw", "eps": 1.0e-6, "betas": [0.8, 0.9]}})
    assert dict(spec.optim.options) == {"eps": 1.0e-6}
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer_for(spec, model, NoTerms())
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.AdamW) and group["eps"] == 1.0e-6 and group["betas"] == (0.8, 0.9)
    assert "eps" not in spec_from_dict({"optim": {"name": "adam"}}).to_dict()["optim"]
    message = _error({"optim": {"name": "sgd", "eps": 1.0e-6}})
    assert message.startswith("optim.eps") and "valid" in message


def test_to_dict_shows_only_what_is_read_and_round_trips_for_every_shipped_base():
    for base in BASES:
        for profile in ("paper", "cpu"):
            spec, _ = load_base_file(EXPERIMENTS / f"{base}.yaml", profile)
            data = spec.to_dict()
            kind = spec.optim.name
            assert ("momentum" in data["optim"]) == (kind == "sgd"), (base, profile)
            assert ("betas" in data["optim"]) == (kind in ("adam", "adamw")), (base, profile)
            assert spec_from_dict(data) == spec
            assert unread_fields(spec) == []


def test_a_profile_that_switches_the_optimiser_leaves_the_old_ones_fields_behind(tmp_path):
    base = tmp_path / "b.yaml"
    base.write_text("optim: {name: sgd, momentum: 0.8, nesterov: true, base_lr: 0.01}\n"
                    "profiles:\n  cpu: {optim: {name: adam}}\n  paper: {}\n")
    sgd, _ = load_base_file(base, "paper")
    assert (sgd.optim.momentum, sgd.optim.nesterov) == (0.8, True)
    adam, _ = load_base_file(base, "cpu")
    assert adam.optim.name == "adam" and (adam.optim.momentum, adam.optim.nesterov) == (0.9, False)
    assert adam.optim.base_lr == 0.01  # a field every optimiser reads stays
    base.write_text("optim: {name: sgd, momentum: 0.8}\nprofiles:\n  cpu: {optim: {name: adam, momentum: 0.8}}\n")
    with pytest.raises(SpecError, match=r"optim.momentum=0.8 is not read by optim.name=adam"):
        load_base_file(base, "cpu")


def test_a_step_that_switches_the_schedule_drops_the_milestones_and_refuses_them_if_set():
    spec = spec_from_dict({"schedule": {"max_epochs": 6, "milestones": [4, 6]}})
    switched = apply_patch(spec, parse_patch({"label": "cos", "set": {"schedule.kind": "cosine"}}, "step"))
    assert switched.schedule.kind == "cosine" and switched.schedule.milestones == (40, 70)  # the default
    bad = parse_patch({"label": "x", "set": {"schedule.kind": "cosine", "schedule.milestones": [2]}}, "steps[1]")
    with pytest.raises(SpecError) as info:
        apply_patch(spec, bad)
    assert str(info.value).startswith("steps[1]: schedule.milestones=[2] is not read by schedule.kind=cosine")


def test_the_cosine_trick_hashes_as_a_cosine_schedule_written_by_hand():
    base = spec_from_dict({"schedule": {"max_epochs": 6, "milestones": [4, 6]}})
    tricked = get_trick("cosine").apply(base)
    by_hand = spec_from_dict({"schedule": {"kind": "cosine", "max_epochs": 6, "delay_epochs": 3,
                                           "delay_from": "start", "min_factor": 0.002}, "tricks": ["cosine"]})
    assert tricked == by_hand and run_hash(tricked) == run_hash(by_hand)
    assert "milestones" not in tricked.to_dict()["schedule"]


def test_epochs_scale_only_what_the_schedule_reads():
    cosine = get_trick("cosine").apply(spec_from_dict({}))
    short = with_epochs(cosine, 6)
    assert short.schedule.milestones == (40, 70) and dict(short.schedule.options)["delay_epochs"] == 3


def test_a_trick_that_writes_a_field_its_base_does_not_read_is_refused():
    mancs, _ = load_base_file(EXPERIMENTS / "mancs.yaml", "cpu")
    with pytest.raises(ValueError, match=r"trick 'bnneck' does not apply to model.arch='mancs'.*model.neck"):
        get_trick("bnneck").apply(mancs)


def test_a_stored_spec_with_unread_fields_is_read_with_them_reset():
    stored = {"optim": {"name": "adam", "momentum": 0.95, "betas": [0.9, 0.999]},
              "schedule": {"kind": "cosine", "milestones": [2], "delay_epochs": 1}}
    spec = spec_from_stored(stored)
    assert spec.optim.momentum == 0.9 and spec.schedule.milestones == (40, 70)
    assert [u.path for u in stored_spec_changes(stored)] == ["optim.momentum", "schedule.milestones"]
    assert run_hash(spec) == run_hash(spec_from_dict({"schedule": {"kind": "cosine", "delay_epochs": 1}}))
    with pytest.raises(SpecError):
        spec_from_dict(stored)  # a user's file with the same content is refused


def test_the_fixture_database_specs_load_as_stored():
    """Specs exactly as the schema-3 code stored them (every field written) read without error."""
    runs = Path(__file__).resolve().parent / "fixtures" / "db-v3" / "runs"
    for folder in sorted(runs.iterdir()):
        stored = json.loads((folder / "spec.json").read_text())["spec"]
        spec = spec_from_stored(stored)
        assert spec.data.train == "tiny"


def test_optimiser_groups_load_and_build():
    from reidbench.harness.train.build import build_optimizer_for
    from reidbench.models.architectures import build_architecture

    spec = spec_from_dict({"model": {"backbone": "timm:test_resnet", "pretrained": False},
                           "optim": {"base_lr": 1.0e-3, "groups": [{"match": ["new"], "lr_scale": 10}]}})
    torch.manual_seed(0)
    model = build_architecture(spec.model, 3)
    optimizer = build_optimizer_for(spec, model, NoTerms())
    by_name = {g["name"]: g for g in optimizer.param_groups}
    assert by_name["new"]["lr"] == pytest.approx(1.0e-2) and by_name["default"]["lr"] == pytest.approx(1.0e-3)
    assert {id(p) for p in by_name["new"]["params"]} == {id(p) for p in model.head.parameters()}
