"""`reidbench ablate --mode factorial|fractional` end to end: the runs of cumulative, single and
leave-one-out ablations are members of the factorial (same spec hash), so a factorial after a
cumulative ablation trains only the missing points; the dry-run prints the design, the cached runs
and a fraction's aliases; impossible combinations fail at plan time in one line; report and both
plots work on the trained tiny design (one seed: the bootstrap over query identities)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from reidbench.harness.ablation.plan import plan_ablation
from reidbench.harness.cli import main
from reidbench.harness.spec import RunSpec, replace_section
from reidbench.harness.store import Store
from reidbench.tricks import PAPER_ORDER, parse_trick_list


def _args(spec: Path, data: Path, db: Path, runs: Path, *extra: str, add: str = "bnneck,center") -> list[str]:
    return ["ablate", "--base", str(spec), "--add", add, "--data", f"tiny={data}", "--profile", "cpu",
            "--epochs", "1", "--db", f"sqlite:///{db}", "--runs-dir", str(runs), "--workers", "0", "--device", "cpu",
            *extra]


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory, tiny_bot_yaml) -> Path:
    path = tmp_path_factory.mktemp("spec") / "tiny-bot.yaml"
    path.write_text(tiny_bot_yaml)
    return path


@pytest.mark.parametrize("mode", ["cumulative", "single", "leave-one-out"])
def test_other_modes_runs_are_members_of_the_factorial_by_spec_hash(mode):
    base = replace_section(RunSpec(profile="cpu"), "data", train="synth-a", test=("synth-a",))
    tricks = parse_trick_list(PAPER_ORDER)
    factorial = plan_ablation(base, "bot", tricks, "factorial", [0, 1])
    assert len(factorial.unique_hashes()) == 2 ** 6 * 2
    other = plan_ablation(base, "bot", tricks, mode, [0, 1])
    assert set(other.unique_hashes()) <= set(factorial.unique_hashes())
    # and the same spec: the hash is of the content, whatever the label
    by_hash = {s.run_hash: s.spec for s in factorial.steps}
    assert all(by_hash[s.run_hash] == s.spec for s in other.steps)


def test_a_fraction_contains_the_base_and_is_a_subset_of_the_factorial():
    base = replace_section(RunSpec(profile="cpu"), "data", train="synth-a", test=("synth-a",))
    tricks = parse_trick_list(PAPER_ORDER)
    fraction = plan_ablation(base, "bot", tricks, "fractional", [0], resolution="IV")
    factorial = plan_ablation(base, "bot", tricks, "factorial", [0])
    cumulative = plan_ablation(base, "bot", tricks, "cumulative", [0])
    assert len(fraction.steps) == 16 and set(fraction.unique_hashes()) <= set(factorial.unique_hashes())
    assert cumulative.steps[0].run_hash in fraction.unique_hashes()  # the base is reused


def test_an_impossible_combination_is_a_one_line_error_at_plan_time(spec_file, tiny_market, tmp_path):
    # focal replaces the cross-entropy that ls smooths: the point +LS +focal cannot be built
    result = CliRunner().invoke(main, _args(spec_file, tiny_market, tmp_path / "r.db", tmp_path / "runs", "--mode",
                                            "factorial", "--dry-run", add="ls,focal"))
    assert result.exit_code == 2, result.output
    assert result.output.strip() == ("reidbench: error: --mode factorial: design point '+LS +focal' (ls + focal, "
                                     "applied in --add order) cannot be built: trick 'focal' conflicts with ls")


@pytest.mark.parametrize("extra, message", [
    (("--mode", "fractional"), "--mode fractional needs --resolution: IV or V"),
    (("--mode", "cumulative", "--resolution", "IV"), "--resolution IV applies to --mode fractional only"),
    (("--mode", "factorial", "--resolution", "v"), "--resolution V applies to --mode fractional only"),
])
def test_resolution_is_for_fractions_only(spec_file, tiny_market, tmp_path, extra, message):
    result = CliRunner().invoke(main, _args(spec_file, tiny_market, tmp_path / "r.db", tmp_path / "runs", "--dry-run",
                                            *extra))
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_fractional_dry_run_prints_the_alias_structure(spec_file, tiny_market, tmp_path):
    result = CliRunner().invoke(main, _args(spec_file, tiny_market, tmp_path / "r.db", tmp_path / "runs", "--mode",
                                            "fractional", "--resolution", "IV", "--dry-run", add=",".join(PAPER_ORDER)))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "design: 2^(6−2) fraction, resolution IV (16 points)" in out and "runs: 16, 0 cached, 16 to train" in out
    assert "defining relation I = ABCE = ABDF = CDEF" in out
    assert "AB = CE = DF = ABCDEF   [warmup × rea = ls × bnneck = stride × center]" in out
    assert "A = BCE = BDF = ACDEF   [warmup]" in out


@pytest.fixture(scope="module")
def trained(spec_file, tiny_market, tmp_path_factory):
    """A cumulative ablation of bnneck, center (3 runs), then the factorial dry-run and the factorial."""
    root = tmp_path_factory.mktemp("factorial")
    db, runs = root / "results.db", root / "runs"
    cumulative = CliRunner().invoke(main, _args(spec_file, tiny_market, db, runs))
    assert cumulative.exit_code == 0, cumulative.output
    dry = CliRunner().invoke(main, _args(spec_file, tiny_market, db, runs, "--mode", "factorial", "--dry-run"))
    factorial = CliRunner().invoke(main, _args(spec_file, tiny_market, db, runs, "--mode", "factorial"))
    assert factorial.exit_code == 0, factorial.output
    return db, dry.output, factorial.output


def test_factorial_after_cumulative_trains_only_the_missing_point(trained):
    db, dry, output = trained
    assert "runs: 4, 3 cached, 1 to train" in dry and dry.count("[cached]") == 3 and dry.count("[new]") == 1
    matrix = {line.split()[0]: line.split() for line in dry.splitlines() if line.startswith("    ")}
    assert matrix["1"] == ["1", "−", "−", "Baseline", "1/1"] and matrix["3"] == ["3", "−", "+", "+center", "loss", "0/1"]
    assert "cached runs shared with: tiny-bot-cumulative-" in dry
    assert "3 cached, 1 to run" in output
    store = Store(f"sqlite:///{db}")
    assert len(store.list_runs()) == 4 and all(r.attempts == 1 for r in store.list_runs())
    assert store.get_ablation("latest").meta["design"]["factors"] == ["bnneck", "center"]
    # under the rows: the effects and Shapley tables, one seed: bootstrap over query identities
    assert "| bnneck × center |" in output and "| total (all − base) |" in output
    assert "bootstrap over query identities" in output
    store.close()


def test_report_and_plots_of_the_trained_design(trained, tmp_path):
    db, _, _ = trained
    url = f"sqlite:///{db}"
    report = CliRunner().invoke(main, ["report", "--db", url, "--resamples", "200"])
    assert report.exit_code == 0, report.output
    assert "full factorial 2^2 (4 points)" in report.stdout and "1 seed (0)" in report.stdout
    for kind in ("effects", "interactions"):
        out = tmp_path / f"{kind}.svg"
        result = CliRunner().invoke(main, ["plot", kind, "--db", url, "--out", str(out), "--resamples", "200"])
        assert result.exit_code == 0, result.output
        assert out.read_text().lstrip().startswith("<?xml")
