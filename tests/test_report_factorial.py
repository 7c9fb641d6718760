"""Effects and Shapley reports of factorial / fractional ablations, from a store filled with constructed
results (no training): effects = differences of means worked out here, Shapley values = the average
over all orders computed here, the one-seed bootstrap redone by resampling queries by hand, the
captions, LaTeX, CSV columns, --table errors and both plots through the CLI."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from reidbench.harness.ablation.designs import design_meta
from reidbench.harness.ablation.plan import plan_ablation
from reidbench.harness.cli import main
from reidbench.harness.evaluation.per_query import pack
from reidbench.harness.spec import RunSpec, replace_section
from reidbench.harness.store import Store
from reidbench.tricks import parse_trick_list

TRICKS = "stride,bnneck,center"
QUERY_PIDS = np.repeat(np.arange(20), 3)  # 20 identities × 3 queries


def _true_map(point: int) -> float:
    """stride +8 points, bnneck +3, stride×bnneck +4 (on top of both), center nothing."""
    stride, bnneck = point & 1, point >> 1 & 1
    return 0.50 + 0.08 * stride + 0.03 * bnneck + 0.04 * stride * bnneck


NOISE = np.random.default_rng(0).normal(0, 0.004, size=(5, 64))  # seed × point


def _record(store: Store, mode: str = "factorial", tricks: str = TRICKS, seeds=(0, 1, 2), resolution=None,
            with_per_query: bool = False, value_of=None):
    base = replace_section(RunSpec(profile="cpu"), "data", train="synth-a", test=("synth-a",))
    plan = plan_ablation(base, "bot", parse_trick_list(tricks), mode, list(seeds), resolution=resolution)
    names = [t.name for t in plan.tricks]
    value_of = value_of or (lambda point, seed: _true_map(point) + NOISE[seed, point])
    truth = {}
    for s in plan.steps:
        point = sum(1 << names.index(n) for n in s.added)
        value = value_of(point, s.seed)
        truth[(point, s.seed)] = value
        evaluation = {"key": "default-synth-a", "test_set": "synth-a", "variant": "", "settings": {},
                      "metrics": {"R1": 0.9, "mAP": value, "mINP": 0.3}}
        if with_per_query:
            ap = np.clip(value + np.random.default_rng(100 * point + s.seed).normal(0, 0.15, QUERY_PIDS.size), 0, 1)
            evaluation["metrics"]["mAP"] = float(np.mean(ap.astype(np.float32)))
            truth[(point, s.seed)] = evaluation["metrics"]["mAP"]
            evaluation["per_query"] = pack({"ap": ap, "inp": ap / 2, "first_match_rank": np.where(ap > 0.5, 1, 3),
                                            "valid": np.ones(ap.size, bool)}, QUERY_PIDS)
        store.ensure_run(s.run_hash, s.spec.to_dict(), s.label)
        assert store.claim(s.run_hash, "test")
        store.record_result(s.run_hash, "test", {
            "run_hash": s.run_hash, "spec": s.spec.to_dict(), "evaluations": [evaluation], "history": [],
            "provenance": {"synth-a": {"name": "synth-a", "root": "/x", "format": "market", "synthetic": True}},
            "model_info": {}, "environment": {}, "seconds_train": 1.0, "seconds_eval": 1.0, "out_dir": "/nonexistent"})
    store.record_ablation(plan.name, "bot", plan.mode,
                          {"train": "synth-a", "test": ["synth-a"], "seeds": list(seeds), "design": design_meta(plan)},
                          [{"position": s.position, "run_hash": s.run_hash, "label": s.label, "step": s.step,
                            "seed": s.seed} for s in plan.steps])
    return plan, truth


def _means(truth) -> dict[int, float]:
    out: dict[int, list[float]] = {}
    for (point, _seed), value in truth.items():
        out.setdefault(point, []).append(100 * value)
    return {p: float(np.mean(v)) for p, v in out.items()}


def _by_hand(means: dict[int, float], term: int, k: int) -> float:
    """Mean where the term's ±1 column is +1 minus mean where it is −1."""
    plus, minus = [], []
    for point, value in means.items():
        sign = np.prod([(1 if point >> i & 1 else -1) for i in range(k) if term >> i & 1])
        (plus if sign > 0 else minus).append(value)
    return float(np.mean(plus) - np.mean(minus))


