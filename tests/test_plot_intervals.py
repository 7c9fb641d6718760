"""`plot ablation` error bars = the paired 95 % intervals: a hand-made ablation whose steps are
clearly significant, clearly not, and without an interval; the drawn bars checked against intervals
computed here directly from the per-query arrays."""

from __future__ import annotations

import math

import click
import matplotlib
import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.colors import to_rgba
from scipy import stats as scipy_stats

from reidbench.harness.ablation.expand import expand
from reidbench.harness.evaluation.per_query import pack
from reidbench.harness.report.plots import HATCH, draw_ablation
from reidbench.harness.report.significance import ablation_intervals
from reidbench.harness.report.tables import load_ablation
from reidbench.harness.spec import RunSpec, replace_section, with_epochs
from reidbench.harness.stats import paired_bootstrap
from reidbench.harness.store import Store
from reidbench.tricks import parse_trick_list

matplotlib.use("Agg")

TESTS = ("synth-a", "synth-b")
IDS = 12
Q_PIDS = np.repeat(np.arange(IDS), 2)  # 24 queries, two per identity
BASE = np.linspace(0.2, 0.6, Q_PIDS.size)
RESAMPLES = 300


def per_query_ap(step: str, test: str) -> np.ndarray | None:
    """+warmup: +20..+30 points on every query (significant); +REA: +15 on even identities, −15 on odd
    ones (mean 0: not significant); +LS: no per-query results (no interval)."""
    shift = 0.0 if test == "synth-a" else -0.1
    warm = BASE + shift + 0.2 + 0.1 * np.arange(Q_PIDS.size) / Q_PIDS.size
    if step == "Baseline":
        return BASE + shift
    if step == "+warmup":
        return warm
    if step == "+REA":
        return warm + np.where(Q_PIDS % 2 == 0, 0.15, -0.15)
    return None


def arrays(ap: np.ndarray) -> dict[str, np.ndarray]:
    return {"ap": ap, "inp": ap, "first_match_rank": np.where(ap > 0.5, 1, 2), "valid": np.ones(ap.size, bool)}


def cli():
    from reidbench.harness.cli.report import plot

    return click.Group(commands=[plot])


def record_ablation(store, seeds=(0,), seed_values=None):
    """Record the ablation; ``seed_values``: {(step, seed): mAP} overrides (per-query results then omitted)."""
    base = with_epochs(replace_section(RunSpec(profile="cpu"), "data", train="synth-a", test=TESTS), 2)
    steps = expand(base, parse_trick_list("warmup,rea,ls"), "cumulative", list(seeds))
    for s in steps:
        store.ensure_run(s.run_hash, s.spec.to_dict(), s.label)
        metrics, payloads = {}, {}
        for test in TESTS:
            ap = per_query_ap(s.step, test)
            if seed_values is not None:
                metrics[test] = {"mAP": seed_values[(s.step, s.seed)] + (0.0 if test == "synth-a" else -0.1),
                                 "R1": 0.5}
                continue
            if ap is None:  # +LS: metrics of its own, no per-query results and no saved features
                metrics[test] = {"mAP": 0.55, "R1": 0.6}
                continue
            metrics[test] = {"mAP": float(ap.mean()), "R1": float((ap > 0.5).mean())}
            payloads[test] = pack(arrays(ap), Q_PIDS)
        assert store.claim(s.run_hash, "test")
        store.record_result(s.run_hash, "test", {
            "run_hash": s.run_hash, "spec": s.spec.to_dict(), "metrics": metrics, "history": [],
            "provenance": {t: {"name": t, "root": "/data", "format": "market", "synthetic": True} for t in TESTS},
            "model_info": {"pretrained_source": "imagenet"}, "environment": {}, "seconds_train": 1.0,
            "seconds_eval": 1.0, "out_dir": "/nonexistent"})
        for test, payload in payloads.items():
            store.record_query_scores(s.run_hash, f"default:{test}", payload)
    store.record_ablation("abl", "bot", "cumulative", {"profile": "cpu", "epochs": 2, "train": "synth-a",
                                                       "test": list(TESTS), "seeds": list(seeds)},
                          [{"position": s.position, "run_hash": s.run_hash, "label": s.label, "step": s.step,
                            "seed": s.seed} for s in steps])


@pytest.fixture()
def store(tmp_path):
    st = Store(f"sqlite:///{tmp_path / 'results.db'}")
    yield st
    st.close()


def drawn(fig):
    """{panel title: {x: (facecolor, hatch, height, (low, high) or None)}} from the figure's artists."""
    out = {}
    for ax in fig.axes:
        bars = [c for c in ax.containers if isinstance(c, matplotlib.container.BarContainer)][0]
        errs = [c for c in ax.containers if isinstance(c, matplotlib.container.ErrorbarContainer)]
        ends = {}
        for err in errs:
            for seg in err.lines[2][0].get_segments():
                ends[round(float(seg[0][0]))] = tuple(sorted((float(seg[0][1]), float(seg[1][1]))))
        out[ax.get_title()] = {round(p.get_x() + p.get_width() / 2): (p.get_facecolor(), p.get_hatch(), p.get_height(),
                                                                    ends.get(round(p.get_x() + p.get_width() / 2)))
                               for p in bars.patches}
    return out


def expected_bootstrap(step, ref, test):
    a, b = arrays(per_query_ap(ref, test)), arrays(per_query_ap(step, test))
    return paired_bootstrap(a, b, Q_PIDS, metrics=("mAP",), resamples=RESAMPLES, seed=0)["mAP"]


