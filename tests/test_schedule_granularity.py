"""schedule.granularity: step — every phase a function of the optimizer step, checked against hand-computed values.

x = (epoch - 1) + step_index / steps_per_epoch is the epochs elapsed at the start of an optimizer
step (harness/train/schedules.py). What is checked independently:
- each schedule's multiplier at chosen x, computed by hand from the module doc's formulas;
- the LambdaLR stepped per optimizer step, and a real training run's LR at every step;
- stages and the freeze warm-up switching between two steps of one epoch, the frozen weights untouched;
- a step-granular run killed mid-training resumes to the uninterrupted weights;
- the epoch granularity (the default) is unchanged: the same hashes as the code before it existed;
- profiles are labels: unhashed, open names; cpu-v1 is the old cpu profile by content.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from pathlib import Path

import pytest
import torch
import yaml

from reidbench.harness.spec import (
    RunSpec,
    SpecError,
    load_base_file,
    replace_section,
    spec_from_dict,
    spec_from_stored,
    with_epochs,
)
from reidbench.harness.spec.hashing import run_hash, training_identity
from reidbench.harness.spec.loading import stored_spec_changes
from reidbench.harness.spec.sections import canonical_json, to_jsonable
from reidbench.harness.train.schedules import build_scheduler, get_schedule
from reidbench.tricks import get_trick

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"
BASES = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))


def m_step(kind: str, x: float, max_epochs: int, **params) -> float:
    """The step-granular multiplier at x epochs elapsed (the schedule is called with t = x + 1)."""
    return get_schedule(kind).multiplier(1.0 + x, max_epochs, granularity="step", **params)


# ---------------------------------------------------------------------------------------------- formulas


def test_multistep_step_warmup_ramps_over_w_and_decays_at_m_minus_1():
    p = dict(milestones=(2.95, 4.45), gamma=0.1, warmup_epochs=0.5, warmup_factor=0.01)
    # warmup: 0.01 at x = 0, linear to 1 at x = W = 0.5; decays for x >= m - 1 = 1.95 and 3.45
    assert m_step("multistep", 0.0, 6, **p) == pytest.approx(0.01)
    assert m_step("multistep", 0.25, 6, **p) == pytest.approx(0.01 + 0.99 * 0.5)
    assert m_step("multistep", 0.5, 6, **p) == pytest.approx(1.0)
    assert m_step("multistep", 1.9499, 6, **p) == pytest.approx(1.0)
    assert m_step("multistep", 1.95, 6, **p) == pytest.approx(0.1)
    assert m_step("multistep", 3.4499, 6, **p) == pytest.approx(0.1)
    assert m_step("multistep", 3.45, 6, **p) == pytest.approx(0.01)


def test_without_warmup_step_and_epoch_multipliers_agree_at_every_epoch_start():
    # integer milestones: the step schedule at x = e - 1 is the epoch schedule of epoch e
    for e in range(1, 11):
        assert m_step("multistep", e - 1, 10, milestones=(4, 7)) == \
            get_schedule("multistep").multiplier(e, 10, milestones=(4, 7))
        assert m_step("poly", e - 1, 10, power=2.0) == pytest.approx(get_schedule("poly").multiplier(e, 10, power=2.0))
    # ... and poly moves between them: (1 - x/T) ** power at x = 2.5 of 10
    assert m_step("poly", 2.5, 10, power=2.0) == pytest.approx(0.75**2)


def test_cosine_step_holds_exactly_the_delay_after_the_warmup_then_decays_to_min():
    p = dict(warmup_epochs=2, delay_epochs=3)  # S = W + delay = 5
    assert m_step("cosine", 0.0, 10, **p) == pytest.approx(0.01)
    assert m_step("cosine", 1.0, 10, **p) == pytest.approx(0.505)
    assert [m_step("cosine", x, 10, **p) for x in (2.0, 3.5, 5.0)] == pytest.approx([1.0, 1.0, 1.0])
    assert m_step("cosine", 7.5, 10, **p) == pytest.approx(0.5)  # halfway through [5, 10]
    assert m_step("cosine", 6.25, 10, **p) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert m_step("cosine", 10.0, 10, min_factor=0.2, **p) == pytest.approx(0.2)
    # fast-reid's reading: the delay counts from the start, overlapping the warmup: S = max(W, delay) = 3
    start = dict(warmup_epochs=2, delay_epochs=3, delay_from="start")
    assert m_step("cosine", 3.0, 10, **start) == 1.0
    assert m_step("cosine", 6.5, 10, **start) == pytest.approx(0.5)


def test_fractions_of_the_run_are_unrounded_in_step_granularity():
    # unit fraction: a fraction f is f * T epochs; a milestone f is the (1-based) epoch f * T, as in epoch granularity
    frac = dict(milestones=(0.5,), warmup_epochs=0.1, unit="fraction")
    assert m_step("multistep", 0.3, 6, **frac) == pytest.approx(0.01 + 0.99 * 0.3 / 0.6)
    assert m_step("multistep", 1.99, 6, **frac) == 1.0 and m_step("multistep", 2.0, 6, **frac) == pytest.approx(0.1)


def test_the_scheduler_counts_optimizer_steps():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler(opt, "multistep", 3, 4, milestones=(2.5,), warmup_epochs=0.5, granularity="step")
    seen = []
    for _ in range(12):  # 3 epochs of 4 steps: x = k / 4
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [(0.01 + 0.99 * (k / 4) / 0.5 if k / 4 < 0.5 else 1.0) * (0.1 if k / 4 >= 1.5 else 1.0)
                for k in range(12)]
    assert seen == pytest.approx(expected)
    with pytest.raises(ValueError, match="steps_per_epoch=0 is not valid"):
        build_scheduler(opt, "multistep", 3, granularity="step")


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("raw, fragment", [
    ({"schedule": {"max_epochs": 6, "milestones": [2.95]}},
     "schedule.milestones=2.95 is not valid: a whole number >= 0 (unit 'epochs'; a fractional one needs "
     "granularity step)"),
    ({"schedule": {"max_epochs": 6, "milestones": [4], "warmup_epochs": 0.5}},
     "schedule.warmup_epochs=0.5 is not valid: a whole number >= 0 (unit 'epochs'; a fractional one needs "
     "granularity step)"),
    ({"schedule": {"max_epochs": 6, "milestones": [4], "granularity": "iteration"}},
     "schedule.granularity='iteration' is not valid: epoch or step"),
    ({"schedule": {"max_epochs": 6, "milestones": [4], "granularity": "step"},
      "stages": [{"epochs": 0.7, "train_only": ["new"]}, {"epochs": 5}]},
     "stages=[0.7, 5] is not valid: epochs that add up to schedule.max_epochs=6"),
    ({"schedule": {"max_epochs": 6, "milestones": [4]}, "stages": [{"epochs": 0.7, "train_only": ["new"]},
                                                                    {"epochs": 5.3}]},
     "stages[0].epochs=0.7 is not valid: an integer >= 1 (a fractional stage length needs schedule.granularity: step)"),
    ({"schedule": {"kind": "cosine", "max_epochs": 6, "delay_epochs": 1.5}}, "schedule.delay_epochs=1.5"),
    ({"schedule": {"max_epochs": 6, "milestones": [0.5], "granularity": "step"}}, "schedule.milestones=[0.5]"),
])
def test_fractional_phases_need_step_granularity_one_line_errors(raw, fragment):
    with pytest.raises(SpecError) as info:
        spec_from_dict(raw)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_fractional_phases_load_in_step_granularity():
    spec = spec_from_dict({"schedule": {"kind": "cosine", "max_epochs": 6, "delay_epochs": 1.5, "warmup_epochs": 0.5,
                                        "granularity": "step"},
                           "stages": [{"epochs": 0.7, "train_only": ["new"]}, {"epochs": 5.3}]})
    assert dict(spec.schedule.options)["delay_epochs"] == 1.5 and spec.stages[0].epochs == 0.7


def test_a_schedule_without_step_granularity_is_refused_in_step_mode():
    import dataclasses

    from reidbench.harness.train.schedules import SCHEDULES, ScheduleEntry, register_schedule

    @dataclasses.dataclass(frozen=True)
    class HalfParams:
        factor: float = 0.5

    register_schedule("half", ScheduleEntry("a constant factor", HalfParams, lambda t, T, p: p.factor))
    try:
        with pytest.raises(SpecError, match=r"schedule.granularity='step' is not read by schedule.kind=half"):
            spec_from_dict({"schedule": {"kind": "half", "max_epochs": 6, "granularity": "step"}})
    finally:
        del SCHEDULES["half"]


# ---------------------------------------------------------------------------------------------- identities


def test_granularity_epoch_is_the_default_and_unhashed():
    assert RunSpec().schedule.granularity == "epoch"
    explicit = spec_from_dict({"schedule": {"granularity": "epoch"}})
    assert run_hash(explicit) == run_hash(RunSpec())
    assert "granularity" not in training_identity(explicit)["spec"].get("schedule", {})
    step = spec_from_dict({"schedule": {"granularity": "step"}})
    assert run_hash(step) != run_hash(RunSpec())


# Hashes the code before step granularity computed (main at e365d1c) for each base file, with the
# training set's name (no fingerprint): the paper profiles keep theirs exactly; the cpu profiles
# of then are today's cpu-v1, whose identity differs only by the profile label, no longer hashed.
OLD_PAPER = {
    "bot": "7265182ef540170eadc348cb47a326ef0bb5000ca9d824da6c08741aa60d9189",
    "mgn": "1a059c7816b2fb8fc78caddc23f1863a676a3b87a8bca75b4a50622c8f117c8b",
    "mancs": "0d489b6057e7e3215f8e75fcfbd6735904e70509429f0ba522d96fa1456dded3",
    "geng": "bc8ab12866baaeec87e701f86b9237f59967b8f704f99a3e194db5d705671237",
    "agw": "cba2a41a4288258722615570ca273b5b8b39a5c004facf50773cca01467ace5f",
    "spreid": "455cc80fa898477fc9e6d82c49d8b7ad7aca30210b8067eb2d0ceead470ab70e",
}
OLD_CPU = {
    "bot": "ad76410d7979e890322492293725ffbb062f9e1d74043dd7594c3d2d5b10ffd4",
    "mgn": "c44272de7484a7005703510468b7bd01a12200040bbe1eedbb4d0aa4921233ed",
    "mancs": "2597bb45db7f193eafc1a5afd78c21b1ad7fb6c5b4abe8257e7b96e485a3e69d",
    "geng": "29315896eb97eb42c829796c1ca56cae4da2f28d2d5f2b1b75d768adfff454b7",
    "agw": "75e5ab392a4d2c33cb7155a9f285519ddf60d0abdd1ba0bd2ba7b4c78dc2a182",
    "spreid": "55706f9d8d3969aa953c7b2d7f332ba6299ce35b5144508e9cf1bb2c161cfca7",
}
OLD_BOT_CPU_TRICKS = {
    "warmup": "e4a151dbf561abc7eb1739520b9841f9a2d7546212cdc7aa1cd228675e113365",
    "cosine": "e2a7d457dfcaea50a4dc91f82e23b937c68303017251fa5d3b16f46e7ae7f3bd",
    "freeze": "0a7b51e418eb35684a854b80d66d32c2faaac2590138e22382582ade317145b2",
    "two-step": "7c62379ed660f37bf5415a1dee330731bacf0df9ceff0fbed0f78c9e43db8150",
    "curriculum": "231bb3f18e05a2d1f7ede6e3441cd6a5a6e1c9ee2b67b450c757a00039a78c76",
}


def _with_label(spec: RunSpec, label: str) -> str:
    """The hash of ``spec`` as the old code computed it: the profile label inside the hashed spec."""
    payload = training_identity(spec)
    payload["spec"]["profile"] = label
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def test_paper_profiles_keep_their_hashes():
    assert set(OLD_PAPER) == set(BASES), "a base file was added: pin its paper hash"
    for base in BASES:
        spec, _ = load_base_file(EXPERIMENTS / f"{base}.yaml", "paper")
        assert spec.schedule.granularity == "epoch"
        assert run_hash(spec) == OLD_PAPER[base], base


def test_cpu_v1_is_the_old_cpu_profile_by_content_and_its_tricks_are_unchanged():
    for base in BASES:
        spec, _ = load_base_file(EXPERIMENTS / f"{base}.yaml", "cpu-v1")
        assert spec.profile == "cpu-v1" and spec.schedule.granularity == "epoch"
        assert _with_label(spec, "cpu") == OLD_CPU[base], base
    bot, _ = load_base_file(EXPERIMENTS / "bot.yaml", "cpu-v1")
    for name, old in OLD_BOT_CPU_TRICKS.items():  # epoch granularity: every trick writes what it wrote
        assert _with_label(get_trick(name).apply(bot), "cpu") == old, name


def test_the_profile_is_a_label_not_part_of_the_identity():
    spec, _ = load_base_file(EXPERIMENTS / "bot.yaml", "cpu")
    relabelled = RunSpec(**{**{f: getattr(spec, f) for f in spec.__dataclass_fields__}, "profile": "my-laptop"})
    assert run_hash(relabelled.validate()) == run_hash(spec)
    assert "profile" not in training_identity(spec)["spec"]
    assert spec.to_dict()["profile"] == "cpu"  # still recorded with the run


def test_every_base_defines_paper_cpu_and_cpu_v1_and_an_undefined_profile_lists_them(tmp_path):
    for base in BASES:
        raw = yaml.safe_load((EXPERIMENTS / f"{base}.yaml").read_text())
        assert {"paper", "cpu", "cpu-v1"} <= set(raw["profiles"]), base
    with pytest.raises(SpecError) as info:
        load_base_file(EXPERIMENTS / "bot.yaml", "gpu")
    assert str(info.value).endswith("profile 'gpu' not defined; defined: paper, cpu, cpu-converged, cpu-v1, cpu-v2")
    plain = tmp_path / "plain.yaml"
    plain.write_text("schedule: {max_epochs: 2, milestones: [2]}\n")
    assert load_base_file(plain, "cpu")[0].profile == "cpu"  # a file without profiles: the standard names as labels
    with pytest.raises(SpecError, match="profile 'cpu-v1' not defined"):
        load_base_file(plain, "cpu-v1")


def test_cpu_profiles_are_step_granular_with_the_paper_phases_scaled():
    # "for now": the cpu profile's phases are the paper profile's, scaled to its length exactly (with_epochs)
    for base in BASES:
        cpu, _ = load_base_file(EXPERIMENTS / f"{base}.yaml", "cpu")
        paper, _ = load_base_file(EXPERIMENTS / f"{base}.yaml", "paper")
        scaled = with_epochs(paper, cpu.schedule.max_epochs).schedule
        assert cpu.schedule.granularity == "step", base
        for name in ("milestones", "warmup_epochs", "freeze_epochs", "options"):
            assert getattr(cpu.schedule, name) == getattr(scaled, name), (base, name)


DB_V3 = Path(__file__).resolve().parent / "fixtures" / "db-v3" / "results.db"


def test_stored_epoch_granular_runs_keep_their_identity_but_the_profile_label():
    """db-v3 (written by the previous main): every stored run's spec, read by today's loader, has the
    training identity it was stored under, once its profile label is put back — and, where the
    spec held fields that nothing reads (harness/spec/reads.py, the lead's change), those too."""
    with sqlite3.connect(DB_V3) as db:
        rows = db.execute("select run_hash, spec, train_fingerprint from rb_runs").fetchall()
    assert len(rows) == 5
    plain = 0
    for stored_hash, spec_json, fingerprint in rows:
        raw = json.loads(spec_json)
        spec = spec_from_stored(raw)
        assert spec.schedule.granularity == "epoch" and spec.profile == raw["profile"] == "cpu"
        payload = training_identity(spec, {t: 1 for t in spec.tricks}, fingerprint)
        assert "profile" not in payload["spec"] and "granularity" not in payload["spec"].get("schedule", {})
        old = json.loads(json.dumps(payload))
        old["spec"]["profile"] = raw["profile"]
        unread = stored_spec_changes(raw)
        plain += not unread
        for item in unread:
            section, name = item.path.split(".")
            old["spec"].setdefault(section, {})[name] = to_jsonable(item.value, prune_defaults=True)
        assert hashlib.sha256(canonical_json(old).encode("utf-8")).hexdigest() == stored_hash
    assert plain == 3  # the Baseline, +warmup and MobileNetV2 runs: only the profile label differs


# ---------------------------------------------------------------------------------------------- training


STEP_SPEC = """
profile: cpu
model: {backbone: "timm:test_resnet", pretrained: false, last_stride: 2, neck: plain}
data: {train: tiny, test: [tiny], image_size: [32, 16], ids_per_batch: 3, imgs_per_id: 2, pad_px: 2}
schedule: {granularity: step, max_epochs: 3, milestones: [2.5], warmup_epochs: 0.5}
stages:
  - {name: head, epochs: 0.7, train_only: [new]}
  - {name: all, epochs: 2.3}
eval: {batch_size: 16}
train: {seed: 0, checkpoint_every_epochs: 1}
"""


class Recorder:
    """A hook recording, per optimizer step: x (from the loop's epoch, step and that epoch's length), the
    LR it trained with, whether it moved the backbone's weights, and the run's optimizer step count."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, float, bool, int]] = []
        self.before: dict[str, torch.Tensor] = {}

    def after_step(self, c, step, losses) -> None:
        backbone = {n: p.detach().clone() for n, p in c.model.named_parameters() if n.startswith("backbone.")}
        moved = any(not torch.equal(backbone[n], self.before[n]) for n in backbone)
        self.before = backbone
        progress = c.train_progress
        x = (progress.epoch - 1) + (step - 1) / progress.steps_per_epoch
        self.rows.append((x, c.optimizer.param_groups[0]["lr"], moved, progress.optimizer_steps))


def _expected_lr(x: float) -> float:
    warm = 0.01 + 0.99 * x / 0.5 if x < 0.5 else 1.0
    return 3.5e-4 * warm * (0.1 if x >= 1.5 else 1.0)  # milestone 2.5: decayed from x = 1.5


def test_a_step_granular_run_trains_each_step_at_its_lr_and_in_its_stage(tiny_market):
    from reidbench.harness.data.named import load_named_dataset
    from reidbench.harness.train.build import build_training
    from reidbench.harness.train.loop import run_training

    spec = spec_from_dict(yaml.safe_load(STEP_SPEC))
    train_set, _ = load_named_dataset("tiny", {"tiny": str(tiny_market)}, progress=False)
    c = build_training(spec, train_set, torch.device("cpu"), 0, False).components
    assert c.granularity == "step" and c.train_progress.granularity == "step"
    recorder = Recorder()
    recorder.before = {k: p.detach().clone() for k, p in c.model.named_parameters() if k.startswith("backbone.")}
    history = run_training(c, 0, 3, spec.train.seed, [recorder])
    xs = [x for x, *_ in recorder.rows]
    assert xs[:6] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])  # 5 steps in epoch 1 (P×K draws of tiny)
    assert [lr for _, lr, _, _ in recorder.rows] == pytest.approx([_expected_lr(x) for x in xs], rel=1e-12)
    assert [k for *_, k in recorder.rows] == list(range(1, len(xs) + 1))
    # stage "head" (train only the new head) for x < 0.7: the first 4 steps leave the backbone as it was
    assert [moved for _, _, moved, _ in recorder.rows[:5]] == [False, False, False, False, True]
    assert [h.stage for h in history] == ["head→all", "all", "all"]


def test_a_step_granular_run_resumes_to_the_uninterrupted_weights(tiny_market, tmp_path, monkeypatch):
    import reidbench.harness.train.loop as loop
    from reidbench.harness.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from reidbench.harness.train.runner import RuntimeOptions, execute

    spec = spec_from_dict(yaml.safe_load(STEP_SPEC))

    def options(folder: str) -> RuntimeOptions:
        return RuntimeOptions(out_dir=tmp_path / folder, device="cpu", num_workers=0,
                              data_paths={"tiny": str(tiny_market)}, progress=False, log=lambda s: None,
                              tensorboard=False)

    full = execute(spec, options("full"))
    real = loop.train_one_epoch

    def crash_in_epoch_3(c, epoch, max_epochs, hooks=()):
        if epoch == 3:
            raise RuntimeError("simulated crash")
        return real(c, epoch, max_epochs, hooks)

    monkeypatch.setattr(loop, "train_one_epoch", crash_in_epoch_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        execute(spec, options("run"))
    state = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert state["epoch"] == 2 and state["optimizer_steps"] == state["scheduler"]["last_epoch"] == 10  # 2 × 5 steps
    monkeypatch.setattr(loop, "train_one_epoch", real)
    resumed = execute(spec, options("run"))
    a, b = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME), load_checkpoint(tmp_path / "full" / CHECKPOINT_NAME)
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]
    assert resumed.metrics == full.metrics


# ---------------------------------------------------------------------------------------------- curricula


def test_the_curriculum_clock_follows_the_granularity():
    from reidbench.models.terms import TrainProgress
    from reidbench.models.terms.curriculum import curriculum_time

    mid = dict(epoch=3, step=3, steps_per_epoch=4, max_epochs=6)  # x = 2.75
    assert curriculum_time(TrainProgress(**mid), "epoch") == 2.0  # completed epochs
    assert curriculum_time(TrainProgress(**mid), "continuous") == 2.75
    assert curriculum_time(TrainProgress(**mid, granularity="step"), "epoch") == 2.75  # every phase follows x


def test_time_continuous_is_the_same_run_in_step_granularity():
    terms = [{"kind": "curriculum_triplet", "reads": "f_t", "time": "continuous"}, {"kind": "ce", "reads": "logits"}]
    step = spec_from_dict({"schedule": {"granularity": "step"}, "loss": {"terms": terms}})
    assert step.loss.terms[0].options == ()  # dropped: step granularity reads t continuously anyway
    plain = spec_from_dict({"schedule": {"granularity": "step"}, "loss": {"terms": [dict(terms[0], time="epoch"),
                                                                                  terms[1]]}})
    assert run_hash(step) == run_hash(plain)
    epoch = spec_from_dict({"loss": {"terms": terms}})  # epoch granularity: the reading is a choice, kept
    assert dict(epoch.loss.terms[0].options) == {"time": "continuous"}
    assert run_hash(epoch) != run_hash(spec_from_dict({"loss": {"terms": [dict(terms[0], time="epoch"), terms[1]]}}))


# ---------------------------------------------------------------------------------------------- the dry run


def _dry_run(base: str, tricks: str, mode: str = "single", steps: str | None = None) -> list[str]:
    from reidbench.harness.ablation.plan import dry_run_lines, plan_ablation
    from reidbench.harness.spec.patches import parse_step_lists
    from reidbench.tricks import parse_trick_list

    spec, extras = load_base_file(EXPERIMENTS / f"{base}.yaml", "cpu")
    step_list = parse_step_lists(extras.get("ablations"), base)[steps] if steps else None
    plan = plan_ablation(spec, base, parse_trick_list(tricks), "steps" if steps else mode, [0], step_list=step_list)
    return dry_run_lines(plan, {})


def test_the_dry_run_prints_each_steps_phases_with_their_share_of_the_run():
    lines = _dry_run("bot", "warmup")
    assert lines[0].endswith("8 epochs, granularity step")
    assert lines.count("      phases: LR ×0.1 from 32.5 %; LR ×0.01 from 57.5 %") == 1  # (40-1)/120, (70-1)/120
    assert "      phases: warmup (×0.01→1) 0–8.33 %; LR ×0.1 from 32.5 %; LR ×0.01 from 57.5 %" in lines
    geng = _dry_run("geng", "", steps="fine-tuning")
    assert any(line.endswith("step1 (train new only; losses ce) 0–11.76 %; step2 11.76–100 %") for line in geng)
    agw = _dry_run("agw", "freeze,cosine")
    assert any(line.endswith("backbone frozen 0–8.25 %") for line in agw)
    assert "      phases: warmup (×0.01→1) 0–6.25 %; cosine decay to ×0.002 from 50 %" in agw
    mancs = _dry_run("mancs", "", steps="components")
    assert "      phases: rank: negatives easiest→hardest 0–18.75 %; rank: σ 15→0.015 18.75–37.5 %" in mancs