def _csv(db: str, *extra: str) -> pd.DataFrame:
    result = CliRunner().invoke(main, ["report", "--format", "csv", "--metrics", "map", "--db", db, *extra])
    assert result.exit_code == 0, result.output
    return pd.read_csv(io.StringIO(result.stdout))


@pytest.fixture
def factorial_db(tmp_path):
    db = f"sqlite:///{tmp_path / 'r.db'}"
    store = Store(db)
    plan, truth = _record(store)
    yield db, plan, truth
    store.close()


def test_effects_csv_are_differences_of_means_with_t_intervals_over_seeds(factorial_db):
    db, plan, truth = factorial_db
    frame = _csv(db, "--table", "effects").set_index("term")
    for column in ("effect", "ci_low", "ci_high", "significant", "method", "df", "aliases"):
        assert column in frame.columns
    means = _means(truth)
    terms = {"stride": 1, "bnneck": 2, "center": 4, "stride × bnneck": 3, "stride × center": 5,
             "bnneck × center": 6}
    assert list(frame.index) == list(terms)  # main effects, then interactions, in --add order
    for term, mask in terms.items():
        assert frame.loc[term, "effect"] == pytest.approx(_by_hand(means, mask, 3), abs=1e-3)
        assert frame.loc[term, "ci_low"] < frame.loc[term, "effect"] < frame.loc[term, "ci_high"]
    # constructed: stride +8 + ½·4 = +10, bnneck +3 + 2 = +5, interaction 2 × ¼ × 4 = +2, center 0
    assert frame.loc["stride", "effect"] == pytest.approx(10.0, abs=0.5)
    assert frame.loc["stride × bnneck", "effect"] == pytest.approx(2.0, abs=0.5)
    assert frame.loc["stride", "significant"] == 1 and frame.loc["stride × bnneck", "significant"] == 1
    assert frame.loc["center", "significant"] == 0 and frame.loc["bnneck × center", "significant"] == 0
    assert set(frame["df"]) == {14.0}  # (3 seeds − 1) × (8 points − 1)
    assert frame["method"].str.startswith("t over seed replicates").all()


def test_shapley_csv_is_the_average_over_orders_and_sums_to_the_gain(factorial_db):
    db, plan, truth = factorial_db
    frame = _csv(db, "--table", "shapley").set_index("trick")
    means = _means(truth)
    expected = [0.0, 0.0, 0.0]
    orders = list(itertools.permutations(range(3)))
    for order in orders:
        coalition = 0
        for player in order:
            expected[player] += (means[coalition | 1 << player] - means[coalition]) / len(orders)
            coalition |= 1 << player
    for i, trick in enumerate(["stride", "bnneck", "center"]):
        row = frame.loc[trick]
        assert row["shapley"] == pytest.approx(expected[i], abs=1e-3)
        before = (1 << i) - 1
        assert row["cumulative"] == pytest.approx(means[before | 1 << i] - means[before], abs=1e-3)
        assert row["alone"] == pytest.approx(means[1 << i] - means[0], abs=1e-3)
        assert row["last"] == pytest.approx(means[7] - means[7 ^ 1 << i], abs=1e-3)
        assert row["marginal_min"] <= row["shapley"] <= row["marginal_max"]
    total = frame.loc["total (all − base)"]
    assert frame.loc[["stride", "bnneck", "center"], "shapley"].sum() == pytest.approx(total["shapley"], abs=1e-3)
    assert total["shapley"] == pytest.approx(means[7] - means[0], abs=1e-3)
    # the paper's order credits bnneck with the interaction: +3 alone, +7 after stride
    assert frame.loc["bnneck", "cumulative"] > frame.loc["bnneck", "shapley"] + 1.5


