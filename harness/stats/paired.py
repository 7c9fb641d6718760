"""Paired comparisons of two conditions: a t interval over seeds and a cluster bootstrap over queries.

Pure functions (numpy and scipy only; no I/O, no torch, nothing printed). Every value is in the
units of its inputs: the retrieval metrics are fractions in [0, 1], so a difference of 0.012 is
1.2 percentage points. Differences are always ``B - A`` (the second condition minus the first).

Two questions, two methods:

* ``paired_t_interval`` -- how much does B change a metric *across training seeds*? The two
  conditions are paired by seed (same seed, same data order and initialisation), so the interval
  is the Student t interval of the per-seed differences (e.g. Montgomery, "Design and Analysis of
  Experiments", the paired comparison design). It treats the seeds as a sample of the training
  noise and assumes the differences are roughly normal; with 3-5 seeds it is wide, as it should be.
* ``paired_bootstrap`` -- given one run of each condition, is the difference larger than what
  the choice of *test queries* could produce? A paired nonparametric bootstrap (Efron &
  Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 6 and 13: percentile interval) that
  resamples query *identities* with replacement and keeps all queries of each drawn identity
  (a cluster or block bootstrap, Davison & Hinkley, "Bootstrap Methods and their Application",
  1997, sec. 3.8): queries of one person share appearance, gallery images and difficulty, so they
  are correlated and resampling them one by one would understate the variance. Both runs are
  resampled with the same draw, which is what makes it paired. It says nothing about seed noise.

The metrics are recomputed on each resample exactly as the protocol aggregates them
(``reidbench.harness.evaluation.protocol``): over the valid queries only (those with at least one
gallery match left after junk removal), R-k = fraction of valid queries whose 1-based
``first_match_rank`` is <= k, mAP = mean AP, mINP = mean INP.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _scipy_stats

__all__ = ["BOOTSTRAP_METHOD", "DEFAULT_RESAMPLES", "Interval", "T_METHOD", "metric_from_per_query",
           "paired_bootstrap", "paired_t_interval", "resample_counts"]

T_METHOD = "paired t over seeds"
BOOTSTRAP_METHOD = "paired bootstrap over query identities"
DEFAULT_RESAMPLES = 1000
PER_QUERY_KEYS = ("ap", "inp", "first_match_rank", "valid")

# identity draws handled per block of resamples (int64 entries): bounds memory for large
# ``resamples``; the draws are the same whatever the block size (one Generator stream, row by row)
_DRAWS_PER_BLOCK = 1 << 21
_RANK_METRIC = re.compile(r"^R([1-9][0-9]*)$")


@dataclass(frozen=True)
class Interval:
    """A difference ``B - A`` of one metric and its confidence interval.

    ``delta``: the point estimate (mean per-seed difference, or the difference on the full query
    set); ``low``/``high``: the interval bounds; all three in the units of the inputs (fractions in
    [0, 1] for the retrieval metrics). ``confidence``: e.g. 0.95. ``method``: ``T_METHOD`` or
    ``BOOTSTRAP_METHOD``. ``n``: the number of seeds (t) or of resampled query identities
    (bootstrap). ``resamples``: bootstrap resamples, None for the t interval. ``se``: the standard
    error of ``delta`` (t: sd of the differences / sqrt(n); bootstrap: the standard deviation of
    the resampled differences).
    """

    delta: float
    low: float
    high: float
    confidence: float
    method: str
    n: int
    resamples: int | None = None
    se: float | None = None

    @property
    def significant(self) -> bool:
        """True when the interval excludes 0 (strictly: ``low > 0`` or ``high < 0``)."""
        return self.low > 0 or self.high < 0


# --------------------------------------------------------------------------- t over seeds

def resample_counts(n: int, resamples: int, seed: int) -> Iterator[tuple[int, np.ndarray]]:
    """The cluster bootstrap's draws as counts: (first resample, float64 array resamples-in-block × n)
    where row r counts how often each of the ``n`` clusters was drawn (n draws with replacement).

    Blocks of at most ``_DRAWS_PER_BLOCK`` draws keep memory flat; the generator is seeded once, so
    the same (n, resamples, seed) gives the same resamples whatever consumes them.
    """
    rng = np.random.default_rng(seed)
    block = max(1, _DRAWS_PER_BLOCK // n)
    for start in range(0, resamples, block):
        rows = min(block, resamples - start)
        draws = rng.integers(0, n, size=(rows, n))
        offsets = (np.arange(rows) * n)[:, None]
        yield start, np.bincount((draws + offsets).ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)



def paired_t_interval(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                      confidence: float = 0.95) -> Interval:
    """Student t interval of the mean paired difference ``b - a`` (one value per seed, paired by seed).

    ``a[i]`` and ``b[i]`` are the same metric of conditions A and B trained with seed i (equal
    lengths, n >= 2). ``delta`` = mean of ``d = b - a``; ``se`` = sd(d, ddof=1) / sqrt(n); the
    interval is ``delta -+ t_{(1+confidence)/2, n-1} * se``. When every difference is the same the
    standard error is 0 and the interval has zero width (no NaN). Raises ValueError for n < 2,
    unequal lengths, non-finite values or a confidence outside (0, 1).
    """
    _check_confidence(confidence)
    a_arr = _finite_1d(a, "a")
    b_arr = _finite_1d(b, "b")
    if a_arr.size != b_arr.size:
        raise ValueError(f"a has {a_arr.size} values but b has {b_arr.size}; the paired t interval "
                         "needs one value of each condition per seed")
    n = int(a_arr.size)
    if n < 2:
        raise ValueError(f"the paired t interval needs at least 2 seeds, got n={n}")
    diff = b_arr - a_arr
    delta = float(diff.mean())
    sd = float(diff.std(ddof=1))
    se = sd / math.sqrt(n)
    if se == 0.0:  # constant differences: ppf * 0 is 0, but keep the bounds exactly at delta
        return Interval(delta, delta, delta, float(confidence), T_METHOD, n, None, 0.0)
    half = float(_scipy_stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * se
    return Interval(delta, delta - half, delta + half, float(confidence), T_METHOD, n, None, se)


# --------------------------------------------------------------------------- per-query metrics


def metric_from_per_query(per_query: Mapping[str, Any], metric: str) -> float:
    """A protocol metric (fraction in [0, 1]) from per-query scores, aggregated as the protocol does.

    ``per_query``: the arrays of ``evaluate(..., per_query=True)["per_query"]`` (``ap``, ``inp``,
    ``first_match_rank`` -- 1-based, 0 for invalid queries -- and ``valid``). ``metric``: "R<k>"
    (e.g. "R1", "R5", "R10": fraction of valid queries whose first match is at rank <= k), "mAP"
    (mean AP) or "mINP" (mean INP), each over the valid queries only. Raises ValueError for an
    unknown metric, malformed arrays or no valid query.
    """
    arrays = _per_query_arrays(per_query, "per_query")
    values, valid = _metric_values(arrays, _check_metric(metric))
    count = int(valid.sum())
    if count == 0:
        raise ValueError("no query is valid (none has a gallery match left after junk removal), "
                         f"so {metric} is undefined")
    return float(values[valid].sum() / count)


# --------------------------------------------------------------------------- bootstrap


def paired_bootstrap(per_query_a: Mapping[str, Any], per_query_b: Mapping[str, Any], query_pids: Any,
                     metrics: Sequence[str] = ("R1", "mAP", "mINP"), resamples: int = DEFAULT_RESAMPLES,
                     seed: int = 0, confidence: float = 0.95) -> dict[str, Interval]:
    """Paired cluster bootstrap of ``metric(B) - metric(A)`` over query identities.

    ``per_query_a``/``per_query_b``: per-query scores of runs A and B on the same query set in the
    same order (mappings with ``ap``, ``inp``, ``first_match_rank``, ``valid``); ``query_pids``:
    the identity of each of those queries. Returns ``{metric: Interval}`` for each of ``metrics``
    (see ``metric_from_per_query`` for the names), with ``delta`` the difference on the full query
    set and ``low``/``high`` the percentile interval (numpy's default linear interpolation) of the
    ``resamples`` resampled differences; ``se`` is their standard deviation. Fractions in [0, 1].

    Resampling (Efron & Tibshirani 1993; clusters as in Davison & Hinkley 1997, sec. 3.8): the
    clusters are the identities that own at least one valid query, in ascending order of pid
    (identities whose queries are all invalid carry no score and are left out); ``n`` is their
    number. Each resample draws ``n`` of them with replacement --
    ``numpy.random.default_rng(seed).integers(0, n, size=n)`` once per resample, in order -- and
    takes every query of each drawn identity, as many times as it was drawn, for both runs; each
    metric is then the protocol's mean over the valid queries of the resample. Computed from
    per-identity sums and counts and a resamples x identities matrix of draw counts (a matrix
    product), not by materialising the resampled queries.

    ``resamples`` defaults to 1,000, the usual minimum for a 95% percentile interval; fewer are
    accepted when passed explicitly (>= 1). Raises ValueError when the runs' arrays differ in
    length, disagree with ``query_pids``, mark different queries valid, or have no valid query.
    """
    _check_confidence(confidence)
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"resamples must be an integer >= 1, got {resamples!r}")
    resamples = int(resamples)
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    if not metrics:
        raise ValueError("metrics is empty: name at least one of R<k>, mAP, mINP")
    parsed = [_check_metric(m) for m in metrics]
    run_a = _per_query_arrays(per_query_a, "per_query_a")
    run_b = _per_query_arrays(per_query_b, "per_query_b")
    pids = np.asarray(query_pids)
    if pids.ndim != 1:
        raise ValueError(f"query_pids must be 1-D (one identity per query), got shape {pids.shape}")
    n_a, n_b = run_a["valid"].size, run_b["valid"].size
    if n_a != n_b:
        raise ValueError(f"the runs have different numbers of queries: per_query_a has {n_a}, "
                         f"per_query_b has {n_b}; a paired bootstrap needs the same queries in the same order")
    if pids.size != n_a:
        raise ValueError(f"query_pids has {pids.size} entries but the runs have {n_a} queries; "
                         "it must give the identity of each query, in the runs' order")
    valid = run_a["valid"]
    if not np.array_equal(valid, run_b["valid"]):
        differ = np.flatnonzero(valid != run_b["valid"])
        raise ValueError(f"the runs mark different queries valid ({differ.size} differ, first at query "
                         f"{int(differ[0])}): they were not scored on the same queries and gallery")
    if not valid.any():
        raise ValueError("no query is valid in either run (none has a gallery match left after junk "
                         "removal), so no metric is defined")

    # clusters: identities with at least one valid query, ascending pid
    cluster_pids, cluster = np.unique(pids[valid], return_inverse=True)
    n = int(cluster_pids.size)
    # per identity: the sum of each metric's per-query values (A, B) and the number of valid queries
    columns = [np.bincount(cluster, weights=np.ones(cluster.size), minlength=n)]
    for key in parsed:
        for run in (run_a, run_b):
            values, _ = _metric_values(run, key)
            columns.append(np.bincount(cluster, weights=values[valid], minlength=n))
    sums = np.stack(columns, axis=1)  # n x (1 + 2 * metrics)

    full = _differences(sums.sum(0)[None, :])[0]
    boot = np.empty((resamples, len(parsed)))
    for start, weights in resample_counts(n, resamples, seed):
        boot[start:start + len(weights)] = _differences(weights @ sums)

    tail = (1.0 - confidence) / 2.0
    out = {}
    for j, name in enumerate(metrics):
        low, high = np.quantile(boot[:, j], [tail, 1.0 - tail])
        se = float(boot[:, j].std(ddof=1)) if resamples > 1 else 0.0
        out[name] = Interval(float(full[j]), float(low), float(high), float(confidence), BOOTSTRAP_METHOD,
                             n, resamples, se)
    return out


def _differences(totals: np.ndarray) -> np.ndarray:
    """Per row of [count, sum A, sum B, sum A, sum B, ...]: metric(B) - metric(A) per metric."""
    count = totals[:, :1]
    return totals[:, 2::2] / count - totals[:, 1::2] / count


# --------------------------------------------------------------------------- validation


def _check_metric(metric: str) -> str | int:
    """"mAP"/"mINP" as is, "R<k>" as the int k."""
    if metric in ("mAP", "mINP"):
        return metric
    match = _RANK_METRIC.match(metric) if isinstance(metric, str) else None
    if match is None:
        raise ValueError(f"unknown metric {metric!r}: use R<k> (e.g. R1, R5, R10), mAP or mINP")
    return int(match.group(1))


def _metric_values(arrays: dict[str, np.ndarray], key: str | int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query float64 values of a metric (0 where the query is invalid) and the valid mask."""
    valid = arrays["valid"]
    if key == "mAP":
        raw = arrays["ap"].astype(np.float64)
    elif key == "mINP":
        raw = arrays["inp"].astype(np.float64)
    else:
        raw = (arrays["first_match_rank"] <= key).astype(np.float64)
    return np.where(valid, raw, 0.0), valid


def _per_query_arrays(per_query: Mapping[str, Any], name: str) -> dict[str, np.ndarray]:
    if not isinstance(per_query, Mapping):
        raise ValueError(f"{name} must be a mapping with {', '.join(PER_QUERY_KEYS)}, got {type(per_query).__name__}")
    missing = [k for k in PER_QUERY_KEYS if k not in per_query]
    if missing:
        raise ValueError(f"{name} lacks {', '.join(missing)} (needs {', '.join(PER_QUERY_KEYS)})")
    arrays = {k: np.asarray(per_query[k]) for k in PER_QUERY_KEYS}
    sizes = {k: (a.shape, a.size) for k, a in arrays.items()}
    if any(a.ndim != 1 for a in arrays.values()) or len({s for _, s in sizes.values()}) != 1:
        shapes = ", ".join(f"{k} {shape}" for k, (shape, _) in sizes.items())
        raise ValueError(f"{name}'s arrays must be 1-D and of one length (one entry per query), got {shapes}")
    if arrays["valid"].dtype != bool:
        raise ValueError(f"{name}['valid'] must be a boolean array, got {arrays['valid'].dtype}")
    valid = arrays["valid"]
    for key in ("ap", "inp"):
        bad = valid & ~np.isfinite(arrays[key].astype(np.float64))
        if bad.any():
            raise ValueError(f"{name}['{key}'] is not finite at valid query {int(np.flatnonzero(bad)[0])}")
    ranks = arrays["first_match_rank"]
    if not np.issubdtype(ranks.dtype, np.integer) and ranks.size:
        raise ValueError(f"{name}['first_match_rank'] must be integers (1-based ranks), got {ranks.dtype}")
    if (ranks[valid] < 1).any():
        raise ValueError(f"{name}['first_match_rank'] must be >= 1 (1-based) for valid queries; "
                         f"query {int(np.flatnonzero(valid & (ranks < 1))[0])} has "
                         f"{int(ranks[np.flatnonzero(valid & (ranks < 1))[0]])}")
    return arrays


def _finite_1d(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per seed), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} has a non-finite value at index {int(np.flatnonzero(~np.isfinite(arr))[0])}")
    return arr


def _check_confidence(confidence: float) -> None:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float, np.floating)) \
            or not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be a number strictly between 0 and 1, got {confidence!r}")
