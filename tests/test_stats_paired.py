"""harness.stats.paired against independent computations written here.

The t interval against hand-computed textbook numbers (t quantiles as literals); the metrics
against hand-computed values and against evaluate()'s own aggregates; the bootstrap against a
plain Python loop with the documented draw sequence, and against the *exact* bootstrap
distribution of a 6-identity set, enumerated over all multisets of identities (no random draws).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest

from reidbench.harness.stats import (BOOTSTRAP_METHOD, T_METHOD, Interval, metric_from_per_query,
                                     paired_bootstrap, paired_t_interval)

NAN = float("nan")


def per_query(ap, inp, rank, valid):
    return {"ap": np.asarray(ap, dtype=np.float32), "inp": np.asarray(inp, dtype=np.float32),
            "first_match_rank": np.asarray(rank, dtype=np.int32), "valid": np.asarray(valid, dtype=bool)}


def plain_metric(rows, metric):
    """rows: (ap, inp, rank, valid) tuples; the protocol's mean over valid queries, in plain Python."""
    kept = [r for r in rows if r[3]]
    if metric == "mAP":
        return sum(r[0] for r in kept) / len(kept)
    if metric == "mINP":
        return sum(r[1] for r in kept) / len(kept)
    k = int(metric[1:])
    return sum(1 for r in kept if r[2] <= k) / len(kept)


def rows_of(pq):
    return list(zip(pq["ap"].astype(float).tolist(), pq["inp"].astype(float).tolist(),
                    pq["first_match_rank"].tolist(), pq["valid"].tolist()))


# --------------------------------------------------------------------------- paired t


def test_t_interval_textbook_example():
    a = [10.0, 20.0, 30.0, 40.0, 50.0]
    b = [11.0, 22.0, 33.0, 44.0, 55.0]  # differences 1..5: mean 3, sd sqrt(2.5)
    iv = paired_t_interval(a, b)
    se = math.sqrt(2.5) / math.sqrt(5)
    half = 2.776445 * se  # t_{0.975, 4}
    assert iv.delta == pytest.approx(3.0)
    assert iv.se == pytest.approx(se)
    assert iv.low == pytest.approx(3.0 - half, abs=1e-5) and iv.high == pytest.approx(3.0 + half, abs=1e-5)
    assert (iv.n, iv.resamples, iv.confidence, iv.method) == (5, None, 0.95, T_METHOD)
    assert iv.significant
    iv90 = paired_t_interval(a, b, confidence=0.90)
    assert iv90.high - 3.0 == pytest.approx(2.131847 * se, abs=1e-5)  # t_{0.95, 4}


def test_t_interval_two_seeds_and_sign():
    iv = paired_t_interval([0.5, 0.5], [0.51, 0.53])  # d = [0.01, 0.03]: mean 0.02, sd sqrt(2)*0.01, se 0.01
    assert iv.delta == pytest.approx(0.02)
    assert iv.low == pytest.approx(0.02 - 12.706205 * 0.01, abs=1e-6)  # t_{0.975, 1}
    assert iv.high == pytest.approx(0.02 + 12.706205 * 0.01, abs=1e-6)
    assert not iv.significant
    reverse = paired_t_interval([0.51, 0.53], [0.5, 0.5])  # b - a: the sign flips
    assert reverse.delta == pytest.approx(-0.02) and reverse.high == pytest.approx(-iv.low)


def test_t_interval_zero_variance_is_zero_width():
    iv = paired_t_interval([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])
    assert (iv.delta, iv.low, iv.high, iv.se) == (0.5, 0.5, 0.5, 0.0)
    assert iv.significant
    same = paired_t_interval([0.7, 0.8], [0.7, 0.8])
    assert (same.low, same.high) == (0.0, 0.0) and not same.significant


@pytest.mark.parametrize("a, b, message", [
    ([0.5], [0.6], "n=1"),
    ([], [], "n=0"),
    ([0.5, 0.6], [0.5, 0.6, 0.7], "a has 2 values but b has 3"),
    ([0.5, NAN], [0.5, 0.6], "non-finite"),
    ([[0.5, 0.6]], [[0.5, 0.6]], "1-D"),
])
def test_t_interval_validation(a, b, message):
    with pytest.raises(ValueError, match=message):
        paired_t_interval(a, b)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 95, -0.5, True])
def test_confidence_validation(confidence):
    with pytest.raises(ValueError, match="confidence"):
        paired_t_interval([1.0, 2.0], [1.0, 3.0], confidence=confidence)
    pq = per_query([1.0], [1.0], [1], [True])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap(pq, pq, [1], confidence=confidence)


# --------------------------------------------------------------------------- Interval


