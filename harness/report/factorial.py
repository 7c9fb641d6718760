"""Effects and Shapley tables of a factorial or fractional ablation (``ablate --mode factorial|fractional``).

Store → ``load_design`` (the design read back from the ablation record and its runs) →
``analyse`` (two tidy frames, values in percentage points) → ``effects_cells``/``shapley_cells``
(text) → ``render_design`` (Markdown, LaTeX, HTML, CSV). Definitions in ``harness/stats/factorial``
and docs/factorial.md:

- **effect** = mean response with the term's column at +1 − mean at −1 = 2 × the OLS coefficient
  of the ±1-coded column (for a trick: with − without, averaged over the other tricks; for A × B:
  half of A's effect with B − A's effect without B). Reported for every main effect and every
  two-factor alias chain (a fraction estimates the signed sum of a chain's terms; "=" joins them).
- **Shapley value** of a trick (full factorials): its marginal contribution averaged over all k!
  orders of adding the tricks to the base; the values sum to the gain base → all tricks. Beside
  it: its Δ in the ``--add`` order (the cumulative table's row) and the smallest and largest
  contribution over all orders.
- **Intervals** (95 %): with 2+ seeds a t interval from the seed replicates (OLS, seeds as blocks,
  pure error); with one seed, for effects, a t interval from the residual of the main-effect +
  two-factor model when it has degrees of freedom; otherwise a bootstrap over query identities in
  which every run of the design is resampled with the same draw (per-query results from the store,
  as ``report/significance`` uses them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from reidbench.harness.report.naming import group_label, metric_label
from reidbench.harness.report.tables import MISSING, AblationContext, describe_weights_source, load_ablation
from reidbench.harness.train.convergence import footer

if TYPE_CHECKING:
    import pandas as pd

    from reidbench.harness.stats.factorial import Design, DesignFit

DESIGN_MODES = ("factorial", "fractional")
DESIGN_TABLES = ("effects", "shapley")
INTERVAL_METHODS = ("auto", "seeds", "bootstrap", "none")
JOINT_BOOTSTRAP = "bootstrap over query identities (every run resampled with the same draw)"
EFFECT_COLUMNS = ["term", "factors", "kind", "aliases", "group", "test_set", "metric", "effect", "ci_low", "ci_high",
                  "significant", "method", "df"]
SHAPLEY_COLUMNS = ["trick", "position", "group", "test_set", "metric", "shapley", "ci_low", "ci_high", "significant",
                   "method", "df", "cumulative", "alone", "last", "marginal_min", "marginal_max"]
TOTAL_ROW = "total (all − base)"
DAGGER = "†"


@dataclass(frozen=True)
class DesignAblation:
    """A recorded design ablation: its caption facts, design, tidy results and each row's point."""

    context: AblationContext
    design: "Design"
    labels: tuple[str, ...]  # the tricks' row labels ("+REA"), --add order
    frame: "pd.DataFrame" = field(repr=False)  # report/tables.load_ablation's tidy frame
    point_of: dict[str, int] = field(default_factory=dict)  # row label → design point (bitmask)
    meta: dict[str, Any] = field(default_factory=dict)  # the record's "design" metadata


def load_design(store: Any, ref: int | str = "latest") -> DesignAblation:
    """The design ablation ``ref`` (id, name or "latest"); a one-line ValueError for any other ablation."""
    from reidbench.harness.stats.factorial import design_from_points

    record = store.get_ablation(ref)
    meta = (record.meta or {}).get("design")
    if record.mode not in DESIGN_MODES or not meta:
        raise ValueError(f"ablation {record.name} (id {record.id}) is a {record.mode} ablation, not a factorial "
                         f"design: effects and Shapley values need `reidbench ablate --mode factorial|fractional` "
                         f"(or --table runs)")
    frame, context = load_ablation(store, record.id)
    factors = tuple(str(f) for f in meta["factors"])
    point_of = {str(label): sum(1 << factors.index(str(n)) for n in names) for label, names in meta["points"].items()}
    design = design_from_points(factors, list(point_of.values()))
    return DesignAblation(context, design, tuple(meta.get("labels") or factors), frame, point_of, dict(meta))


