"""``report --paper``'s agreement with the papers' effects, the convergence footer of every table, and
rows that say their profile — on stores filled by hand, against hand-computed verdicts, counts and ρ."""

from __future__ import annotations

import io
import math

import pandas as pd
import pytest
from click.testing import CliRunner

from reidbench.harness.ablation.expand import expand
from reidbench.harness.ablation.plan import ablation_table as ablate_table
from reidbench.harness.ablation.plan import plan_ablation
from reidbench.harness.cli import main
from reidbench.harness.report.agreement import (
    AGREES,
    NOISE,
    OPPOSITE,
    SURVEY_BOT_MINP,
    _number,
    agreement_frame,
    summary,
    summary_line,
)
from reidbench.harness.report.paper import AGW_TRICKS, ALL_TRICKS
from reidbench.harness.report.significance import ablation_intervals
from reidbench.harness.report.tables import load_ablation
from reidbench.harness.spec import RunSpec, replace_section
from reidbench.harness.store import Store
from reidbench.tricks import parse_trick_list

SEEDS = (0, 1, 2)
# mAP (fractions) per step and seed. Published Δ (BoT Tables 1/3, mean of Market and Duke, points):
#   same domain  +warmup +1.3 (1.2, 1.4)   +REA +3.65 (4.1, 3.2)   +LS +1.0 (1.0, 1.0)
#   cross domain +warmup +2.05 (1.2, 2.9)  +REA −3.9 (−3.9, −3.9)  +LS +1.25 (1.1, 1.4)
# Measured differences per seed (points) and the verdict each must get:
#   same  +warmup −5, −6, −6 → opposite   +REA +5, −5, +1 → within the noise   +LS +2, +2.1, +2.2 → agrees
#   cross +warmup +1, +1.2, +1.1 → agrees  +REA −3, −3.1, −2.9 → agrees        +LS −2, −2.1, −1.9 → opposite
SAME = {"Baseline": (0.50, 0.52, 0.54)}
CROSS = {"Baseline": (0.20, 0.21, 0.22)}
for name, prev, diffs, table in [
        ("+warmup", "Baseline", (-0.05, -0.06, -0.06), SAME), ("+REA", "+warmup", (0.05, -0.05, 0.01), SAME),
        ("+LS", "+REA", (0.02, 0.021, 0.022), SAME), ("+warmup", "Baseline", (0.01, 0.012, 0.011), CROSS),
        ("+REA", "+warmup", (-0.03, -0.031, -0.029), CROSS), ("+LS", "+REA", (-0.02, -0.021, -0.019), CROSS)]:
    table[name] = tuple(p + d for p, d in zip(table[prev], diffs))
VERDICTS = {("+warmup", "synth-a"): OPPOSITE, ("+REA", "synth-a"): NOISE, ("+LS", "synth-a"): AGREES,
            ("+warmup", "synth-b"): AGREES, ("+REA", "synth-b"): AGREES, ("+LS", "synth-b"): OPPOSITE}
PUBLISHED = {("+warmup", "synth-a"): 1.3, ("+REA", "synth-a"): 3.65, ("+LS", "synth-a"): 1.0,
             ("+warmup", "synth-b"): 2.05, ("+REA", "synth-b"): -3.9, ("+LS", "synth-b"): 1.25}
MEASURED = {("+warmup", "synth-a"): -17 / 3, ("+REA", "synth-a"): 1 / 3, ("+LS", "synth-a"): 2.1,
            ("+warmup", "synth-b"): 1.1, ("+REA", "synth-b"): -3.0, ("+LS", "synth-b"): -2.0}
# Spearman by hand: published ranks (4, 6, 2, 5, 1, 3), measured ranks (1, 4, 6, 5, 2, 3) in the order
# above; Σd² = 9 + 4 + 16 + 0 + 1 + 0 = 30; ρ = 1 − 6·30 / (6·(36 − 1)) = 1/7.
RHO = 1 / 7
SYNTH = {"name": "synth", "root": "/x", "format": "market", "synthetic": True}


def _steps(base: RunSpec):
    return expand(base, parse_trick_list("warmup,rea,ls"), "cumulative", list(SEEDS))


def _base(train="synth-a", tests=("synth-a", "synth-b"), max_epochs=6) -> RunSpec:
    base = replace_section(RunSpec(profile="cpu"), "data", train=train, test=tests)
    return replace_section(base, "schedule", max_epochs=max_epochs, milestones=(4, 6))


