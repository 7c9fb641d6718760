"""`plot compare --runs A B`: per-query AP of two stored runs, what improved and regressed, ranked lists."""

from __future__ import annotations

import click
import matplotlib
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from reidbench.harness.evaluation.per_query import pack
from reidbench.harness.report.compare import compare_queries, load_pair, ranks_path
from reidbench.harness.spec import RunSpec, replace_section
from reidbench.harness.spec.hashing import run_hash
from reidbench.harness.store import Store

matplotlib.use("Agg")

NAN = float("nan")
Q_PIDS = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
# per-query AP of runs A and B; the last query is invalid (no gallery match) in both
AP_A = np.array([0.50, 0.40, 0.90, 0.20, 0.60, 0.30, 0.70, 0.80, 0.10, NAN])
AP_B = np.array([0.90, 0.40, 0.50, 0.25, 0.60, 0.10, 1.00, 0.80, 0.05, NAN])
# by hand: Δ = +.40, 0, −.40, +.05, 0, −.20, +.30, 0, −.05 (q9 invalid)
IMPROVED, REGRESSED, UNCHANGED = [0, 3, 6], [2, 5, 8], [1, 4, 7]
MOST_IMPROVED_2, MOST_REGRESSED_2 = [0, 6], [2, 5]


def cli():
    from reidbench.harness.cli.report import plot

    return click.Group(commands=[plot])


def arrays(ap):
    valid = ~np.isnan(ap)
    return {"ap": ap, "inp": ap, "first_match_rank": np.where(valid, np.where(ap >= 0.5, 1, 3), 0), "valid": valid}


def spec(seed, tests=("synth-a", "synth-b")):
    return replace_section(replace_section(RunSpec(profile="cpu"), "data", train="synth-a", test=tests),
                           "train", seed=seed)


def record(store, s, evaluations, *, out_dir="/nonexistent", label=""):
    h = run_hash(s)
    store.ensure_run(h, s.to_dict(), label)
    assert store.claim(h, "test")
    store.record_result(h, "test", {
        "run_hash": h, "spec": s.to_dict(), "evaluations": evaluations, "history": [],
        "provenance": {t: {"name": t, "root": "/data", "format": "market", "synthetic": True}
                       for t in ("synth-a", "synth-b")},
        "model_info": {}, "environment": {}, "seconds_train": 1.0, "seconds_eval": 1.0, "out_dir": str(out_dir)})
    return h


def evaluation(test, mAP, **extra):
    return {"key": f"k-{test}", "test_set": test, "variant": "", "settings": {}, "metrics": {"mAP": mAP}, **extra}


def hand_made_run(store, seed, ap, q_pids=Q_PIDS, tests=("synth-b", "synth-a"), per_query=True, label=""):
    h = record(store, spec(seed), [evaluation(t, float(np.nanmean(ap))) for t in tests], label=label)
    if per_query:
        for t in tests:
            store.record_query_scores(h, f"k-{t}", pack(arrays(ap), q_pids))
    return h


@pytest.fixture()
def store(tmp_path):
    st = Store(f"sqlite:///{tmp_path / 'results.db'}")
    yield st
    st.close()


def test_counts_and_extremes_by_hand(store):
    a, b = hand_made_run(store, 0, AP_A), hand_made_run(store, 1, AP_B)
    pair = load_pair(store, a[:10], b[:10])
    assert pair.test_set == "synth-a"  # the spec's first test set, although synth-b was recorded first
    cmp = compare_queries(pair.a.per_query, pair.b.per_query, n=2, resamples=200)
    assert (cmp.improved, cmp.regressed, cmp.unchanged) == (len(IMPROVED), len(REGRESSED), len(UNCHANGED))
    assert list(cmp.indices) == list(range(9))
    assert list(cmp.most_improved) == MOST_IMPROVED_2 and list(cmp.most_regressed) == MOST_REGRESSED_2
    assert cmp.map_a == pytest.approx(np.nanmean(AP_A), abs=1e-6)
    assert cmp.map_b == pytest.approx(np.nanmean(AP_B), abs=1e-6)
    assert cmp.interval.delta == pytest.approx(np.nanmean(AP_B) - np.nanmean(AP_A), abs=1e-6)
    assert cmp.interval.low <= cmp.interval.delta <= cmp.interval.high
    full = compare_queries(pair.a.per_query, pair.b.per_query, n=10, resamples=10)
    assert list(full.most_improved) == [0, 6, 3] and list(full.most_regressed) == [2, 5, 8]


def test_cli_writes_scatter_and_notes_missing_features(store, tmp_path):
    a, b = hand_made_run(store, 0, AP_A, label="base"), hand_made_run(store, 1, AP_B, label="new")
    out = tmp_path / "cmp.png"
    res = CliRunner().invoke(cli(), ["plot", "compare", "--db", store.url, "--runs", a[:8], b[:8], "-n", "2",
                                     "--out", str(out), "--figsize", "6x6", "--dpi", "40", "--resamples", "200",
                                     "--test-on", "synth-b"])
    assert res.exit_code == 0, res.output
    assert "on synth-b" in res.stdout
    assert "3 queries improved, 3 regressed, 3 unchanged of 9 valid" in res.stdout
    assert f"mAP {100 * np.nanmean(AP_A):.1f} (A) → {100 * np.nanmean(AP_B):.1f} (B)" in res.stdout
    assert f"wrote {out} (per-query AP scatter)" in res.stdout and "-ranks" not in res.stdout
    assert "ranked lists not drawn" in res.stderr and "features of synth-b not found" in res.stderr
    with Image.open(out) as img:
        assert img.size == (240, 240)
    assert not ranks_path(out).exists()


