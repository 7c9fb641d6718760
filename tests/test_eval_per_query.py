"""Per-query scores of evaluate()/score()/per_query_scores() against a brute-force reference written here.

The reference sorts each row completely, with the protocol's pessimistic tie rule (a non-match at
the same distance as a match is ranked before it), after dropping the junk (same identity, same
camera); nothing of it comes from protocol.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reidbench.harness.evaluation import protocol as evaluation
from reidbench.harness.evaluation.protocol import compute_distance, evaluate, per_query_scores, score

PER_QUERY_KEYS = {"ap", "inp", "first_match_rank", "valid"}


def brute_force(dist, q_pids, g_pids, q_cams, g_cams):
    """Per query: (AP, INP, first-match rank) or None when no match is left after junk removal."""
    dist, q_pids, g_pids = np.asarray(dist, dtype=np.float64), np.asarray(q_pids), np.asarray(g_pids)
    q_cams, g_cams = np.asarray(q_cams), np.asarray(g_cams)
    out = []
    for i in range(dist.shape[0]):
        keep = ~((g_pids == q_pids[i]) & (g_cams == q_cams[i]))
        d, is_match = dist[i][keep], g_pids[keep] == q_pids[i]
        order = np.lexsort((is_match, d))  # by distance, then non-matches (False) before matches
        ranks = np.flatnonzero(is_match[order]) + 1
        if ranks.size == 0:
            out.append(None)
            continue
        out.append((float(np.mean(np.arange(1, ranks.size + 1) / ranks)), ranks.size / ranks[-1], int(ranks[0])))
    return out


def tied_data(seed, num_query=40, num_gallery=150, num_ids=8, num_cams=4, levels=12):
    """Distances on a coarse grid, so most matches share their distance with non-matches."""
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, num_ids + 1, num_query)
    q_pids[0] = num_ids + 5  # absent from the gallery: invalid
    g_pids = rng.integers(0, num_ids + 1, num_gallery)
    q_cams, g_cams = rng.integers(0, num_cams, num_query), rng.integers(0, num_cams, num_gallery)
    g_cams[g_pids == q_pids[1]] = q_cams[1]  # only seen by its own camera: invalid
    dist = rng.integers(0, levels, (num_query, num_gallery)) - 3.0 * (q_pids[:, None] == g_pids[None, :])
    return dist.astype(np.float32), q_pids, g_pids, q_cams, g_cams


def assert_matches_reference(per_query, reference):
    assert set(per_query) == PER_QUERY_KEYS
    assert per_query["ap"].dtype == np.float32 and per_query["inp"].dtype == np.float32
    assert per_query["first_match_rank"].dtype == np.int32 and per_query["valid"].dtype == bool
    for i, ref in enumerate(reference):
        if ref is None:
            assert not per_query["valid"][i] and per_query["first_match_rank"][i] == 0, i
            assert np.isnan(per_query["ap"][i]) and np.isnan(per_query["inp"][i]), i
        else:
            ap, inp, first = ref
            assert per_query["valid"][i], i
            assert per_query["ap"][i] == pytest.approx(ap, rel=1e-6), i
            assert per_query["inp"][i] == pytest.approx(inp, rel=1e-6), i
            assert per_query["first_match_rank"][i] == first, i


def assert_consistent(result, max_rank):
    """The aggregates are the means of the per-query scores over the valid queries."""
    pq = result["per_query"]
    valid = pq["valid"]
    assert result["num_valid_queries"] == int(valid.sum())
    assert result["mAP"] == pytest.approx(float(pq["ap"][valid].astype(np.float64).mean()), rel=1e-6)
    assert result["mINP"] == pytest.approx(float(pq["inp"][valid].astype(np.float64).mean()), rel=1e-6)
    first = pq["first_match_rank"][valid]
    for k in range(1, max_rank + 1):
        assert result["cmc"][k - 1] == pytest.approx(np.mean(first <= k), abs=1e-12), k


# --------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_per_query_matches_brute_force_with_ties(seed, path, monkeypatch):
    monkeypatch.setattr(evaluation, "_DENSE_FRACTION", 1e9 if path == "sparse" else -1.0)
    monkeypatch.setattr(evaluation, "_CHUNK_ELEMENTS", 7 * 150)  # several chunks of 7 query rows
    data = tied_data(seed)
    result = evaluate(*data, max_rank=20, per_query=True)
    reference = brute_force(*data)
    assert reference[0] is None and reference[1] is None
    assert_matches_reference(result["per_query"], reference)
    assert_consistent(result, max_rank=20)
    # the same numbers without averaging, and the aggregates do not depend on per_query
    blocks = per_query_scores(*data)
    for key in PER_QUERY_KEYS:
        np.testing.assert_array_equal(blocks[key], result["per_query"][key])
    plain = evaluate(*data, max_rank=20)
    assert "per_query" not in plain
    assert plain["mAP"] == result["mAP"] and plain["mINP"] == result["mINP"]
    np.testing.assert_array_equal(plain["cmc"], result["cmc"])


def test_per_query_continuous_distances_torch_input():
    rng = np.random.default_rng(5)
    data = list(tied_data(5, num_query=30, num_gallery=80))
    data[0] = torch.from_numpy(rng.random((30, 80)) - 0.3 * (data[1][:, None] == data[2][None, :]))  # float64
    result = evaluate(*data, max_rank=10, per_query=True)
    assert_matches_reference(result["per_query"], brute_force(data[0].numpy(), *data[1:]))
    assert_consistent(result, max_rank=10)


# --------------------------------------------------------------------------- by hand


def test_one_query_five_gallery_by_hand():
    # query id 1, camera 0. Gallery (distance, id, camera):
    #   g0 (0.10, 1, 0) junk: same id and camera, dropped although closest
    #   g1 (0.20, 5, 1) non-match            -> rank 1
    #   g2 (0.30, 1, 2) match                -> rank 2
    #   g3 (0.40, 0, 1) distractor           -> rank 3
    #   g4 (0.50, 1, 3) match                -> rank 4
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    result = evaluate(dist, [1], [1, 5, 1, 0, 1], [0], [0, 1, 2, 1, 3], max_rank=5, per_query=True)
    pq = result["per_query"]
    assert pq["first_match_rank"].tolist() == [2]
    assert pq["ap"][0] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert pq["inp"][0] == pytest.approx(2 / 4)
    assert pq["valid"].tolist() == [True]
    assert result["cmc"].tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]


def test_ties_rank_the_match_after_the_non_match_by_hand():
    # g0 match and g1 non-match both at 0.3; g2 match and g3 non-match both at 0.6; g4 match at 0.9.
    # Pessimistic order: g1, g0 (rank 2), g3, g2 (rank 4), g4 (rank 5) -- whatever the column order.
    dist = np.array([[0.3, 0.3, 0.6, 0.6, 0.9]])
    args = ([7], [7, 2, 7, 3, 7], [0], [1, 1, 2, 2, 3])
    pq = evaluate(dist, *args, max_rank=5, per_query=True)["per_query"]
    assert pq["first_match_rank"].tolist() == [2]
    assert pq["ap"][0] == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 3)
    assert pq["inp"][0] == pytest.approx(3 / 5)
    swapped = dist[:, [1, 0, 3, 2, 4]]  # non-matches listed first: same scores
    pq2 = evaluate(swapped, [7], [2, 7, 3, 7, 7], [0], [1, 1, 2, 2, 3], max_rank=5, per_query=True)["per_query"]
    assert pq2["ap"].tolist() == pq["ap"].tolist() and pq2["first_match_rank"].tolist() == [2]


def test_invalid_queries_get_nan_and_rank_zero():
    dist = np.array([[0.3, 0.1, 0.2],   # q0 id 1: its match g2 ranks 2nd
                     [0.1, 0.2, 0.3],   # q1 id 9: not in the gallery
                     [0.2, 0.1, 0.3]])  # q2 id 2: its only item g0 is junk (same camera)
    pq = evaluate(dist, [1, 9, 2], [2, 3, 1], [0, 0, 1], [1, 1, 1], max_rank=3, per_query=True)["per_query"]
    assert pq["valid"].tolist() == [True, False, False]
    assert pq["first_match_rank"].tolist() == [2, 0, 0]
    assert pq["ap"][0] == pytest.approx(0.5) and np.isnan(pq["ap"][1:]).all() and np.isnan(pq["inp"][1:]).all()


def test_per_query_scores_of_a_block_without_valid_query_is_no_error():
    dist = np.zeros((2, 3))
    pq = per_query_scores(dist, [1, 2], [1, 2, 3], [0, 1], [0, 1, 2])
    assert pq["valid"].tolist() == [False, False] and pq["first_match_rank"].tolist() == [0, 0]
    with pytest.raises(ValueError, match="no query has a valid match"):
        evaluate(dist, [1, 2], [1, 2, 3], [0, 1], [0, 1, 2], per_query=True)


# --------------------------------------------------------------------------- score()


def features(seed=0, num_query=30, num_gallery=120, dim=16, num_ids=10):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids + 1, dim))
    q_pids, g_pids = rng.integers(1, num_ids + 1, num_query), rng.integers(0, num_ids + 1, num_gallery)
    q = (centres[q_pids] + 1.2 * rng.normal(size=(num_query, dim))) * rng.uniform(0.5, 3.0, (num_query, 1))
    g = centres[g_pids] + 1.2 * rng.normal(size=(num_gallery, dim))
    return {"q_feats": q.astype(np.float32), "g_feats": g.astype(np.float32), "q_pids": q_pids, "g_pids": g_pids,
            "q_camids": rng.integers(0, 3, num_query), "g_camids": rng.integers(0, 3, num_gallery)}


@pytest.mark.parametrize("metric, normalize", [("euclidean", False), ("sqeuclidean", True), ("cosine", False)])
def test_score_per_query_is_evaluate_of_compute_distance(metric, normalize, monkeypatch):
    monkeypatch.setattr(evaluation, "_CHUNK_ELEMENTS", 8 * 120)  # several fused chunks
    arrays = features()
    result = score(**arrays, metric=metric, normalize=normalize, per_query=True)
    q, g = arrays["q_feats"], arrays["g_feats"]
    if normalize:
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
    labels = (arrays["q_pids"], arrays["g_pids"], arrays["q_camids"], arrays["g_camids"])
    dist = compute_distance(q, g, metric)
    expected = evaluate(dist, *labels, per_query=True)["per_query"]
    for key in ("first_match_rank", "valid"):
        np.testing.assert_array_equal(result["per_query"][key], expected[key])
    np.testing.assert_allclose(result["per_query"]["ap"], expected["ap"], rtol=1e-6)
    assert_matches_reference(result["per_query"], brute_force(dist, *labels))
    pq = result["per_query"]
    assert result["mAP"] == pytest.approx(float(pq["ap"][pq["valid"]].astype(np.float64).mean()), rel=1e-6)
    assert result["R1"] == pytest.approx(np.mean(pq["first_match_rank"][pq["valid"]] <= 1))
    assert set(score(**arrays, metric=metric, normalize=normalize)) == {  # the default return is unchanged
        "R1", "R5", "R10", "mAP", "mINP", "num_valid_queries"}


def test_score_per_query_with_rerank():
    arrays = features(seed=2)
    result = score(**arrays, normalize=True, rerank=True, per_query=True)
    q = arrays["q_feats"] / np.linalg.norm(arrays["q_feats"], axis=1, keepdims=True)
    g = arrays["g_feats"] / np.linalg.norm(arrays["g_feats"], axis=1, keepdims=True)
    labels = (arrays["q_pids"], arrays["g_pids"], arrays["q_camids"], arrays["g_camids"])
    expected = evaluate(evaluation.re_rank(q, g), *labels, per_query=True)["per_query"]
    np.testing.assert_allclose(result["per_query"]["ap"], expected["ap"], rtol=1e-6)
    pq = result["per_query"]
    assert result["mAP"] == pytest.approx(float(pq["ap"][pq["valid"]].astype(np.float64).mean()), rel=1e-6)