def _fill(store: Store, steps, values, tests, synthetic=True, convergence=None, name="a", seeds=SEEDS):
    for s in steps:
        store.ensure_run(s.run_hash, s.spec.to_dict(), s.label)
        evaluations = [{"key": f"default-{t}", "test_set": t, "variant": "", "settings": {},
                        "metrics": {"mAP": values[t][s.step][s.seed], "R1": 0.9}} for t in tests]
        result = {"run_hash": s.run_hash, "spec": s.spec.to_dict(), "evaluations": evaluations,
                  "history": [{"epoch": 1, "losses": {"id": 1.0}, "lr": 1e-4, "images_per_s": 1.0, "extra": {}}],
                  "provenance": {t: {**SYNTH, "name": t, "synthetic": synthetic} for t in tests},
                  "model_info": {}, "environment": {}, "seconds_train": 1.0, "seconds_eval": 1.0,
                  "out_dir": "/nonexistent"}
        if convergence is not None:
            result["convergence"] = {"status": convergence(s)}
        store.record_result(s.run_hash, None, result)
    store.record_ablation(name, "bot", "cumulative", {"train": steps[0].spec.data.train, "test": list(tests),
                                                       "seeds": list(seeds), "profile": "cpu"},
                          [{"position": s.position, "run_hash": s.run_hash, "label": s.label, "step": s.step,
                            "seed": s.seed} for s in steps])


@pytest.fixture
def synthetic_db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    statuses = {"Baseline": "yes", "+warmup": "no", "+REA": "unknown", "+LS": "yes"}
    _fill(Store(url), _steps(_base()), {"synth-a": SAME, "synth-b": CROSS}, ("synth-a", "synth-b"),
          convergence=lambda s: statuses[s.step] if s.seed == 0 else "yes")
    return url


def test_verdicts_signs_and_rank_correlation_by_hand(synthetic_db):
    store = Store(synthetic_db)
    frame, ctx = load_ablation(store)
    intervals = ablation_intervals(store, frame, ctx.mode, ["mAP"], method="seeds")
    agreement = agreement_frame(frame, intervals, ["mAP"])
    got = {(r.step, r.test_set): r for r in agreement.itertuples()}
    assert set(got) == set(VERDICTS)
    for key, verdict in VERDICTS.items():
        assert got[key].verdict == verdict, key
        assert got[key].published == pytest.approx(PUBLISHED[key]), key
        assert got[key].delta == pytest.approx(MEASURED[key]), key
    assert got[("+warmup", "synth-a")].per_dataset == pytest.approx({"Market": 1.2, "Duke": 1.4})
    assert got[("+warmup", "synth-b")].per_dataset == pytest.approx({"M→D": 1.2, "D→M": 2.9})
    assert got[("+REA", "synth-b")].source == "BoT Table 3" and got[("+LS", "synth-a")].source == "BoT Table 1"
    s = summary(agreement)
    assert (s["agrees"], s["opposite"], s["noise"], s["decided"], s["n"]) == (3, 2, 1, 5, 6)
    assert s["rho"] == pytest.approx(RHO)
    line = summary_line(agreement)
    assert line.startswith("Signs agree on 3 of 5 comparisons whose interval excludes 0 (2 opposite); "
                           "1 within the noise. Spearman's ρ between published and measured Δ: +0.14 (p = ")
    assert line.endswith(", n = 6 comparisons.")


def test_report_paper_prints_the_block_and_the_csv_its_columns(synthetic_db):
    out = CliRunner().invoke(main, ["report", "--paper", "--metrics", "map", "--interval", "seeds",
                                    "--db", synthetic_db])
    assert out.exit_code == 0, out.output
    text = out.stdout
    assert "**Agreement with the papers**" in text
    assert "| +warmup | Baseline | synth-a | mAP | +1.3 (Market +1.2, Duke +1.4) | −5.7 [" in text
    assert "| opposite | BoT Table 1 |" in text and "Signs agree on 3 of 5 comparisons" in text
    assert "never absolute numbers across datasets" in text and "mean of the Market and Duke" in text
    assert "no row matches the paper" in out.stderr  # synthetic: no paper number beside any row
    csv = CliRunner().invoke(main, ["report", "--paper", "--metrics", "map", "--interval", "seeds", "--format",
                                    "csv", "--db", synthetic_db])
    table = pd.read_csv(io.StringIO(csv.stdout), index_col=0)
    assert table["synth-a mAP agreement"].to_dict() == pytest.approx(
        {"Baseline": math.nan, "+warmup": -1, "+REA": 0, "+LS": 1}, nan_ok=True)
    assert table["synth-a→synth-b mAP paper_delta"]["+REA"] == pytest.approx(-3.9)
    latex = CliRunner().invoke(main, ["report", "--paper", "--metrics", "map", "--interval", "seeds", "--format",
                                      "latex", "--db", synthetic_db]).stdout
    assert latex.count("\\begin{table}") == 2 and "\\label{tab:ablation-agreement}" in latex
    page = CliRunner().invoke(main, ["report", "--paper", "--metrics", "map", "--interval", "seeds", "--format",
                                     "html", "--db", synthetic_db]).stdout
    assert page.index("Agreement with the papers") < page.index("</body>")