def test_cli_one_line_errors(store, tmp_path):
    a = hand_made_run(store, 0, AP_A)
    no_scores = hand_made_run(store, 1, AP_B, per_query=False)
    other_queries = hand_made_run(store, 2, AP_B, q_pids=Q_PIDS[::-1])
    only_b = hand_made_run(store, 3, AP_B, tests=("synth-b",))
    fewer = hand_made_run(store, 4, AP_B[:6], q_pids=Q_PIDS[:6])

    def run(*args):
        res = CliRunner().invoke(cli(), ["plot", "compare", "--db", store.url, "--out", str(tmp_path / "c.png"),
                                         "--resamples", "10", *args])
        assert res.exit_code == 2, res.output
        assert res.output.count("\n") == 1, res.output
        return res.output

    assert f"run {no_scores[:12]} has no per-query results for synth-a" in run("--runs", a, no_scores)
    assert "no saved features" in run("--runs", a, no_scores)
    assert "scored different query lists on synth-a (query 0 is identity 0 in one, 4 in the other" in run(
        "--runs", a, other_queries)
    assert "scored different query lists on synth-a (10 and 6 queries)" in run("--runs", a, fewer)
    assert f"run {only_b[:12]} was not evaluated on 'synth-a'" in run("--runs", a, only_b, "--test-on", "synth-a")
    assert "names run" in run("--runs", a[:9], a[:12])
    assert "no run 'ffff'" in run("--runs", a, "ffff")
    assert "not evaluated on a common test set" in run("--runs", a, only_b, "--variant", "rerank")


# --------------------------------------------------------------------------- ranked lists from saved features


def features_run(store, tmp_path, seed, noise):
    """A run over 5 identities × 3 cameras of tiny images; its evaluation lacks per-query results
    but has its features file, so `plot compare` fills them in first."""
    from reidbench.harness.evaluation.protocol import score

    rng = np.random.default_rng(seed)
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    centres = np.random.default_rng(99).normal(size=(6, 8))
    q, g = [], []
    for pid in range(1, 6):
        for cam in (1, 2, 3):
            path = images / f"{pid:04d}_c{cam}s1_000001_00.png"
            if not path.exists():
                Image.new("RGB", (16, 32), (40 * pid, 200 - 30 * cam, 90)).save(path)
            (q if cam == 1 else g).append((pid, cam, str(path)))
    feats = lambda items: np.stack([centres[p] + noise * rng.normal(size=8) for p, _, _ in items])  # noqa: E731
    arrays = {"q_feats": feats(q).astype(np.float32), "g_feats": feats(g).astype(np.float32),
              "q_pids": np.array([p for p, _, _ in q]), "g_pids": np.array([p for p, _, _ in g]),
              "q_camids": np.array([c for _, c, _ in q]), "g_camids": np.array([c for _, c, _ in g])}
    run_dir = tmp_path / f"run{seed}"
    run_dir.mkdir()
    path = run_dir / "features-synth-a.npz"
    np.savez_compressed(path, **arrays, q_paths=np.array([x for *_, x in q]), g_paths=np.array([x for *_, x in g]))
    metrics = score(*arrays.values(), metric="euclidean", normalize=False)
    ev = {"key": "k-synth-a", "test_set": "synth-a", "variant": "",
          "settings": {"metric": "euclidean", "normalize": False},
          "metrics": {m: float(metrics[m]) for m in ("R1", "mAP", "mINP")}, "features_path": str(path)}
    return record(store, spec(seed, tests=("synth-a",)), [ev], out_dir=run_dir)


def test_cli_fills_per_query_results_and_draws_ranked_lists(store, tmp_path):
    a, b = features_run(store, tmp_path, 1, 1.2), features_run(store, tmp_path, 2, 0.4)
    assert not any(e.has_per_query for e in store.evaluations([a, b]))
    out = tmp_path / "figs" / "cmp.png"
    res = CliRunner().invoke(cli(), ["plot", "compare", "--db", store.url, "--runs", a[:10], b[:10], "-n", "1",
                                     "--top", "3", "--out", str(out), "--dpi", "30", "--resamples", "50"])
    assert res.exit_code == 0, res.output
    assert all(e.has_per_query for e in store.evaluations([a, b]))
    assert "recomputed from its saved features" in res.stderr
    cmp = compare_queries(store.query_scores(a, "k-synth-a"), store.query_scores(b, "k-synth-a"), n=1,
                          resamples=10)
    shown = len(cmp.most_improved) + len(cmp.most_regressed)
    assert shown >= 1
    ranks = tmp_path / "figs" / "cmp-ranks.png"
    assert f"wrote {out} (per-query AP scatter)" in res.stdout
    assert f"wrote {ranks} (ranked lists of the {len(cmp.most_improved)} most improved and " \
           f"{len(cmp.most_regressed)} most regressed queries, run A then run B)" in res.stdout
    with Image.open(ranks) as img:  # 2 rows (run A, run B) per shown query, query + 3 gallery images
        assert img.size == (round(30 * 1.25 * 4), round(30 * (2.5 * 2 * shown + 0.6)))
