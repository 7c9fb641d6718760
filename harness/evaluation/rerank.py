"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), fast and memory-light, on CPU torch.

Semantics follow the reference implementation's ``re_ranking(probFea, galFea, k1, k2, lambda_value)``
(see /work/shared/reference/bot.md "Re-ranking"):

1. ``d`` = squared Euclidean distances of all query+gallery features as given; every row divided by
   its maximum.
2. ``R(i, k)`` = the k nearest items of i (itself usually first). The k-reciprocal set of i is
   ``{j in R(i, k1+1) : i in R(j, k1+1)}``. For every j in it, its half set (same rule with
   ``round(k1/2)+1`` neighbours) is added when more than 2/3 of it already lies in i's set.
3. ``V[i, j] = exp(-d[i, j])`` over the expanded set, normalised to sum 1 per row.
4. Query expansion: ``V[i] = mean of V[j]`` over the k2 nearest j of i (itself included); skipped if
   ``k2 == 1``.
5. Jaccard distance ``1 - S / (2 - S)`` with ``S[i, j] = sum_k min(V[i, k], V[j, k])``; the result is
   ``(1 - lambda) * jaccard + lambda * d`` for query rows and gallery columns.

How this differs from the reference in cost, not in meaning:

- The (q+g)^2 distance matrix is never held: it is computed in row blocks, upper triangle only
  (the matrix is symmetric, so each block also serves the rows below it, transposed), keeping per
  row the top-L nearest candidates and the maximum; only the query x gallery block is kept.
