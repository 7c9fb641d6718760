"""Part-aligned bilinear pooling (``pool: bilinear``, models/bilinear.py, docs/bilinear.md) against
brute-force loops and hand values; its options and their refusals; the masks field; one training
step per part source; bot.yaml's pooling step list and ``reidbench models --steps``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from reidbench.harness.cli import main
from reidbench.harness.spec import ModelSpec, SpecError, load_base_file, spec_from_dict
from reidbench.harness.spec.hashing import run_hash
from reidbench.harness.spec.patches import apply_with_tricks, parse_step_lists
from reidbench.models.architectures import build_architecture, pools_with_masks
from reidbench.models.architectures.bot import BotParams
from reidbench.models.architectures.spreid import SPReIDParams
from reidbench.models.bilinear import BilinearPool, bilinear_pool, signed_sqrt
from reidbench.models.objective import build_objective
from reidbench.models.registry import build_params

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
TINY = "timm:test_resnet"


def _brute_force(appearance: torch.Tensor, parts: torch.Tensor, sqrt: bool, eps: float) -> torch.Tensor:
    """Outer products summed location by location in float64, averaged, rooted and normalised by hand."""
    batch, da, h, w = appearance.shape
    rows = []
    for b in range(batch):
        z = torch.zeros(da, parts.shape[1], dtype=torch.float64)
        for y in range(h):
            for x in range(w):
                z += torch.outer(appearance[b, :, y, x].double(), parts[b, :, y, x].double())
        values = (z / (h * w)).flatten().tolist()  # appearance-major: entry a * Dp + p
        if sqrt:
            values = [0.0 if v == 0 else math.copysign(math.sqrt(abs(v) + eps), v) for v in values]
        norm = math.sqrt(sum(v * v for v in values))
        rows.append([v / norm for v in values])
    return torch.tensor(rows, dtype=torch.float64)


# --------------------------------------------------------------------------- the pooling itself


@pytest.mark.parametrize("sqrt", [True, False])
def test_pooling_matches_a_brute_force_loop_over_locations(sqrt):
    torch.manual_seed(0)
    appearance, parts = torch.randn(3, 5, 4, 3), torch.randn(3, 4, 4, 3)
    got = bilinear_pool(appearance, parts, sqrt=sqrt, eps=1e-8)
    assert got.shape == (3, 5 * 4)
    torch.testing.assert_close(got.double(), _brute_force(appearance, parts, sqrt, 1e-8), atol=1e-6, rtol=1e-5)


def test_the_module_is_the_pooling_of_its_two_1x1_streams():
    torch.manual_seed(1)
    pool = BilinearPool(6, appearance_dim=3, part_dim=2, bilinear_bn=False).eval()
    x = torch.randn(2, 6, 3, 2)
    wa = pool.appearance[0].weight.detach().reshape(3, 6)  # 1x1 convs without BN: a bias each, zero at start
    wp = pool.part[0].weight.detach().reshape(2, 6)
    appearance = torch.einsum("oc,bchw->bohw", wa, x)
    parts = torch.einsum("oc,bchw->bohw", wp, x)
    torch.testing.assert_close(pool(x).double(), _brute_force(appearance, parts, True, 1e-8), atol=1e-6, rtol=1e-5)
    assert pool.out_dim == 6 and pool(x).shape == (2, 6)


def test_signed_square_root_and_l2_normalisation_hand_values():
    # A at the two locations (2, 1) and (6, -3), one part map equal to 1: z = mean = (4, -1)
    appearance = torch.tensor([[[[2.0, 6.0]], [[1.0, -3.0]]]])  # 1 x 2 x 1 x 2
    parts = torch.ones(1, 1, 1, 2)
    # signed root (2, -1), norm sqrt(5)
    torch.testing.assert_close(bilinear_pool(appearance, parts, eps=1e-12),
                               torch.tensor([[2 / math.sqrt(5), -1 / math.sqrt(5)]]))
    # without the root: (4, -1) / sqrt(17)
    torch.testing.assert_close(bilinear_pool(appearance, parts, sqrt=False),
                               torch.tensor([[4 / math.sqrt(17), -1 / math.sqrt(17)]]))
    # a zero entry stays exactly zero, with a zero gradient (sign(0) = 0)
    z = torch.tensor([0.0, 9.0, -0.25], requires_grad=True)
    y = signed_sqrt(z, 1e-8)
    torch.testing.assert_close(y.detach(), torch.tensor([0.0, math.sqrt(9 + 1e-8), -math.sqrt(0.25 + 1e-8)]))
    y.sum().backward()
    assert z.grad[0].item() == 0.0 and z.grad[1].item() == pytest.approx(1 / 6, rel=1e-6)
    # averaging or summing over locations gives the same feature (the root and the norm are homogeneous)
    torch.testing.assert_close(bilinear_pool(appearance * 7, parts, eps=1e-12), bilinear_pool(appearance, parts, eps=1e-12))


def test_mask_parts_are_the_chosen_regions_area_averaged_to_the_map():
    pool = BilinearPool(2, bilinear_parts="masks", appearance_dim=3, bilinear_regions=("head", "shoes"))
    assert pool.reads_masks and pool.part_dim == 2 and pool.out_dim == 6
    masks = torch.zeros(1, 5, 4, 2)
    masks[0, 1, 0, :] = 1.0  # head: the top row of the image (a quarter of the top half)
    masks[0, 1, 1, 0] = 0.5
    masks[0, 3] = 1.0  # lower body everywhere: not chosen
    x = torch.zeros(1, 2, 2, 1)  # the map: 2 x 1 locations, each a 2 x 2 block of the masks
    maps = pool.part_maps(x, masks)
    # head: top block (1 + 1 + 0.5 + 0) / 4, bottom block 0; shoes: absent -> zero map
    torch.testing.assert_close(maps, torch.tensor([[[[0.625], [0.0]], [[0.0], [0.0]]]]))
    out = pool(torch.randn(1, 2, 2, 1), masks)
    assert torch.all(out.reshape(3, 2)[:, 1] == 0)  # the absent region's entries are exactly 0
    with pytest.raises(ValueError, match="bilinear_parts=masks: this model pools with part masks but none"):
        pool(x)
    with pytest.raises(ValueError, match="masks must be B x 5 x H x W"):
        pool(x, torch.zeros(1, 4, 4, 2))


@pytest.mark.parametrize("activation, check", [
    ("softmax", lambda m: torch.allclose(m.sum(dim=1), torch.ones(2, 3, 2))),
    ("sigmoid", lambda m: bool(((m > 0) & (m < 1)).all())),
    ("relu", lambda m: bool((m >= 0).all()) and bool((m == 0).any())),
])
def test_part_activations(activation, check):
    torch.manual_seed(2)
    pool = BilinearPool(4, part_dim=5, appearance_dim=2, part_activation=activation).train()
    assert check(pool.part_maps(torch.randn(2, 4, 3, 2), None))


def test_streams_end_in_a_batchnorm_without_affine_and_start_xavier():
    pool = BilinearPool(64, appearance_dim=32, part_dim=16, part_kernel=3)
    conv, bn = pool.appearance
    assert isinstance(bn, nn.BatchNorm2d) and not bn.affine and conv.bias is None
    assert pool.part[0].kernel_size == (3, 3) and pool.part[0].padding == (1, 1)
    bound = math.sqrt(6 / (64 + 32))  # xavier_uniform on a 1x1 conv: fans 64 and 32
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
    kaiming = BilinearPool(64, appearance_dim=32, part_dim=16, bilinear_init="kaiming", bilinear_bn=False)
    assert torch.equal(kaiming.appearance[0].bias, torch.zeros(32))
    assert kaiming.appearance[0].weight.std().item() == pytest.approx(math.sqrt(2 / 32), rel=0.15)  # fan_out


# --------------------------------------------------------------------------- architectures


@pytest.mark.parametrize("neck", ["plain", "bnneck"])
def test_bot_feature_width_is_appearance_dim_times_part_dim(neck):
    torch.manual_seed(0)
    net = build_architecture(ModelSpec(arch="bot", backbone=TINY, pretrained=False, neck=neck,
                                       options=(("pool", "bilinear"), ("appearance_dim", 8), ("part_dim", 5))), 4)
    assert net.feature_dims == {"f_t": 40, "f_i": 40} and net.head.classifier.in_features == 40
    out = net.eval()(torch.randn(2, 3, 64, 32))
    assert out["f_t"].shape == (2, 40) and torch.allclose(out["f_t"].norm(dim=1), torch.ones(2))
    assert net.reid_info["options"] == {"pool": "bilinear", "appearance_dim": 8, "part_dim": 5}
    assert net.module_groups["new"] == ("head",)  # the two streams train with the head


def test_spreid_bilinear_replaces_the_descriptor_f():
    torch.manual_seed(0)
    net = build_architecture(ModelSpec(arch="spreid", backbone=TINY, pretrained=False, options=(
        ("pool", "bilinear"), ("appearance_dim", 6), ("bilinear_parts", "masks"))), 4)
    channels = net.feature_dims["f_global"]
    assert net.feature_dims["f"] == 6 * 4 and net.head["classifier"].in_features == 24
    out = net.train()(torch.randn(2, 3, 64, 32), masks=torch.rand(2, 5, 64, 32))
    assert out["f"].shape == (2, 24) and out["f_fg"].shape == (2, channels) and out["logits"].shape == (2, 4)
    assert net.reid_info["feature"] == ["bilinear"] and "features" not in net.reid_info["options"]
    default = build_architecture(ModelSpec(arch="spreid", backbone=TINY, pretrained=False), 4)
    assert list(default.head) == ["classifier"] and "pool" not in default.reid_info["options"]


def _train_step(net: nn.Module, with_masks: bool) -> None:
    """One Adam step of CE + triplet on 2 ids x 2 images: finite loss, gradients through both streams."""
    reads = "f" if "f" in net.feature_dims else "f_t"  # spreid's descriptor, bot's pooled feature
    terms = spec_from_dict({"loss": {"terms": [{"kind": "ce", "reads": "logits"},
                                               {"kind": "triplet", "reads": reads}]}}).loss.terms
    objective = build_objective(terms, 3, net.feature_dims)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    labels = torch.tensor([0, 0, 1, 1])
    extra = {"masks": torch.rand(4, 5, 64, 32)} if with_masks else {}
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    out = net.train()(torch.randn(4, 3, 64, 32), **extra)
    losses = objective(out, labels)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    optimizer.step()
    moved = {n for n, p in net.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert any(n.startswith("backbone.") for n in moved)
    assert any("appearance" in n for n in moved)
    if not with_masks:
        assert any(".part." in n for n in moved)


@pytest.mark.parametrize("parts", ["learned", "masks"])
@pytest.mark.parametrize("arch", ["bot", "spreid"])
def test_one_training_step_for_each_part_source(arch, parts):
    torch.manual_seed(0)
    net = build_architecture(ModelSpec(arch=arch, backbone=TINY, pretrained=False, options=(
        ("pool", "bilinear"), ("appearance_dim", 8), ("part_dim", 4) if parts == "learned" else ("bilinear_parts", parts)
    )), 3)
    _train_step(net, with_masks=parts == "masks" or arch == "spreid")


def test_bot_given_masks_it_does_not_read_is_one_line():
    net = build_architecture(ModelSpec(arch="bot", backbone=TINY, pretrained=False), 3)
    with pytest.raises(ValueError, match="does not pool with part masks: drop data.masks"):
        net(torch.randn(2, 3, 64, 32), masks=torch.rand(2, 5, 64, 32))


# --------------------------------------------------------------------------- options and the spec


@pytest.mark.parametrize("options, fragment", [
    ({"part_dim": 4}, "model.part_dim is only read with model.pool=bilinear, not 'avg'; drop it"),
    ({"pool": "gem", "bilinear_parts": "masks"}, "model.bilinear_parts is only read with model.pool=bilinear, not 'gem'"),
    ({"pool": "bilinear", "bilinear_parts": "pose"}, "model.bilinear_parts='pose' is invalid; valid: learned, masks"),
    ({"pool": "bilinear", "appearance_dim": 0}, "model.appearance_dim=0 is invalid"),
    ({"pool": "bilinear", "part_kernel": 2}, "model.part_kernel=2 is invalid; valid: an odd integer"),
    ({"pool": "bilinear", "part_activation": "tanh"}, "model.part_activation='tanh' is invalid; valid: none, relu, "
                                                      "softmax, sigmoid"),
    ({"pool": "bilinear", "appearance_activation": "softmax"}, "model.appearance_activation='softmax' is invalid"),
    ({"pool": "bilinear", "bilinear_init": "zeros"}, "model.bilinear_init='zeros' is invalid"),
    ({"pool": "bilinear", "bilinear_eps": 0.0}, "model.bilinear_eps=0.0 is invalid"),
    ({"pool": "bilinear", "bilinear_regions": ["head", "hands"]}, "model.bilinear_regions=.* is invalid"),
    ({"pool": "bilinear", "bilinear_parts": "masks", "bilinear_regions": ["shoes", "head"]}, "must keep the order"),
    ({"pool": "bilinear", "bilinear_regions": ["head"]}, "model.bilinear_regions is only read with "
                                                         "model.bilinear_parts=masks, not 'learned'"),
    ({"pool": "bilinear", "bilinear_parts": "masks", "part_dim": 4}, "model.part_dim is only read with "
                                                                     "model.bilinear_parts=learned, not 'masks'"),
    ({"pool": "bilinear", "bilinear_parts": "masks", "part_activation": "softmax"}, "model.part_activation is only"),
    ({"pool": "bilinear", "gem_p": 2.0}, "model.gem_p is only read with model.pool=gem"),
])
def test_bot_option_errors_are_one_line(options, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        build_params(BotParams, options, "model")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("options, fragment", [
    ({"appearance_dim": 64}, "model.appearance_dim is only read with model.pool=bilinear, not 'region'"),
    ({"pool": "bilinear", "features": ["global"]}, "model.features is only read with model.pool=region"),
    ({"pool": "gap"}, "model.pool='gap' is invalid; valid: region, bilinear"),
])
def test_spreid_option_errors_are_one_line(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        build_params(SPReIDParams, options, "model")


def test_data_masks_is_required_exactly_when_bots_parts_come_from_masks():
    masked = {"model": {"pool": "bilinear", "bilinear_parts": "masks"}}
    with pytest.raises(SpecError, match="model.arch=bot with pool: bilinear, bilinear_parts: masks pools with part "
                                        "masks: set data.masks"):
        spec_from_dict(masked)
    spec = spec_from_dict({**masked, "data": {"masks": "stripes"}})
    assert pools_with_masks("bot", spec.model) and not pools_with_masks("bot", spec_from_dict({}).model)
    for learned in ({"pool": "bilinear"}, {"pool": "avg"}):
        with pytest.raises(SpecError, match=r"data.masks='oracle' is only read by .*spreid, bot with pool: bilinear, "
                                            r"bilinear_parts: masks.*model.arch=bot would ignore it: drop data.masks"):
            spec_from_dict({"model": learned, "data": {"masks": "oracle"}})


def test_options_at_their_defaults_change_no_hash():
    plain = spec_from_dict({})
    assert run_hash(plain, train_fingerprint="dir:a") == run_hash(
        spec_from_dict({"model": {"appearance_dim": 512, "bilinear_parts": "learned", "bilinear_sqrt": True}}),
        train_fingerprint="dir:a")
    bilinear = spec_from_dict({"model": {"pool": "bilinear"}})
    spelled = spec_from_dict({"model": {"pool": "bilinear", "appearance_dim": 512, "part_dim": 128, "part_kernel": 1,
                                        "bilinear_bn": True, "bilinear_init": "xavier"}})
    assert run_hash(bilinear, train_fingerprint="dir:a") == run_hash(spelled, train_fingerprint="dir:a")
    assert run_hash(bilinear, train_fingerprint="dir:a") != run_hash(plain, train_fingerprint="dir:a")
    # the default bot still builds the head's plain average pooling: no pool module, same parameters
    net = build_architecture(ModelSpec(arch="bot", backbone=TINY, pretrained=False), 3)
    assert not hasattr(net.head, "pool") and "options" not in net.reid_info


# --------------------------------------------------------------------------- bot.yaml's step list


def test_pooling_step_list_rows_and_shared_runs():
    spec, extras = load_base_file(EXPERIMENTS / "bot.yaml", "cpu")
    steps = parse_step_lists(extras["ablations"], "ablations")["pooling"].steps
    rows = {p.label: apply_with_tricks(spec, p) for p in steps}
    options = {label: dict(s.model.options) for label, s in rows.items()}
    assert options == {
        "GAP (Baseline-S)": {},
        "max pooling": {"pool": "max"},
        "GeM (learned p from 3)": {"pool": "gem", "gem_learnable": True},
        "bilinear (128 learned parts)": {"pool": "bilinear"},
        "bilinear (4 learned parts)": {"pool": "bilinear", "part_dim": 4},
        "bilinear (oracle masks)": {"pool": "bilinear", "bilinear_parts": "masks"},
    }
    assert [s.data.masks for s in rows.values()] == [""] * 5 + ["oracle"]
    assert len({s.data.image_size for s in rows.values()}) == 1  # equal input size
    from reidbench.tricks import get_trick

    # the GAP row is the Baseline run and the GeM row the `--add gem` run: stored runs are reused
    assert run_hash(rows["GAP (Baseline-S)"], train_fingerprint="dir:a") == run_hash(spec, train_fingerprint="dir:a")
    gem = get_trick("gem").apply(spec)
    assert run_hash(rows["GeM (learned p from 3)"], {"gem": 1}, "dir:a") == run_hash(gem, {"gem": 1}, "dir:a")


def test_models_steps_counts_parameters_against_an_independent_count():
    import json

    import timm

    result = CliRunner().invoke(main, ["models", "--steps", "pooling", "--profile", "cpu", "--backbone", TINY,
                                       "--num-classes", "7", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["label"]: r for r in json.loads(result.output)}
    trunk = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    c, trunk_params = trunk.num_features, sum(p.numel() for p in trunk.parameters())
    # plain head: Linear(width, 7) with bias; bilinear: + appearance 1x1 conv C -> 512 and part conv C -> Dp (no
    # bias: a BN without affine follows each); CE and triplet have no parameters; GeM: one exponent
    assert rows["GAP (Baseline-S)"]["params"] == rows["max pooling"]["params"] == trunk_params + c * 7 + 7
    assert rows["GeM (learned p from 3)"]["params"] == trunk_params + c * 7 + 7 + 1
    for label, dp, part_conv in (("bilinear (128 learned parts)", 128, c * 128), ("bilinear (4 learned parts)", 4, c * 4),
                                 ("bilinear (oracle masks)", 4, 0)):
        assert rows[label]["feature_dim"] == 512 * dp
        assert rows[label]["params"] == trunk_params + c * 512 + part_conv + 512 * dp * 7 + 7, label
    assert rows["bilinear (oracle masks)"]["masks"] == "oracle"
    text = CliRunner().invoke(main, ["models", "--steps", "pooling", "--profile", "cpu", "--backbone", TINY,
                                     "--num-classes", "7"])
    assert text.exit_code == 0 and "bilinear (oracle masks)" in text.output and "65536" in text.output
    wrong = CliRunner().invoke(main, ["models", "--base", "bot"])
    assert wrong.exit_code == 2 and "--base is only read with --steps NAME" in wrong.output


TINY_BOT_BILINEAR = """
profile: cpu
model: {arch: bot, backbone: "timm:test_resnet", pretrained: false, pool: bilinear, bilinear_parts: masks,
        appearance_dim: 8}
