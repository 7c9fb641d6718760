"""experiments/mancs.yaml: the recipe loads, its step lists expand, Mancs trains end to end (and resumes
to the same weights), and ``report --paper`` shows Mancs' published row only beside the paper's Mancs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from reidbench.harness.cli import main
from reidbench.harness.report.paper import paper_system, paper_value
from reidbench.harness.spec import load_base_file, load_spec_file, replace_section, spec_from_dict
from reidbench.harness.spec.patches import apply_patch, parse_step_lists
from reidbench.harness.store import Store
from reidbench.harness.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from reidbench.harness.train.runner import RuntimeOptions, execute

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
MANCS = EXPERIMENTS / "mancs.yaml"


def test_both_profiles_load_with_the_seed_recipe():
    paper = load_spec_file(MANCS, "paper")
    cpu = load_spec_file(MANCS, "cpu")
    assert paper.model.arch == cpu.model.arch == "mancs" and paper.model.options == ()  # FAB + PReLU by default
    d = paper.data
    assert (d.image_size, d.ids_per_batch, d.imgs_per_id) == ((256, 128), 16, 16)
    assert (d.crop_scale, d.crop_aspect, d.flip_prob, d.random_erasing_prob) == ((0.64, 1.0), (2.0, 3.0), 0.5, 0.5)
    rank, cls, att = paper.loss.terms
    assert (rank.kind, rank.reads, rank.weight, rank.options) == ("curriculum_triplet", "f_rank", 1.0, ())  # m 0.5
    assert (cls.kind, cls.reads, cls.weight, cls.options) == ("focal", "logits", 1.0, ())  # gamma 2, sigmoid
    assert (att.kind, att.reads, att.weight) == ("bce", "logits_att", 0.2)
    assert paper.optim.name == "adam" and paper.optim.base_lr == 3e-4 and paper.optim.grad_clip_norm == 10.0
    assert paper.schedule.max_epochs == 160 and paper.schedule.milestones == ()
    assert cpu.model.backbone == "mobilenetv2" and cpu.data.image_size == (128, 64) and cpu.schedule.max_epochs == 6


def test_components_steps_switch_off_one_component_each():
    spec, extras = load_base_file(MANCS, "paper")
    steps = parse_step_lists(extras["ablations"], "ablations")["components"].steps
    specs = {s.label: apply_patch(spec, s) for s in steps}
    kinds = {label: [t.kind for t in s.loss.terms] for label, s in specs.items()}
    assert kinds["Mancs"] == ["curriculum_triplet", "focal", "bce"]
    assert kinds["w/o CS"] == ["triplet", "focal", "bce"] and dict(specs["w/o CS"].loss.terms[0].options) == {"margin": 0.5}
    assert kinds["w/o FAB"] == ["curriculum_triplet", "focal"] and dict(specs["w/o FAB"].model.options) == {"fab": False}
    assert kinds["w/o focal"] == ["curriculum_triplet", "ce", "bce"]
    assert specs["w/o REA"].data.random_erasing_prob == 0.0
    assert kinds["cls + rank baseline"] == ["triplet", "ce"]
    assert [paper_system(s.to_dict()) for s in specs.values()] == ["mancs", None, None, None, None, None]


def test_mancs_paper_row():
    assert paper_value("market", "market", (), "R1", system="mancs") == 93.1
    assert paper_value("market", "market", (), "mAP", system="mancs") == 82.3
    assert paper_value("duke", "duke", (), "R1", system="mancs") == 84.9
    assert paper_value("duke", "duke", (), "mAP", system="mancs") == 71.8
    assert paper_value("market", "duke", (), "R1", system="mancs") is None
    assert paper_value("market", "market", (), "rerank_R1", system="mancs") is None
    spec = load_spec_file(MANCS, "cpu")
    assert paper_system(spec.to_dict()) == "mancs"
    assert paper_system(replace_section(spec, "model", options=(("prelu", False),)).to_dict()) is None


def _tiny(raw: dict) -> dict:
    raw["model"].update(backbone="timm:test_resnet", pretrained=False, rank_dim=16, cls_dim=16)
    raw["data"].update(train="tiny", test=["tiny"], image_size=[32, 16], ids_per_batch=3, imgs_per_id=2)
    raw["eval"].update(batch_size=16)
    return raw


def test_mancs_trains_records_its_curriculum_and_resumes_to_the_same_weights(tiny_market, tmp_path, monkeypatch):
    raw = _tiny(load_spec_file(MANCS, "cpu").to_dict())
    raw["schedule"].update(max_epochs=2)
    spec = spec_from_dict(raw)
    options = dict(device="cpu", num_workers=0, data_paths={"tiny": str(tiny_market)}, progress=False,
                   log=lambda s: None)
    full = execute(spec, RuntimeOptions(out_dir=tmp_path / "full", **options))
    assert set(full.history[0]["losses"]) == {"rank", "cls", "att"}
    assert full.model_info["test_feature"] == ["f_rank"]
    details = full.model_info["loss_term_details"]["rank"]
    assert (details["t0_epochs"], details["t1_epochs"]) == pytest.approx((30 * 2 / 160, 60 * 2 / 160))
    assert 0.0 <= full.metrics["tiny"]["mAP"] <= 1.0

    import reidbench.harness.train.loop as loop

    real = loop.train_one_epoch

    def crash_on_epoch_2(c, epoch, max_epochs, hooks=()):
        if epoch == 2:
            raise RuntimeError("simulated crash")
        return real(c, epoch, max_epochs, hooks)

    monkeypatch.setattr(loop, "train_one_epoch", crash_on_epoch_2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        execute(spec, RuntimeOptions(out_dir=tmp_path / "resumed", **options))
    monkeypatch.setattr(loop, "train_one_epoch", real)
    execute(spec, RuntimeOptions(out_dir=tmp_path / "resumed", **options))
    a = load_checkpoint(tmp_path / "full" / CHECKPOINT_NAME)["model"]
    b = load_checkpoint(tmp_path / "resumed" / CHECKPOINT_NAME)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _ablate(base: Path, data: Path, tmp_path: Path, *extra: str):
    return CliRunner().invoke(main, ["ablate", "--base", str(base), "--data", f"tiny={data}", "--profile", "cpu",
                                     "--db", f"sqlite:///{tmp_path / 'r.db'}", "--runs-dir", str(tmp_path / "runs"),
                                     "--workers", "0", "--device", "cpu", *extra])


def test_ablate_lists_the_mancs_steps(tiny_market, tmp_path):
    result = _ablate(MANCS, tiny_market, tmp_path, "--steps", "components", "--dry-run")
    # listed, then refused as the real command would be: P = 16 of tiny's 6 identities
    assert result.exit_code == 2, result.output
    assert "reidbench: error: data.ids_per_batch=16: the training set --data tiny=" in result.output
    for label in ("Mancs", "w/o CS", "w/o FAB", "w/o focal", "w/o REA", "cls + rank baseline"):
        assert label in result.output
    assert "model.fab: (default) → False" in result.output


def test_a_tiny_copy_of_the_mancs_steps_trains_end_to_end(tiny_market, tmp_path):
    raw = yaml.safe_load(MANCS.read_text())
    raw["profiles"]["cpu"] = _tiny(dict(raw["profiles"]["cpu"], eval={}, model={}, data={}))
    raw["profiles"]["cpu"]["schedule"] = {"max_epochs": 1}
    steps = raw["ablations"]["components"]["steps"]
    raw["ablations"] = {"tiny": {"summary": "two rows", "steps": [steps[0], steps[-1]]}}
    raw["default_ablation"] = {"steps": "tiny"}  # it must name one of the file's step lists
    base = tmp_path / "tiny-mancs.yaml"
    base.write_text(yaml.safe_dump(raw))
    result = _ablate(base, tiny_market, tmp_path, "--steps", "tiny")
    assert result.exit_code == 0, result.output
    runs = {r.label: r for r in Store(f"sqlite:///{tmp_path / 'r.db'}").list_runs()}
    assert set(runs) == {"Mancs", "cls + rank baseline"} and all(r.status == "done" for r in runs.values())
    assert [t["kind"] for t in runs["cls + rank baseline"].spec["loss"]["terms"]] == ["triplet", "ce"]