- The neighbour lists come from float32 GEMM distances; where two neighbours near a cut (k2,
  round(k1/2)+1, k1+1) lie closer than the float32 error could blur, the candidates of that row are
  re-measured in float64 and re-sorted, so the neighbour sets are those of an exact float64
  computation (the reference's float32 argsort can differ from float64 on such near ties).
- V is sparse (a few dozen non-zeros per row) and float32, not a dense float16 (q+g)^2 matrix, so
  results match an exact float64 computation to ~1e-6; they differ from the float16 reference by
  up to ~2e-3 (its rounding, not ours).
- Exact ties between distances (duplicate features) are broken by the sort's order here and by
  quicksort order in the reference, so results may differ on duplicated features.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# Candidates kept per row beyond the largest neighbour list needed, so that an exact float64
# re-sort of near-tied rows still sees every true member of the top lists.
_EXTRA_CANDIDATES = 11
# Candidates kept per row at least: their distances are looked up for the weights of V (most
# expanded-set pairs are found in one of the two rows' lists); the rest are measured.
_MIN_CANDIDATES = 32
# A cut is "near-tied" when the float32 gap there is below this fraction of the scale of the
# distances involved (|x_i|^2 + max_j |x_j|^2); float32 GEMM errors are ~1e-6 of that scale.
_NEAR_TIE_RELATIVE = 1e-5
# Elements of one float32 distance block (rows x columns) computed at a time (~64 MB).
_BLOCK_ELEMENTS = 1 << 24
# Rows per chunk in the vectorised neighbour-set stage (bounds rows x K x K int64 temporaries).
_SET_ROWS = 4096
# Query x gallery (row, column) contributions gathered at a time in the Jaccard stage, and the
# size of its dense similarity buffer (query rows x gallery).
_JACCARD_PAIRS = 1 << 23
_JACCARD_ELEMENTS = 1 << 22


def re_rank(q_feats: Any, g_feats: Any, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """k-reciprocal re-ranked distances, query x gallery, float32 (see the module docstring).

    ``q_feats`` (q x D) and ``g_feats`` (g x D) are numpy arrays or torch tensors; they are used as
    given (normalise them first for the usual cosine-style ranking).
    """
    q = _as_float_tensor(q_feats, "q_feats")
    g = _as_float_tensor(g_feats, "g_feats")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"q_feats has {q.shape[1]} dimensions but g_feats has {g.shape[1]}; they must match")
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    num_query = q.shape[0]
    feats_exact = torch.cat([q, g])  # float32 or float64, as given: used for exact re-measuring
    feats = feats_exact.float().contiguous()
    num_all = feats.shape[0]

    k_full = min(k1 + 1, num_all)
    k_half = min(int(round(k1 / 2)) + 1, num_all)  # round half to even, like np.around
    k_qe = min(k2, num_all)
    list_len = min(max(max(k_full, k_half, k_qe) + _EXTRA_CANDIDATES, _MIN_CANDIDATES), num_all)

    cand_dist, cand_idx, row_max, dist_qg = _nearest_candidates(feats, num_query, list_len)
    cuts = sorted({k_qe, k_half, k_full})
    ranked = _exact_near_ties(feats, feats_exact, cand_dist, cand_idx, cuts)

    rows, cols = _expanded_sets(ranked[:, :k_full], ranked[:, :k_half])
    pair_dist = _pair_sqdist(feats, rows, cols, cand_idx, cand_dist)
    del cand_dist, cand_idx
    weights = torch.exp(-pair_dist / row_max[rows].double())
    row_sum = torch.zeros(num_all, dtype=torch.float64).index_add_(0, rows, weights)
    values = weights / row_sum[rows]
    if k2 != 1:
        rows, cols, values = _query_expansion(rows, cols, values, ranked[:, :k_qe], num_all)

    # final = (1 - lambda) * jaccard + lambda * d / row max, written into the q x g block in place
    dist_qg.div_(row_max[:num_query, None])
    _blend_jaccard(dist_qg, rows, cols, values.float(), num_query, num_all, lambda_value)
    return dist_qg.numpy()


def _as_float_tensor(x: Any, name: str) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (items x dims), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {t.dtype}")
    t = t.cpu()
    return t if t.dtype == torch.float64 else t.float()


def _topk_padded(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise k smallest (sorted), padded with +inf / -1 when a row is shorter than k."""
    kk = min(k, values.shape[1])
    v, i = values.topk(kk, dim=1, largest=False, sorted=True)
    if kk < k:
        pad = k - kk
        v = torch.cat([v, v.new_full((v.shape[0], pad), float("inf"))], 1)
        i = torch.cat([i, i.new_full((i.shape[0], pad), -1)], 1)
    return v, i


def _merge_topk(v_old: torch.Tensor, i_old: torch.Tensor, v_new: torch.Tensor, i_new: torch.Tensor,
                k: int) -> tuple[torch.Tensor, torch.Tensor]:
    v = torch.cat([v_old, v_new], 1)
    i = torch.cat([i_old, i_new], 1)
    v, pos = v.topk(k, dim=1, largest=False, sorted=True)
    return v, i.gather(1, pos)


def _nearest_candidates(feats: torch.Tensor, num_query: int, list_len: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of the all-vs-all squared distances: the ``list_len`` smallest (sorted), the row max,
    and the query x gallery block.

    Only the upper triangle is computed, in row blocks: block ``start:stop`` against columns
    ``start:``. Its rows take their top list from it directly; the rows below (``stop:``) see the
    same numbers transposed. For those, the first block is reduced with a column-wise top-k, and
    later blocks only pass the few entries smaller than the row's current ``list_len``-th candidate
    (a running threshold), so the transposed half costs a comparison per entry, not a sort."""
    num_all = feats.shape[0]
    sq = (feats * feats).sum(1)
    feats_t = feats.T
    cand_dist = torch.full((num_all, list_len), float("inf"))
    cand_idx = torch.full((num_all, list_len), -1, dtype=torch.long)
    row_max = torch.full((num_all,), -float("inf"))
    dist_qg = torch.empty(num_query, num_all - num_query)
    block = int(min(max(_BLOCK_ELEMENTS // num_all, list_len, 256), num_all))
    for start in range(0, num_all, block):
        stop = min(start + block, num_all)
        # rows start:stop against columns start:num_all (the diagonal block in full)
        rect = torch.addmm(sq[None, start:], feats[start:stop], feats_t[:, start:], alpha=-2.0)
        rect.add_(sq[start:stop, None])
        if start < num_query:
            q_stop = min(stop, num_query)
            dist_qg[start:q_stop] = rect[: q_stop - start, num_query - start:]
        row_max[start:stop] = torch.maximum(row_max[start:stop], rect.amax(1))
        v, i = _topk_padded(rect, list_len)
        i = torch.where(i >= 0, i + start, i)
        cand_dist[start:stop], cand_idx[start:stop] = _merge_topk(cand_dist[start:stop], cand_idx[start:stop],
                                                                  v, i, list_len)
        if stop == num_all:
            break
        below = rect[:, stop - start:]  # rows start:stop x columns stop:, i.e. rows stop: transposed
        row_max[stop:] = torch.maximum(row_max[stop:], below.amax(0))
        if start == 0:
            v, i = _topk_padded(below.T.contiguous(), list_len)
            cand_dist[stop:], cand_idx[stop:] = _merge_topk(cand_dist[stop:], cand_idx[stop:], v, i, list_len)
        else:
            _merge_below_threshold(below, start, stop, cand_dist, cand_idx)
        del rect, below
    # a constant-feature row would divide by zero; its distances are all 0 anyway
    row_max.clamp_(min=torch.finfo(torch.float32).tiny)
    return cand_dist, cand_idx, row_max, dist_qg


def _merge_below_threshold(below: torch.Tensor, start: int, stop: int, cand_dist: torch.Tensor,
                           cand_idx: torch.Tensor) -> None:
    """Merge the entries of ``below`` (block rows x later rows) that beat a later row's current
    last candidate into that row's sorted candidate list, in place."""
    list_len = cand_dist.shape[1]
    thr = cand_dist[stop:, list_len - 1]
    # compare on the transposed view: the mask keeps ``below``'s memory layout, and nonzero then
    # walks it in later-row order, so the candidates come out grouped by row without a sort
    later, block_pos = torch.lt(below.T, thr[:, None]).nonzero(as_tuple=True)
    if later.numel() == 0:
        return
    vals = below[block_pos, later]
    counts = torch.bincount(later, minlength=thr.numel())
    first = counts.cumsum(0) - counts
    slot = torch.arange(later.numel()) - first[later]
    active = counts > 0
    compact = active.cumsum(0) - 1
    rows = active.nonzero().squeeze(1)
    width = int(counts.max())
    pad_v = torch.full((rows.numel(), width), float("inf"))
    pad_i = torch.full((rows.numel(), width), -1, dtype=torch.long)
    pad_v[compact[later], slot] = vals
    pad_i[compact[later], slot] = block_pos + start
    rows = rows + stop
    cand_dist[rows], cand_idx[rows] = _merge_topk(cand_dist[rows], cand_idx[rows], pad_v, pad_i, list_len)


def _exact_near_ties(feats: torch.Tensor, feats_exact: torch.Tensor, cand_dist: torch.Tensor,
                     cand_idx: torch.Tensor, cuts: list[int]) -> torch.Tensor:
    """Neighbour lists whose first-c sets (c in ``cuts``) equal those of exact float64 distances.

    Rows whose float32 gap at a cut is within the float32 error are re-measured in float64 and
    re-sorted (stable, so exact ties keep the GEMM order)."""
    ranked = cand_idx.clone()
    list_len = cand_dist.shape[1]
    sq = (feats * feats).sum(1)
    scale = sq + sq.max()
    near = torch.zeros(cand_dist.shape[0], dtype=torch.bool)
    for c in cuts:
        if 0 < c < list_len:
            gap = cand_dist[:, c] - cand_dist[:, c - 1]
            near |= gap <= _NEAR_TIE_RELATIVE * scale
    rows = near.nonzero().squeeze(1)
    if rows.numel() == 0:
        return ranked
    step = max(1, (1 << 22) // (list_len * feats.shape[1]))
    for s in range(0, rows.numel(), step):
        r = rows[s:s + step]
        idx = cand_idx[r]
        valid = idx >= 0
        a = feats_exact[r].double()
        b = feats_exact[idx.clamp(min=0)].double()
        d = (a * a).sum(1, keepdim=True) + (b * b).sum(2) - 2.0 * torch.bmm(b, a[:, :, None]).squeeze(2)
        d = torch.where(valid, d, torch.full_like(d, float("inf")))
        order = torch.sort(d, dim=1, stable=True).indices
        ranked[r] = idx.gather(1, order)
    return ranked


def _reciprocal_mask(ranked: torch.Tensor, row_ids: torch.Tensor) -> torch.Tensor:
    """mask[i, a]: row_ids[i] is among the neighbours of its a-th neighbour ``ranked[i, a]``
    (``ranked`` here holds the neighbour lists of every item; row_ids selects the rows asked)."""
    own = ranked[row_ids]
    return (ranked[own] == row_ids[:, None, None]).any(2)


def _expanded_sets(r_full: torch.Tensor, r_half: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) pairs of every item's expanded k-reciprocal set, sorted by row then column."""
    num_all, k_full = r_full.shape
    k_half = r_half.shape[1]
    all_ids = torch.arange(num_all)
    half_recip = torch.cat([_reciprocal_mask(r_half, all_ids[s:s + _SET_ROWS])
                            for s in range(0, num_all, _SET_ROWS)])
    out_rows, out_cols = [], []
    for s in range(0, num_all, _SET_ROWS):
        ids = all_ids[s:s + _SET_ROWS]
        n = ids.numel()
        neigh = r_full[ids]                                     # n x K
        recip = _reciprocal_mask(r_full, ids)                   # n x K
        # half sets of every neighbour: n x K x Kh, with their validity
        half = r_half[neigh]
        half_ok = half_recip[neigh]
        # |half set of candidate ∩ own k-reciprocal set|, via a sorted copy of the own set
        own_sorted = torch.where(recip, neigh, num_all).sort(1).values
        flat = half.reshape(n, -1)
        pos = torch.searchsorted(own_sorted, flat).clamp(max=k_full - 1)
        member = (own_sorted.gather(1, pos) == flat).view(n, k_full, k_half) & half_ok
        overlap = member.sum(2).double()
        size = half_ok.sum(2).double()
        accept = recip & (overlap > (2.0 / 3.0) * size)          # the reference's float test
        members = torch.cat([torch.where(recip, neigh, -1),
                             torch.where(accept[:, :, None] & half_ok, half, -1).reshape(n, -1)], 1)
        members = members.sort(1).values
        keep = members >= 0
        keep[:, 1:] &= members[:, 1:] != members[:, :-1]
        r, c = keep.nonzero(as_tuple=True)
        out_rows.append(ids[r])
        out_cols.append(members[r, c])
    return torch.cat(out_rows), torch.cat(out_cols)


def _lookup(cand_idx: torch.Tensor, cand_dist: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance of each pair (row, col) found in row's candidate list, and whether it was found."""
    hit = cand_idx[rows] == cols[:, None]
    found = hit.any(1)
    pos = hit.to(torch.uint8).argmax(1)
    return cand_dist[rows, pos].double(), found


def _pair_sqdist(feats: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, cand_idx: torch.Tensor,
                 cand_dist: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance of listed pairs, float64.

    Looked up in the candidate lists of either item of the pair (GEMM values) when present;
    measured with float32 dot products otherwise. Gathering feature rows per pair is what costs,
    so it is kept for the few pairs outside both lists."""
    out = torch.empty(rows.numel(), dtype=torch.float64)
    found = torch.empty(rows.numel(), dtype=torch.bool)
    step = max(1, (1 << 24) // cand_idx.shape[1])
    for s in range(0, rows.numel(), step):
        r, c = rows[s:s + step], cols[s:s + step]
        d, f = _lookup(cand_idx, cand_dist, r, c)
        miss = (~f).nonzero().squeeze(1)
        d[miss], f[miss] = _lookup(cand_idx, cand_dist, c[miss], r[miss])
        out[s:s + step], found[s:s + step] = d, f
    missing = (~found).nonzero().squeeze(1)
    sq = (feats * feats).sum(1).double()
    step = max(1, (1 << 22) // feats.shape[1])
    for s in range(0, missing.numel(), step):
        m = missing[s:s + step]
        r, c = rows[m], cols[m]
        dot = torch.einsum("nd,nd->n", feats[r], feats[c]).double()
        out[m] = sq[r] + sq[c] - 2.0 * dot
    return out


def _coalesce(keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum ``values`` over equal ``keys``; returns sorted unique keys and their sums."""
    uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    sums = torch.zeros(uniq.numel(), dtype=values.dtype).index_add_(0, inverse, values)
    return uniq, sums


def _csr(rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Row pointer of entries sorted by row."""
    counts = torch.bincount(rows, minlength=num_rows)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def _expand_rows(ptr: torch.Tensor, src_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each requested source row, the positions of its entries: (owner index, entry position)."""
    counts = ptr[src_rows + 1] - ptr[src_rows]
    owner = torch.repeat_interleave(torch.arange(src_rows.numel()), counts)
    first = torch.repeat_interleave(ptr[src_rows] - (counts.cumsum(0) - counts), counts)
    return owner, first + torch.arange(owner.numel())


def _query_expansion(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, r_qe: torch.Tensor,
                     num_all: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """V[i] <- mean of V[j] over the k2 nearest j of i (sparse; entries sorted by row)."""
    ptr = _csr(rows, num_all)
    k2 = r_qe.shape[1]
    owner, pos = _expand_rows(ptr, r_qe.reshape(-1))
    new_rows = owner // k2
    keys, sums = _coalesce(new_rows * num_all + cols[pos], values[pos])
    return keys // num_all, keys % num_all, sums / k2


def _blend_jaccard(dist_qg: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor,
                   num_query: int, num_all: int, lambda_value: float) -> None:
    """dist_qg <- (1 - lambda) * (1 - S / (2 - S)) + lambda * dist_qg, S = sum_k min(V[i,k], V[j,k]).

    V's query rows are walked row-wise; for each non-zero V[i, k] the gallery items j with
    V[j, k] != 0 come from a column-sorted copy of V's gallery rows (the reference's inverted index)."""
    num_gallery = num_all - num_query
    row_ptr = _csr(rows, num_all)
    in_gallery = rows >= num_query
    g_rows, g_cols, g_vals = rows[in_gallery] - num_query, cols[in_gallery], values[in_gallery]
    order = torch.sort(g_cols, stable=True).indices
    g_rows, g_cols, g_vals = g_rows[order], g_cols[order], g_vals[order]
    col_ptr = _csr(g_cols, num_all)
    col_count = col_ptr[1:] - col_ptr[:-1]
    # contributions per query row, to size the chunks
    q_entries = row_ptr[num_query]
    per_entry = col_count[cols[:q_entries]]
    per_row = torch.zeros(num_query, dtype=torch.long).index_add_(0, rows[:q_entries], per_entry)
    max_rows = max(1, _JACCARD_ELEMENTS // max(num_gallery, 1))
    sim_buf = torch.empty(min(max_rows, num_query) * num_gallery)
    den_buf = torch.empty_like(sim_buf)
    for s, e in _chunk_bounds(per_row, _JACCARD_PAIRS, max_rows):
        a, b = int(row_ptr[s]), int(row_ptr[e])
        ent_rows, ent_cols, ent_vals = rows[a:b] - s, cols[a:b], values[a:b]
        owner, pos = _expand_rows(col_ptr, ent_cols)
        contrib = torch.minimum(ent_vals[owner], g_vals[pos])
        flat = ent_rows[owner] * num_gallery + g_rows[pos]
        sim = sim_buf[: (e - s) * num_gallery].zero_().index_add_(0, flat, contrib).view(e - s, num_gallery)
        den = torch.neg(sim, out=den_buf[: sim.numel()].view_as(sim)).add_(2.0)
        # lambda * d + (1 - lambda) * (1 - S / (2 - S)), in place
        dist_qg[s:e].mul_(lambda_value).add_(1.0 - lambda_value).addcdiv_(sim, den, value=-(1.0 - lambda_value))


def _chunk_bounds(cost: torch.Tensor, budget: int, max_rows: int) -> list[tuple[int, int]]:
    """Split 0..len(cost) into consecutive ranges of at most ``max_rows`` whose summed cost stays
    within ``budget`` (a single row over budget gets a range of its own)."""
    bounds, start, acc = [], 0, 0
    for i, c in enumerate(cost.tolist()):
        if i > start and (acc + c > budget or i - start >= max_rows):
            bounds.append((start, i))
            start, acc = i, 0
        acc += c
    bounds.append((start, len(cost)))
    return bounds
