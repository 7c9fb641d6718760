"""Evaluation: distances, the Market protocol (CMC, mAP, mINP, per-query scores), re-ranking.

Protocol (see /work/shared/reference/bot.md "Evaluation"): for each query, gallery items with the
same identity and the same camera are dropped ("junk"); a query with no remaining gallery item of
its identity is skipped; CMC is the cumulative first-hit curve truncated at ``max_rank`` and
averaged over the valid queries; AP is the mean of the precision at each hit; mINP is the mean of
(number of matches) / (1-based rank of the hardest match). Identity 0 (distractors) needs no
special case: it matches no query identity.

Ties: a non-match at exactly the same distance as a match is counted *before* it (pessimistic), so
scores never depend on the sort order of equal distances. Sort-based implementations (torchreid's)
break such ties by index order instead; on continuous features ties do not occur.

How it is computed without sorting each gallery row (the cost that dominates sort-based code):
the matches and junk of a query are its identity's gallery items, found once by grouping the
gallery by identity (a few dozen per query). Per query only the match distances are sorted; the
rank of the j-th match is then ``j + 1 +`` the number of non-matches at a distance <= it. Only
non-matches closer than the query's hardest match can count, so each distance row is compared
once against that threshold and the few entries that pass are counted per match with a binary
search (rows where many pass use the binary search on the whole row instead).

Per-query scores (``per_query=True``, ``per_query_scores``) come from the same match ranks, so
averaging them over the valid queries gives the mAP, mINP and CMC exactly as reported.

Feature extraction and the features npz files live in ``features``; their names are re-exported
here for the modules that still import them from this one.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

# extract_features, load_features_npz and NPZ_KEYS moved to features; re-exported for old imports
from reidbench.harness.evaluation.features import NPZ_KEYS, extract_features, load_features_npz
from reidbench.harness.evaluation.rerank import re_rank

__all__ = ["NPZ_KEYS", "compute_distance", "evaluate", "extract_features", "load_features_npz",
           "per_query_scores", "re_rank", "score", "score_blocks"]

METRICS = ("euclidean", "sqeuclidean", "cosine")

# Distance entries handled per chunk of query rows (64 MB of float32): the GEMM loses ~20% of its
# speed below ~1,000 query rows, and every torch op has a fixed (thread start-up) cost.
_CHUNK_ELEMENTS = 1 << 24
# The sparse path gathers (entries passing the hardest-match threshold) x (matches per query)
# sorted match distances; above this multiple of the chunk size, binary-searching every entry of
# the rows is cheaper (measured: the crossover is near 2 for Market-like data).
_DENSE_FRACTION = 2.0


# --------------------------------------------------------------------------- distances


def compute_distance(q_feats: Any, g_feats: Any, metric: str) -> torch.Tensor | np.ndarray:
    """Query x gallery distance matrix.

    ``metric``: "euclidean" (``|q - g|``), "sqeuclidean" (``|q - g|^2``) or "cosine"
    (``1 - cos(q, g)``). Inputs are numpy arrays or torch tensors (q x D, g x D); the result is a
    numpy array when both inputs are numpy, else a tensor on the inputs' device. float64 inputs
    are computed in float64, everything else in float32.
    """
    as_numpy = not isinstance(q_feats, torch.Tensor) and not isinstance(g_feats, torch.Tensor)
    q = _feature_tensor(q_feats, "q_feats")
    g = _feature_tensor(g_feats, "g_feats")
    _check_pair(q, g)
    _check_metric(metric)
    g = g.to(q.device)
    if q.dtype != g.dtype:
        q, g = q.double(), g.double()
    q, g, g_sqnorm = _prepare_gallery(q, g, metric)
    out = torch.empty(q.shape[0], g.shape[0], dtype=q.dtype, device=q.device)
    rows = _chunk_rows(g.shape[0])
    for start in range(0, q.shape[0], rows):
        stop = min(start + rows, q.shape[0])
        _distance_chunk(q[start:stop], g, g_sqnorm, metric, out=out[start:stop])
    return out.cpu().numpy() if as_numpy else out


def _prepare_gallery(q: torch.Tensor, g: torch.Tensor, metric: str
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if metric == "cosine":
        return (torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1), None)
    return q, g, (g * g).sum(1)


def _distance_chunk(q: torch.Tensor, g: torch.Tensor, g_sqnorm: torch.Tensor | None, metric: str,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """Distances of a few query rows (already normalised for cosine) to the whole gallery."""
    if metric == "cosine":
        out = torch.mm(q, g.T, out=out)
        return out.neg_().add_(1.0)
    # |q|^2 + |g|^2 - 2 q.g : the gallery norms ride in the GEMM's C operand
    out = torch.addmm(g_sqnorm[None, :], q, g.T, alpha=-2.0, out=out)
    out.add_((q * q).sum(1, keepdim=True)).clamp_(min=0.0)
    return out.sqrt_() if metric == "euclidean" else out


# --------------------------------------------------------------------------- the protocol


def evaluate(distmat: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any,
             max_rank: int = 50, per_query: bool = False) -> dict[str, Any]:
    """Market-protocol scores of a query x gallery distance matrix (smaller = more similar).

    Returns ``{"cmc": float array of length max_rank, "mAP": float, "mINP": float,
    "num_valid_queries": int}``; ``cmc`` is padded with its last value beyond the gallery size.
    ``per_query`` adds ``"per_query"``: the arrays of ``per_query_scores`` (AP, INP, first-match
    rank and validity of every query). Raises ValueError when shapes disagree or no query has a
    valid match.
    """
    _check_max_rank(max_rank)
    dist, labels = _protocol_inputs(distmat, q_pids, g_pids, q_camids, g_camids)
    acc = _Accumulator(max_rank, dist.shape[0] if per_query else None)
    _accumulate(acc, dist, labels)
    return acc.result()


def per_query_scores(distmat: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any
                     ) -> dict[str, np.ndarray]:
    """Protocol scores of each query of a distance matrix, one entry per row.

    ``{"ap": float32, "inp": float32, "first_match_rank": int32 (1-based rank of the first match
    after junk removal), "valid": bool}``; a query with no match left after junk removal has NaN
    AP and INP and rank 0. The same numbers as ``evaluate(..., per_query=True)["per_query"]``, but
    a block of queries none of which is valid is no error here (callers score a query set in blocks).
    """
    dist, labels = _protocol_inputs(distmat, q_pids, g_pids, q_camids, g_camids)
    acc = _Accumulator(1, dist.shape[0])
    _accumulate(acc, dist, labels)
    return acc.per_query_arrays()


def _protocol_inputs(distmat: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any
                     ) -> tuple[torch.Tensor, _Labels]:
    dist = _as_distances(distmat)
    if dist.shape[1] == 0:
        raise ValueError("the gallery is empty: distmat has 0 columns, so no query can have a valid match")
    labels = _Labels.build(q_pids, g_pids, q_camids, g_camids, num_query=dist.shape[0], num_gallery=dist.shape[1])
    return dist, labels


def _as_distances(distmat: Any) -> torch.Tensor:
    """A 2-D float32/float64 CPU tensor of a distance matrix (or block)."""
    dist = distmat if isinstance(distmat, torch.Tensor) else torch.from_numpy(np.asarray(distmat))
    if dist.ndim != 2:
        raise ValueError(f"distmat must be 2-D (queries x gallery), got shape {tuple(dist.shape)}")
    if not dist.is_floating_point():
        dist = dist.double()
    elif dist.dtype not in (torch.float32, torch.float64):
        dist = dist.float()
    return dist.detach().cpu()


def _accumulate(acc: _Accumulator, dist: torch.Tensor, labels: _Labels) -> None:
    rows = _chunk_rows(dist.shape[1])
    for start in range(0, dist.shape[0], rows):
        stop = min(start + rows, dist.shape[0])
        acc.add(*_match_ranks(dist[start:stop].contiguous(), labels, start, stop), start=start)


class _Labels:
    """Query labels as tensors and the gallery grouped by identity (for per-query match lists)."""

    def __init__(self, q_pids: torch.Tensor, q_cams: torch.Tensor, g_pids: torch.Tensor, g_cams: torch.Tensor):
        self.q_pids, self.q_cams, self.g_pids, self.g_cams = q_pids, q_cams, g_pids, g_cams
        order = torch.sort(g_pids, stable=True).indices
        self.by_pid = order
        self.uniq_pids, counts = torch.unique_consecutive(g_pids[order], return_counts=True)
        self.group_start = counts.cumsum(0) - counts
        self.group_size = counts

    @classmethod
    def build(cls, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any, num_query: int,
              num_gallery: int) -> _Labels:
        arrays = {}
        for name, value, expected, side in (("q_pids", q_pids, num_query, "queries"),
                                             ("q_camids", q_camids, num_query, "queries"),
                                             ("g_pids", g_pids, num_gallery, "gallery items"),
                                             ("g_camids", g_camids, num_gallery, "gallery items")):
            arr = _label_tensor(value, name)
            if arr.numel() != expected:
                raise ValueError(f"{name} has {arr.numel()} entries but there are {expected} {side}")
            arrays[name] = arr
        return cls(arrays["q_pids"], arrays["q_camids"], arrays["g_pids"], arrays["g_camids"])

    def same_pid_items(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Gallery indices of each query's identity (rows padded to the chunk's largest group)
        and the mask of real entries."""
        pids = self.q_pids[start:stop]
        pos = torch.searchsorted(self.uniq_pids, pids).clamp(max=self.uniq_pids.numel() - 1)
        size = torch.where(self.uniq_pids[pos] == pids, self.group_size[pos], 0)
        width = max(int(size.max()) if size.numel() else 0, 1)
        offset = torch.arange(width)
        valid = offset[None, :] < size[:, None]
        flat = (self.group_start[pos][:, None] + offset[None, :]).clamp(max=self.by_pid.numel() - 1)
        return self.by_pid[flat], valid


