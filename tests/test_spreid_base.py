"""experiments/spreid.yaml: its step lists, its paper numbers, and one tiny step trained end to end with oracle masks."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from reidbench.harness.cli import main
from reidbench.harness.data.synth import generate_domain
from reidbench.harness.report.paper import paper_system, paper_value
from reidbench.harness.spec import load_base_file, replace_section
from reidbench.harness.spec.patches import apply_patch, parse_step_lists
from reidbench.harness.store import Store

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"

TINY_SPREID = """
profile: cpu
model: {arch: spreid, backbone: "timm:test_resnet", pretrained: false}
data: {train: tiny, test: [tiny], image_size: [64, 32], ids_per_batch: 3, imgs_per_id: 2, pad_px: 2,
       random_erasing_prob: 0.5, masks: oracle}
loss: {terms: [{kind: ce, reads: logits}]}
optim: {name: sgd, base_lr: 0.01, nesterov: true}
schedule: {kind: poly, max_epochs: 1}
eval: {batch_size: 32, flip: true}
train: {seed: 0, checkpoint_every_epochs: 1}
ablations:
  one:
    summary: the full model only
    steps:
      - {label: all three}
"""


def test_paper_profile_is_the_codes_recipe_and_cpu_profile_is_small():
    spec, extras = load_base_file(EXPERIMENTS / "spreid.yaml", "paper")
    assert (spec.model.arch, spec.model.backbone, spec.data.image_size) == ("spreid", "timm:inception_v3", (512, 170))
    assert (spec.optim.name, spec.optim.base_lr, spec.optim.nesterov) == ("sgd", 0.01, True)
    assert spec.schedule.kind == "poly" and dict(spec.schedule.options).get("power", 0.9) == 0.9
    assert (spec.data.flip_prob, spec.data.pad_px, spec.data.masks) == (0.0, 0, "oracle")
    assert [t.kind for t in spec.loss.terms] == ["ce"]
    cpu, _ = load_base_file(EXPERIMENTS / "spreid.yaml", "cpu")
    assert (cpu.model.backbone, cpu.data.image_size, cpu.schedule.max_epochs) == ("mobilenetv2", (128, 64), 6)
    lists = parse_step_lists(extras["ablations"], "ablations")
    rows = {name: [apply_patch(spec, p) for p in lists[name].steps] for name in ("features", "masks")}
    assert [dict(s.model.options).get("features", ("foreground", "parts", "global")) for s in rows["features"]] == [
        ("global",), ("foreground", "global"), ("parts", "global"), ("foreground", "parts", "global")]
    assert [s.data.masks for s in rows["masks"]] == ["oracle", "stripes"]


def test_paper_numbers_only_for_the_papers_spreid_on_real_data_with_a_parser():
    spec, _ = load_base_file(EXPERIMENTS / "spreid.yaml", "paper")
    parsed = replace_section(spec, "data", masks="folder:/parsing/{name}")
    assert paper_system(parsed.to_dict()) == "spreid"
    assert paper_system(spec.to_dict()) is None  # oracle masks: synthetic data only
    assert paper_system(replace_section(parsed, "data", masks="stripes").to_dict()) is None  # no parser
    assert paper_system(replace_section(parsed, "model", options=(("features", ("global",)),)).to_dict()) is None
    assert paper_value("market", "market", (), "R1", system="spreid") == 92.5
    assert paper_value("market", "market", (), "mAP", system="spreid") == 81.3
    assert paper_value("duke", "duke", (), "R1", system="spreid") == 84.4
    assert paper_value("duke", "duke", (), "mAP", system="spreid") == 71.0
    assert paper_value("market", "duke", (), "R1", system="spreid") is None
    assert paper_value("market", "market", (), "R1", synthetic=True, system="spreid") is None


def test_ablate_lists_the_step_lists_of_the_spreid_base(tmp_path):
    for steps, labels in (("features", ["global only", "+ foreground", "+ parts", "all three (SPReID)"]),
                          ("masks", ["oracle parsing", "stripe prior (deviation)"])):
        result = CliRunner().invoke(main, ["ablate", "--base", "spreid", "--steps", steps, "--dry-run", "--profile",
                                           "cpu", "--db", f"sqlite:///{tmp_path / 'r.db'}"])
        assert result.exit_code == 0, result.output
        for label in labels:
            assert label in result.output


def test_a_tiny_spreid_step_trains_end_to_end_with_oracle_masks(tmp_path):
    data = generate_domain(tmp_path / "tiny", "A", num_ids=8, image_size=(64, 32), progress=False)  # no masks yet
    base = tmp_path / "tiny-spreid.yaml"
    base.write_text(TINY_SPREID)
    args = ["ablate", "--base", str(base), "--steps", "one", "--data", f"tiny={data}", "--profile", "cpu",
            "--db", f"sqlite:///{tmp_path / 'r.db'}", "--runs-dir", str(tmp_path / "runs"), "--workers", "0",
            "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (data / "masks" / "meta.json").is_file()  # drawn on first use for a generator-written folder
    run = Store(f"sqlite:///{tmp_path / 'r.db'}").list_runs()[0]
    assert run.status == "done" and run.spec["data"]["masks"] == "oracle"
    assert run.model_info["masks"]["label"] == "oracle parsing"
    assert run.model_info["masks"]["identity"] == "oracle-v1"
    assert run.model_info["test_feature"] == ["f"]
    assert "all three" in result.output and "tiny R1" in result.output
    assert "part masks: oracle parsing" in result.output  # the table's note names the provider
    report = CliRunner().invoke(main, ["report", "--db", f"sqlite:///{tmp_path / 'r.db'}", "--format", "markdown"])
    assert report.exit_code == 0, report.output
    assert "part masks: oracle parsing" in report.output  # and so does the report's caption


def test_models_counts_spreids_parameters_against_an_independent_count():
    import timm

    from reidbench.harness.cli.components import architecture_rows

    rows = {r["name"]: r for r in architecture_rows("timm:test_resnet", 7)}
    trunk = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    width = trunk.num_features
    # the backbone + one Linear(3 * width, 7) with bias; the default loss terms read f_t, which spreid lacks
    assert rows["spreid"]["params"] == sum(p.numel() for p in trunk.parameters()) + 3 * width * 7 + 7
    assert rows["spreid"]["feature_dim"] == 3 * width and rows["spreid"]["test_feature"] == ["f"]
    assert "neck" not in rows["spreid"]["model_fields"] and rows["spreid"]["variants"]["mask_stride"] == 16


def _dry_run_hashes(tmp_path, *args: str) -> dict[str, str]:
    """Row label → 12-character run hash from an ``ablate --dry-run`` listing (one seed)."""
    result = CliRunner().invoke(main, ["ablate", "--base", "spreid", "--dry-run", "--profile", "cpu",
                                       "--db", f"sqlite:///{tmp_path / 'r.db'}", *args])
    assert result.exit_code == 0, result.output
    rows = {}
    for line in result.output.splitlines():
        if line.startswith("  ") and not line.startswith("      ") and line.rstrip().endswith("]"):
            label, rhash, _status = line.strip().rsplit(maxsplit=2)
            rows[label.removesuffix(" (seed 0)")] = rhash
    return rows


def test_the_warmup_list_is_the_recipe_plus_bots_warmup_on_every_row(tmp_path):
    spec, extras = load_base_file(EXPERIMENTS / "spreid.yaml", "cpu")
    rows = parse_step_lists(extras["ablations"], "ablations")["warmup"].steps
    assert [list(p.tricks) for p in rows] == [[]] + [["warmup"]] * 5
    specs = [apply_patch(spec, p) for p in rows]
    assert [dict(s.model.options).get("features", ("foreground", "parts", "global")) for s in specs] == [
        ("foreground", "parts", "global"), ("global",), ("foreground", "global"), ("parts", "global"),
        ("foreground", "parts", "global"), ("foreground", "parts", "global")]
    assert [s.data.masks for s in specs] == ["oracle"] * 5 + ["stripes"]
    # its rows are the very runs `--add warmup` and the features list make: stored runs are reused
    steps = _dry_run_hashes(tmp_path, "--steps", "warmup")
    single = _dry_run_hashes(tmp_path, "--add", "warmup", "--mode", "single")
    features = _dry_run_hashes(tmp_path, "--steps", "features")
    assert steps["all three + warmup"] == single["+warmup"]
    assert steps["all three (recipe, no warm-up)"] == single["Baseline"] == features["all three (SPReID)"]
    assert len(set(steps.values())) == 6
