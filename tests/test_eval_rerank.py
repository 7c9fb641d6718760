"""re_rank() against a dense float64 re-ranking written here, item by item, from the description."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reidbench.harness.evaluation import rerank
from reidbench.harness.evaluation.protocol import re_rank


def dense_float64_rerank(q, g, k1, k2, lam):
    """Straightforward k-reciprocal re-ranking (Zhong et al. 2017), float64, no shortcuts."""
    x = np.concatenate([q, g]).astype(np.float64)
    num_query, num_all = len(q), len(x)
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    dist = dist / dist.max(axis=1, keepdims=True)          # each row divided by its max
    ranking = np.argsort(dist, axis=1, kind="stable")

    def k_reciprocal(i, k):
        forward = list(ranking[i, : k + 1])
        return [j for j in forward if i in ranking[j, : k + 1]]

    V = np.zeros((num_all, num_all))
    for i in range(num_all):
        own = k_reciprocal(i, k1)
        expanded = set(own)
        for cand in own:
            cand_set = k_reciprocal(cand, int(np.around(k1 / 2)))
            if len(set(cand_set) & set(own)) > 2 / 3 * len(cand_set):
                expanded |= set(cand_set)
        members = sorted(expanded)
        weights = np.exp(-dist[i, members])
        V[i, members] = weights / weights.sum()
    if k2 != 1:
        V = np.array([V[ranking[i, :k2]].mean(0) for i in range(num_all)])
    out = np.zeros((num_query, num_all - num_query))
    for i in range(num_query):
        for j in range(num_all - num_query):
            s = np.minimum(V[i], V[num_query + j]).sum()
            out[i, j] = (1 - lam) * (1 - s / (2 - s)) + lam * dist[i, num_query + j]
    return out


def clustered_features(seed, num_query, num_gallery, dim, num_ids=12, noise=0.8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim))
    ids = rng.integers(0, num_ids, num_query + num_gallery)
    x = centres[ids] + noise * rng.normal(size=(len(ids), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x = x.astype(np.float32)
    return x[:num_query], x[num_query:]


@pytest.mark.parametrize("num_query, num_gallery, dim, k1, k2, lam", [
    (25, 90, 16, 20, 6, 0.3),    # the paper's parameters
    (30, 70, 8, 7, 3, 0.5),      # odd k1: round(7/2) = 4 (half to even)
    (20, 60, 12, 6, 1, 0.0),     # k2 = 1: no query expansion; lambda 0: Jaccard only
    (6, 9, 4, 20, 6, 1.0),       # k1 + 1 > number of items; lambda 1: original distance only
])
def test_matches_dense_float64(num_query, num_gallery, dim, k1, k2, lam):
    q, g = clustered_features(num_query + k1, num_query, num_gallery, dim)
    expected = dense_float64_rerank(q, g, k1, k2, lam)
    out = re_rank(q, g, k1=k1, k2=k2, lambda_value=lam)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (num_query, num_gallery)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


def test_blocked_pass_with_running_thresholds(monkeypatch):
    # tiny blocks: several row blocks, so later rows get candidates through the transposed
    # top-k of the first block and the running-threshold merge of the following ones; every other
    # stage chunked too
    monkeypatch.setattr(rerank, "_BLOCK_ELEMENTS", 1)
    monkeypatch.setattr(rerank, "_JACCARD_ELEMENTS", 7 * 500)  # Jaccard in chunks of 7 query rows
    monkeypatch.setattr(rerank, "_SET_ROWS", 100)  # neighbour sets in chunks of 100 items
    q, g = clustered_features(5, 150, 500, 8, num_ids=30)
    calls = []
    original = rerank._merge_below_threshold
    monkeypatch.setattr(rerank, "_merge_below_threshold", lambda *a: calls.append(1) or original(*a))
    out = re_rank(q, g)
    assert len(calls) >= 1
    np.testing.assert_allclose(out, dense_float64_rerank(q, g, 20, 6, 0.3), atol=1e-5, rtol=0)


def test_near_ties_follow_float64_order():
    # float64 features in near-identical pairs (1e-9 apart): their float32 copies are identical, so
    # float32 distances tie exactly; only the float64 re-measure orders the pair correctly
    rng = np.random.default_rng(11)
    base = rng.normal(size=(60, 6))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    twins = base + 1e-9 * rng.normal(size=base.shape)
    x = np.concatenate([base, twins])
    x = x[rng.permutation(len(x))]
    assert (x.astype(np.float32)[:, None] == x.astype(np.float32)[None]).all(-1).sum() > len(x)
    q, g = x[:30], x[30:]
    expected = dense_float64_rerank(q, g, 20, 6, 0.3)
    np.testing.assert_allclose(re_rank(q, g), expected, atol=1e-5, rtol=0)


def test_accepts_torch_tensors_and_checks_inputs():
    q, g = clustered_features(2, 10, 30, 5)
    np.testing.assert_allclose(re_rank(torch.from_numpy(q), torch.from_numpy(g)), re_rank(q, g), atol=1e-7)
    with pytest.raises(ValueError, match="q_feats has 5 dimensions but g_feats has 4"):
        re_rank(q, g[:, :4])
    with pytest.raises(ValueError, match="g_feats must be a non-empty 2-D array"):
        re_rank(q, g[:0])
    with pytest.raises(ValueError, match="lambda_value"):
        re_rank(q, g, lambda_value=1.5)
