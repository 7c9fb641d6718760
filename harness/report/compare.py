"""What changed between two stored runs on one test set, query by query.

``reidbench plot compare --runs A B`` reads both runs' per-query results of one evaluation
(``Store.query_scores``; filled in from saved features first when an older evaluation lacks
them, ``evaluation/fill``) and shows:

- a scatter of each valid query's AP under run B (y) against run A (x), with the diagonal: points
  above it improved, below it regressed; the title gives both mAPs, the counts and the paired
  bootstrap interval of ΔmAP over query identities (``harness/stats.paired_bootstrap``);
- the queries that improved and regressed most as ranked lists (query + top-k gallery images of
  each run, green = same identity, red = another), ranked from the runs' saved features as
  ``plot ranks`` does (``report/ranks``).

Both runs must have scored the same query list (same identities in the same order, same valid
queries) of the same test data; anything else is refused in one line. AP is a fraction in [0, 1]
here and shown in percent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from reidbench.harness.report.figures import DEFAULT_DPI, new_figure, save_figure, set_title

UNCHANGED_TOLERANCE = 1e-6  # |ΔAP| at or below this counts as unchanged (AP is stored as float32)
IMPROVED_COLOR, REGRESSED_COLOR, UNCHANGED_COLOR = "tab:green", "tab:red", "0.6"


@dataclass(frozen=True)
class Side:
    """One run's evaluation of the compared test set and its per-query arrays."""

    run: Any  # RunRecord
    evaluation: Any  # EvaluationRecord
    per_query: dict[str, np.ndarray]

    @property
    def name(self) -> str:
        return f"{self.run.short_hash}" + (f" ({self.run.label})" if self.run.label else "")


@dataclass(frozen=True)
class Pair:
    a: Side
    b: Side
    test_set: str
    variant: str


@dataclass(frozen=True)
class QueryComparison:
    """Per-query AP of both runs over the valid queries, and what changed."""

    indices: np.ndarray  # query indices (into the test set's query list) of the valid queries
    ap_a: np.ndarray  # fractions, aligned with ``indices``
    ap_b: np.ndarray
    improved: int
    regressed: int
    unchanged: int
    most_improved: tuple[int, ...]  # query indices, largest ΔAP first
    most_regressed: tuple[int, ...]  # query indices, most negative ΔAP first
    map_a: float
    map_b: float
    interval: Any  # harness.stats.Interval of ΔmAP (B − A), fractions

    @property
    def delta(self) -> np.ndarray:
        return self.ap_b - self.ap_a

    def ap_of(self, index: int) -> tuple[float, float]:
        at = int(np.flatnonzero(self.indices == index)[0])
        return float(self.ap_a[at]), float(self.ap_b[at])


def _evaluation(store: Any, run: Any, test_set: str, variant: str) -> Any | None:
    found = [e for e in store.evaluations([run.run_hash], variant=variant)
             if e.test_set == test_set and e.status == "done"]
    return found[-1] if found else None  # the latest scoring, as `plot ranks` uses


def _test_sets(store: Any, run: Any, variant: str) -> list[str]:
    """The run's evaluated test sets (done, this variant), in its spec's order, then as recorded."""
    recorded = list(dict.fromkeys(e.test_set for e in store.evaluations([run.run_hash], variant=variant)
                                  if e.status == "done"))
    listed = [t for t in ((run.spec.get("data") or {}).get("test") or []) if t in recorded]
    return list(dict.fromkeys([*listed, *recorded]))


def _variant_text(variant: str) -> str:
    return f"variant {variant!r}" if variant else "the default evaluation"


