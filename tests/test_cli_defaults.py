"""Every base has a meaningful default ablation; every command is one options object; train records its run."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from reidbench.harness.cli import main
from reidbench.harness.cli.common import StoreOptions

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
BASES = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _default(name: str, profile: str):
    from reidbench.harness.ablation.defaults import parse_default_ablation
    from reidbench.harness.spec import load_base_file
    from reidbench.harness.spec.patches import parse_presets, parse_step_lists

    spec, extras = load_base_file(EXPERIMENTS / f"{name}.yaml", profile)
    lists = parse_step_lists(extras.get("ablations"), name)
    default = parse_default_ablation(extras.get("default_ablation"), name, list(lists))
    return spec, default, lists, parse_presets(extras.get("presets"), name)


@pytest.mark.parametrize("profile", ["paper", "cpu"])
@pytest.mark.parametrize("name", BASES)
def test_every_shipped_base_declares_a_default_that_plans_fully(name, profile):
    from reidbench.harness.ablation.defaults import applicable_tricks
    from reidbench.harness.ablation.expand import expand, expand_steps
    from reidbench.harness.spec import load_base_file
    from reidbench.tricks import parse_trick_list

    spec, default, lists, presets = _default(name, profile)
    assert default.declared, f"{name}.yaml: no default_ablation"
    if default.steps is not None:
        steps = expand_steps(spec, lists[default.steps], [0], presets=presets,
                             load_base=lambda other: load_base_file(EXPERIMENTS / f"{other}.yaml", profile)[0])
        assert [s.step for s in steps] == [p.label for p in lists[default.steps].steps]
    else:
        tricks = parse_trick_list(default.add)
        kept, skipped = applicable_tricks(spec, tricks, default.mode)
        assert not skipped, skipped  # a shipped default applies whole; skipping is for user bases
        assert len(expand(spec, kept, default.mode, [0])) == len(tricks) + 1


def test_ablate_help_and_bases_say_each_default():
    help_text = _invoke("ablate", "--help").output
    for name in BASES:
        _, default, _, _ = _default(name, "cpu")
        line = next(line for line in help_text.splitlines() if re.match(rf"\s+(\w+, )*{name}\b", line))
        want = f"--steps {default.steps}" if default.steps else "BoT's six tricks"
        assert want in line, (name, line)
        if not default.steps:
            from reidbench.tricks import PAPER_ORDER

            assert default.add == PAPER_ORDER
        shown = _invoke("bases", name)
        assert shown.exit_code == 0
        assert f"default (ablate --base {name} alone): {default.describe()}" in shown.output


@pytest.mark.parametrize("name", BASES)
def test_ablate_with_no_rows_named_plans_the_default(name, tmp_path, monkeypatch):
    monkeypatch.setenv("REIDBENCH_DATA", str(tmp_path / "cache"))
    _, default, lists, _ = _default(name, "cpu")
    result = CliRunner().invoke(main, ["ablate", "--base", name, "--profile", "cpu", "--dry-run",
                                       "--db", f"sqlite:///{tmp_path / 'r.db'}"])
    assert result.exit_code == 0, result.output
    assert "skipped" not in result.output
    header = next(line for line in result.output.splitlines() if line.startswith("ablation "))
    rows = len(lists[default.steps].steps) if default.steps else len(default.add) + 1
    mode = "steps" if default.steps else default.mode
    assert f": {rows} run(s)," in header and f"mode {mode}," in header


def test_a_base_without_a_default_gets_the_tricks_that_apply_and_says_which_were_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDBENCH_DATA", str(tmp_path / "cache"))
    text = (EXPERIMENTS / "spreid.yaml").read_text()
    text = re.sub(r"\ndefault_ablation:.*\n", "\n", text)
    assert "\ndefault_ablation:" not in text
    base = tmp_path / "myspreid.yaml"
    base.write_text(text)
    result = CliRunner().invoke(main, ["ablate", "--base", str(base), "--profile", "cpu", "--dry-run",
                                       "--db", f"sqlite:///{tmp_path / 'r.db'}"])
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.output.splitlines() if "skipped" in line]
    assert [line.split(" skipped")[0] for line in skipped] == [
        "--base myspreid: default trick bnneck", "--base myspreid: default trick center"]
    rows = [line.split()[0] for line in result.output.splitlines() if "(seed 0)" in line]
    assert rows == ["Baseline", "+warmup", "+REA", "+LS", "+stride=1"]


@pytest.mark.parametrize("value, fragment", [
    ("{steps: nope}", "default_ablation.steps='nope' is not a step list of the file; valid: features, masks"),
    ("{add: [warmup, nope]}", "default_ablation.add: unknown trick 'nope'"),
    ("{steps: features, add: [warmup]}", "needs exactly one of steps"),
    ("{steps: features, mode: single}", "default_ablation.mode is only read with"),
    ("{add: [warmup], mode: sideways}", "default_ablation.mode='sideways' is not valid"),
    ("{tricks: [warmup]}", "default_ablation.tricks is not a known field; valid: steps, add, mode"),
    ("features", "default_ablation must be a mapping"),
])
def test_a_bad_default_is_one_line_naming_the_file(value, fragment, tmp_path):
    text = re.sub(r"\ndefault_ablation:.*\n", f"\ndefault_ablation: {value}\n", (EXPERIMENTS / "spreid.yaml").read_text())
    base = tmp_path / "bad.yaml"
    base.write_text(text)
    for args in (["ablate", "--base", str(base), "--profile", "cpu", "--dry-run"], ["bases", str(base)]):
        result = CliRunner().invoke(main, args + (["--db", f"sqlite:///{tmp_path / 'r.db'}"] if args[0] == "ablate"
                                                  else []))
        assert result.exit_code == 2, result.output
        assert fragment in result.output and "bad.yaml" in result.output
        assert result.output.strip().count("\n") == 0


# --------------------------------------------------------------------------- options objects


def _commands(command, path=()):
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))
    if not hasattr(command, "commands"):
        yield path, command


def test_every_command_is_one_options_object_holding_exactly_its_parameters():
    from reidbench.harness.cli.common import option_names

    seen = 0
    for path, command in _commands(main):
        options_type = getattr(command.callback, "options_type", None)
        assert options_type is not None, f"reidbench {' '.join(path)}: not built with command_options"
        params = {p.name for p in command.params if p.name not in ("help",)}
        assert params == option_names(options_type), " ".join(path)
        seen += 1
    assert seen >= 20


@dataclass(frozen=True)
class Opts:  # module level: options types are resolved from their module's names
    name: str
    store: StoreOptions


def test_build_options_refuses_a_parameter_without_a_field():
    from reidbench.harness.cli.common import build_options

    built = build_options(Opts, {"name": "x", "db_url": "sqlite://"})
    assert built == Opts("x", StoreOptions("sqlite://"))
    with pytest.raises(TypeError, match="no field for the click parameter"):
        build_options(Opts, {"name": "x", "db_url": None, "extra": 1})
    with pytest.raises(TypeError, match="Opts.name"):
        build_options(Opts, {"db_url": None})


# --------------------------------------------------------------------------- train records its run


def test_train_records_its_run_and_ablate_reuses_it(study_spec_file, tiny_market, tmp_path, monkeypatch):
    from reidbench.harness.store import Store

    monkeypatch.chdir(tmp_path)
    db = f"sqlite:///{tmp_path / 'r.db'}"
    common = ["--data", f"tiny={tiny_market}", "--epochs", "1", "--device", "cpu", "--workers", "0", "--db", db]
    trained = _invoke("train", str(study_spec_file), "--out", str(tmp_path / "mine"), *common)
    assert trained.exit_code == 0, trained.output
    assert "training" in trained.output and (tmp_path / "mine" / "result.json").is_file()
    store = Store(db)
    (record,) = store.list_runs()
    assert record.status == "done" and record.attempts == 1 and record.label == study_spec_file.stem
    assert Path(record.out_dir) == tmp_path / "mine"
    short = record.run_hash[:12]
    listed = _invoke("runs", "list", "--db", db)
    assert listed.exit_code == 0 and short in listed.output and "done" in listed.output
    scored = _invoke("evaluate", "--run", short, "--flip", "--data", f"tiny={tiny_market}", "--db", db)
    assert scored.exit_code == 0, scored.output
    assert {e.variant for e in store.evaluations([record.run_hash])} == {"", "flip"}
    again = _invoke("train", str(study_spec_file), *common)
    assert again.exit_code == 0, again.output
    assert "already done" in again.output and "training" not in again.output
    ablated = _invoke("ablate", "--base", str(study_spec_file), "--add", "", "--profile", "cpu", "--runs-dir",
                      str(tmp_path / "runs"), *common)
    assert ablated.exit_code == 0, ablated.output
    assert "1 cached, 0 to run" in ablated.output and not re.search(r"epoch +\d+/\d+", ablated.output)
    assert store.find_run(record.run_hash).attempts == 1 and not (tmp_path / "runs").exists()


def test_train_records_a_failure_and_retries_it(study_spec_file, tiny_market, tmp_path, monkeypatch):
    from reidbench.harness.store import Store
    from reidbench.harness.train import runner

    monkeypatch.chdir(tmp_path)
    db = f"sqlite:///{tmp_path / 'r.db'}"
    args = ["train", str(study_spec_file), "--data", f"tiny={tiny_market}", "--epochs", "1", "--device", "cpu",
            "--workers", "0", "--db", db]

    def boom(*_args, **_kwargs):
        raise RuntimeError("boom")

    with monkeypatch.context() as patched:  # a failure only training reveals
        patched.setattr(runner, "execute", boom)
        failed = _invoke(*args)
    assert failed.exit_code == 1, failed.output
    (record,) = Store(db).list_runs()
    short = record.run_hash[:12]
    assert record.status == "failed" and "RuntimeError: boom" in record.error
    assert f"reidbench: error: run {short} failed: RuntimeError: boom;" in failed.output
    retried = _invoke(*args)
    assert retried.exit_code == 0, retried.output
    after = Store(db).find_run(record.run_hash)
    assert after.status == "done" and after.attempts == 2 and "training" in retried.output
    assert after.out_dir == str(Path("runs") / short)


def test_choose_rows_fills_in_what_the_command_line_leaves_out():
    from reidbench.harness.ablation.defaults import DefaultAblation, Rows, choose_rows
    from reidbench.tricks import PAPER_ORDER

    steps_default = DefaultAblation(steps="components", add=PAPER_ORDER)
    tricks_default = DefaultAblation(add=("warmup", "rea"), mode="single")
    assert choose_rows(steps_default, None, None, None) == Rows("components", (), "steps", True)
    assert choose_rows(steps_default, None, "single", None) == Rows(None, PAPER_ORDER, "single", True)
    assert choose_rows(steps_default, None, None, "readings") == Rows("readings", (), "steps", False)
    assert choose_rows(tricks_default, None, None, None) == Rows(None, ("warmup", "rea"), "single", True)
    assert choose_rows(tricks_default, None, "leave-one-out", None) == Rows(None, ("warmup", "rea"), "leave-one-out",
                                                                            True)
    assert choose_rows(tricks_default, "ls, bnneck", None, None) == Rows(None, ("ls", "bnneck"), "cumulative", False)
    assert choose_rows(tricks_default, "", None, None) == Rows(None, (), "cumulative", False)