# --------------------------------------------------------------------------- analysis


class _Observations:
    """One (test set, metric)'s results: a row per done run of the default evaluation (values in points)."""

    def __init__(self, data: DesignAblation, test_set: str, metric: str) -> None:
        f = data.frame
        rows = f[(f["variant"] == "") & (f["test_set"] == test_set) & (f["metric"] == metric) & f["value"].notna()]
        rows = rows.drop_duplicates(["step", "seed"])
        rows = rows[rows["step"].isin(list(data.point_of))]
        self.points = [data.point_of[s] for s in rows["step"]]
        self.seeds = list(rows["seed"])
        self.values = [100.0 * float(v) for v in rows["value"]]
        self.hashes = list(rows["run_hash"])


def _chain_text(design: "Design", chain: Sequence[tuple[int, int]], max_order: int) -> str:
    from reidbench.harness.stats.factorial import popcount

    shown = [("−" if s < 0 else "") + design.term_name(m) for m, s in chain if popcount(m) <= max_order]
    more = sum(1 for m, _ in chain if popcount(m) > max_order)
    return " = ".join(shown) + (f" (+{more} of order > {max_order})" if more else "")


def reported_chains(design: "Design") -> list[tuple[tuple[int, int], ...]]:
    """The alias chains whose lowest term is a main effect or a two-factor interaction, in table order."""
    from reidbench.harness.stats.factorial import popcount

    return [c for c in design.chains() if popcount(c[0][0]) <= 2]


def term_label(design: "Design", chain: Sequence[tuple[int, int]]) -> str:
    """"stride", "stride × bnneck", or a fraction's chain of two-factor terms "warmup × rea = ls × bnneck"."""
    from reidbench.harness.stats.factorial import popcount

    order = popcount(chain[0][0])
    return " = ".join(("−" if s < 0 else "") + design.term_name(m) for m, s in chain if popcount(m) == order)


class _Analysis:
    """Estimates and intervals of one (test set, metric): lazily fitted models and bootstrap draws."""

    def __init__(self, design: "Design", obs: _Observations, method: str, confidence: float,
                 bootstrap: Callable[[], "np.ndarray | str"]) -> None:
        from reidbench.harness.stats.factorial import fit_design

        self.design, self.obs, self.method, self.confidence = design, obs, method, confidence
        self.fit = fit_design(design, obs.points, obs.seeds, obs.values)
        self.saturated = self.fit if len(self.fit.terms) == len(design.chains()) \
            else fit_design(design, obs.points, obs.seeds, obs.values, saturated=True)
        self._bootstrap = bootstrap
        self._samples: np.ndarray | str | None = None

    def samples(self) -> "np.ndarray | str":
        if self._samples is None:
            self._samples = self._bootstrap()
        return self._samples

    def interval(self, fit: "DesignFit", vec: np.ndarray) -> tuple[float, float, float, str, float]:
        """(estimate, low, high, method, df) of ``vec · coefficients``; NaN bounds and the reason when none."""
        from reidbench.harness.stats.factorial import SEEDS_METHOD, bootstrap_interval

        value = float(vec @ fit.result.params)
        if self.method == "none":
            return value, math.nan, math.nan, "no interval: --interval none", math.nan
        if self.method == "seeds" and fit.method != SEEDS_METHOD:
            return value, math.nan, math.nan, "no interval: 1 seed: a t interval over seeds needs 2", math.nan
        if self.method != "bootstrap" and fit.method:
            e = fit.estimate(vec, self.confidence)
            return value, e.low, e.high, fit.method, float(e.df or math.nan)
        samples = self.samples()
        if isinstance(samples, str):
            return value, math.nan, math.nan, f"no interval: {samples}", math.nan
        low, high = bootstrap_interval(samples @ (vec @ fit.linear_map), self.confidence)
        return value, low, high, JOINT_BOOTSTRAP, math.nan