def load_pair(store: Any, ref_a: str, ref_b: str, *, test_set: str | None = None, variant: str = "",
              log: Callable[[str], None] | None = None) -> Pair:
    """Both runs (hash prefixes are enough), their evaluations of one test set and per-query results.

    ``test_set`` None: the first test set (in run A's order) both runs were evaluated on.
    Per-query results missing are filled in from saved features (``fill_missing``) first.
    """
    from reidbench.harness.evaluation.fill import fill_missing

    run_a, run_b = store.get_run(ref_a), store.get_run(ref_b)
    if run_a.run_hash == run_b.run_hash:
        raise ValueError(f"--runs names run {run_a.short_hash} twice; compare two different runs")
    tests_a, tests_b = _test_sets(store, run_a, variant), _test_sets(store, run_b, variant)
    if test_set is None:
        common = [t for t in tests_a if t in tests_b]
        if not common:
            raise ValueError(f"runs {run_a.short_hash} and {run_b.short_hash} were not evaluated on a common test "
                             f"set ({_variant_text(variant)}): {run_a.short_hash} on {', '.join(tests_a) or 'none'}, "
                             f"{run_b.short_hash} on {', '.join(tests_b) or 'none'}")
        test_set = common[0]
    for run, tests in ((run_a, tests_a), (run_b, tests_b)):
        if test_set not in tests:
            raise ValueError(f"run {run.short_hash} was not evaluated on {test_set!r} ({_variant_text(variant)}); "
                             f"it was on: {', '.join(tests) or 'none'}")
    ev_a, ev_b = _evaluation(store, run_a, test_set, variant), _evaluation(store, run_b, test_set, variant)
    if ev_a.test_fingerprint and ev_b.test_fingerprint and ev_a.test_fingerprint != ev_b.test_fingerprint:
        raise ValueError(f"runs {run_a.short_hash} and {run_b.short_hash} were evaluated on different data under the "
                         f"name {test_set!r} (test fingerprints {ev_a.test_fingerprint[:12]} and "
                         f"{ev_b.test_fingerprint[:12]}); their queries cannot be paired")
    lacking = fill_missing(store, [ev_a, ev_b], log=log)
    sides = []
    for run, ev in ((run_a, ev_a), (run_b, ev_b)):
        why = lacking.get((run.run_hash, ev.key))
        arrays = None if why else store.query_scores(run.run_hash, ev.key)
        if arrays is None:
            raise ValueError(f"run {run.short_hash} has no per-query results for {test_set} "
                             f"({_variant_text(variant)}): {why or 'not stored'}")
        sides.append(Side(run, ev, arrays))
    a, b = sides
    check_same_queries(a, b, test_set)
    return Pair(a, b, test_set, variant)


def check_same_queries(a: Side, b: Side, test_set: str) -> None:
    """Same query identities in the same order and the same valid queries, or a one-line ValueError."""
    pa, pb = a.per_query, b.per_query
    where = f"runs {a.run.short_hash} and {b.run.short_hash} scored different query lists on {test_set}"
    if len(pa["q_pids"]) != len(pb["q_pids"]):
        raise ValueError(f"{where} ({len(pa['q_pids'])} and {len(pb['q_pids'])} queries); "
                         "were they evaluated on different versions of the data?")
    differ = np.flatnonzero(pa["q_pids"] != pb["q_pids"])
    if differ.size:
        i = int(differ[0])
        raise ValueError(f"{where} (query {i} is identity {int(pa['q_pids'][i])} in one, {int(pb['q_pids'][i])} "
                         f"in the other; {differ.size} differ)")
    differ = np.flatnonzero(pa["valid"] != pb["valid"])
    if differ.size:
        raise ValueError(f"{where}: they mark different queries valid ({differ.size} differ, first query "
                         f"{int(differ[0])}), so their galleries differ")


