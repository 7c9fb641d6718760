"""Report intervals against independent computations: a t interval computed by hand from a textbook
quantile, a bootstrap interval equal to the statistics module's on the same per-query values, and
CSV columns / daggers on an ablation whose differences are constructed to be (and not to be) significant."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from reidbench.harness.ablation.expand import expand
from reidbench.harness.cli import main
from reidbench.harness.evaluation.per_query import pack
from reidbench.harness.report.significance import references
from reidbench.harness.spec import RunSpec, replace_section
from reidbench.harness.stats import paired_bootstrap
from reidbench.harness.store import Store
from reidbench.tricks import parse_trick_list

T_975_2 = 4.302653  # Student t, 97.5 % quantile, 2 degrees of freedom (tables)

# mAP per step and seed (fractions): +warmup gains 0.10, 0.11, 0.12 (significant), +REA changes
# by +0.05, -0.05, +0.01 (not significant).
MAP = {"Baseline": (0.50, 0.52, 0.54), "+warmup": (0.60, 0.63, 0.66), "+REA": (0.65, 0.58, 0.67)}


def _record(store, steps, values_of, per_query_of=None, variants=None):
    """Record ``steps`` (one synth-a evaluation each) and their ablation. ``variants``: {name: (label,
    values_of, per_query_of)}, another evaluation of every run and an ablation variant row."""
    variants = variants or {}
    for s in steps:
        store.ensure_run(s.run_hash, s.spec.to_dict(), s.label)
        assert store.claim(s.run_hash, "test")
        evaluation = {"key": "default-synth-a", "test_set": "synth-a", "variant": "",
                      "metrics": values_of(s), "settings": {}}
        if per_query_of is not None:
            evaluation["per_query"] = per_query_of(s)
        evaluations = [evaluation]
        for name, (_label, v_values, v_per_query) in variants.items():
            evaluations.append({"key": f"{name}-synth-a", "test_set": "synth-a", "variant": name,
                                "metrics": v_values(s), "settings": {"rescore": name}})
            if v_per_query is not None:
                evaluations[-1]["per_query"] = v_per_query(s)
        store.record_result(s.run_hash, "test", {
            "run_hash": s.run_hash, "spec": s.spec.to_dict(), "evaluations": evaluations,
            "history": [{"epoch": 1, "losses": {"id": 1.0}, "lr": 1e-4, "images_per_s": 1.0, "extra": {}}],
            "provenance": {"synth-a": {"name": "synth-a", "root": "/x", "format": "market", "synthetic": True}},
            "model_info": {}, "environment": {}, "seconds_train": 1.0, "seconds_eval": 1.0, "out_dir": "/nonexistent"})
    store.record_ablation("a", "bot", "cumulative", {"train": "synth-a", "test": ["synth-a"],
                                                     "seeds": sorted({s.seed for s in steps}),
                                                     "variants": [{"name": n, "label": v[0]}
                                                                  for n, v in variants.items()]},
                          [{"position": s.position, "run_hash": s.run_hash, "label": s.label, "step": s.step,
                            "seed": s.seed} for s in steps])


def _steps(seeds):
    base = replace_section(RunSpec(profile="cpu"), "data", train="synth-a", test=("synth-a",))
    return expand(base, parse_trick_list("warmup,rea"), "cumulative", list(seeds))


def _csv(db: str, *extra: str) -> pd.DataFrame:
    result = CliRunner().invoke(main, ["report", "--format", "csv", "--metrics", "map", "--db", db, *extra])
    assert result.exit_code == 0, result.output
    return pd.read_csv(io.StringIO(result.stdout), index_col=0)


def test_references_per_mode():
    steps = ["A", "B", "C"]
    assert references("cumulative", steps) == {"B": "A", "C": "B"}
    assert references("single", steps) == {"B": "A", "C": "A"}
    assert references("leave-one-out", steps) == {"B": "A", "C": "A"}


def test_references_against_a_chosen_row_by_label_or_number():
    steps = ["A", "B", "C"]
    for mode in ("cumulative", "single", "steps"):
        assert references(mode, steps, against="B") == {"A": "B", "C": "B"}
        assert references(mode, steps, against="3") == {"A": "C", "B": "C"}
    with pytest.raises(ValueError, match=r"--against 'D' is not a row.*1: A; 2: B; 3: C") as info:
        references("single", steps, against="D")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="is not a row"):
        references("single", steps, against="4")


def test_report_against_a_chosen_row(tmp_path):
    """Every row against +warmup (row 2 of a cumulative table): the differences are hand-computed,
    Baseline − +warmup is significant and +REA − +warmup is not, and the caption names the row."""
    db = f"sqlite:///{tmp_path / 'r.db'}"
    store = Store(db)
    _record(store, _steps([0, 1, 2]), lambda s: {"R1": 0.9, "mAP": MAP[s.step][s.seed], "mINP": 0.3})
    for against in ("+warmup", "2"):
        frame = _csv(db, "--against", against)
        for step, significant in (("Baseline", 1), ("+REA", 0)):
            d = np.subtract(MAP[step], MAP["+warmup"])
            half = T_975_2 * d.std(ddof=1) / math.sqrt(3)
            assert frame.loc[step, "synth-a mAP delta"] == pytest.approx(100 * d.mean(), abs=1e-4)
            assert frame.loc[step, "synth-a mAP ci_low"] == pytest.approx(100 * (d.mean() - half), abs=1e-3)
            assert frame.loc[step, "synth-a mAP ci_high"] == pytest.approx(100 * (d.mean() + half), abs=1e-3)
            assert frame.loc[step, "synth-a mAP significant"] == significant
        assert math.isnan(frame.loc["+warmup", "synth-a mAP significant"])  # the chosen row is its own reference
    markdown = CliRunner().invoke(main, ["report", "--metrics", "map", "--db", db, "--against", "2"]).stdout
    assert "† the difference from the row '+warmup' has a 95% interval" in markdown
    lines = {line.split("|")[1].strip(): line for line in markdown.splitlines() if line.startswith("| ")}
    assert "†" in lines["Baseline"] and "†" not in lines["+REA"] and "†" not in lines["+warmup"]
    bad = CliRunner().invoke(main, ["report", "--db", db, "--against", "+LS"])
    assert bad.exit_code != 0 and "--against '+LS' is not a row" in bad.output and "Traceback" not in bad.output
    speed = CliRunner().invoke(main, ["report", "--db", db, "--against", "+REA", "--speed"])
    assert speed.exit_code == 2 and "--against applies to an ablation's accuracy table" in speed.output
    store.close()


def test_three_seed_t_intervals_in_csv_and_daggers_in_markdown(tmp_path):
    db = f"sqlite:///{tmp_path / 'r.db'}"
    store = Store(db)
    _record(store, _steps([0, 1, 2]), lambda s: {"R1": 0.9, "mAP": MAP[s.step][s.seed], "mINP": 0.3})
    frame = _csv(db)
    for step, ref, significant in (("+warmup", "Baseline", 1), ("+REA", "+warmup", 0)):
        d = np.subtract(MAP[step], MAP[ref])
        half = T_975_2 * d.std(ddof=1) / math.sqrt(3)
        row = frame.loc[step]
        assert row["synth-a mAP delta"] == pytest.approx(100 * d.mean(), abs=1e-4)
        assert row["synth-a mAP ci_low"] == pytest.approx(100 * (d.mean() - half), abs=1e-3)
        assert row["synth-a mAP ci_high"] == pytest.approx(100 * (d.mean() + half), abs=1e-3)
        assert row["synth-a mAP significant"] == significant
    assert math.isnan(frame.loc["Baseline", "synth-a mAP significant"])  # the first row has no reference

    markdown = CliRunner().invoke(main, ["report", "--metrics", "map", "--db", db]).stdout
    lines = {line.split("|")[1].strip(): line for line in markdown.splitlines() if line.startswith("| ")}
    assert "†" in lines["+warmup"] and "†" not in lines["+REA"] and "†" not in lines["Baseline"]
    assert "† the difference from the step before has a 95% interval that excludes 0 (paired t over seeds)" in markdown
    latex = CliRunner().invoke(main, ["report", "--format", "latex", "--metrics", "map", "--db", db]).stdout
    assert r"$^\dagger$" in latex and "†" not in latex

    none = _csv(db, "--interval", "none")
    assert not any("delta" in c for c in none.columns)
    store.close()


def test_one_seed_bootstrap_interval_is_the_statistics_modules(tmp_path):
    rng = np.random.default_rng(0)
    q_pids = np.repeat(np.arange(30), 3)  # 30 identities × 3 queries
    base_ap = rng.uniform(0.2, 0.8, q_pids.size)
    gain = {"Baseline": 0.0, "+warmup": 0.15, "+REA": 0.15}  # +REA: +warmup plus noise only

    def per_query(step):
        ap = np.clip(base_ap + gain[step] + (0.0 if step != "+REA" else rng.normal(0, 0.01, q_pids.size)), 0, 1)
        return {"ap": ap, "inp": ap / 2, "first_match_rank": np.where(ap > 0.5, 1, 3), "valid": np.ones_like(ap, bool)}

    arrays = {step: per_query(step) for step in gain}

    def metrics(s):
        a = arrays[s.step]
        return {"R1": float(np.mean(a["first_match_rank"] == 1)), "mAP": float(np.mean(a["ap"].astype(np.float32))),
                "mINP": float(np.mean(a["inp"].astype(np.float32)))}

    db = f"sqlite:///{tmp_path / 'r.db'}"
    store = Store(db)
    _record(store, _steps([0]), metrics, lambda s: pack(arrays[s.step], q_pids))
    frame = _csv(db)
    from reidbench.harness.evaluation.per_query import unpack

    stored = {s: unpack(pack(arrays[s], q_pids)) for s in arrays}  # what the store holds (float32)
    for step, ref in (("+warmup", "Baseline"), ("+REA", "+warmup")):
        expected = paired_bootstrap(stored[ref], stored[step], q_pids, metrics=("mAP",), resamples=1000, seed=0)["mAP"]
        row = frame.loc[step]
        assert row["synth-a mAP ci_low"] == pytest.approx(100 * expected.low, abs=1e-4)
        assert row["synth-a mAP ci_high"] == pytest.approx(100 * expected.high, abs=1e-4)
        assert row["synth-a mAP significant"] == int(expected.significant)
    assert frame.loc["+warmup", "synth-a mAP significant"] == 1 and frame.loc["+REA", "synth-a mAP significant"] == 0
    markdown = CliRunner().invoke(main, ["report", "--metrics", "map", "--db", db]).stdout
    assert "paired bootstrap over query identities, 1,000 resamples" in markdown

    # Forcing the t interval with one seed: no interval, said so in the CSV's absence of bounds.
    forced = _csv(db, "--interval", "seeds")
    assert math.isnan(forced.loc["+warmup", "synth-a mAP ci_low"])
    assert math.isnan(forced.loc["+warmup", "synth-a mAP significant"])
    store.close()


def test_variant_rows_are_compared_with_the_same_models_default_evaluation(tmp_path):
    """A re-scored row ("+warmup [SG]") against the plain evaluation of the same runs, paired by seed
    (by hand), in any mode; with one seed the bootstrap reads each side's own per-query results."""
    sg = {"Baseline": (0.55, 0.58, 0.60), "+warmup": (0.60, 0.62, 0.67), "+REA": (0.70, 0.61, 0.69)}
    db = f"sqlite:///{tmp_path / 'r.db'}"
    store = Store(db)
    _record(store, _steps([0, 1, 2]), lambda s: {"R1": 0.9, "mAP": MAP[s.step][s.seed], "mINP": 0.3},
            variants={"sg": ("SG", lambda s: {"R1": 0.9, "mAP": sg[s.step][s.seed], "mINP": 0.3}, None)})
    for extra in ((), ("--against", "+REA")):
        frame = _csv(db, *extra)
        for step, significant in (("Baseline", 1), ("+warmup", 0), ("+REA", 0)):
            d = np.subtract(sg[step], MAP[step])
            half = T_975_2 * d.std(ddof=1) / math.sqrt(3)
            row = frame.loc[f"{step} [SG]"]
            assert row["synth-a mAP delta"] == pytest.approx(100 * d.mean(), abs=1e-4)
            assert row["synth-a mAP ci_low"] == pytest.approx(100 * (d.mean() - half), abs=1e-3)
            assert row["synth-a mAP significant"] == significant
    markdown = CliRunner().invoke(main, ["report", "--metrics", "map", "--db", db]).stdout
    assert "A row \"step [evaluation]\" is compared with the same models' default evaluation." in markdown
    store.close()

    # One seed: a paired bootstrap of the variant's per-query AP against the default's.
    rng = np.random.default_rng(1)
    q_pids = np.repeat(np.arange(30), 3)
    base_ap = rng.uniform(0.2, 0.8, q_pids.size)

    def arrays(ap):
        return {"ap": ap, "inp": ap / 2, "first_match_rank": np.where(ap > 0.5, 1, 3), "valid": np.ones_like(ap, bool)}

    plain = arrays(base_ap)
    rescored = arrays(np.clip(base_ap + rng.normal(0.05, 0.05, q_pids.size), 0, 1))
    db1 = f"sqlite:///{tmp_path / 'one.db'}"
    store = Store(db1)
    _record(store, _steps([0]), lambda s: {"R1": 0.9, "mAP": float(plain["ap"].mean()), "mINP": 0.3},
            lambda s: pack(plain, q_pids),
            variants={"sg": ("SG", lambda s: {"R1": 0.9, "mAP": float(rescored["ap"].mean()), "mINP": 0.3},
                             lambda s: pack(rescored, q_pids))})
    from reidbench.harness.evaluation.per_query import unpack

    expected = paired_bootstrap(unpack(pack(plain, q_pids)), unpack(pack(rescored, q_pids)), q_pids,
                                metrics=("mAP",), resamples=1000, seed=0)["mAP"]
    row = _csv(db1).loc["+REA [SG]"]
    assert row["synth-a mAP ci_low"] == pytest.approx(100 * expected.low, abs=1e-4)
    assert row["synth-a mAP ci_high"] == pytest.approx(100 * expected.high, abs=1e-4)
    assert expected.significant and row["synth-a mAP significant"] == 1
    store.close()