def analyse(store: Any, data: DesignAblation, metrics: Sequence[str], *, method: str = "auto",
            resamples: int = 1000, seed: int = 0, confidence: float = 0.95,
            log: Callable[[str], None] | None = None) -> tuple["pd.DataFrame", "pd.DataFrame"]:
    """(effects, Shapley) frames for every test set and metric (``EFFECT_COLUMNS``, ``SHAPLEY_COLUMNS``).

    ``method``: auto (seeds when 2+, else the residual when it has degrees of freedom, else the
    bootstrap), seeds (t over seed replicates only), bootstrap (always; ``resamples`` draws of
    query identities, ``seed``) or none (estimates only). The Shapley frame is empty for a fraction (it needs every subset).
    Rows whose estimate cannot be computed (a design point without result) keep NaN values and
    the reason in ``method``.
    """
    import pandas as pd

    from reidbench.harness.report.significance import _bootstrap_metric, _PerQuery
    from reidbench.harness.stats.factorial import identity_bootstrap, marginal_contributions, shapley_weights

    if method not in INTERVAL_METHODS:
        raise ValueError(f"interval method {method!r} is not valid for a design; valid: {', '.join(INTERVAL_METHODS)}")
    design, ctx = data.design, data.context
    chains = reported_chains(design)
    effects: list[tuple[Any, ...]] = []
    shapley: list[tuple[Any, ...]] = []
    per_query: list[_PerQuery] = []
    tests = [t for t in ctx.tests if t in set(data.frame["test_set"])] or list(ctx.tests)
    for test_set in tests:
        group = group_label(ctx.train, test_set)
        for metric in metrics:
            obs = _Observations(data, test_set, metric)
            missing = [p for p in design.points if p not in set(obs.points)]
            if missing or not obs.points:
                why = f"no estimate: {len(missing)} of {len(design.points)} design points have no result"
                for chain in chains:
                    effects.append(_effect_row(design, chain, group, test_set, metric,
                                               (math.nan, math.nan, math.nan, why, math.nan)))
                if design.is_full:
                    for i in range(design.k):
                        shapley.append((design.factors[i], i + 1, group, test_set, metric, math.nan, math.nan,
                                        math.nan, False, why, math.nan, *([math.nan] * 5)))
                continue

            def draw(obs: _Observations = obs, test_set: str = test_set, metric: str = metric) -> "np.ndarray | str":
                if not per_query:
                    hashes = list(dict.fromkeys(data.frame["run_hash"]))
                    per_query.append(_PerQuery(store, hashes, ctx.test_fingerprints, log))
                variant, base_metric = _bootstrap_metric(metric)
                arrays = [per_query[0].get(h, variant, test_set) for h in obs.hashes]
                if any(a is None for a in arrays):
                    return "per-query results lacking (saved features gone)"
                if any(not np.array_equal(a["q_pids"], arrays[0]["q_pids"]) for a in arrays):
                    return "the runs were not scored on the same queries"
                return 100.0 * identity_bootstrap(arrays, arrays[0]["q_pids"], base_metric, resamples=resamples,
                                                  seed=seed)

            analysis = _Analysis(design, obs, method, confidence, draw)
            for chain in chains:
                vec = analysis.fit.effect_vector(chain[0][0])
                effects.append(_effect_row(design, chain, group, test_set, metric, analysis.interval(analysis.fit, vec)))
            if not design.is_full:
                continue
            sat = analysis.saturated
            everything = (1 << design.k) - 1

            def contrast(weights: dict[int, float]) -> float:
                return float(sat.coefficient_vector(weights) @ sat.result.params)

            means = {p: contrast({p: 1.0, 0: -1.0}) if p else 0.0 for p in design.points}  # v(S) − v(∅)
            for i in range(design.k):
                value, low, high, how, df = analysis.interval(sat, sat.coefficient_vector(shapley_weights(design.k, i)))
                before = (1 << i) - 1  # the tricks before i in --add order
                marginal = marginal_contributions(means, design.k, i).values()
                shapley.append((design.factors[i], i + 1, group, test_set, metric, value, low, high,
                                _significant(low, high), how, df, means[before | 1 << i] - means[before],
                                means[1 << i], means[everything] - means[everything ^ 1 << i],
                                min(marginal), max(marginal)))
            value, low, high, how, df = analysis.interval(sat, sat.coefficient_vector({everything: 1.0, 0: -1.0}))
            shapley.append((TOTAL_ROW, design.k + 1, group, test_set, metric, value, low, high,
                            _significant(low, high), how, df, value, math.nan, math.nan, math.nan, math.nan))
    return pd.DataFrame(effects, columns=EFFECT_COLUMNS), pd.DataFrame(shapley, columns=SHAPLEY_COLUMNS)


