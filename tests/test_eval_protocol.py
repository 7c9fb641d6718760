"""evaluate() and compute_distance() against brute-force references written here from the protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reidbench.harness.evaluation import protocol as evaluation
from reidbench.harness.evaluation.protocol import compute_distance, evaluate


# --------------------------------------------------------------------------- references


def per_query_reference(dist, q_pids, g_pids, q_cams, g_cams, max_rank=50):
    """Explicit ranks: sort each row, drop junk, list the 1-based ranks of the matches."""
    cmc_rows, aps, inps = [], [], []
    for i in range(dist.shape[0]):
        keep = ~((g_pids == q_pids[i]) & (g_cams == q_cams[i]))
        d, is_match = dist[i][keep], (g_pids == q_pids[i])[keep]
        order = np.argsort(d, kind="stable")
        ranks = np.flatnonzero(is_match[order]) + 1
        if ranks.size == 0:
            continue
        cmc_rows.append((np.arange(1, max_rank + 1) >= ranks[0]).astype(float))
        aps.append(np.mean(np.arange(1, ranks.size + 1) / ranks))
        inps.append(ranks.size / ranks[-1])
    return np.mean(cmc_rows, 0), float(np.mean(aps)), float(np.mean(inps)), len(aps)


def classic_reference(dist, q_pids, g_pids, q_cams, g_cams, max_rank=50):
    """The classic formulation (as in torchreid's eval_market1501): one argsort of the whole
    matrix, a match matrix, then per query cumulative sums over the kept columns."""
    indices = np.argsort(dist, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    for q in range(dist.shape[0]):
        order = indices[q]
        remove = (g_pids[order] == q_pids[q]) & (g_cams[order] == q_cams[q])
        raw = matches[q][~remove]
        if not raw.any():
            continue
        cmc = raw.cumsum()
        last = np.where(raw == 1)[0].max()
        all_inp.append(cmc[last] / (last + 1.0))
        cmc[cmc > 1] = 1
        padded = np.concatenate([cmc, np.full(max(0, max_rank - cmc.size), cmc[-1])])
        all_cmc.append(padded[:max_rank])
        precision = raw.cumsum() / (np.arange(raw.size) + 1.0)
        all_ap.append((precision * raw).sum() / raw.sum())
    return np.mean(all_cmc, 0), float(np.mean(all_ap)), float(np.mean(all_inp)), len(all_ap)


def random_protocol_data(seed, num_query, num_gallery, num_ids=8, num_cams=4):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, num_ids + 1, num_query)
    q_pids[0] = num_ids + 5  # an identity absent from the gallery: never a valid query
    g_pids = rng.integers(0, num_ids + 1, num_gallery)  # 0 = distractor
    q_cams = rng.integers(0, num_cams, num_query)
    g_cams = rng.integers(0, num_cams, num_gallery)
    # a query whose identity is only seen by its own camera: no valid match either
    g_cams[g_pids == q_pids[1]] = q_cams[1]
    # continuous distances (no ties), matches somewhat closer so scores are not trivial
    dist = rng.random((num_query, num_gallery)) - 0.25 * (q_pids[:, None] == g_pids[None, :])
    return dist.astype(np.float32), q_pids, g_pids, q_cams, g_cams


def assert_same(result, reference):
    cmc, ap, inp, num_valid = reference
    assert result["num_valid_queries"] == num_valid
    np.testing.assert_allclose(result["cmc"], cmc, atol=1e-12)
    assert result["mAP"] == pytest.approx(ap, abs=1e-9)
    assert result["mINP"] == pytest.approx(inp, abs=1e-9)


# --------------------------------------------------------------------------- against the references


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_evaluate_matches_both_references(seed, path, monkeypatch):
    # sparse: few entries pass the hardest-match threshold; dense: binary search on whole rows
    monkeypatch.setattr(evaluation, "_DENSE_FRACTION", 1e9 if path == "sparse" else -1.0)
    monkeypatch.setattr(evaluation, "_CHUNK_ELEMENTS", 7 * 150)  # several chunks of 7 query rows
    data = random_protocol_data(seed, num_query=40, num_gallery=150)
    result = evaluate(*data, max_rank=20)
    assert result["num_valid_queries"] <= 38  # the two planted invalid queries are skipped
    assert_same(result, per_query_reference(*data, max_rank=20))
    assert_same(result, classic_reference(*data, max_rank=20))


def test_evaluate_accepts_torch_and_float64(monkeypatch):
    dist, q_pids, g_pids, q_cams, g_cams = random_protocol_data(7, num_query=25, num_gallery=90)
    expected = per_query_reference(dist, q_pids, g_pids, q_cams, g_cams)
    result = evaluate(torch.from_numpy(dist.astype(np.float64)), torch.from_numpy(q_pids), list(g_pids),
                      torch.from_numpy(q_cams), g_cams)
    assert_same(result, expected)
    assert isinstance(result["cmc"], np.ndarray) and result["cmc"].dtype == np.float64
    assert isinstance(result["mAP"], float) and isinstance(result["num_valid_queries"], int)


def test_max_rank_beyond_gallery_pads_with_last_value():
    dist, q_pids, g_pids, q_cams, g_cams = random_protocol_data(3, num_query=10, num_gallery=12)
    result = evaluate(dist, q_pids, g_pids, q_cams, g_cams, max_rank=30)
    assert result["cmc"].shape == (30,)
    assert np.all(result["cmc"][11:] == result["cmc"][11])
    assert result["cmc"][-1] == 1.0
    assert_same(result, per_query_reference(dist, q_pids, g_pids, q_cams, g_cams, max_rank=30))


# --------------------------------------------------------------------------- hand-computed cases


def test_one_query_four_gallery_by_hand():
    # query identity 1, camera 0; gallery sorted by distance: match, non-match, match, non-match
    dist = np.array([[0.1, 0.2, 0.3, 0.4]])
    result = evaluate(dist, [1], [1, 2, 1, 3], [0], [1, 1, 2, 1], max_rank=4)
    assert result["mAP"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert result["mINP"] == pytest.approx(2 / 3)
    assert result["cmc"].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert result["num_valid_queries"] == 1


def test_junk_is_dropped_and_distractors_are_non_matches():
    # gallery: [same id + same camera (junk, closest), distractor 0, match, other id, match]
    dist = np.array([[0.05, 0.1, 0.2, 0.3, 0.4]])
    result = evaluate(dist, [4], [4, 0, 4, 7, 4], [2], [2, 1, 3, 0, 1], max_rank=3)
    # kept order: distractor, match (rank 2), other, match (rank 4)
    assert result["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert result["mINP"] == pytest.approx(2 / 4)
    assert result["cmc"].tolist() == [0.0, 1.0, 1.0]


def test_two_queries_average_and_invalid_query_is_skipped():
    dist = np.array([[0.3, 0.1, 0.2],    # q0 (id 1): match at rank 2 -> AP 1/2, INP 1/2
                     [0.1, 0.2, 0.3],    # q1 (id 2): match at rank 1 -> AP 1, INP 1
                     [0.1, 0.2, 0.3]])   # q2 (id 9): not in the gallery -> skipped
    result = evaluate(dist, [1, 2, 9], [2, 3, 1], [0, 0, 0], [1, 1, 1], max_rank=3)
    assert result["num_valid_queries"] == 2
    # q0 kept order: g1 (id 3), g2 (id 1), g0 (id 2) -> match at rank 2
    assert result["mAP"] == pytest.approx((1 / 2 + 1) / 2)
    assert result["mINP"] == pytest.approx((1 / 2 + 1) / 2)
    assert result["cmc"].tolist() == [0.5, 1.0, 1.0]


def test_ties_are_counted_pessimistically():
    # the match and a non-match at the same distance: the match ranks second
    dist = np.array([[0.5, 0.5, 0.9]])
    result = evaluate(dist, [1], [1, 2, 3], [0], [1, 1, 1], max_rank=2)
    assert result["mAP"] == pytest.approx(1 / 2)
    assert result["cmc"].tolist() == [0.0, 1.0]
    # non-match listed first; each of the two matches is tied with a non-match
    dist = np.array([[0.5, 0.5, 0.7, 0.7]])
    result = evaluate(dist, [1], [2, 1, 1, 3], [0], [1, 1, 2, 1], max_rank=4)
    assert result["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert result["mINP"] == pytest.approx(2 / 4)


# --------------------------------------------------------------------------- errors


def test_no_valid_query_raises():
    with pytest.raises(ValueError, match="no query has a valid match"):
        evaluate(np.zeros((2, 3)), [1, 2], [1, 2, 3], [0, 1], [0, 1, 2])


@pytest.mark.parametrize("name, args", [
    ("q_pids", ([1], [1, 2, 3], [0, 0], [1, 1, 1])),
    ("q_camids", ([1, 2], [1, 2, 3], [0], [1, 1, 1])),
    ("g_pids", ([1, 2], [1, 2], [0, 0], [1, 1, 1])),
    ("g_camids", ([1, 2], [1, 2, 3], [0, 0], [1, 1, 1, 1])),
])
def test_shape_mismatch_names_the_array(name, args):
    with pytest.raises(ValueError, match=name):
        evaluate(np.zeros((2, 3)), *args)


def test_bad_distmat_and_max_rank():
    dist = np.zeros((2, 3))
    dist[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN .*query row 1"):
        evaluate(dist, [1, 2], [1, 2, 3], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="2-D"):
        evaluate(np.zeros(3), [1], [1, 2, 3], [0], [1, 1, 1])
    with pytest.raises(ValueError, match="max_rank"):
        evaluate(np.zeros((1, 3)), [1], [1, 2, 3], [0], [1, 1, 1], max_rank=0)


# --------------------------------------------------------------------------- distances


def brute_distance(q, g, metric):
    out = np.empty((len(q), len(g)))
    for i in range(len(q)):
        for j in range(len(g)):
            diff = q[i].astype(np.float64) - g[j]
            if metric == "euclidean":
                out[i, j] = np.sqrt(diff @ diff)
            elif metric == "sqeuclidean":
                out[i, j] = diff @ diff
            else:
                a, b = q[i].astype(np.float64), g[j].astype(np.float64)
                out[i, j] = 1 - (a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))
    return out


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_compute_distance_matches_brute_force(metric, monkeypatch):
    monkeypatch.setattr(evaluation, "_CHUNK_ELEMENTS", 4 * 13)  # several query chunks
    rng = np.random.default_rng(0)
    q = rng.normal(size=(9, 5)).astype(np.float32)
    g = rng.normal(size=(13, 5)).astype(np.float32)
    expected = brute_distance(q, g, metric)
    out = compute_distance(q, g, metric)
    assert isinstance(out, np.ndarray) and out.shape == (9, 13) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=2e-5)
    out_t = compute_distance(torch.from_numpy(q), torch.from_numpy(g), metric)
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_allclose(out_t.numpy(), expected, atol=2e-5)
    out64 = compute_distance(q.astype(np.float64), g.astype(np.float64), metric)
    assert out64.dtype == np.float64
    np.testing.assert_allclose(out64, expected, atol=1e-10)


def test_compute_distance_self_is_zero_not_nan():
    x = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32) * 10
    d = compute_distance(x, x, "euclidean")
    assert not np.isnan(d).any() and np.all(np.diag(d) < 0.1)


def test_compute_distance_errors():
    with pytest.raises(ValueError, match="metric 'manhattan'"):
        compute_distance(np.zeros((2, 3)), np.zeros((2, 3)), "manhattan")
    with pytest.raises(ValueError, match="q_feats has 3 dimensions but g_feats has 4"):
        compute_distance(np.zeros((2, 3)), np.zeros((2, 4)), "cosine")
    with pytest.raises(ValueError, match="g_feats must be 2-D"):
        compute_distance(np.zeros((2, 3)), np.zeros(3), "cosine")
