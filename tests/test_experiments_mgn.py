"""experiments/mgn.yaml: both profiles load, and MGN trains and evaluates through the generic core."""

from __future__ import annotations

from pathlib import Path

import pytest

from reidbench.harness.spec import load_spec_file, spec_from_dict
from reidbench.harness.spec.hashing import run_hash
from reidbench.harness.train.runner import RuntimeOptions, execute

MGN = Path(__file__).resolve().parent.parent / "experiments" / "mgn.yaml"


def test_both_profiles_load_with_the_paper_recipe():
    paper = load_spec_file(MGN, "paper")
    cpu = load_spec_file(MGN, "cpu")
    assert paper.model.arch == cpu.model.arch == "mgn"
    assert paper.data.image_size == (384, 128) and paper.schedule.milestones == (40, 60)
    assert paper.optim.name == "sgd" and paper.optim.base_lr == 0.01 and paper.schedule.max_epochs == 80
    ce, triplet = paper.loss.terms
    assert (ce.reads, ce.combine) == ("logits_*", "sum")
    assert (triplet.reads, triplet.combine, dict(triplet.options)) == (("f_g", "f_p2", "f_p3"), "sum", {"margin": 1.2})
    # cpu profile: the part-branch map (stride 16) of a 192-px-high image has 12 rows, split evenly in 2 and 3.
    assert cpu.model.backbone == "mobilenetv2" and (cpu.data.image_size[0] // 16) % 6 == 0


def test_mgn_trains_one_epoch_and_scores_its_concatenated_feature(tiny_market, tmp_path):
    raw = load_spec_file(MGN, "cpu").to_dict()
    raw["model"].update(backbone="timm:test_resnet", pretrained=False)
    raw["data"].update(train="tiny", test=["tiny"], image_size=[48, 16], ids_per_batch=3, imgs_per_id=2)
    raw["schedule"].update(max_epochs=1, milestones=[2])
    raw["eval"].update(batch_size=16)
    spec = spec_from_dict(raw)
    result = execute(spec, RuntimeOptions(out_dir=tmp_path / "run", device="cpu", num_workers=0,
                                          data_paths={"tiny": str(tiny_market)}, progress=False, log=lambda s: None))
    assert set(result.history[0]["losses"]) == {"id", "triplet"}
    assert result.model_info["test_feature"] == ["f_g", "f_p2", "f_p3", "f_p2_1", "f_p2_2", "f_p3_1", "f_p3_2", "f_p3_3"]
    (default,) = [e for e in result.evaluations if e["variant"] == ""]
    assert default["settings"]["flip"] is True and default["settings"]["feature"].count("+") == 7
    assert 0.0 <= default["metrics"]["mAP"] <= 1.0


def test_vs_bot_compares_mgn_and_bot_at_one_budget_in_the_cpu_profile():
    # vs-bot's BoT rows run bot's profile of the same name: MGN's cpu profile trains as long, with
    # the same optimiser and LR, so the rows differ in architecture (and losses), not in budget.
    bot = load_spec_file(Path(__file__).resolve().parent.parent / "experiments" / "bot.yaml", "cpu")
    mgn = load_spec_file(MGN, "cpu")
    assert (mgn.optim.name, mgn.optim.base_lr, mgn.schedule.max_epochs, mgn.schedule.granularity) == \
        (bot.optim.name, bot.optim.base_lr, bot.schedule.max_epochs, bot.schedule.granularity)
    # ... each with its own paper's LR milestones in proportion (MGN: 40 and 60 of 80 epochs)
    shares = [(m - 1) / mgn.schedule.max_epochs for m in mgn.schedule.milestones]
    assert shares == pytest.approx([39 / 80, 59 / 80])
    # the cpu-v2 profile (the old budget) runs the same BoT rows as cpu
    assert load_spec_file(MGN, "cpu-v2").schedule.max_epochs == 6
    bot_v2 = load_spec_file(Path(__file__).resolve().parent.parent / "experiments" / "bot.yaml", "cpu-v2")
    assert run_hash(bot_v2) == run_hash(bot)