def test_real_market_runs_compare_with_their_own_dataset(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    same = {"Baseline": (0.70, 0.71, 0.72)}
    same["+warmup"] = tuple(v + 0.02 for v in same["Baseline"])
    cross = {"Baseline": (0.10, 0.11, 0.12)}
    cross["+warmup"] = tuple(v - 0.01 for v in cross["Baseline"])
    steps = expand(_base("market", ("market", "duke")), parse_trick_list("warmup"), "cumulative", list(SEEDS))
    _fill(Store(url), steps, {"market": same, "duke": cross}, ("market", "duke"), synthetic=False)
    store = Store(url)
    frame, ctx = load_ablation(store)
    agreement = agreement_frame(frame, ablation_intervals(store, frame, ctx.mode, ["mAP"], method="seeds"))
    got = {r.test_set: r for r in agreement.itertuples()}
    assert got["market"].per_dataset == pytest.approx({"Market": 1.2}) and got["market"].verdict == AGREES
    assert got["duke"].per_dataset == pytest.approx({"M→D": 1.2}) and got["duke"].verdict == OPPOSITE
    assert summary(agreement)["rho"] is None  # two pairs: no rank correlation


def test_agw_against_bot_uses_the_survey_rows():
    # mangye16/ReID-Survey README (seed-systems.md §6): BagTricks 94.5/85.9/59.4, AGW 95.1/87.8/65.0 on Market
    assert _number("market", "market", ALL_TRICKS, "mINP", None, "bot") == SURVEY_BOT_MINP["market"] == 59.4
    assert _number("market", "market", AGW_TRICKS, "mINP", None, "agw") == 65.0
    assert _number("market", "market", AGW_TRICKS, "mAP", None, "agw") - _number(
        "market", "market", ALL_TRICKS, "mAP", None, "bot") == pytest.approx(1.9)
    assert _number("market", "market", ("warmup",), "mINP", None, "bot") is None  # only all six tricks


def test_every_table_footer_counts_converged_runs(synthetic_db):
    # seed 0: Baseline yes, +warmup no, +REA unknown, +LS yes; seeds 1, 2: yes → 10 of 12 (1 not, 1 unknown)
    expected = {"markdown": "Converged: 10 of 12 runs (training loss Δ < 1 % of its first epoch's and same-domain mAP Δ < 0.5 points",
                "html": "Converged: 10 of 12 runs (training loss Δ &lt; 1 % of its first epoch&#x27;s and same-domain mAP Δ &lt; 0.5 points",
                "latex": r"Converged: 10 of 12 runs (training loss $\Delta$ < 1 \% of its first epoch's and same-domain mAP $\Delta$ < 0.5"}
    for fmt, text in expected.items():
        out = CliRunner().invoke(main, ["report", "--format", fmt, "--db", synthetic_db])
        assert out.exit_code == 0 and text in out.stdout and "1 not, 1 unknown" in out.stdout, fmt
    csv = CliRunner().invoke(main, ["report", "--format", "csv", "--db", synthetic_db]).stdout
    table = pd.read_csv(io.StringIO(csv), index_col=0)
    assert table[["runs", "converged", "not converged"]].to_dict("index") == {
        "Baseline": {"runs": 3, "converged": 3, "not converged": 0},
        "+warmup": {"runs": 3, "converged": 2, "not converged": 1},
        "+REA": {"runs": 3, "converged": 2, "not converged": 0},
        "+LS": {"runs": 3, "converged": 3, "not converged": 0}}
    store = Store(synthetic_db)
    plan = plan_ablation(_base(), "bot", parse_trick_list("warmup,rea,ls"), "cumulative", SEEDS)
    lines = ablate_table(plan, store).splitlines()
    assert lines[-2].endswith("profile cpu, 6 epochs, synthetic data")
    assert lines[-1].startswith("converged: 10 of 12 runs (") and lines[-1].endswith("; 1 not, 1 unknown)")


def test_rows_of_two_versions_of_a_profile_say_which(tmp_path):
    """An older cpu profile (6 epochs) and a newer one (12) share the name: both runs stay, each
    under its own hash, and a table holding both says which row used which."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = Store(url)
    old = _steps(_base())[:1]
    new = [s for s in expand(_base(max_epochs=12), parse_trick_list("warmup"), "cumulative", [0])][1:]
    values = {"synth-a": {"Baseline": (0.5,), "+warmup": (0.6,)}}
    _fill(store, old + new, values, ("synth-a",), seeds=(0,))
    assert old[0].run_hash != new[0].run_hash and len(store.list_runs()) == 2
    md = CliRunner().invoke(main, ["report", "--db", url, "--interval", "none"]).stdout
    assert md.splitlines()[0].startswith("| step | profile | synth-a R1 |")
    assert "| Baseline | cpu, 6 epochs |" in md and "| +warmup | cpu, 12 epochs |" in md
    assert "profiles differ by row (cpu, 6 epochs / cpu, 12 epochs; see the profile column)" in md
    csv = pd.read_csv(io.StringIO(CliRunner().invoke(main, ["report", "--db", url, "--format", "csv"]).stdout),
                      index_col=0)
    assert csv["profile"].to_dict() == {"Baseline": "cpu, 6 epochs", "+warmup": "cpu, 12 epochs"}
    store.record_ablation("old", "bot", "cumulative", {"train": "synth-a", "test": ["synth-a"], "profile": "cpu"},
                          [{"position": 0, "run_hash": old[0].run_hash, "label": "Baseline", "step": "Baseline",
                            "seed": 0}])
    one = CliRunner().invoke(main, ["report", "--db", url, "--ablation", "old", "--interval", "none"]).stdout
    assert "| profile |" not in one and "profile cpu; 6 epochs" in one  # one profile: said once, in the caption


def test_a_table2_variant_row_is_compared_with_table2(tmp_path):
    """An --eval variant row (the +BNNeck model ranked by f_t Euclidean) against the same models' default
    evaluation: BoT Table 2's f_t Euclidean minus its default f_i cosine (= Table 1's +BNNeck row)."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = Store(url)
    base = _base("market", ("market",))
    steps = [s for s in expand(base, parse_trick_list("warmup,rea,ls,stride,bnneck"), "cumulative", [0, 1])
             if s.step == "+BNNeck"]
    for s in steps:
        store.ensure_run(s.run_hash, s.spec.to_dict(), s.label)
        default = {"mAP": 0.800 + 0.01 * s.seed, "R1": 0.9}
        ft = {"mAP": default["mAP"] - 0.010 - 0.001 * s.seed, "R1": 0.9}  # −1.0, −1.1 points
        store.record_result(s.run_hash, None, {
            "run_hash": s.run_hash, "spec": s.spec.to_dict(),
            "evaluations": [{"key": "d", "test_set": "market", "variant": "", "settings": {}, "metrics": default},
                            {"key": "f", "test_set": "market", "variant": "fte", "metrics": ft,
                             "settings": {"feature": "f_t", "normalize": False, "metric": "euclidean"}}],
            "history": [], "provenance": {"market": {**SYNTH, "name": "market", "synthetic": False}},
            "model_info": {}, "environment": {}, "seconds_train": 1.0, "seconds_eval": 1.0, "out_dir": "/x"})
    store.record_ablation("t2", "bot", "cumulative", {"train": "market", "test": ["market"], "seeds": [0, 1],
                                                      "variants": [{"name": "fte", "label": "f_t Euclidean"}]},
                          [{"position": i, "run_hash": s.run_hash, "label": s.label, "step": s.step, "seed": s.seed}
                           for i, s in enumerate(steps)])
    frame, ctx = load_ablation(store, "t2")
    agreement = agreement_frame(frame, ablation_intervals(store, frame, ctx.mode, ["mAP"], method="seeds"))
    (row,) = agreement.itertuples()
    assert (row.step, row.reference, row.source) == ("+BNNeck [f_t Euclidean]", "+BNNeck", "BoT Table 2")
    assert row.per_dataset == pytest.approx({"Market": 85.5 - 85.7}) and row.delta == pytest.approx(-1.05)
    assert row.verdict == AGREES