def test_interval_is_frozen_and_significance_is_strict():
    iv = Interval(0.01, 0.0, 0.02, 0.95, T_METHOD, 3)
    assert not iv.significant  # low == 0 does not exclude 0
    assert Interval(-0.01, -0.02, 0.0, 0.95, T_METHOD, 3).significant is False
    assert Interval(0.01, 1e-9, 0.02, 0.95, T_METHOD, 3).significant
    assert Interval(-0.01, -0.02, -1e-9, 0.95, T_METHOD, 3).significant
    with pytest.raises(dataclasses.FrozenInstanceError):
        iv.low = 0.5


# --------------------------------------------------------------------------- metrics


HAND = per_query(ap=[1.0, 0.5, NAN, 0.75, 0.2], inp=[1.0, 0.25, NAN, 0.5, 0.1],
                 rank=[1, 3, 0, 1, 6], valid=[True, True, False, True, True])


@pytest.mark.parametrize("metric, expected", [
    ("R1", 2 / 4), ("R5", 3 / 4), ("R10", 4 / 4), ("mAP", 2.45 / 4), ("mINP", 1.85 / 4), ("R3", 3 / 4)])
def test_metric_from_per_query_by_hand(metric, expected):
    # the invalid query (rank 0, NaN scores) counts in neither numerator nor denominator
    assert metric_from_per_query(HAND, metric) == pytest.approx(expected, rel=1e-6)


def test_metric_from_per_query_matches_evaluate():
    from reidbench.harness.evaluation.protocol import evaluate  # torch: only this test needs it

    rng = np.random.default_rng(3)
    q_pids, g_pids = rng.integers(1, 9, 40), rng.integers(0, 9, 200)
    q_pids[0] = 50  # no gallery item: an invalid query
    q_cams, g_cams = rng.integers(0, 3, 40), rng.integers(0, 3, 200)
    dist = rng.random((40, 200)) - 0.3 * (q_pids[:, None] == g_pids[None, :])
    res = evaluate(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10, per_query=True)
    pq = res["per_query"]
    assert not pq["valid"][0]
    assert metric_from_per_query(pq, "R1") == pytest.approx(res["cmc"][0], abs=1e-12)
    assert metric_from_per_query(pq, "R5") == pytest.approx(res["cmc"][4], abs=1e-12)
    assert metric_from_per_query(pq, "R10") == pytest.approx(res["cmc"][9], abs=1e-12)
    assert metric_from_per_query(pq, "mAP") == pytest.approx(res["mAP"], rel=1e-6)
    assert metric_from_per_query(pq, "mINP") == pytest.approx(res["mINP"], rel=1e-6)


def test_metric_from_per_query_validation():
    with pytest.raises(ValueError, match="unknown metric 'R0'"):
        metric_from_per_query(HAND, "R0")
    with pytest.raises(ValueError, match="unknown metric 'map'"):
        metric_from_per_query(HAND, "map")
    with pytest.raises(ValueError, match="lacks inp"):
        metric_from_per_query({k: v for k, v in HAND.items() if k != "inp"}, "mAP")
    with pytest.raises(ValueError, match="no query is valid"):
        metric_from_per_query(per_query([NAN], [NAN], [0], [False]), "R1")
    with pytest.raises(ValueError, match="one length"):
        metric_from_per_query({**HAND, "ap": HAND["ap"][:3]}, "mAP")
    with pytest.raises(ValueError, match="not finite at valid query 1"):
        metric_from_per_query({**HAND, "ap": np.array([1.0, NAN, NAN, 0.5, 0.2])}, "mAP")


# --------------------------------------------------------------------------- bootstrap: a small set


def small_set():
    """7 identities, 2-3 queries each; identity 40's queries are all invalid (not a cluster),
    identity 20 has one invalid query. Pids deliberately not sorted in query order."""
    pids = [30, 30, 10, 10, 10, 20, 20, 20, 60, 60, 40, 40, 50, 50, 50, 70, 70]
    valid = [True] * 17
    valid[7] = valid[10] = valid[11] = False
    rng = np.random.default_rng(11)
    def run(shift):
        rank = np.where(valid, rng.integers(1, 8, 17) - shift, 0).clip(min=0)
        rank = np.where(valid, np.maximum(rank, 1), 0)
        ap = np.where(valid, np.clip(rng.random(17) + 0.1 * shift, 0.05, 1.0), NAN)
        inp = np.where(valid, ap * rng.random(17), NAN)
        return per_query(ap, inp, rank, valid)
    return run(0), run(2), np.asarray(pids)


METRICS = ("R1", "R5", "mAP", "mINP")