def compare_queries(a: dict[str, np.ndarray], b: dict[str, np.ndarray], *, n: int = 4,
                    resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> QueryComparison:
    """Per-query AP of runs A and B (same queries, same order) → counts, extremes and ΔmAP's interval.

    Only valid queries count (the protocol's mean is over them). A query improved when
    AP_B − AP_A > ``UNCHANGED_TOLERANCE``, regressed when < −tolerance, else unchanged.
    ``most_improved``: up to ``n`` improved queries, largest ΔAP first (ties: lower query index
    first); ``most_regressed`` likewise among the regressed, most negative first.
    """
    from reidbench.harness.stats import paired_bootstrap

    valid = np.asarray(a["valid"], dtype=bool)
    if not np.array_equal(valid, np.asarray(b["valid"], dtype=bool)):
        raise ValueError("the runs mark different queries valid; their query lists cannot be paired")
    if not valid.any():
        raise ValueError("no query is valid (none has a gallery match), so there is no AP to compare")
    indices = np.flatnonzero(valid)
    ap_a = np.asarray(a["ap"], dtype=np.float64)[indices]
    ap_b = np.asarray(b["ap"], dtype=np.float64)[indices]
    delta = ap_b - ap_a
    up, down = delta > UNCHANGED_TOLERANCE, delta < -UNCHANGED_TOLERANCE
    order_up = np.lexsort((indices, -delta))  # largest Δ first, then lower index
    order_down = np.lexsort((indices, delta))
    most_improved = tuple(int(indices[i]) for i in order_up if up[i])[:n]
    most_regressed = tuple(int(indices[i]) for i in order_down if down[i])[:n]
    interval = paired_bootstrap(a, b, a["q_pids"], metrics=("mAP",), resamples=resamples, seed=seed,
                                confidence=confidence)["mAP"]
    return QueryComparison(indices, ap_a, ap_b, int(up.sum()), int(down.sum()), int((~up & ~down).sum()),
                           most_improved, most_regressed, float(ap_a.mean()), float(ap_b.mean()), interval)


def summary(pair: Pair, cmp: QueryComparison) -> str:
    """One line: both mAPs, ΔmAP with its interval, and the counts."""
    iv = cmp.interval
    return (f"mAP {100 * cmp.map_a:.1f} (A) → {100 * cmp.map_b:.1f} (B), ΔmAP {100 * iv.delta:+.1f} points, "
            f"{round(100 * iv.confidence)}% interval [{100 * iv.low:+.1f}, {100 * iv.high:+.1f}] "
            f"({iv.method}, {iv.resamples:,} resamples, {iv.n} identities"
            f"{'' if iv.significant else '; includes 0'}); {cmp.improved} queries improved, {cmp.regressed} "
            f"regressed, {cmp.unchanged} unchanged of {len(cmp.indices)} valid")


def plot_compare(pair: Pair, cmp: QueryComparison, out: str | Path, *, title: str = "",
                 figsize: tuple[float, float] | None = None, dpi: int = DEFAULT_DPI) -> Path:
    """The scatter of per-query AP, B against A, coloured by improved/regressed/unchanged."""
    fig = draw_compare(pair, cmp, title=title, figsize=figsize)
    return save_figure(fig, out, dpi)


def draw_compare(pair: Pair, cmp: QueryComparison, *, title: str = "",
                 figsize: tuple[float, float] | None = None) -> Any:
    fig, axes = new_figure(1, 1, figsize, panel_size=(6.0, 5.4))
    ax = axes[0][0]
    x, y, d = 100 * cmp.ap_a, 100 * cmp.ap_b, cmp.delta
    kinds = ((d > UNCHANGED_TOLERANCE, IMPROVED_COLOR, f"improved ({cmp.improved})"),
             (d < -UNCHANGED_TOLERANCE, REGRESSED_COLOR, f"regressed ({cmp.regressed})"),
             ((d >= -UNCHANGED_TOLERANCE) & (d <= UNCHANGED_TOLERANCE), UNCHANGED_COLOR,
              f"unchanged ({cmp.unchanged})"))
    for mask, color, label in kinds:
        ax.scatter(x[mask], y[mask], s=14, color=color, alpha=0.7, linewidths=0, label=label)
    ax.plot([0, 100], [0, 100], color="0.3", linewidth=0.8, linestyle="--", label="B = A")
    for index in (*cmp.most_improved, *cmp.most_regressed):  # the queries the ranked lists show
        ap_a, ap_b = cmp.ap_of(index)
        ax.annotate(f"q{index}", (100 * ap_a, 100 * ap_b), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.set_aspect("equal")
    ax.set_xlabel(f"AP of run A {pair.a.name} (%)")
    ax.set_ylabel(f"AP of run B {pair.b.name} (%)")
    ax.legend(loc="lower right", fontsize=8, title="queries", title_fontsize=8)
    set_title(fig, title or summary(pair, cmp))
    return fig


# --------------------------------------------------------------------------- ranked lists


def features_path(side: Side) -> Path:
    """The features file the evaluation was scored from (recorded path, else where runs keep it)."""
    from reidbench.harness.evaluation.fill import candidate_files

    ev, run = side.evaluation, side.run
    candidates: list[Path] = []
    if ev.features_path and run.out_dir:  # recorded relative to another working folder
        candidates.append(Path(run.out_dir) / Path(ev.features_path).name)
    candidates = [*candidate_files(ev, run), *candidates]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        shown = str(candidates[0]) if candidates else "no run folder recorded"
        raise FileNotFoundError(f"run {run.short_hash}: features of {ev.test_set} not found ({shown}); "
                                "ranked lists need the run's saved features")
    return found


def ranked_queries(side: Side, indices: Sequence[int], top: int) -> tuple[dict[int, Any], dict[str, Any]]:
    """{query index: RankedQuery} of ``indices`` ranked as the evaluation was, and the features' arrays.

    Only those queries are ranked. Raises ValueError when the features do not reproduce the stored
    per-query AP of these queries (another file, or a re-ranked evaluation).
    """
    from reidbench.harness.evaluation.fill import ranking_settings
    from reidbench.harness.report.ranks import load_features, rank_queries

    settings = ranking_settings(side.evaluation, side.run)
    if settings.get("rerank"):
        raise ValueError(f"run {side.run.short_hash}: ranked lists of a re-ranked evaluation are not drawn "
                         "(they would be ranked without re-ranking)")
    if settings.get("rescore"):
        raise ValueError(f"run {side.run.short_hash}: ranked lists of an evaluation re-scored with "
                         f"{settings['rescore']} are not drawn (they would be ranked without it)")
    path = features_path(side)
    arrays = load_features(path)
    if len(arrays["q_pids"]) != len(side.per_query["q_pids"]) or \
            not np.array_equal(np.asarray(arrays["q_pids"]), side.per_query["q_pids"]):
        raise ValueError(f"{path}: its queries are not the ones run {side.run.short_hash} was scored on")
    chosen = np.asarray(list(indices), dtype=np.int64)
    subset = dict(arrays)
    for key in ("q_feats", "q_pids", "q_camids", "q_paths"):
        subset[key] = np.asarray(arrays[key])[chosen]
    ranked = rank_queries(subset, metric=str(settings.get("metric", "sqeuclidean")),
                          normalize=bool(settings.get("normalize", True)), top=top)
    out = {}
    for r in ranked:
        index = int(chosen[r.index])
        stored = float(side.per_query["ap"][index])
        if abs(r.ap - stored) > 1e-4:
            raise ValueError(f"{path}: query {index} ranks to AP {100 * r.ap:.2f}%, not the stored "
                             f"{100 * stored:.2f}% of run {side.run.short_hash}; not the features it was scored on")
        out[index] = r
    gone = [i for i in chosen.tolist() if i not in out]
    if gone:
        raise ValueError(f"{path}: query {gone[0]} has no match in its gallery, yet run {side.run.short_hash} scored "
                         "it as valid; not the features it was scored on")
    return out, arrays


def plot_compare_ranks(pair: Pair, cmp: QueryComparison, out: str | Path, *, top: int = 8,
                       image_root: str | Path | None = None, title: str = "",
                       figsize: tuple[float, float] | None = None, dpi: int = DEFAULT_DPI) -> Path:
    """Two rows per query (run A, then run B): the query (blue frame) and its top-k gallery images
    (green = same identity, red = another); the most improved queries first, then the most regressed."""
    from reidbench.harness.report.ranks import draw_cell, resolve_image

    shown = [("improved", i) for i in cmp.most_improved] + [("regressed", i) for i in cmp.most_regressed]
    if not shown:
        raise ValueError("no query improved or regressed: no ranked list to show")
    indices = [i for _, i in shown]
    per_side = [ranked_queries(side, indices, top) for side in (pair.a, pair.b)]
    rows = []  # (side letter, side, RankedQuery, arrays, heading)
    for kind, index in shown:
        ap_a, ap_b = cmp.ap_of(index)
        for letter, side, (ranked, arrays) in (("A", pair.a, per_side[0]), ("B", pair.b, per_side[1])):
            r = ranked[index]
            head = f"{kind}: q{index}, ΔAP {100 * (ap_b - ap_a):+.1f}\nrun {letter} {side.run.short_hash[:8]}"
            rows.append((side, r, arrays, head))
    files: dict[str, Path] = {}
    for side, r, arrays, _ in rows:
        root = ((side.run.provenance or {}).get(pair.test_set) or {}).get("root")
        for p in (r.path, *(str(arrays["g_paths"][i]) for i in r.gallery)):
            files.setdefault(p, resolve_image(p, root, image_root))
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) not found, e.g. {missing[0]}; "
                                "give the dataset folder with --image-root DIR")
    width = max(len(r.gallery) for _, r, _, _ in rows) + 1
    fig, axes = new_figure(len(rows), width, figsize, panel_size=(1.25, 2.5))
    for row, (side, r, arrays, head) in enumerate(rows):
        cells = [(r.path, "tab:blue", f"{head}\nAP {100 * r.ap:.1f}%  id {r.pid}")]
        cells += [(str(arrays["g_paths"][i]), "tab:green" if m else "tab:red",
                   f"#{k + 1}  id {int(arrays['g_pids'][i])}") for k, (i, m) in enumerate(zip(r.gallery, r.matches))]
        for c in range(width):
            if c >= len(cells):
                draw_cell(axes[row][c], None)
                continue
            path, color, text = cells[c]
            draw_cell(axes[row][c], files[path], color, text, title_color=color if c else "black",
                      fontsize=7 if c == 0 else 8)
    set_title(fig, title or f"Most improved and most regressed queries on {pair.test_set}: run A then run B")
    return save_figure(fig, out, dpi)


def ranks_path(out: str | Path) -> Path:
    """``compare.png`` → ``compare-ranks.png`` (same folder and format)."""
    p = Path(out)
    return p.with_name(f"{p.stem}-ranks{p.suffix}")
