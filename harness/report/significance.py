"""Paired intervals for the comparisons an ablation table makes: is each step's effect larger than the noise?

Every table row (a step) is compared with its *reference*: the step before (``cumulative``), the
base (``single``, and the first row of a step list), all tricks (``leave-one-out``: a negative
difference means the removed trick helps). For each test set and metric the difference
``step − reference`` gets a 95 % interval (``harness/stats``):

- ``seeds``: the t interval of the per-seed differences, paired by seed (needs ≥ 2 common seeds);
- ``bootstrap``: a paired bootstrap over query identities of the two models' per-query results
  (≥ 1,000 resamples, seeded), which needs one seed; with several seeds the queries of every
  common seed are pooled, an identity's queries drawn together across seeds;
- ``auto`` (default): seeds when there are ≥ 2 common seeds, else the bootstrap.

Per-query results come from the store; evaluations recorded without them are filled in from
their saved features first (``evaluation/fill``). Values are percentage points, like the table.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from reidbench.harness.report.naming import RERANK_PREFIX
from reidbench.harness.stats import BOOTSTRAP_METHOD, DEFAULT_RESAMPLES, T_METHOD, paired_bootstrap, paired_t_interval

if TYPE_CHECKING:
    import pandas as pd

METHODS = ("auto", "seeds", "bootstrap")
COLUMNS = ["step", "reference", "group", "test_set", "metric", "delta", "ci_low", "ci_high", "significant",
           "method", "n"]
REFERENCE_WORDS = {"cumulative": "the step before", "single": "the base", "leave-one-out": "all tricks",
                   "steps": "the first row", "study": "the best point",
                   "factorial": "the base", "fractional": "the base"}  # design rows (report --table runs)


def references(mode: str, steps: Sequence[str], against: str | None = None) -> dict[str, str]:
    """{step: the step it is compared with} in table order; the first row has no reference.

    ``against`` (a row's label, or its 1-based number) compares every other row with that row
    instead, whatever the mode: e.g. every SPReID feature set with "global only + warmup".
    """
    if not steps:
        return {}
    if against is not None:
        ref = reference_row(steps, against)
        return {s: ref for s in steps if s != ref}
    if mode == "cumulative":
        return {s: steps[i - 1] for i, s in enumerate(steps) if i > 0}
    return {s: steps[0] for s in steps[1:]}


def ablation_steps(frame: "pd.DataFrame") -> list[str]:
    """The row labels of an ablation frame (``report/tables.load_ablation``) in table order."""
    return list(dict.fromkeys(frame.sort_values("row")["step"][frame["variant"] == ""]))


def has_evaluation_rows(comparisons: "pd.DataFrame") -> bool:
    """Whether any compared row is a "step [evaluation]" row against its own models' default row."""
    return any(str(step).startswith(f"{ref} [") for step, ref in zip(comparisons["step"], comparisons["reference"]))


def reference_row(steps: Sequence[str], against: str) -> str:
    """The row ``against`` names: its exact label, else its 1-based number; a one-line error otherwise."""
    if against in steps:
        return against
    text = str(against).strip()
    if text.isdigit() and 1 <= int(text) <= len(steps):
        return steps[int(text) - 1]
    shown = "; ".join(f"{i}: {s}" for i, s in enumerate(steps, start=1))
    raise ValueError(f"--against {against!r} is not a row of this ablation; valid: a row's label or number ({shown})")


def reference_words(mode: str, against: str | None = None) -> str:
    """What each row's difference is taken from, for captions: "the base", "the row 'global only'"."""
    return f"the row '{against}'" if against is not None else REFERENCE_WORDS.get(mode, "the reference row")


def _bootstrap_metric(metric: str) -> tuple[str, str]:
    """(evaluation variant, metric of that evaluation): ``rerank_mAP`` is the re-ranked evaluation's mAP."""
    if metric.startswith(RERANK_PREFIX):
        return "rerank", metric[len(RERANK_PREFIX):]
    return "", metric


class _PerQuery:
    """Per-query arrays of (run, variant, test set), read (and filled in) once per report."""

    def __init__(self, store: Any, hashes: Sequence[str], fingerprints: dict[str, str],
                 log: Callable[[str], None] | None) -> None:
        from reidbench.harness.evaluation.fill import fill_missing

        self.store = store
        wanted = [e for e in store.evaluations(list(hashes))
                  if not (fingerprints.get(e.test_set) and e.test_fingerprint
                          and e.test_fingerprint != fingerprints[e.test_set])]
        self.lacking = fill_missing(store, wanted, log=log)
        self.keys = {(e.run_hash, e.variant, e.test_set): e.key for e in wanted}
        self._cache: dict[tuple[str, str, str], dict[str, np.ndarray] | None] = {}

    def get(self, run_hash: str, variant: str, test_set: str) -> dict[str, np.ndarray] | None:
        k = (run_hash, variant, test_set)
        if k not in self._cache:
            key = self.keys.get(k)
            self._cache[k] = None if key is None or (run_hash, key) in self.lacking else \
                self.store.query_scores(run_hash, key)
        return self._cache[k]


def _pooled(arrays: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}


def ablation_intervals(store: Any, frame: "pd.DataFrame", mode: str, metrics: Sequence[str], *,
                       method: str = "auto", resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                       confidence: float = 0.95, fingerprints: dict[str, str] | None = None,
                       log: Callable[[str], None] | None = None, against: str | None = None) -> "pd.DataFrame":
    """One row per (step, test set, metric) with a reference: the difference and its interval (points).

    ``against``: compare every row with this one (``references``) instead of the mode's reference.

    Rows whose interval cannot be computed (a run not done, per-query results lacking, one seed
    with ``method="seeds"``) keep NaN bounds, ``significant`` False and the reason in ``method``.
    """
    scored = frame[frame["metric"].notna()]
    default = scored[scored["variant"] == ""]
    steps = ablation_steps(frame)
    runs, values, groups = _index(scored.itertuples(), row="step", scale=1.0)
    comparisons = [(step, ref, test_set, metric) for step, ref in references(mode, steps, against).items()
                   for test_set in groups for metric in metrics]
    # A variant row ("step [SGGNN]": the same models scored another way) against the same models'
    # default evaluation, whatever the mode: does the re-scorer / other feature help these models?
    row_variants: dict[str, str] = {}
    plain_of = {r.run_hash: r.step for r in default.itertuples()}
    for r in scored[scored["variant"] != ""].itertuples():
        row_variants[r.step] = r.variant
        ref = plain_of.get(r.run_hash)
        comparison = (r.step, ref, r.test_set, r.metric)
        if ref is not None and r.metric in metrics and comparison not in comparisons:
            comparisons.append(comparison)
    return compare(store, runs, values, groups, comparisons, method=method, resamples=resamples, seed=seed,
                   confidence=confidence, fingerprints=fingerprints, log=log, row_variants=row_variants)


def study_intervals(store: Any, points: "pd.DataFrame", by: str, metrics: Sequence[str], *,
                    method: str = "auto", resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                    confidence: float = 0.95, log: Callable[[str], None] | None = None) -> "pd.DataFrame":
    """Every study point (a P×K or an image size) against the best point of each test set and metric.

    ``points``: ``report/points.points_from_runs`` (values in percent). The best point (highest mean)
    is its own reference and gets no row.
    """
    runs, values, groups = _index(points.itertuples(), row=by, scale=0.01)
    comparisons = []
    for test_set in groups:
        for metric in metrics:
            use = points[(points["test_set"] == test_set) & (points["metric"] == metric)]
            if use.empty:
                continue
            means = use.groupby(by, sort=False)["value"].mean()
            best = str(means.idxmax())
            comparisons.extend((str(row), best, test_set, metric) for row in means.index if str(row) != best)
    return compare(store, runs, values, groups, comparisons, method=method, resamples=resamples, seed=seed,
                   confidence=confidence, log=log)


def _index(rows: Any, row: str, scale: float) -> tuple[dict, dict, dict]:
    """(row, test set) → {seed: run}, (row, test set, metric, seed) → value (fraction), test set → group."""
    runs: dict[tuple[str, str], dict[Any, str]] = {}
    values: dict[tuple[str, str, str, Any], float] = {}
    groups: dict[str, str] = {}
    for r in rows:
        label = str(getattr(r, row))
        runs.setdefault((label, r.test_set), {})[r.seed] = r.run_hash
        values[(label, r.test_set, r.metric, r.seed)] = scale * float(r.value)
        groups[r.test_set] = r.group
    return runs, values, groups


def compare(store: Any, runs: dict, values: dict, groups: dict, comparisons: Sequence[tuple[str, str, str, str]], *,
            method: str = "auto", resamples: int = DEFAULT_RESAMPLES, seed: int = 0, confidence: float = 0.95,
            fingerprints: dict[str, str] | None = None, log: Callable[[str], None] | None = None,
            row_variants: dict[str, str] | None = None) -> "pd.DataFrame":
    """The interval of each (row, reference, test set, metric) comparison; values are fractions, output points.

    ``row_variants``: the evaluation variant a row's values come from (default: the default
    evaluation), which the bootstrap reads the per-query results of."""
    row_variants = row_variants or {}
    import pandas as pd

    if method not in METHODS:
        raise ValueError(f"interval method {method!r} is not valid; valid: {', '.join(METHODS)}")
    per_query: _PerQuery | None = None
    rows = []
    for step, ref, test_set, metric in comparisons:
        group = groups[test_set]
        a_runs, b_runs = runs.get((ref, test_set), {}), runs.get((step, test_set), {})
        common = sorted((s for s in set(a_runs) & set(b_runs)
                         if (ref, test_set, metric, s) in values and (step, test_set, metric, s) in values), key=str)
        chosen = method if method != "auto" else ("seeds" if len(common) >= 2 else "bootstrap")
        interval, why = None, ""
        if chosen == "seeds":
            if len(common) >= 2:
                interval = paired_t_interval([values[(ref, test_set, metric, s)] for s in common],
                                             [values[(step, test_set, metric, s)] for s in common],
                                             confidence=confidence)
            else:
                why = f"{len(common)} common seed(s): a t interval needs 2"
        else:
            if per_query is None:
                hashes = [h for d in runs.values() for h in d.values()]
                per_query = _PerQuery(store, list(dict.fromkeys(hashes)), fingerprints or {}, log)
            variant, base_metric = _bootstrap_metric(metric)
            ref_variant, step_variant = (variant or row_variants.get(ref, ""), variant or row_variants.get(step, ""))
            pairs = [(per_query.get(a_runs[s], ref_variant, test_set), per_query.get(b_runs[s], step_variant, test_set))
                     for s in common]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if not common:
                why = "no common finished seed"
            elif len(pairs) < len(common):
                why = "per-query results lacking (saved features gone)"
            else:
                a = _pooled([p[0] for p in pairs])
                b = _pooled([p[1] for p in pairs])
                interval = paired_bootstrap(a, b, a["q_pids"], metrics=(base_metric,), resamples=resamples,
                                            seed=seed, confidence=confidence)[base_metric]
        if interval is None:
            delta = (np.mean([values[(step, test_set, metric, s)] - values[(ref, test_set, metric, s)]
                              for s in common]) if common else math.nan)
            rows.append((step, ref, group, test_set, metric, 100 * delta, math.nan, math.nan, False,
                         f"no interval: {why}", len(common)))
        else:
            rows.append((step, ref, group, test_set, metric, 100 * interval.delta, 100 * interval.low,
                         100 * interval.high, bool(interval.significant), interval.method, interval.n))
    return pd.DataFrame(rows, columns=COLUMNS)


def interval_note(intervals: "pd.DataFrame", mode: str, confidence: float = 0.95,
                  resamples: int = DEFAULT_RESAMPLES, against: str | None = None) -> str:
    """The caption sentence saying what † means and which interval the table shows."""
    if intervals.empty:
        return ""
    used = [m for m in dict.fromkeys(intervals["method"]) if m in (T_METHOD, BOOTSTRAP_METHOD)]
    how = " and ".join(f"{m}{f', {resamples:,} resamples' if m == BOOTSTRAP_METHOD else ''}" for m in used)
    lacking = int((~intervals["method"].isin([T_METHOD, BOOTSTRAP_METHOD])).sum())
    text = (f"† the difference from {reference_words(mode, against)} has a "
            f"{round(100 * confidence)}% interval that excludes 0 ({how or 'no interval could be computed'}).")
    if has_evaluation_rows(intervals):
        text += " A row \"step [evaluation]\" is compared with the same models' default evaluation."
    if lacking:
        text += f" {lacking} comparison(s) without an interval (see the CSV's method column)."
    return text
