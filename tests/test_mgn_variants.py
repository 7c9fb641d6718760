"""Every named MGN variant of experiments/mgn.yaml — each step of its step lists, its presets, and
BoT's tricks on MGN — builds, outputs the right shapes, has its losses read the features written
here by hand, and has the parameter count of an independent count from layer shapes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from reidbench.harness.ablation.expand import expand, expand_steps
from reidbench.harness.spec import RunSpec, load_base_file, replace_section
from reidbench.harness.spec.patches import parse_presets, parse_step_lists
from reidbench.models.architectures import build_architecture
from reidbench.models.backbones import build_backbone
from reidbench.models.objective import build_objective, resolve_reads
from reidbench.tricks import parse_trick_list

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
TINY = "timm:test_resnet"
K = 5  # identities
D = 256  # reduction_dim of the paper (kept: it is what the yaml says)

G3 = ["f_g", "f_p2", "f_p3"]
ALL_LOGITS = ["logits_g", "logits_p2", "logits_p2_1", "logits_p2_2", "logits_p3", "logits_p3_1", "logits_p3_2",
              "logits_p3_3"]  # the glob logits_* expands sorted by name
PAPER = {"id": ALL_LOGITS, "triplet": G3}


def _logits(*branches: str) -> list[str]:
    return [n for n in ALL_LOGITS if n.split("_")[1] in branches]


# step label -> {loss label: the outputs it reads, in order}
EXPECTED_READS = {
    "components": {
        "G": {"id": _logits("g"), "triplet": ["f_g"]},
        "P2": {"id": _logits("p2"), "triplet": ["f_p2"]},
        "P3": {"id": _logits("p3"), "triplet": ["f_p3"]},
        "G+P2": {"id": _logits("g", "p2"), "triplet": ["f_g", "f_p2"]},
        "G+P3": {"id": _logits("g", "p3"), "triplet": ["f_g", "f_p3"]},
        "P2+P3": {"id": _logits("p2", "p3"), "triplet": ["f_p2", "f_p3"]},
        "MGN": PAPER,
        "MGN w/o triplet": {"id": ALL_LOGITS},
    },
    "vs-bot": {"MGN": PAPER},
    "disagreements": {
        **{label: PAPER for label in ("MGN (paper)", "CE on 256-d globals", "avg pooling", "GeM pooling",
                                      "shared reduction", "no ReLU after reduction", "soft-margin triplet",
                                      "global stride 1", "mean of the 11 losses (levyfan)")},
        "+ triplet on part concatenations": {**PAPER, "triplet_p2_parts": ["f_p2_1", "f_p2_2"],
                                             "triplet_p3_parts": ["f_p3_1", "f_p3_2", "f_p3_3"]},
        "fast-reid (all)": {"id": ALL_LOGITS, "triplet": ["f_g_bn", "f_p2_bn", "f_p3_bn"],
                            "triplet_p2_parts": ["f_p2_1_bn", "f_p2_2_bn"],
                            "triplet_p3_parts": ["f_p3_1_bn", "f_p3_2_bn", "f_p3_3_bn"]},
    },
}


@pytest.fixture(scope="module")
def mgn_file():
    spec, extras = load_base_file(EXPERIMENTS / "mgn.yaml", "cpu")
    return spec, parse_presets(extras["presets"], "presets"), parse_step_lists(extras["ablations"], "ablations")


@pytest.fixture(scope="module")
def tiny_parts():
    """Parameter counts of the tiny backbone and of the part each MGN branch copies (layer3[1:] + layer4)."""
    backbone, channels = build_backbone(TINY)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return count(backbone), count(backbone.layer3[1:]) + count(backbone.layer4), channels


def _tiny(spec: RunSpec) -> RunSpec:
    return replace_section(spec, "model", backbone=TINY, pretrained=False)


def _steps(mgn_file, name):
    spec, presets, lists = mgn_file
    bot = load_base_file(EXPERIMENTS / "bot.yaml", "cpu")[0]
    return expand_steps(spec, lists[name], [0], presets=presets,
                        load_base=lambda base: {"bot": bot}[base])


def _expected_params(spec: RunSpec, tiny_parts) -> int:
    """From the options alone: backbone + branch copies + reductions + necks + classifiers + centres."""
    backbone, copied, c = tiny_parts
    o = dict(spec.model.options)
    branches = list(o.get("branches", ("g", "p2", "p3")))
    stripes = {"g": 0, "p2": 2, "p3": 3}
    keys = len(branches) + sum(stripes[b] for b in branches)
    d = o.get("reduction_dim", D)
    reduction = c * d + (2 * d if o.get("reduction_bn", True) else 0)
    reductions = (1 if o.get("shared_reduction", False) else keys) * reduction
    bnneck = spec.model.neck == "bnneck"
    ce_pooled = o.get("ce_on", "pooled") == "pooled"
    globals_in = c if ce_pooled else d
    bias = 0 if bnneck else K
    classifiers = len(branches) * (globals_in * K + bias) + (keys - len(branches)) * (d * K + bias)
    necks = (keys * 2 * d + (len(branches) * 2 * c if ce_pooled else 0)) if bnneck else 0
    centres = sum(K * sum(d for _ in t.read_names) for t in spec.loss.terms if t.kind == "center")
    return backbone + (len(branches) - 1) * copied + reductions + necks + classifiers + centres


def _check(spec: RunSpec, expected_reads: dict[str, list[str]] | None, tiny_parts) -> None:
    spec = _tiny(spec)
    torch.manual_seed(0)
    net = build_architecture(spec.model, K)
    objective = build_objective(spec.loss.terms, K, net.feature_dims)
    images = torch.randn(4, 3, 96, 32)
    labels = torch.tensor([0, 0, 1, 1])
    out = net.train()(images)
    reads = {b.label: resolve_reads(b.reads, list(out), b.label) for b in objective.bound}
    if expected_reads is not None:
        assert reads == expected_reads
    for name, tensor in out.items():  # shapes: features B×width, logits B×K
        assert tensor.shape == (4, K if name.startswith("logits_") else net.feature_dims[name])
    losses = objective(out, labels)
    assert set(losses) == set(reads) and all(torch.isfinite(v) for v in losses.values())
    trained = sum(p.numel() for p in net.parameters()) + sum(p.numel() for p in objective.parameters())
    assert trained == _expected_params(spec, tiny_parts)
    with torch.no_grad():
        test = net.eval()(images)
    width = sum(test[n].shape[1] for n in net.test_feature)
    keys = 8 if "branches" not in dict(spec.model.options) else len(net.test_feature)
    assert width == keys * dict(spec.model.options).get("reduction_dim", D)


@pytest.mark.parametrize("step_list", list(EXPECTED_READS))
def test_every_step_of_every_mgn_step_list(mgn_file, tiny_parts, step_list):
    steps = _steps(mgn_file, step_list)
    expected = EXPECTED_READS[step_list]
    mgn_steps = [s for s in steps if s.spec.model.arch == "mgn"]
    assert {s.step for s in mgn_steps} == set(expected)  # every MGN step has its reads written above
    for step in mgn_steps:
        _check(step.spec, expected[step.step], tiny_parts)
    for step in steps:
        if step.spec.model.arch == "bot":  # BoT rows: BoT's own recipe at MGN's input size
            assert step.spec.data.image_size == mgn_file[0].data.image_size
            assert step.spec.optim.name == "adam" and not step.spec.model.options


def test_fastreid_preset_is_fastreids_choices(mgn_file, tiny_parts):
    spec, presets, _ = mgn_file
    from reidbench.harness.spec.patches import apply_patch

    fast = apply_patch(spec, presets["fastreid"])
    assert dict(fast.model.options) == {"ce_on": "reduced", "pool": "gem", "reduction_relu": False,
                                        "reduction_bn": False}
    assert (fast.model.neck, fast.model.last_stride) == ("bnneck", 1)
    assert [(t.weight, dict(t.options).get("margin", "-")) for t in fast.loss.terms] == [
        (0.125, "-"), (0.2, None), (0.2, None), (0.2, None)]
    _check(fast, EXPECTED_READS["disagreements"]["fast-reid (all)"], tiny_parts)


def test_bot_tricks_on_mgn_mean_what_the_docs_say(mgn_file, tiny_parts):
    spec = mgn_file[0]
    steps = expand(spec, parse_trick_list("warmup,rea,ls,stride,bnneck,center"), "cumulative", [0])
    final = steps[-1].spec
    assert final.schedule.warmup_epochs > 0 and final.data.random_erasing_prob == 0.5
    assert dict(final.loss.terms[0].options) == {"label_smoothing": 0.1}  # on all 8 classifiers (one term)
    assert final.model.last_stride == 1 and final.model.neck == "bnneck"
    center = final.loss.terms[-1]
    assert (center.kind, center.read_names, center.combine) == ("center", tuple(G3), "concat")
    for step in steps:
        _check(step.spec, {**PAPER, **({"center": G3} if "center" in step.added else {})}, tiny_parts)
    # stride on MGN: the global branch's map is as tall as the part branches'
    net = build_architecture(_tiny(final).model, K).eval()
    with torch.no_grad():
        maps = net.branch_maps(torch.randn(1, 3, 96, 32))
    assert maps["g"].shape[-2:] == maps["p2"].shape[-2:]


def test_a_trick_on_a_field_the_architecture_ignores_is_refused_in_one_line(mgn_file):
    from reidbench.models.architectures import ARCHITECTURES, register_architecture
    from reidbench.tricks import get_trick

    entry = dataclasses.replace(ARCHITECTURES.get("bot"), name="test-no-neck", model_fields=("backbone", "pretrained"))
    register_architecture(entry)
    try:
        spec = replace_section(mgn_file[0], "model", arch="test-no-neck")
        spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, options=()))
        with pytest.raises(ValueError, match=r"trick 'bnneck' does not apply to model.arch='test-no-neck': it sets "
                                             r"model\.neck, which that architecture does not read") as error:
            get_trick("bnneck").apply(spec)
        assert "\n" not in str(error.value)
    finally:
        ARCHITECTURES.unregister("test-no-neck")
