"""AGW / fast-reid tricks in training: the cosine-after-delay schedule, the freeze-backbone warm-up
(iteration-granular), AutoAugment's probability, every trick on bot and mgn, the agw base, its
paper numbers and a tiny ablation end to end (docs/agw.md)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from reidbench.harness.spec import load_spec_file, spec_from_dict, with_epochs
from reidbench.harness.train.schedules import get_schedule
from reidbench.tricks import get_trick, parse_trick_list

ROOT = Path(__file__).resolve().parent.parent
BOT = ROOT / "experiments" / "bot.yaml"
AGW = ROOT / "experiments" / "agw.yaml"
AGW_TRICKS = "warmup,rea,ls,stride,bnneck,center,nonlocal,gem,wrt"
NEW_TRICKS = ("gem", "nonlocal", "wrt", "soft-margin", "circle", "cosine", "freeze", "autoaug")


def _spec(text: str, **sections):
    raw = yaml.safe_load(text)
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return spec_from_dict(raw)


# --------------------------------------------------------------------------- cosine after a delay


def test_cosine_delay_from_the_start_by_hand():
    # T=12, warmup W=2, delay D=6 counted from epoch 1, min 0.002: epoch 1 is the warmup's
    # 0.01·(1 − 1/2) + 1/2; epochs 2..6 full; then 0.002 + 0.998·(1 + cos(πk/7))/2, k = t − 6.
    m = [get_schedule("cosine").multiplier(t, 12, warmup_epochs=2, delay_epochs=6, min_factor=0.002,
                                           delay_from="start") for t in range(1, 13)]
    expected = [0.505, 1, 1, 1, 1, 1] + [0.002 + 0.998 * (1 + math.cos(math.pi * k / 7)) / 2 for k in range(1, 7)]
    assert m == pytest.approx(expected, abs=1e-12)
    # counted after the warmup (the schedule's original reading) the decay starts two epochs later
    after = [get_schedule("cosine").multiplier(t, 12, warmup_epochs=2, delay_epochs=6) for t in range(1, 13)]
    assert after[:8] == pytest.approx([0.505] + [1] * 7) and after[8] < 1


def test_cosine_trick_writes_fastreids_half_run_delay_and_rescales_with_epochs():
    base = load_spec_file(BOT, "paper")
    spec = get_trick("cosine").apply(base)
    assert spec.schedule.kind == "cosine"
    assert dict(spec.schedule.options) == {"delay_epochs": 60, "delay_from": "start", "min_factor": 0.002}
    short = with_epochs(spec, 12)
    assert dict(short.schedule.options)["delay_epochs"] == 6
    # the delay counts from epoch 1, so the warmup trick's order does not matter
    a = get_trick("cosine").apply(get_trick("warmup").apply(base))
    b = get_trick("warmup").apply(get_trick("cosine").apply(base))
    assert a == b
    cpu = get_trick("cosine").apply(load_spec_file(BOT, "cpu"))
    assert dict(cpu.schedule.options)["delay_epochs"] == 4  # half of the cpu profile's 8 epochs


# --------------------------------------------------------------------------- freeze warm-up


def test_freeze_trick_keeps_fastreids_proportion_and_rescales():
    base = load_spec_file(BOT, "paper")
    spec = get_trick("freeze").apply(base)
    assert spec.schedule.freeze_epochs == pytest.approx(120 * 1000 / (60 * 202), abs=1e-3)  # 9.901
    assert spec.schedule.freeze_modules == ("backbone",)
    assert with_epochs(spec, 6).schedule.freeze_epochs == pytest.approx(0.495, abs=1e-3)
    assert get_trick("freeze").apply(load_spec_file(BOT, "cpu-v1")).schedule.freeze_epochs == 0.495
    # step granularity (the cpu profile): to a millionth of an epoch, 8 × 1000 / 12,120
    assert get_trick("freeze").apply(load_spec_file(BOT, "cpu")).schedule.freeze_epochs == round(8000 / 12120, 6)


def test_frozen_at_counts_steps_not_epochs():
    from reidbench.harness.train.loop import StagePlan

    plan = StagePlan((("all", 1, 3, frozenset(), 1.0),), warm_frozen=frozenset({"w"}), warm_epochs=1.5)
    frozen = [bool(plan.frozen_at(e, s, 4)) for e in (1, 2, 3) for s in range(4)]
    assert frozen == [True] * 6 + [False] * 6  # ceil(1.5 × 4) = 6 steps


def test_freeze_warmup_keeps_backbone_weights_and_bn_statistics_for_exactly_its_steps(tiny_market, tiny_bot_yaml):
    from reidbench.harness.train.build import build_training
    from reidbench.harness.train.loop import run_training
    from reidbench.harness.train.runner import load_datasets

    spec = _spec(tiny_bot_yaml, model={"neck": "bnneck"}, schedule={"freeze_epochs": 0.5})
    datasets, _ = load_datasets(("tiny",), {"tiny": str(tiny_market)}, progress=False)
    c = build_training(spec, datasets["tiny"], torch.device("cpu"), 0, False).components
    steps_per_epoch = len(c.loader)
    frozen_steps = math.ceil(0.5 * steps_per_epoch)
    assert 0 < frozen_steps < steps_per_epoch, "the freeze must end inside the first epoch for this test"

    def backbone_state():
        return {k: v.clone() for k, v in c.model.state_dict().items() if k.startswith("backbone.")}

    initial = backbone_state()
    head0 = c.model.head.classifier.weight.detach().clone()
    assert any(k.endswith("running_mean") for k in initial)
    snapshots = []

    class Record:
        def after_step(self, components, step, losses):
            snapshots.append((step, backbone_state(), components.model.head.classifier.weight.detach().clone()))

    run_training(c, 0, 1, spec.train.seed, hooks=[Record()])
    assert len(snapshots) == steps_per_epoch
    for step, state, head in snapshots:
        same = all(torch.equal(state[k], initial[k]) for k in initial)
        if step <= frozen_steps:
            assert same, f"step {step}: the backbone changed during the freeze"
            assert not torch.equal(head, head0), "the head trains during the freeze"
        else:
            changed = [k for k in initial if not torch.equal(state[k], initial[k])]
            assert any(k.endswith("weight") for k in changed) and any(k.endswith("running_mean") for k in changed)
    assert all(p.requires_grad for n, p in c.model.named_parameters() if n.startswith("backbone."))


def test_freeze_modules_must_match_a_parameter(tiny_bot_yaml):
    from reidbench.harness.train.build import stage_plan
    from reidbench.models.architectures import build_architecture

    spec = _spec(tiny_bot_yaml, schedule={"freeze_epochs": 1, "freeze_modules": ["nothing_here"]})
    model = build_architecture(spec.model, 3)
    with pytest.raises(ValueError, match=r"schedule.freeze_modules=\['nothing_here'\] matches no parameter"):
        stage_plan(spec, model)
    with pytest.raises(Exception, match="schedule.freeze_epochs=2"):
        _spec(tiny_bot_yaml, schedule={"freeze_epochs": 2})


# --------------------------------------------------------------------------- AutoAugment


def test_autoaugment_runs_with_its_probability_and_is_recorded(tiny_bot_yaml):
    from reidbench.harness.data.transforms import TrainTransform

    transform = TrainTransform((32, 16), autoaug_prob=0.1)
    inner = transform.autoaug.transforms[0]
    assert type(inner).__name__ == "AutoAugment" and inner.policy.name == "IMAGENET"
    calls = 0

    def counting(image):
        nonlocal calls
        calls += 1
        return inner(image)

    transform.autoaug.transforms = [counting]
    image = torch.randint(0, 256, (3, 32, 16), dtype=torch.uint8)
    torch.manual_seed(0)
    n = 4000
    for _ in range(n):
        out = transform(image)
    assert out.dtype == torch.float32 and out.shape == (3, 32, 16)
    sd = math.sqrt(n * 0.1 * 0.9)
    assert abs(calls - 0.1 * n) < 4 * sd, calls
    assert TrainTransform((32, 16)).autoaug is None and "autoaug" not in repr(TrainTransform((32, 16)))
    spec = get_trick("autoaug").apply(load_spec_file(BOT, "paper"))
    assert spec.data.autoaug_prob == 0.1 and spec.to_dict()["data"]["autoaug_prob"] == 0.1


def test_the_training_loader_applies_the_specs_autoaugment(tiny_market, tiny_bot_yaml):
    from reidbench.harness.train.build import build_training
    from reidbench.harness.train.runner import load_datasets

    spec = get_trick("autoaug").apply(_spec(tiny_bot_yaml))
    datasets, _ = load_datasets(("tiny",), {"tiny": str(tiny_market)}, progress=False)
    c = build_training(spec, datasets["tiny"], torch.device("cpu"), 0, False).components
    assert c.loader.dataset.transform.autoaug.p == 0.1


# --------------------------------------------------------------------------- every trick on bot and mgn


@pytest.mark.parametrize("arch", ["bot", "mgn"])
@pytest.mark.parametrize("name", NEW_TRICKS)
def test_each_trick_applies_to_bot_and_mgn_and_trains_one_step(name, arch, tiny_bot_yaml, tiny_mgn_yaml):
    from reidbench.harness.train.build import stage_plan
    from reidbench.models.architectures import build_architecture
    from reidbench.models.objective import build_objective

    base = _spec(tiny_bot_yaml if arch == "bot" else tiny_mgn_yaml)
    spec = get_trick(name).apply(base)
    assert spec != base and name in spec.tricks
    torch.manual_seed(0)
    model = build_architecture(spec.model, 3)
    objective = build_objective(spec.loss.terms, 3, model.feature_dims)
    model.train()
    size = spec.data.image_size
    values = objective(model(torch.randn(6, 3, *size)), torch.tensor([0, 0, 1, 1, 2, 2]))
    total = torch.stack(list(values.values())).sum()
    assert torch.isfinite(total)
    total.backward()
    if name == "freeze":
        assert stage_plan(spec, model).warm_frozen
    if name == "circle":
        assert {t.kind for t in spec.loss.terms} == {"circle", "triplet"} and "id" in values


def test_circle_keeps_label_smoothing_and_maps_globs(tiny_mgn_yaml):
    bot = get_trick("circle").apply(get_trick("ls").apply(load_spec_file(BOT, "paper")))
    circle = bot.loss.terms[0]
    assert (circle.kind, circle.reads, dict(circle.options)) == ("circle", "cosine", {"label_smoothing": 0.1})
    assert dict(bot.model.options) == {**dict(load_spec_file(BOT, "paper").model.options), "classifier": "cosine"}
    mgn = get_trick("circle").apply(_spec(tiny_mgn_yaml))
    assert (mgn.loss.terms[0].reads, mgn.loss.terms[0].combine) == ("cosine_*", "sum")
    with pytest.raises(ValueError, match="trick 'ls' needs a loss term of kind 'ce'"):
        get_trick("ls").apply(get_trick("circle").apply(load_spec_file(BOT, "paper")))


def test_wrt_and_soft_margin_set_the_triplet_options_and_conflict():
    base = load_spec_file(BOT, "paper")
    wrt = get_trick("wrt").apply(base)
    assert dict(wrt.loss.terms[1].options) == {"margin": None, "mining": "weighted"}
    soft = get_trick("soft-margin").apply(base)
    assert dict(soft.loss.terms[1].options) == {"margin": None}
    with pytest.raises(ValueError, match="conflicts with wrt"):
        get_trick("soft-margin").apply(wrt)
    # the center loss still finds the (weighted) triplet term: AGW = ... + center + wrt in any order
    a = get_trick("center").apply(wrt)
    b = get_trick("wrt").apply(get_trick("center").apply(base))
    assert a == b


def test_agw_wrt_exact_preset_changes_only_the_triplet_weights_and_keeps_the_reference_hashes():
    from reidbench.harness.report.paper import paper_system
    from reidbench.harness.spec.loading import load_base_file
    from reidbench.harness.spec.patches import apply_patch, parse_presets

    agw, raw = load_base_file(AGW, "cpu")
    exact = apply_patch(agw, parse_presets(raw["presets"], "agw.presets")["wrt-exact"])
    changed = [(a, b) for a, b in zip(agw.loss.terms, exact.loss.terms) if a != b]
    assert [(dict(a.options), dict(b.options)) for a, b in changed] == [
        ({"margin": None, "mining": "weighted"}, {"margin": None, "mining": "weighted", "weights": "exact"})]
    assert exact.model == agw.model and exact.data == agw.data
    # "reference" is the default: written out or not, it is the same spec (stored AGW runs keep matching)
    written = apply_patch(agw, _term_patch({"triplet": {"weights": "reference"}}))
    from reidbench.harness.spec.hashing import run_hash

    assert written == agw and run_hash(written) == run_hash(agw) != run_hash(exact)
    # AGW's published numbers come from the reference weighting: the exact one is another loss
    assert paper_system(load_spec_file(AGW, "paper").to_dict()) == "agw"
    assert paper_system(exact.to_dict()) is None


def _term_patch(term):
    from reidbench.harness.spec.patches import parse_presets

    return parse_presets({"p": {"label": "p", "term": term}}, "test")["p"]


def test_triplet_weights_need_weighted_mining(tiny_bot_yaml):
    with pytest.raises(ValueError, match=r"loss.terms\[0\].weights='exact' needs mining: weighted"):
        _spec(tiny_bot_yaml, loss={"terms": [{"kind": "triplet", "reads": "f_t", "weights": "exact"}]})
    with pytest.raises(ValueError, match=r"loss.terms\[0\].weights='typo' is not valid: reference or exact"):
        _spec(tiny_bot_yaml, loss={"terms": [{"kind": "triplet", "reads": "f_t", "mining": "weighted", "weights": "typo"}]})
    ok = _spec(tiny_bot_yaml, loss={"terms": [{"kind": "triplet", "reads": "f_t", "mining": "weighted", "weights": "exact"}]})
    assert dict(ok.loss.terms[0].options) == {"mining": "weighted", "weights": "exact"}


def test_model_tricks_refuse_an_architecture_without_the_options():
    from reidbench.models.architectures import ARCHITECTURES, Architecture

    ARCHITECTURES.register("toy-agw", Architecture(name="toy-agw", summary="no options", build=lambda m, n: None))
    try:
        spec = spec_from_dict({"model": {"arch": "toy-agw"}})
        for name, option in (("gem", "pool"), ("nonlocal", "nonlocal_layers"), ("circle", "classifier")):
            with pytest.raises(ValueError, match=f"trick '{name}' does not apply to model.arch='toy-agw': it has "
                                                 f"no option model.{option}"):
                get_trick(name).apply(spec)
    finally:
        ARCHITECTURES.unregister("toy-agw")


# --------------------------------------------------------------------------- the agw base and its paper numbers


@pytest.mark.parametrize("profile", ["paper", "cpu", "cpu-v1"])
def test_agw_base_is_bot_with_its_nine_tricks(profile):
    from reidbench.harness.spec import replace_section, with_epochs

    agw = load_spec_file(AGW, profile)
    spec = load_spec_file(BOT, profile)
    for trick in parse_trick_list(AGW_TRICKS):
        spec = trick.apply(spec)
    if profile == "cpu":  # step-granular: its phases are AGW's paper phases (160 epochs) scaled, not BoT's (120)
        assert agw.schedule == with_epochs(load_spec_file(AGW, "paper"), 8).schedule
        spec = replace_section(spec, "schedule", milestones=agw.schedule.milestones,
                               warmup_epochs=agw.schedule.warmup_epochs)
    if profile == "paper":  # AGW trains 160 epochs (ReID-Survey configs/AGW_baseline.yml), steps still 40/70
        assert agw.schedule.max_epochs == 160 and spec.schedule.max_epochs == 120
        spec = replace_section(spec, "schedule", max_epochs=160)
        # BoT's paper profile reads the reference's stem (no ReLU); agw.yaml keeps timm's (docs/bot-reference.md)
        assert dict(spec.model.options).pop("stem_relu") is False and "stem_relu" not in dict(agw.model.options)
        spec = replace_section(spec, "model", options=tuple((k, v) for k, v in spec.model.options if k != "stem_relu"))
    assert agw == spec
    with pytest.raises(ValueError, match="already applied"):
        get_trick("gem").apply(agw)


def test_agw_cpu_profile_builds_with_nonlocal_blocks_on_mobilenetv2():
    import dataclasses

    from reidbench.models.architectures import build_architecture

    spec = load_spec_file(AGW, "cpu")
    model = build_architecture(dataclasses.replace(spec.model, pretrained=False), 4)
    assert model.reid_info["nonlocal_after"] == ["features.5", "features.6", "features.11", "features.12",
                                                 "features.13"]
    assert model.head.pool.learnable


def test_agw_paper_numbers():
    from reidbench.harness.report.paper import paper_system, paper_value

    agw = load_spec_file(AGW, "paper").to_dict()
    assert paper_system(agw) == "agw"
    bot_gem = get_trick("gem").apply(load_spec_file(BOT, "paper")).to_dict()
    assert paper_system(bot_gem) == "bot"
    from reidbench.harness.spec import replace_section

    half = load_spec_file(AGW, "paper")
    half = replace_section(half, "model", options=tuple(sorted({**dict(half.model.options),
                                                                "nonlocal_channels": "half"}.items())))
    assert paper_system(half.to_dict()) is None  # no published number for the C/2 variant
    assert [paper_value("market", "market", (), m, system="agw") for m in ("R1", "mAP", "mINP")] == [95.1, 87.8, 65.0]
    assert [paper_value("duke", "duke", (), m, system="agw") for m in ("R1", "mAP", "mINP")] == [89.0, 79.6, 45.7]
    assert paper_value("market", "duke", (), "R1", system="agw") is None
    assert paper_value("market", "market", (), "rerank_R1", system="agw") is None
    assert paper_value("synth-a", "synth-a", (), "R1", synthetic=True, system="agw") is None
    assert paper_value("market", "market", (), "mINP", system="bot") is None  # BoT publishes no mINP
    assert paper_value("market", "market", (), "R1", system="bot") == 87.7


def test_an_agw_run_on_market_shows_its_mINP_beside_the_measured_one(tmp_path):
    from reidbench.harness.ablation.expand import expand
    from reidbench.harness.report.tables import ablation_frame, ablation_table
    from reidbench.harness.spec import replace_section
    from reidbench.harness.store import Store

    spec = replace_section(load_spec_file(AGW, "paper"), "data", train="market", test=("market",))
    (step,) = expand(spec, (), "cumulative", [0])
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    store.ensure_run(step.run_hash, step.spec.to_dict(), step.label)
    assert store.claim(step.run_hash, "test")
    store.record_result(step.run_hash, "test", {
        "run_hash": step.run_hash, "spec": step.spec.to_dict(),
        "metrics": {"market": {"R1": 0.95, "mAP": 0.87, "mINP": 0.6}},
        "history": [{"epoch": 1, "losses": {"id": 2.0}, "lr": 0.01, "images_per_s": 10.0, "extra": {}}],
        "provenance": {"market": {"name": "market", "root": "/data", "format": "market", "synthetic": False}},
        "model_info": {"pretrained_source": "imagenet"}, "environment": {"device": "cpu"},
        "seconds_train": 1.0, "seconds_eval": 1.0, "out_dir": "/nonexistent"})
    store.record_ablation("a", "agw", "cumulative", {"train": "market", "test": ["market"], "seeds": [0]},
                          [{"position": step.position, "run_hash": step.run_hash, "label": step.label,
                            "step": step.step, "seed": step.seed}])
    table = ablation_table(ablation_frame(store), ["R1", "mAP", "mINP"], paper=True)
    row = table.loc[step.step]
    assert row[("Market-1501", "mINP", "paper")] == 65.0 and row[("Market-1501", "mINP", "mean")] == 60.0
    assert row[("Market-1501", "R1", "paper")] == 95.1


# --------------------------------------------------------------------------- end to end


def test_ablate_dry_run_with_agws_three_on_bot():
    from reidbench.harness.cli import main

    result = CliRunner().invoke(main, ["ablate", "--base", "bot", "--add", "gem,nonlocal,wrt", "--mode", "single",
                                       "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "4 run(s), 4 distinct" in result.output
    for label in ("Baseline", "+GeM", "+non-local", "+WRT"):
        assert label in result.output


def test_tiny_ablations_of_every_agw_trick_train_and_report(tmp_path, tiny_market, tiny_bot_yaml):
    from reidbench.harness.cli import main
    from reidbench.harness.store import Store

    base = tmp_path / "tiny-bot.yaml"
    base.write_text(tiny_bot_yaml)
    common = ["--base", str(base), "--data", f"tiny={tiny_market}", "--profile", "cpu", "--mode", "single",
              "--db", f"sqlite:///{tmp_path / 'r.db'}", "--runs-dir", str(tmp_path / "runs"), "--workers", "0",
              "--device", "cpu"]
    first = CliRunner().invoke(main, ["ablate", "--add", "gem,nonlocal,wrt", *common])
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(main, ["ablate", "--add", "soft-margin,circle,cosine,freeze,autoaug", *common])
    assert second.exit_code == 0, second.output
    assert "1 cached" in second.output  # the shared baseline
    runs = {r.label: r for r in Store(f"sqlite:///{tmp_path / 'r.db'}").list_runs()}
    assert all(r.status == "done" for r in runs.values()) and len(runs) == 9
    assert runs["+non-local"].spec["model"]["nonlocal_layers"] == [0, 2, 3, 0]
    assert runs["+circle"].spec["loss"]["terms"][0]["kind"] == "circle"
    assert copy.deepcopy(runs["+freeze"].spec["schedule"]["freeze_epochs"]) == pytest.approx(0.165)