def test_bootstrap_matches_plain_loop_with_documented_draws():
    pq_a, pq_b, pids = small_set()
    rows_a, rows_b = rows_of(pq_a), rows_of(pq_b)
    # clusters: identities with a valid query, ascending pid
    clusters = sorted({int(p) for p, r in zip(pids, rows_a) if r[3]})
    assert clusters == [10, 20, 30, 50, 60, 70]
    members = {c: [i for i, p in enumerate(pids) if p == c] for c in clusters}
    resamples, seed = 2000, 7
    rng = np.random.default_rng(seed)
    diffs = {m: [] for m in METRICS}
    for _ in range(resamples):
        drawn = rng.integers(0, len(clusters), size=len(clusters))
        idx = [i for d in drawn for i in members[clusters[d]]]
        for m in METRICS:
            diffs[m].append(plain_metric([rows_b[i] for i in idx], m) - plain_metric([rows_a[i] for i in idx], m))
    got = paired_bootstrap(pq_a, pq_b, pids, metrics=METRICS, resamples=resamples, seed=seed)
    assert list(got) == list(METRICS)
    for m in METRICS:
        iv = got[m]
        assert iv.delta == pytest.approx(plain_metric(rows_b, m) - plain_metric(rows_a, m), abs=1e-12)
        assert iv.low == pytest.approx(np.percentile(diffs[m], 2.5), abs=1e-12)
        assert iv.high == pytest.approx(np.percentile(diffs[m], 97.5), abs=1e-12)
        assert iv.se == pytest.approx(np.std(diffs[m], ddof=1), abs=1e-12)
        assert (iv.n, iv.resamples, iv.confidence, iv.method) == (6, resamples, 0.95, BOOTSTRAP_METHOD)


def exact_bootstrap(rows_a, rows_b, pids, metric):
    """The exact bootstrap distribution: every multiset of 6 identities with its multinomial
    probability (462 of them), no random numbers. Returns (values, probabilities) sorted by value."""
    clusters = sorted({int(p) for p, r in zip(pids, rows_a) if r[3]})
    members = {c: [i for i, p in enumerate(pids) if p == c] for c in clusters}
    n = len(clusters)
    out = []
    for combo in itertools.combinations_with_replacement(clusters, n):
        counts = [combo.count(c) for c in clusters]
        prob = math.factorial(n) / math.prod(math.factorial(k) for k in counts) / n ** n
        idx = [i for c in combo for i in members[c]]
        out.append((plain_metric([rows_b[i] for i in idx], metric) - plain_metric([rows_a[i] for i in idx], metric), prob))
    out.sort()
    return np.array([v for v, _ in out]), np.array([p for _, p in out])


def exact_quantile(values, probs, q):
    return values[np.searchsorted(np.cumsum(probs), q)]


def test_bootstrap_agrees_with_exact_bootstrap_distribution():
    pq_a, pq_b, pids = small_set()
    rows_a, rows_b = rows_of(pq_a), rows_of(pq_b)
    resamples = 20000
    got = paired_bootstrap(pq_a, pq_b, pids, metrics=METRICS, resamples=resamples, seed=123)
    for m in METRICS:
        values, probs = exact_bootstrap(rows_a, rows_b, pids, m)
        assert probs.sum() == pytest.approx(1.0)
        mean = float((values * probs).sum())
        sd = math.sqrt(float(((values - mean) ** 2 * probs).sum()))
        iv = got[m]
        # the empirical 2.5% / 97.5% quantiles of 20,000 draws lie within the exact 1.5-3.5% and
        # 96.5-98.5% quantiles (the empirical CDF's sd there is ~0.0011, so 0.01 is ~9 sd)
        assert exact_quantile(values, probs, 0.015) - 1e-12 <= iv.low <= exact_quantile(values, probs, 0.035) + 1e-12, m
        assert exact_quantile(values, probs, 0.965) - 1e-12 <= iv.high <= exact_quantile(values, probs, 0.985) + 1e-12, m
        assert iv.se == pytest.approx(sd, rel=0.03), m


# --------------------------------------------------------------------------- bootstrap: decisions


def market_like(num_ids=120, per_id=3, seed=0):
    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(1, num_ids + 1), per_id)
    n = pids.size
    valid = rng.random(n) > 0.02
    # identity difficulty: queries of one identity are correlated
    hard = np.repeat(rng.random(num_ids), per_id)
    rank = np.where(valid, 1 + rng.geometric(np.clip(0.9 - 0.6 * hard, 0.05, 1.0)) - 1, 0)
    ap = np.where(valid, np.clip(0.95 - 0.6 * hard + 0.1 * rng.standard_normal(n), 0.01, 1.0), NAN)
    inp = np.where(valid, ap * np.clip(0.7 + 0.1 * rng.standard_normal(n), 0.05, 1.0), NAN)
    return per_query(ap, inp, np.where(valid, np.maximum(rank, 1), 0), valid), pids, rng