def test_bars_show_bootstrap_intervals_and_hatch_the_insignificant(store):
    import matplotlib.pyplot as plt

    record_ablation(store)
    frame, ctx = load_ablation(store)
    intervals = ablation_intervals(store, frame, ctx.mode, ["mAP"], resamples=RESAMPLES)
    fig = draw_ablation(intervals, mode=ctx.mode, metric="mAP", resamples=RESAMPLES)
    try:
        panels = drawn(fig)
        legend = fig.legends[0].get_title().get_text().replace("\n", " ")
    finally:
        plt.close(fig)
    assert set(panels) == {"Test on synth-a", "Test on synth-a→synth-b"}
    for test, panel in zip(TESTS, ("Test on synth-a", "Test on synth-a→synth-b")):
        bars = panels[panel]
        assert sorted(bars) == [0, 1, 2]  # +warmup, +REA, +LS
        # +warmup vs Baseline: every query gains 20..30 points → coloured green, error bar = the interval
        warm = expected_bootstrap("+warmup", "Baseline", test)
        color, hatch, height, ends = bars[0]
        assert warm.low > 0.19 and color == to_rgba("tab:green") and not hatch
        assert height == pytest.approx(100 * np.mean(per_query_ap("+warmup", test) - per_query_ap("Baseline", test)),
                                       abs=1e-4)
        assert ends == pytest.approx((100 * warm.low, 100 * warm.high), abs=1e-3)
        # +REA vs +warmup: ±15 points by identity, mean 0 → grey, hatched, interval across 0
        rea = expected_bootstrap("+REA", "+warmup", test)
        color, hatch, height, ends = bars[1]
        assert rea.low < 0 < rea.high and hatch == HATCH and color[:3] == to_rgba("0.72")[:3]
        assert height == pytest.approx(0.0, abs=1e-4)
        assert ends == pytest.approx((100 * rea.low, 100 * rea.high), abs=1e-3)
        assert ends[1] - ends[0] > 5  # clearly wide: the ±15 points do not cancel in every resample
        # +LS: no per-query results, no features → hatched, no error bar, still its difference
        color, hatch, height, ends = bars[2]
        assert hatch == HATCH and ends is None
        assert height == pytest.approx(100 * (0.55 - per_query_ap("+REA", test).mean()), abs=1e-4)
    assert "paired bootstrap over query identities, 300 resamples" in legend
    assert "includes 0" in legend and "or there is none (2 bar(s))" in legend
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "interval includes 0 / no interval" in labels


def test_seed_intervals_are_paired_t(store):
    import matplotlib.pyplot as plt

    # three seeds, no per-query results: auto picks the t interval over seeds
    values = {("Baseline", 0): 0.40, ("Baseline", 1): 0.50, ("Baseline", 2): 0.45,
              ("+warmup", 0): 0.50, ("+warmup", 1): 0.61, ("+warmup", 2): 0.54,  # +10, +11, +9
              ("+REA", 0): 0.45, ("+REA", 1): 0.66, ("+REA", 2): 0.50,  # −5, +5, −4
              ("+LS", 0): 0.45, ("+LS", 1): 0.66, ("+LS", 2): 0.50}
    record_ablation(store, seeds=(0, 1, 2), seed_values=values)
    frame, ctx = load_ablation(store)
    intervals = ablation_intervals(store, frame, ctx.mode, ["mAP"])
    fig = draw_ablation(intervals, mode=ctx.mode, metric="mAP")
    try:
        bars = drawn(fig)["Test on synth-a"]
        legend = fig.legends[0].get_title().get_text().replace("\n", " ")
    finally:
        plt.close(fig)
    t = scipy_stats.t.ppf(0.975, 2)
    for x, diffs, significant in ((0, [10, 11, 9], True), (1, [-5, 5, -4], False)):
        mean, half = np.mean(diffs), t * np.std(diffs, ddof=1) / math.sqrt(3)
        color, hatch, height, ends = bars[x]
        assert height == pytest.approx(mean, abs=1e-6)
        assert ends == pytest.approx((mean - half, mean + half), abs=1e-6)
        assert (hatch == HATCH) is not significant
        assert color == (to_rgba("tab:green") if significant else to_rgba("0.72"))
    color, hatch, height, ends = bars[2]  # +LS equals +REA on every seed: a zero-width interval at 0
    assert height == pytest.approx(0.0) and ends == pytest.approx((0.0, 0.0)) and hatch == HATCH
    assert "paired t over seeds (3 seeds)" in legend and "or there is none" not in legend


def test_plot_ablation_cli_intervals_and_none(store, tmp_path):
    record_ablation(store)
    out = tmp_path / "abl.png"
    args = ["plot", "ablation", "--db", store.url, "--out", str(out), "--figsize", "9x4", "--dpi", "40",
            "--resamples", str(RESAMPLES)]
    res = CliRunner().invoke(cli(), args)
    assert res.exit_code == 0, res.output + res.stderr
    assert "(2 of 6 differences with a 95% interval excluding 0)" in res.stdout
    assert "no interval for +LS on synth-a, +LS on synth-b (drawn hatched)" in res.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"
    res = CliRunner().invoke(cli(), [*args, "--interval", "none", "--out", str(tmp_path / "n.svg")])
    assert res.exit_code == 0, res.output + res.stderr
    assert res.stdout.strip() == f"wrote {tmp_path / 'n.svg'}"
    assert (tmp_path / "n.svg").read_bytes().count(b"<svg") == 1
    res = CliRunner().invoke(cli(), [*args, "--interval", "seeds"])
    assert res.exit_code == 0, res.output + res.stderr
    assert "(0 of 6 differences" in res.stdout and "1 common seed(s)" in res.stderr
