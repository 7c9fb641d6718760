"""``reidbench ablate --steps NAME`` and ``--preset NAME``: labelled-patch rows from a base file, end to end."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from reidbench.harness.cli import main
from reidbench.harness.store import Store

# conftest's tiny MGN with flip-averaged evaluation, a preset and a step list
MGN_EXTRAS = """
presets:
  avg: {label: average pooling, set: {model.pool: avg}}
ablations:
  mini:
    summary: a tiny component study
    steps:
      - {label: BoT baseline, base: BOT_PATH, keep: [data.image_size]}
      - {label: G, set: {model.branches: [g]}, term: {triplet: {reads: [f_g]}}}
      - {label: MGN}
      - {label: MGN w/o triplet, drop: [triplet]}
"""


def _files(tmp_path: Path, tiny_bot_yaml: str, tiny_mgn_yaml: str) -> Path:
    bot = tmp_path / "tiny-bot.yaml"
    bot.write_text(tiny_bot_yaml)
    mgn = tmp_path / "tiny-mgn.yaml"
    flipped = tiny_mgn_yaml.replace("eval: {batch_size: 16}", "eval: {batch_size: 16, flip: true}")
    assert flipped != tiny_mgn_yaml
    mgn.write_text(flipped + MGN_EXTRAS.replace("BOT_PATH", str(bot)))
    return mgn


def _args(base: Path, data: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["ablate", "--base", str(base), "--data", f"tiny={data}", "--profile", "cpu",
            "--db", f"sqlite:///{tmp_path / 'r.db'}", "--runs-dir", str(tmp_path / "runs"), "--workers", "0",
            "--device", "cpu", *extra]


def test_a_step_list_trains_each_labelled_row_and_reports_it(tmp_path, tiny_market, tiny_bot_yaml, tiny_mgn_yaml):
    base = _files(tmp_path, tiny_bot_yaml, tiny_mgn_yaml)
    first = CliRunner().invoke(main, _args(base, tiny_market, tmp_path, "--steps", "mini"))
    assert first.exit_code == 0, first.output
    table = [line for line in first.output.splitlines()
             if line.startswith(("BoT baseline", "G ", "MGN", "step"))]
    assert [line.split("  ")[0].strip() for line in table[1:]] == ["BoT baseline", "G", "MGN", "MGN w/o triplet"]
    assert "4 to run" in first.output

    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    runs = {r.label: r for r in store.list_runs()}
    assert runs["BoT baseline"].spec["model"].get("arch", "bot") == "bot"
    assert runs["BoT baseline"].spec["data"]["image_size"] == [48, 16]  # keep: the MGN base's input size
    assert runs["G"].spec["model"]["branches"] == ["g"]
    assert [t["kind"] for t in runs["MGN w/o triplet"].spec["loss"]["terms"]] == ["ce"]
    ablation = store.get_ablation("latest")
    assert ablation.mode == "steps" and ablation.meta["step_list"] == "mini"

    again = CliRunner().invoke(main, _args(base, tiny_market, tmp_path, "--steps", "mini"))
    assert again.exit_code == 0 and "4 cached, 0 to run" in again.output

    report = CliRunner().invoke(main, ["report", "--format", "markdown", "--db", f"sqlite:///{tmp_path / 'r.db'}"])
    assert report.exit_code == 0, report.output
    assert "rows from step list mini" in report.output
    for label in ("BoT baseline", "MGN w/o triplet"):
        assert label in report.output


def test_a_preset_is_the_base_patched_and_dry_run_shows_what_each_step_changes(tmp_path, tiny_market, tiny_bot_yaml, tiny_mgn_yaml):
    base = _files(tmp_path, tiny_bot_yaml, tiny_mgn_yaml)
    result = CliRunner().invoke(main, _args(base, tiny_market, tmp_path, "--preset", "avg", "--add", "ls",
                                            "--dry-run"))
    assert result.exit_code == 0, result.output
    assert "loss.terms: ce(logits_*){combine: sum} + triplet(f_g,f_p2,f_p3){combine: sum, margin: 1.2} → " \
           "ce(logits_*){combine: sum, label_smoothing: 0.1}" in result.output
    steps = CliRunner().invoke(main, _args(base, tiny_market, tmp_path, "--steps", "mini", "--dry-run"))
    assert "model.branches: (default) → ['g']" in steps.output
    assert "triplet(f_g){combine: sum, margin: 1.2}" in steps.output


def test_step_list_and_preset_errors_are_one_line(tmp_path, tiny_market, tiny_bot_yaml, tiny_mgn_yaml):
    base = _files(tmp_path, tiny_bot_yaml, tiny_mgn_yaml)
    cases = [
        (("--steps", "mini", "--add", "ls"), "--steps mini gives the rows itself: drop --add"),
        (("--steps", "mini", "--mode", "single"), "--steps mini gives the rows itself: drop --mode"),
        (("--steps", "nope"), "--steps 'nope' is not an ablation step list of tiny-mgn.yaml; valid: mini"),
        (("--preset", "nope"), "--preset 'nope' is not a preset of tiny-mgn.yaml; valid: avg"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(main, _args(base, tiny_market, tmp_path, *extra, "--dry-run"))
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_bases_lists_presets_step_lists_and_evaluations(tmp_path, tiny_bot_yaml, tiny_mgn_yaml):
    result = CliRunner().invoke(main, ["bases"])
    assert result.exit_code == 0, result.output
    assert "--preset fastreid: fast-reid's MGN" in result.output
    assert "rows: BoT baseline | G | P2 | P3 | G+P2 | G+P3 | P2+P3 | MGN | MGN w/o triplet" in result.output
    assert "--eval rerank, ft-euclidean" in result.output
    one = CliRunner().invoke(main, ["bases", str(_files(tmp_path, tiny_bot_yaml, tiny_mgn_yaml))])
    assert one.exit_code == 0 and "--steps mini: a tiny component study" in one.output
    assert "--preset avg: average pooling" in one.output


def test_train_preset_unknown_is_one_line(tmp_path, tiny_bot_yaml, tiny_mgn_yaml):
    result = CliRunner().invoke(main, ["train", str(_files(tmp_path, tiny_bot_yaml, tiny_mgn_yaml)), "--preset", "nope"])
    assert result.exit_code == 2 and "--preset 'nope' is not a preset of tiny-mgn.yaml; valid: avg" in result.output


def test_models_json_lists_mgn_with_its_presets():
    import json

    result = CliRunner().invoke(main, ["models", "--backbone", "timm:test_resnet", "--num-classes", "5", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["mgn"]["presets"] == ["mgn:fastreid"] and "neck" in rows["mgn"]["model_fields"]
    assert rows["mgn"]["feature_dim"] == 8 * 256


def test_the_footer_names_which_rows_ran_on_which_profile_when_they_differ():
    from types import SimpleNamespace

    from reidbench.harness.ablation.plan import profile_notes
    from reidbench.harness.spec.loading import load_spec_file

    bot = Path(__file__).resolve().parent.parent / "experiments" / "bot.yaml"
    new, old = load_spec_file(bot, "cpu"), load_spec_file(bot, "cpu-v1")
    step = lambda label, spec: SimpleNamespace(step=label, spec=spec)  # noqa: E731
    same = [step("Baseline", new), step("+warmup", new), step("Baseline", new)]
    assert profile_notes(same) == [f"profile cpu, {new.schedule.max_epochs} epochs"]
    mixed = [step("Baseline", new), step("Baseline", new), step("+warmup", new), step("old", old)]
    assert profile_notes(mixed) == [f"profile cpu, {new.schedule.max_epochs} epochs (Baseline, +warmup)",
                                    f"profile cpu-v1, {old.schedule.max_epochs} epochs (old)"]