def test_clearly_better_b_is_significant(capsys):
    pq_a, pids, rng = market_like()
    valid = pq_a["valid"]
    fix = valid & (pq_a["first_match_rank"] > 1) & (rng.random(pids.size) < 0.5)
    pq_b = per_query(np.where(valid, np.minimum(pq_a["ap"] + 0.08, 1.0), NAN),
                     np.where(valid, np.minimum(pq_a["inp"] + 0.05, 1.0), NAN),
                     np.where(fix, 1, pq_a["first_match_rank"]), valid)
    got = paired_bootstrap(pq_a, pq_b, pids)
    for m in ("R1", "mAP", "mINP"):
        iv = got[m]
        assert iv.delta == pytest.approx(metric_from_per_query(pq_b, m) - metric_from_per_query(pq_a, m))
        assert iv.delta > 0 and iv.low > 0 and iv.significant, m
        assert iv.low <= iv.delta <= iv.high
        assert iv.resamples == 1000 and iv.n == len(set(pids[valid].tolist()))
    # the other way round: negative and significant
    back = paired_bootstrap(pq_b, pq_a, pids)
    assert back["mAP"].high < 0 and back["mAP"].significant
    assert capsys.readouterr() == ("", "")  # prints nothing


def test_identical_runs_give_zero_interval():
    pq_a, pids, _ = market_like(seed=1)
    got = paired_bootstrap(pq_a, {k: v.copy() for k, v in pq_a.items()}, pids)
    for iv in got.values():
        assert (iv.delta, iv.low, iv.high) == (0.0, 0.0, 0.0) and not iv.significant


@pytest.mark.parametrize("seed", [2, 3])
def test_exchangeable_noise_includes_zero(seed):
    pq_a, pids, rng = market_like(seed=seed)
    # B: A plus per-query noise (rank shuffled among valid queries); then A's and B's scores are
    # swapped on a random half of the queries, so neither run is better than the other
    valid = pq_a["valid"]
    shuffled = pq_a["first_match_rank"].copy()
    shuffled[valid] = rng.permutation(shuffled[valid])
    noisy = {"ap": np.clip(pq_a["ap"] + 0.05 * rng.standard_normal(pids.size), 0.01, 1.0).astype(np.float32),
             "inp": np.clip(pq_a["inp"] + 0.05 * rng.standard_normal(pids.size), 0.01, 1.0).astype(np.float32),
             "first_match_rank": shuffled, "valid": valid}
    swap = rng.random(pids.size) < 0.5
    a = {k: np.where(swap, noisy[k], pq_a[k]) for k in pq_a}
    b = {k: np.where(swap, pq_a[k], noisy[k]) for k in pq_a}
    for m, iv in paired_bootstrap(a, b, pids, seed=seed).items():
        assert iv.low < 0 < iv.high and not iv.significant, m


def test_bootstrap_is_reproducible_and_seeded():
    pq_a, pq_b, pids = small_set()
    one = paired_bootstrap(pq_a, pq_b, pids, resamples=200, seed=5)
    assert one == paired_bootstrap(pq_a, pq_b, pids, resamples=200, seed=5)
    assert one != paired_bootstrap(pq_a, pq_b, pids, resamples=200, seed=6)
    assert paired_bootstrap(pq_a, pq_b, pids, metrics="mAP", resamples=1)["mAP"].resamples == 1


def test_bootstrap_validation():
    pq_a, pq_b, pids = small_set()
    short = {k: v[:-1] for k, v in pq_b.items()}
    with pytest.raises(ValueError, match="per_query_a has 17, per_query_b has 16"):
        paired_bootstrap(pq_a, short, pids)
    with pytest.raises(ValueError, match="query_pids has 16 entries but the runs have 17"):
        paired_bootstrap(pq_a, pq_b, pids[:-1])
    other_valid = {**pq_b, "valid": pq_b["valid"].copy()}
    other_valid["valid"][7] = True
    other_valid["ap"] = np.where(other_valid["valid"], 0.5, NAN).astype(np.float32)
    other_valid["inp"] = other_valid["ap"]
    other_valid["first_match_rank"] = np.where(other_valid["valid"], 1, 0).astype(np.int32)
    with pytest.raises(ValueError, match="different queries valid .*first at query 7"):
        paired_bootstrap(pq_a, other_valid, pids)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="resamples"):
            paired_bootstrap(pq_a, pq_b, pids, resamples=bad)
    with pytest.raises(ValueError, match="unknown metric 'rank1'"):
        paired_bootstrap(pq_a, pq_b, pids, metrics=("R1", "rank1"))
    with pytest.raises(ValueError, match="metrics is empty"):
        paired_bootstrap(pq_a, pq_b, pids, metrics=())
    none_valid = per_query([NAN, NAN], [NAN, NAN], [0, 0], [False, False])
    with pytest.raises(ValueError, match="no query is valid"):
        paired_bootstrap(none_valid, none_valid, [1, 2])
