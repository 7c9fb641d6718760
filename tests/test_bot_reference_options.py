"""The reference reading of BoT as named options: ``model.stem_relu``, bot.yaml's paper profile, the caption."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from reidbench.harness.ablation.expand import expand
from reidbench.harness.report.tables import AblationContext, ablation_caption, ablation_context
from reidbench.harness.spec import ModelSpec, RunSpec, SpecError, load_spec_file, replace_section, spec_from_dict, with_epochs
from reidbench.harness.spec.hashing import run_hash
from reidbench.harness.store import Store
from reidbench.models.architectures import build_architecture
from reidbench.tricks import parse_trick_list

BOT = Path(__file__).resolve().parent.parent / "experiments" / "bot.yaml"
# bot.yaml's paper-profile hash before the profile named the reference stem (timm's stem ReLU kept).
# Pinned so the change of identity is deliberate and visible.
STANDARD_STEM_PAPER_HASH = "f08e0277f0502f48c6f20b959d846e3dd4104e5643a87143e5293a3aff3e2a91"


def test_paper_profile_reads_the_reference_stem_and_is_a_new_identity():
    paper, cpu, cpu_v1 = load_spec_file(BOT, "paper"), load_spec_file(BOT, "cpu"), load_spec_file(BOT, "cpu-v1")
    assert dict(paper.model.options) == {"stem_relu": False}
    assert cpu.model.options == () and cpu_v1.model.options == ()  # MobileNetV2: no ResNet stem, untouched
    assert run_hash(paper) != STANDARD_STEM_PAPER_HASH
    standard = replace_section(paper, "model", options=())
    assert run_hash(standard) == STANDARD_STEM_PAPER_HASH  # the only difference from the stored paper runs


def test_stem_relu_true_is_the_default_and_not_hashed():
    explicit = spec_from_dict({"model": {"arch": "bot", "stem_relu": True}})
    assert explicit.model.options == () and run_hash(explicit) == run_hash(RunSpec())
    dropped = spec_from_dict({"model": {"arch": "bot", "stem_relu": False}})
    assert run_hash(dropped) != run_hash(RunSpec())
    with pytest.raises(SpecError, match=r"model.stem_relu='no' is not valid: true or false"):
        spec_from_dict({"model": {"arch": "bot", "stem_relu": "no"}})


def _model(**options) -> ModelSpec:
    spec = spec_from_dict({"model": {"arch": "bot", "backbone": "resnet18", "pretrained": False, **options}})
    return spec.model


def test_the_bot_builder_passes_stem_relu_to_the_backbone():
    torch.manual_seed(0)
    standard = build_architecture(_model(), 3)
    torch.manual_seed(0)
    reference = build_architecture(_model(stem_relu=False), 3)
    assert isinstance(standard.backbone.act1, nn.ReLU) and isinstance(reference.backbone.act1, nn.Identity)
    assert standard.reid_info["stem_relu"] is True and reference.reid_info["stem_relu"] is False
    # the same weights (same seed), the same modules otherwise: only the stem's ReLU differs
    assert standard.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(standard.state_dict().values(), reference.state_dict().values()))
    # timm zero-initialises each block's last BN weight, which makes every fresh block the identity on
    # relu(x) and hides the stem's ReLU; give both models the same nonzero BN weights first
    for net in (standard, reference):
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for module in net.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=generator))
    images = torch.randn(2, 3, 64, 32)
    out_std, out_ref = standard.eval()(images)["f_t"], reference.eval()(images)["f_t"]
    assert (out_std - out_ref).abs().max() > 1e-3 * out_std.abs().max()


def test_stem_relu_false_on_a_non_resnet_is_one_line():
    model = spec_from_dict({"model": {"arch": "bot", "backbone": "mobilenetv2", "pretrained": False,
                                      "stem_relu": False}}).model
    with pytest.raises(ValueError) as caught:
        build_architecture(model, 3)
    message = str(caught.value)
    assert "\n" not in message and "model.stem_relu=false" in message and "'mobilenetv2'" in message


def test_stem_relu_is_decided_by_the_built_timm_network_not_its_name():
    from reidbench.models.backbones import build_backbone

    net, _ = build_backbone("timm:test_resnet", stem_relu=False)  # a ResNet whose name is no "resnet*"
    assert isinstance(net.act1, nn.Identity) and net.reid_info["stem_relu"] is False
    with pytest.raises(ValueError, match=r"model.stem_relu=false is only defined for ResNet backbones .*"
                                         r"'timm:test_efficientnet'; drop model.stem_relu"):
        build_backbone("timm:test_efficientnet", stem_relu=False)


def _context(stem: str) -> AblationContext:
    return AblationContext(id=1, name="abl", base="bot", mode="cumulative", train="market", tests=("market",),
                           backbone="resnet50", weights="pretrained", stem=stem)


def test_caption_names_the_reference_stem_only_when_runs_used_it():
    assert "reference ResNet stem (no ReLU after the stem BN, as the BoT code)" in ablation_caption(
        _context("reference"), ["R1"])
    assert "reference ResNet stem (no ReLU after the stem BN) for some runs only" in ablation_caption(
        _context("mixed"), ["R1"])
    for stem in ("standard", "unknown"):
        assert "stem" not in ablation_caption(_context(stem), ["R1"])


def _record(store: Store, spec: RunSpec, name: str) -> None:
    steps = expand(spec, parse_trick_list("warmup"), "cumulative", [0])
    for s in steps:
        store.ensure_run(s.run_hash, s.spec.to_dict(), s.label)
        assert store.claim(s.run_hash, "test")
        store.record_result(s.run_hash, "test", {
            "run_hash": s.run_hash, "spec": s.spec.to_dict(), "metrics": {"synth-a": {"R1": 0.5, "mAP": 0.4}},
            "history": [{"epoch": 1, "losses": {"id": 2.0}, "lr": 1e-4, "images_per_s": 10.0, "extra": {}}],
            "provenance": {"synth-a": {"name": "synth-a", "root": "/d", "format": "market", "synthetic": True}},
            "model_info": {"pretrained_source": None}, "environment": {"device": "cpu"},
            "seconds_train": 1.0, "seconds_eval": 1.0, "out_dir": "/nonexistent"})
    store.record_ablation(name, "bot", "cumulative", {"profile": "paper", "seeds": [0], "train": "synth-a",
                                                      "test": ["synth-a"], "command": "ablate"},
                          [{"position": s.position, "run_hash": s.run_hash, "label": s.label, "step": s.step,
                            "seed": s.seed} for s in steps])


def test_the_stored_runs_decide_the_caption(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    try:
        base = with_epochs(replace_section(RunSpec(), "data", train="synth-a", test=("synth-a",)), 2)
        _record(store, base, "standard")
        assert ablation_context(store, "standard").stem == "standard"
        _record(store, replace_section(base, "model", options=(("stem_relu", False),)), "reference")
        context = ablation_context(store, "reference")
        assert context.stem == "reference"
        assert "reference ResNet stem (no ReLU after the stem BN, as the BoT code)" in ablation_caption(context, ["R1"])
    finally:
        store.close()