def _significant(low: float, high: float) -> bool:
    return bool(low > 0 or high < 0)


def _effect_row(design: "Design", chain: Sequence[tuple[int, int]], group: str, test_set: str, metric: str,
                result: tuple[float, float, float, str, float]) -> tuple[Any, ...]:
    from reidbench.harness.stats.factorial import popcount

    rep = chain[0][0]
    value, low, high, how, df = result
    aliases = _chain_text(design, chain, max_order=3) if len(chain) > 1 else ""
    return (term_label(design, chain), ",".join(design.factors[i] for i in range(design.k) if rep >> i & 1),
            "main" if popcount(rep) == 1 else "interaction", aliases, group, test_set, metric, value, low, high,
            _significant(low, high), how, df)


# --------------------------------------------------------------------------- display


def signed(value: float) -> str:
    """``+2.3`` / ``-0.4``, one decimal; never ``-0.0``."""
    return f"{round(value, 1) + 0.0:+.1f}"


def _cell(value: float, low: float, high: float, significant: bool) -> str:
    if value != value:  # NaN
        return MISSING
    if low != low:
        return signed(value)
    return f"{signed(value)} [{signed(low)}, {signed(high)}]" + (DAGGER if significant else "")


def effects_cells(effects: "pd.DataFrame") -> "pd.DataFrame":
    """Text table: rows = terms (main effects, then two-factor chains), columns = (test-set group,
    metric): "+2.3 [+1.1, +3.5]†" (effect [95 % interval], † when it excludes 0)."""
    import pandas as pd

    terms = list(dict.fromkeys(effects["term"]))
    cols = list(dict.fromkeys(zip(effects["group"], effects["metric"])))
    text = pd.DataFrame(MISSING, index=pd.Index(terms, name="term"),
                        columns=pd.MultiIndex.from_tuples([(g, metric_label(m)) for g, m in cols],
                                                          names=["group", "column"]))
    for r in effects.itertuples():
        text.loc[r.term, (r.group, metric_label(r.metric))] = _cell(r.effect, r.ci_low, r.ci_high, r.significant)
    return text


def shapley_cells(shapley: "pd.DataFrame") -> "pd.DataFrame":
    """Text table: rows = tricks (--add order) then the total; per (group, metric): the Shapley value
    [95 % interval], the cumulative table's Δ (--add order) and the range of the trick's contribution
    over all orders (smallest … largest)."""
    import pandas as pd

    rows = list(dict.fromkeys(shapley["trick"]))
    pairs = list(dict.fromkeys(zip(shapley["group"], shapley["metric"])))
    columns = [(g, f"{metric_label(m)} {what}") for g, m in pairs for what in ("Shapley", "cumulative Δ", "range")]
    text = pd.DataFrame("", index=pd.Index(rows, name="trick"),
                        columns=pd.MultiIndex.from_tuples(columns, names=["group", "column"]))
    for r in shapley.itertuples():
        label = metric_label(r.metric)
        text.loc[r.trick, (r.group, f"{label} Shapley")] = _cell(r.shapley, r.ci_low, r.ci_high, r.significant)
        text.loc[r.trick, (r.group, f"{label} cumulative Δ")] = MISSING if r.cumulative != r.cumulative \
            else signed(r.cumulative)
        text.loc[r.trick, (r.group, f"{label} range")] = "" if r.trick == TOTAL_ROW else (
            MISSING if r.marginal_min != r.marginal_min else f"{signed(r.marginal_min)} … {signed(r.marginal_max)}")
    return text