def test_markdown_shows_both_tables_with_design_seeds_and_interval_in_the_captions(factorial_db):
    db, _, _ = factorial_db
    result = CliRunner().invoke(main, ["report", "--db", db, "--metrics", "map"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "| term | synth-a mAP |" in text and "| trick | synth-a mAP Shapley | synth-a mAP cumulative Δ |" in text
    assert "full factorial 2^3 (8 points)" in text and "3 seeds (0, 1, 2)" in text
    assert "t over seed replicates (OLS, seeds as blocks, pure error), 14 df" in text
    assert "= 2 × the OLS coefficient" in text and "sum to the total gain" in text
    # both captions say how many of the design's runs converged (these records have no convergence record)
    assert text.count("converged: 0 of 24 runs (") == 2 and "; 24 unknown)" in text
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "†" in lines["stride"] and "†" not in lines["center"]
    latex = CliRunner().invoke(main, ["report", "--db", db, "--format", "latex"]).stdout
    assert latex.count("\\begin{table}") == 2 and "$\\Delta$" in latex and "$^\\dagger$" in latex
    assert not any(ch in latex for ch in "Δ†×−…")
    html = CliRunner().invoke(main, ["report", "--db", db, "--format", "html"]).stdout
    assert html.count("<table") == 2


def test_runs_table_and_table_errors(factorial_db):
    db, plan, _ = factorial_db
    runs = CliRunner().invoke(main, ["report", "--db", db, "--table", "runs", "--metrics", "map"])
    assert runs.exit_code == 0 and "+stride=1 +BNNeck +center loss" in runs.stdout and "Shapley" not in runs.stdout
    paper = CliRunner().invoke(main, ["report", "--db", db, "--paper"])
    assert paper.exit_code == 2 and "--paper applies to the rows of an ablation: add --table runs" in paper.output
    store = Store(db)
    base = replace_section(RunSpec(profile="cpu"), "data", train="synth-a", test=("synth-a",))
    cumulative = plan_ablation(base, "bot", parse_trick_list(TRICKS), "cumulative", [0])
    store.record_ablation(cumulative.name, "bot", "cumulative", {"train": "synth-a", "test": ["synth-a"]},
                          [{"position": s.position, "run_hash": s.run_hash, "step": s.step, "seed": s.seed}
                           for s in cumulative.steps])
    bad = CliRunner().invoke(main, ["report", "--db", db, "--table", "effects"])
    assert bad.exit_code == 2 and "is a cumulative ablation, not a factorial design" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    plot = CliRunner().invoke(main, ["plot", "effects", "--db", db, "--out", "x.png"])
    assert plot.exit_code == 2 and "not a factorial design" in plot.output
    store.close()


def test_one_seed_saturated_design_bootstraps_query_identities_by_hand(tmp_path):
    """2^2 with one seed: the model has no residual, so each effect's interval is the percentile of
    the effect recomputed on identity resamples — redone here by materialising the resampled queries."""
    db = f"sqlite:///{tmp_path / 'r.db'}"
    store = Store(db)
    plan, truth = _record(store, tricks="stride,bnneck", seeds=(0,), with_per_query=True)
    frame = _csv(db, "--table", "effects", "--resamples", "300").set_index("term")
    runs = {sum(1 << ["stride", "bnneck"].index(n) for n in s.added): s.run_hash for s in plan.steps}
    arrays = {p: store.query_scores(h, "default-synth-a") for p, h in runs.items()}
    draw = np.random.default_rng(0)
    clusters = np.unique(QUERY_PIDS)
    effects = {"stride": [], "bnneck": [], "stride × bnneck": []}
    for _ in range(300):
        rows = np.concatenate([np.flatnonzero(QUERY_PIDS == c)
                               for c in clusters[draw.integers(0, clusters.size, size=clusters.size)]])
        y = {p: 100 * float(np.mean(a["ap"][rows].astype(np.float64))) for p, a in arrays.items()}
        effects["stride"].append((y[1] + y[3] - y[0] - y[2]) / 2)
        effects["bnneck"].append((y[2] + y[3] - y[0] - y[1]) / 2)
        effects["stride × bnneck"].append((y[0] + y[3] - y[1] - y[2]) / 2)
    means = _means(truth)
    for term, samples in effects.items():
        low, high = np.quantile(samples, [0.025, 0.975])
        assert frame.loc[term, "ci_low"] == pytest.approx(low, abs=1e-3)
        assert frame.loc[term, "ci_high"] == pytest.approx(high, abs=1e-3)
        assert frame.loc[term, "method"].startswith("bootstrap over query identities")
    assert frame.loc["stride", "effect"] == pytest.approx(_by_hand(means, 1, 2), abs=1e-3)
    seeds_only = _csv(db, "--table", "effects", "--interval", "seeds").set_index("term")
    assert seeds_only["ci_low"].isna().all() and seeds_only["significant"].isna().all()
    store.close()


def test_fraction_reports_alias_chains_and_has_no_shapley(tmp_path):
    db = f"sqlite:///{tmp_path / 'r.db'}"
    store = Store(db)
    plan, _ = _record(store, mode="fractional", tricks="warmup,rea,ls,stride", seeds=(0, 1), resolution="IV")
    assert len({s.step for s in plan.steps}) == 8  # 2^(4−1)
    frame = _csv(db, "--table", "effects").set_index("term")
    interactions = [t for t in frame.index if "×" in t]
    assert interactions == ["warmup × rea = ls × stride", "warmup × ls = rea × stride", "warmup × stride = rea × ls"]
    assert frame.loc["warmup", "aliases"] == "warmup = rea × ls × stride"
    text = CliRunner().invoke(main, ["report", "--db", db]).stdout
    assert "2^(4−1) fraction, resolution IV (8 points)" in text and "generators D = ABC" in text
    assert "No Shapley values" in text
    only = CliRunner().invoke(main, ["report", "--db", db, "--table", "shapley"])
    assert only.exit_code == 2 and "needs every subset of the tricks" in only.output
    store.close()


def test_missing_design_point_leaves_estimates_empty_with_the_reason(tmp_path):
    db = f"sqlite:///{tmp_path / 'r.db'}"
    store = Store(db)
    plan, _ = _record(store, tricks="stride,bnneck", seeds=(0,))
    store.delete_run(plan.steps[-1].run_hash)  # the all-tricks point, e.g. lost with its folder
    frame = _csv(db, "--table", "effects")
    assert frame["effect"].isna().all()
    assert frame["method"].str.contains("1 of 4 design points have no result").all()
    store.close()


def test_plot_effects_and_interactions(factorial_db, tmp_path):
    from reidbench.harness.report.design_plots import effect_bar_rows, interaction_means
    from reidbench.harness.report.factorial import analyse, load_design

    db, _, truth = factorial_db
    out = tmp_path / "effects.png"
    result = CliRunner().invoke(main, ["plot", "effects", "--db", db, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0 and "2 of 3 main effects with a 95% interval excluding 0" in result.output
    store = Store(db)
    data = load_design(store)
    effects, _ = analyse(store, data, ["mAP"])
    bars = effect_bar_rows(effects, "mAP").set_index("step")
    assert bars.loc["stride", "color"] == "tab:green" and bars.loc["stride", "hatch"] == ""
    assert bars.loc["center", "hatch"] == "///"  # within the noise: grey and hatched
    # the four corners of stride × bnneck: means over the other trick (center) and the seeds
    means = _means(truth)
    corners = interaction_means(data, "synth-a", "mAP", 0, 1)
    assert corners[(1, 1)] == pytest.approx((means[3] + means[7]) / 2, abs=1e-3)
    assert corners[(0, 0)] == pytest.approx((means[0] + means[4]) / 2, abs=1e-3)
    inter = tmp_path / "inter.pdf"
    result = CliRunner().invoke(main, ["plot", "interactions", "--db", db, "--out", str(inter), "--top", "2"])
    assert result.exit_code == 0, result.output
    assert inter.read_bytes().startswith(b"%PDF") and "2 interaction panel(s)" in result.output
    store.close()


@pytest.mark.skipif(__import__("shutil").which("pdflatex") is None,
                    reason="pdflatex not on PATH (scripts/check_latex.sh installs it)")
def test_design_tables_compile_with_pdflatex(tmp_path):
    import subprocess

    from reidbench.harness.report.writers import latex_document

    for name, kwargs in (("fraction", {"mode": "fractional", "tricks": "warmup,rea,ls,stride", "resolution": "IV"}),
                         ("factorial", {})):
        db = f"sqlite:///{tmp_path / name}.db"
        store = Store(db)
        _record(store, **kwargs)
        latex = CliRunner().invoke(main, ["report", "--db", db, "--format", "latex"]).stdout
        (tmp_path / "t.tex").write_text(latex_document(latex))
        out = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout[-3000:]
        store.close()