data: {train: tiny, test: [tiny], image_size: [64, 32], ids_per_batch: 3, imgs_per_id: 2, pad_px: 2,
       random_erasing_prob: 0.5, masks: oracle}
optim: {name: adam, base_lr: 3.5e-4}
schedule: {kind: multistep, max_epochs: 1, milestones: [1]}
eval: {batch_size: 32, flip: true}
train: {seed: 0, checkpoint_every_epochs: 1}
ablations:
  one:
    summary: bilinear pooling with the oracle masks
    steps:
      - {label: bilinear (oracle masks)}
"""


def test_a_tiny_bot_with_mask_parts_trains_and_evaluates_end_to_end(tmp_path):
    from reidbench.harness.data.synth import generate_domain
    from reidbench.harness.store import Store

    data = generate_domain(tmp_path / "tiny", "A", num_ids=8, image_size=(64, 32), progress=False)
    base = tmp_path / "tiny-bot-bilinear.yaml"
    base.write_text(TINY_BOT_BILINEAR)
    result = CliRunner().invoke(main, ["ablate", "--base", str(base), "--steps", "one", "--data", f"tiny={data}",
                                       "--profile", "cpu", "--db", f"sqlite:///{tmp_path / 'r.db'}", "--runs-dir",
                                       str(tmp_path / "runs"), "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    run = Store(f"sqlite:///{tmp_path / 'r.db'}").list_runs()[0]
    assert run.status == "done" and run.spec["data"]["masks"] == "oracle"
    assert run.model_info["masks"]["label"] == "oracle parsing"
    assert run.model_info["options"] == {"pool": "bilinear", "bilinear_parts": "masks", "appearance_dim": 8}
    assert "part masks: oracle parsing" in result.output and "tiny R1" in result.output