# --------------------------------------------------------------------------- captions


def design_sentence(data: DesignAblation) -> str:
    """What was run: the design, its resolution and aliasing, the seeds."""
    design, ctx = data.design, data.context
    # no "--" in captions: LaTeX would typeset it as a dash
    text = f"Design: {design.describe()} over the tricks {', '.join(design.factors)}, applied in that order"
    if not design.is_full:
        text += (f"; generators {', '.join(design.generator_text())}, defining relation {design.relation_text()} "
                 "(letters A, B, … = the tricks in that order): an estimate is the signed sum of the effects of its "
                 "alias chain, and two-factor interactions joined by '=' cannot be told apart")
    seeds = ctx.seeds
    if len(seeds) > 1:
        text += f"; {len(seeds)} seeds ({', '.join(map(str, seeds))}) replicate every point"
    elif seeds:
        text += f"; 1 seed ({seeds[0]})"
    return text


def runs_sentence(ctx: AblationContext) -> str:
    """Where the numbers come from (data, profile, epochs, weights), as the ablation captions say it."""
    parts = [f"ablation {ctx.name} (id {ctx.id}), base {ctx.base}, trained on {ctx.train}, tested on "
             f"{', '.join(ctx.tests)}"]
    parts.append({"synthetic": "synthetic data", "real": "real data", "mixed": "synthetic and real data"}.get(
        ctx.data_kind, "data kind unknown (no run finished)"))
    if ctx.profile:
        parts.append(f"profile {ctx.profile}")
    if ctx.epochs is not None:
        shortened = f" (shortened from {ctx.full_epochs})" if ctx.full_epochs and ctx.full_epochs > ctx.epochs else ""
        parts.append(f"{ctx.epochs} epochs{shortened}")
    weights = {"pretrained": "ImageNet-pretrained", "scratch": "trained from scratch"}.get(ctx.weights, "")
    if weights and ctx.weights_sources:
        weights += f" ({', '.join(describe_weights_source(s) for s in ctx.weights_sources)})"
    if weights:
        parts.append(f"{ctx.backbone} {weights}" if ctx.backbone else weights)
    not_done = sum(v for k, v in ctx.statuses.items() if k != "done")
    if not_done:
        parts.append(f"{not_done} of {sum(ctx.statuses.values())} runs not done")
    if ctx.convergence is not None:  # every table's footer says how many of its runs converged
        parts.append(footer(ctx.convergence))
    return "; ".join(parts)


def interval_methods(frame: "pd.DataFrame", resamples: int) -> str:
    """The interval methods a frame's rows used, with their degrees of freedom or resamples ("" if none)."""
    used = []
    for how, df in dict.fromkeys(zip(frame["method"], frame["df"])):
        if str(how).startswith("no "):
            continue
        used.append(f"{how}, {resamples:,} resamples" if how == JOINT_BOOTSTRAP else f"{how}, {df:g} df")
    return "; ".join(dict.fromkeys(used))


def interval_sentence(frame: "pd.DataFrame", resamples: int, confidence: float = 0.95) -> str:
    """Which intervals the table shows (method and degrees of freedom), and what † means."""
    if frame.empty:
        return ""
    if (frame["method"] == "no interval: --interval none").all():
        return "No intervals (--interval none)."
    lacking = int(frame["method"].astype(str).str.startswith("no ").sum())
    text = (f"{round(100 * confidence)}% intervals: {interval_methods(frame, resamples) or 'none could be computed'}; "
            f"{DAGGER} the interval excludes 0.")
    if lacking:
        reasons = "; ".join(dict.fromkeys(str(m).split(": ", 1)[-1] for m in frame["method"]
                                          if str(m).startswith("no ")))
        text += f" {lacking} estimate(s) without an interval ({reasons})."
    return text