def _match_ranks(dist: torch.Tensor, labels: _Labels, start: int, stop: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks of each query's matches among its non-junk gallery items, padded per row
    (``ranks[i, j]`` is meaningful for ``j < num_matches[i]``), and the number of matches."""
    rows = dist.shape[0]
    group, real = labels.same_pid_items(start, stop)
    same_cam = labels.g_cams[group] == labels.q_cams[start:stop, None]
    is_match = real & ~same_cam
    num_matches = is_match.sum(1)
    width = int(num_matches.max()) if rows else 0
    if width == 0:
        return torch.zeros(rows, 0, dtype=torch.long), num_matches
    group_dist = dist.gather(1, group)
    inf = torch.tensor(float("inf"), dtype=dist.dtype)
    # a NaN would silently rank anywhere; one sum detects it without a pass that writes a mask
    if torch.isnan(dist.sum()) and torch.isnan(dist).any():
        row = int(torch.isnan(dist).any(1).nonzero()[0]) + start
        raise ValueError(f"distmat contains NaN (first in query row {row}); distances must be numbers")
    match_dist = torch.where(is_match, group_dist, inf).sort(1).values[:, :width].contiguous()
    # threshold = hardest match; rows without a match get -inf so nothing passes
    hardest = match_dist.gather(1, (num_matches - 1).clamp(min=0)[:, None]).squeeze(1)
    hardest = torch.where(num_matches > 0, hardest, -inf)
    passing = dist <= hardest[:, None]
    num_passing = int(torch.count_nonzero(passing))  # far cheaper than a bool sum
    bins = width + 1
    if num_passing * width <= _DENSE_FRACTION * passing.numel():
        q_idx, g_idx = passing.nonzero(as_tuple=True)
        values = dist[q_idx, g_idx]
        # matches strictly closer than each entry (left bisection: ties count the entry first)
        before = torch.searchsorted(match_dist[q_idx], values[:, None]).squeeze(1)
        counts = torch.bincount(q_idx * bins + before, minlength=rows * bins)
    else:
        before = torch.searchsorted(match_dist, dist, out_int32=True)
        row_base = (torch.arange(rows, dtype=torch.int32) * bins)[:, None]
        counts = torch.bincount((before + row_base).view(-1), minlength=rows * bins)
        passing = None  # every row item was counted; the identity's own items are removed below
    # the identity's own items (matches themselves and junk) are not non-matches: take them out
    own = real if passing is None else real & (group_dist <= hardest[:, None])
    own_rows = torch.arange(rows)[:, None].expand_as(group)[own]
    own_before = torch.searchsorted(match_dist[own_rows], group_dist[own][:, None]).squeeze(1)
    counts -= torch.bincount(own_rows * bins + own_before, minlength=rows * bins)
    # negatives at a distance <= the j-th match = those whose count of closer matches is <= j
    neg_before = counts.view(rows, bins).cumsum(1)[:, :width]
    ranks = neg_before + torch.arange(1, width + 1)
    return ranks, num_matches


class _Accumulator:
    """Sums of AP and INP and the histogram of first-hit ranks over valid queries; with
    ``num_query`` also each query's AP, INP and first-hit rank (written where its rows land)."""

    def __init__(self, max_rank: int, num_query: int | None = None):
        self.max_rank = max_rank
        self.ap_sum = 0.0
        self.inp_sum = 0.0
        self.num_valid = 0
        self.first_hits = torch.zeros(max_rank + 1, dtype=torch.long)
        self.per_query = None
        if num_query is not None:
            self.per_query = {"ap": np.full(num_query, np.nan, dtype=np.float32),
                              "inp": np.full(num_query, np.nan, dtype=np.float32),
                              "first_match_rank": np.zeros(num_query, dtype=np.int32),
                              "valid": np.zeros(num_query, dtype=bool)}

    def add(self, ranks: torch.Tensor, num_matches: torch.Tensor, start: int = 0) -> None:
        """One block of query rows starting at query ``start`` (``_match_ranks``'s output)."""
        valid = num_matches > 0
        if not bool(valid.any()):
            return
        ranks, num_matches = ranks[valid], num_matches[valid]
        width = ranks.shape[1]
        position = torch.arange(1, width + 1, dtype=torch.float64)
        in_row = position[None, :] <= num_matches[:, None]
        precision = torch.where(in_row, position / ranks.double(), 0.0)
        ap = precision.sum(1) / num_matches
        hardest = ranks.gather(1, (num_matches - 1)[:, None]).squeeze(1)
        inp = num_matches.double() / hardest.double()
        self.ap_sum += float(ap.sum())
        self.inp_sum += float(inp.sum())
        first = ranks[:, 0]
        self.first_hits += torch.bincount(first.clamp(max=self.max_rank + 1) - 1,
                                          minlength=self.max_rank + 1)[: self.max_rank + 1]
        self.num_valid += int(ranks.shape[0])
        if self.per_query is not None:  # a few hundred values per block: no cost worth a fast path
            rows = valid.nonzero().squeeze(1).numpy() + start
            self.per_query["ap"][rows] = ap.numpy()
            self.per_query["inp"][rows] = inp.numpy()
            self.per_query["first_match_rank"][rows] = first.numpy()
            self.per_query["valid"][rows] = True

    def per_query_arrays(self) -> dict[str, np.ndarray]:
        if self.per_query is None:
            raise RuntimeError("this accumulator was built without num_query, so it kept no per-query scores")
        return self.per_query

    def result(self) -> dict[str, Any]:
        if self.num_valid == 0:
            raise ValueError("no query has a valid match: every gallery item of each query's identity "
                             "is missing or shares the query's camera")
        cmc = (self.first_hits[: self.max_rank].cumsum(0).double() / self.num_valid).numpy()
        out = {"cmc": cmc, "mAP": self.ap_sum / self.num_valid, "mINP": self.inp_sum / self.num_valid,
               "num_valid_queries": self.num_valid}
        if self.per_query is not None:
            out["per_query"] = self.per_query
        return out


# --------------------------------------------------------------------------- scores


def score(q_feats: Any, g_feats: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any,
          metric: str = "euclidean", normalize: bool = False, rerank: bool = False,
          max_rank: int = 50, per_query: bool = False) -> dict[str, Any]:
    """R1, R5, R10, mAP, mINP (fractions in [0, 1]) and num_valid_queries of query/gallery features.

    ``normalize`` L2-normalises the features first. Without ``rerank`` the distance is ``metric``,
    computed and ranked chunk by chunk (the full distance matrix is never held). With ``rerank``
    the k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3) runs on squared Euclidean distances of
    the features, L2-normalised when ``normalize`` is set or ``metric`` is "cosine" (the reference
    ranks normalised features by squared distance; the metric choice then only decides that).
    ``per_query`` adds ``"per_query"``, each query's scores as in ``evaluate(..., per_query=True)``.
    """
    _check_metric(metric)
    _check_max_rank(max_rank)
    q = _feature_tensor(q_feats, "q_feats").cpu()
    g = _feature_tensor(g_feats, "g_feats").cpu()
    _check_pair(q, g)
    if g.shape[0] == 0:
        raise ValueError("g_feats is empty: no query can have a valid match")
    if q.dtype != g.dtype:
        q, g = q.double(), g.double()
    if normalize or (rerank and metric == "cosine"):
        q = torch.nn.functional.normalize(q, dim=1)
        g = torch.nn.functional.normalize(g, dim=1)
    curve_len = max(max_rank, 10)  # R10 needs ten ranks even when max_rank is smaller
    if rerank:
        result = evaluate(re_rank(q, g), q_pids, g_pids, q_camids, g_camids, max_rank=curve_len,
                          per_query=per_query)
        return _summary(result, per_query)
    q, g, g_sqnorm = _prepare_gallery(q, g, metric)
    rows = _chunk_rows(g.shape[0])
    blocks = ((start, _distance_chunk(q[start:start + rows], g, g_sqnorm, metric))
              for start in range(0, q.shape[0], rows))
    return score_blocks(blocks, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank, per_query=per_query)


def score_blocks(blocks: Iterable[tuple[int, Any]], q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any,
                 max_rank: int = 50, per_query: bool = False) -> dict[str, Any]:
    """``score``'s result for a distance matrix given as consecutive blocks of query rows.

    ``blocks`` yields ``(first query row, rows x gallery distances)`` (tensors or arrays, smaller =
    more similar) that together cover every query once, in order; only one block is held at a time,
    so a re-scoring stage can produce its distances lazily. Raises ValueError when they do not.
    """
    _check_max_rank(max_rank)
    num_query, num_gallery = len(np.asarray(q_pids)), len(np.asarray(g_pids))
    if num_gallery == 0:
        raise ValueError("the gallery is empty: no query can have a valid match")
    labels = _Labels.build(q_pids, g_pids, q_camids, g_camids, num_query=num_query, num_gallery=num_gallery)
    acc = _Accumulator(max(max_rank, 10), num_query if per_query else None)
    expected = 0
    for start, block in blocks:
        dist = _as_distances(block)
        if start != expected or dist.shape[1] != num_gallery:
            raise ValueError(f"distance blocks must cover the queries in order with {num_gallery} gallery columns: "
                             f"got rows {start}..{start + dist.shape[0]} x {dist.shape[1]} where row {expected} "
                             "was due")
        acc.add(*_match_ranks(dist.contiguous(), labels, start, start + dist.shape[0]), start=start)
        expected = start + dist.shape[0]
    if expected != num_query:
        raise ValueError(f"distance blocks covered {expected} of {num_query} queries")
    return _summary(acc.result(), per_query)


def _summary(result: dict[str, Any], per_query: bool) -> dict[str, Any]:
    cmc = result["cmc"]
    out = {"R1": float(cmc[0]), "R5": float(cmc[4]), "R10": float(cmc[9]), "mAP": float(result["mAP"]),
           "mINP": float(result["mINP"]), "num_valid_queries": int(result["num_valid_queries"])}
    if per_query:
        out["per_query"] = result["per_query"]
    return out


# --------------------------------------------------------------------------- helpers


def _feature_tensor(x: Any, name: str) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (items x dims), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a float array, got {t.dtype}")
    return t if t.dtype == torch.float64 else t.float()


def _label_tensor(x: Any, name: str) -> torch.Tensor:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise ValueError(f"{name} must be a 1-D integer array, got shape {arr.shape} {arr.dtype}")
    return torch.from_numpy(arr.astype(np.int64))


def _check_pair(q: torch.Tensor, g: torch.Tensor) -> None:
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"q_feats has {q.shape[1]} dimensions but g_feats has {g.shape[1]}; they must match")


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")


def _check_max_rank(max_rank: int) -> None:
    if not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")


def _chunk_rows(num_gallery: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(num_gallery, 1))