def test_study_points_are_compared_with_the_best_point():
    from reidbench.harness.report.significance import study_intervals

    # mAP (percent) of three P×K points over seeds 0..2 on one test set; 16×4 is the best.
    values = {"8×4": (70.0, 71.0, 72.0), "16×4": (80.0, 82.0, 81.0), "32×4": (79.0, 82.5, 80.0)}
    rows = [(f"{b}-{s}", s, b, "synth-a", "synth-a", "mAP", v) for b, vs in values.items() for s, v in enumerate(vs)]
    points = pd.DataFrame(rows, columns=["run_hash", "seed", "batch", "test_set", "group", "metric", "value"])
    out = study_intervals(None, points, "batch", ["mAP"], method="seeds")
    assert set(out["reference"]) == {"16×4"} and sorted(out["step"]) == ["32×4", "8×4"]
    for step in ("8×4", "32×4"):
        d = np.subtract(values[step], values["16×4"])
        half = T_975_2 * d.std(ddof=1) / math.sqrt(3)
        row = out[out["step"] == step].iloc[0]
        assert row["delta"] == pytest.approx(d.mean()) and row["ci_low"] == pytest.approx(d.mean() - half)
        assert row["ci_high"] == pytest.approx(d.mean() + half)
    assert out.set_index("step").loc["8×4", "significant"] and not out.set_index("step").loc["32×4", "significant"]


def test_two_seed_t_intervals_in_csv(tmp_path):
    # Two seeds: t_{0.975,1} = 12.706205. +warmup gains 0.100 and 0.101 (significant even so);
    # +REA changes by +0.02 and -0.01 (not).
    maps = {"Baseline": (0.500, 0.520), "+warmup": (0.600, 0.621), "+REA": (0.620, 0.611)}
    db = f"sqlite:///{tmp_path / 'r.db'}"
    store = Store(db)
    _record(store, _steps([0, 1]), lambda s: {"R1": 0.9, "mAP": maps[s.step][s.seed], "mINP": 0.3})
    frame = _csv(db)
    for step, ref, significant in (("+warmup", "Baseline", 1), ("+REA", "+warmup", 0)):
        d = np.subtract(maps[step], maps[ref])
        half = 12.706205 * d.std(ddof=1) / math.sqrt(2)
        assert frame.loc[step, "synth-a mAP ci_low"] == pytest.approx(100 * (d.mean() - half), abs=1e-3)
        assert frame.loc[step, "synth-a mAP ci_high"] == pytest.approx(100 * (d.mean() + half), abs=1e-3)
        assert frame.loc[step, "synth-a mAP significant"] == significant
    store.close()