EFFECT_DEFINITION = ("Effect = mean with the trick − mean without, over the design points (= 2 × the OLS coefficient "
                     "of its ±1-coded column); A × B = half of (A's effect with B − A's effect without B).")


def effects_caption(data: DesignAblation, metrics: Sequence[str], effects: "pd.DataFrame", resamples: int) -> str:
    shown = ", ".join(metric_label(m) for m in metrics)
    return (f"Effects (percentage points) of each trick and each two-trick interaction on {shown}. "
            f"{design_sentence(data)}. {EFFECT_DEFINITION} Runs: {runs_sentence(data.context)}. "
            f"{interval_sentence(effects, resamples)}")


def shapley_caption(data: DesignAblation, metrics: Sequence[str], shapley: "pd.DataFrame", resamples: int) -> str:
    shown = ", ".join(metric_label(m) for m in metrics)
    k = data.design.k
    return (f"Shapley value (percentage points of {shown}) of each trick: its contribution averaged over all {k}! = "
            f"{math.factorial(k)} orders of adding the tricks to the base, exact from the {1 << k} points; the values "
            f"sum to the total gain (last row). cumulative Δ: its contribution when added in the order given "
            f"({', '.join(data.design.factors)}), the cumulative table's row; range: its smallest and largest "
            f"contribution over all orders. {design_sentence(data)}. Runs: {runs_sentence(data.context)}. "
            f"{interval_sentence(shapley, resamples)}")


def no_shapley_note(data: DesignAblation) -> str:
    return (f"No Shapley values: ablation {data.context.name} is a {data.design.describe()}, and a trick's Shapley "
            f"value needs every subset of the tricks (--mode factorial, {1 << data.design.k} points).")


# --------------------------------------------------------------------------- rendering


def _csv(frame: "pd.DataFrame") -> str:
    out = frame.copy()
    if "significant" in out.columns:  # 1/0, empty where there is no interval
        has = out["ci_low"].notna()
        out["significant"] = out["significant"].astype(int).where(has).astype("Int64")
    return out.to_csv(index=False, float_format="%.4f")


def render_design(store: Any, ref: int | str, fmt: str, *, tables: Sequence[str] = DESIGN_TABLES,
                  metrics: Sequence[str] = ("R1", "mAP"), method: str = "auto", resamples: int = 1000,
                  label: str = "tab:factorial", log: Callable[[str], None] | None = None) -> str:
    """The effects and/or Shapley tables of design ablation ``ref`` in ``fmt`` (markdown, latex, html, csv).

    CSV holds one table, tidy (one row per term or trick, test set and metric; columns
    ``EFFECT_COLUMNS`` / ``SHAPLEY_COLUMNS``): the first of ``tables``. For a fraction, asking for
    the Shapley table alone is a ValueError; with both, a note replaces it.
    """
    from reidbench.harness.report.writers import render_cells

    data = load_design(store, ref)
    tables = [t for t in tables if t in DESIGN_TABLES] or list(DESIGN_TABLES)
    if list(tables) == ["shapley"] and not data.design.is_full:
        raise ValueError(no_shapley_note(data))
    effects, shapley = analyse(store, data, metrics, method=method, resamples=resamples, log=log)
    if fmt == "csv":
        return _csv(effects if tables[0] == "effects" else shapley)
    parts = []
    title = f"reidbench ablation {data.context.name}"
    for table in tables:
        if table == "effects":
            parts.append(render_cells(effects_cells(effects), fmt,
                                      caption=effects_caption(data, metrics, effects, resamples),
                                      label=f"{label}-effects", title=f"{title} effects"))
        elif data.design.is_full:
            parts.append(render_cells(shapley_cells(shapley), fmt,
                                      caption=shapley_caption(data, metrics, shapley, resamples),
                                      label=f"{label}-shapley", title=f"{title} Shapley values"))
        else:
            note = no_shapley_note(data)
            parts.append(f"% {note}\n" if fmt == "latex" else (f"<p>{note}</p>\n" if fmt == "html" else f"{note}\n"))
    return "\n".join(parts)
