"""Figures: batch-size and image-size sweeps, training curves, Δ per trick of an ablation.

Each ``plot_*`` takes plain frames/records (no store) and an output path, and returns the path;
the ``*_frame``/``ablation_deltas`` helpers turn store contents into those frames. The ablation
figure's error bars are the paired intervals of ``report/significance`` (``ablation_intervals``),
or the std over seeds (``ablation_deltas``) when no interval is wanted.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from reidbench.harness.report.figures import DEFAULT_DPI, new_figure, save_figure, set_title
from reidbench.harness.report.naming import metric_label

if TYPE_CHECKING:
    import pandas as pd

METRIC_COLORS = {"R1": "tab:blue", "mAP": "tab:orange", "mINP": "tab:green"}


def _agg(points: "pd.DataFrame", keys: list[str], confidence: float = 0.95) -> "pd.DataFrame":
    """Mean, sample std (0 for one seed), count and the half-width ``ci`` of the t interval of the mean
    over seeds (mean ± t·s/√n; 0 for one seed) of ``value`` per ``keys``."""
    from scipy import stats as scipy_stats

    out = points.groupby(keys, sort=False)["value"].agg(["mean", "std", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    n = out["count"].clip(lower=1)
    t = [scipy_stats.t.ppf(0.5 + confidence / 2, k - 1) if k > 1 else 0.0 for k in n]
    out["ci"] = [tt * s / math.sqrt(k) for tt, s, k in zip(t, out["std"], n)]
    return out


def _within_best(intervals: "pd.DataFrame | None", group: str, metric: str) -> set[str] | None:
    """Points (row labels) whose difference from the best point has an interval including 0 — and the best.

    None without intervals (nothing is marked)."""
    if intervals is None or intervals.empty:
        return None
    sub = intervals[(intervals["group"] == group) & (intervals["metric"] == metric)]
    if sub.empty:
        return None
    return set(sub.loc[~sub["significant"].astype(bool), "step"]) | set(sub["reference"])


SWEEP_NOTE = ("error bars: 95% t interval of the mean over seeds; hollow markers: within the noise of the best "
              "point (paired interval of the difference includes 0)")


def _panels(points: "pd.DataFrame", metrics: Sequence[str]) -> tuple[list[str], list[str]]:
    groups = list(dict.fromkeys(points["group"]))
    present = [m for m in metrics if m in set(points["metric"])]
    if not groups or not present:
        raise ValueError(f"no {'/'.join(metrics)} results among the selected runs")
    return groups, present


def plot_batch_size(points: "pd.DataFrame", out: str | Path, *, metrics: Sequence[str] = ("R1", "mAP"),
                    title: str = "", figsize: tuple[float, float] | None = None, dpi: int = DEFAULT_DPI,
                    intervals: "pd.DataFrame | None" = None) -> Path:
    """R1/mAP against K (images per identity), one line per P (identities per batch); rows = metrics,
    columns = test sets; error bars = 95 % t interval of the mean over seeds. With ``intervals``
    (``significance.study_intervals``, rows "P×K"), points within the noise of the best are hollow."""
    import matplotlib.pyplot as plt

    groups, present = _panels(points, metrics)
    stats = _agg(points, ["group", "metric", "ids_per_batch", "imgs_per_id"])
    ps = sorted(set(stats["ids_per_batch"]))
    ks = sorted(set(stats["imgs_per_id"]))
    colors = plt.get_cmap("viridis")([i / max(1, len(ps) - 1) * 0.85 for i in range(len(ps))])
    fig, axes = new_figure(len(present), len(groups), figsize)
    for r, metric in enumerate(present):
        for c, group in enumerate(groups):
            ax = axes[r][c]
            for p, color in zip(ps, colors):
                sub = stats[(stats["group"] == group) & (stats["metric"] == metric) & (stats["ids_per_batch"] == p)]
                sub = sub.sort_values("imgs_per_id")
                if sub.empty:
                    continue
                ax.errorbar(sub["imgs_per_id"], sub["mean"], yerr=sub["ci"], marker="o", capsize=3,
                            color=color, label=f"P = {p}")
                near = _within_best(intervals, group, metric)
                if near is not None:  # hollow = within the noise of the best point
                    hollow = sub[[f"{p}×{k}" in near for k in sub["imgs_per_id"]]]
                    ax.plot(hollow["imgs_per_id"], hollow["mean"], linestyle="none", marker="o", markersize=7,
                            markerfacecolor="white", markeredgecolor=color, zorder=3)
            ax.set_xticks(ks)
            ax.set_xlabel("K (images per identity)")
            ax.set_ylabel(f"{metric_label(metric)} (%)")
            ax.set_title(f"{metric_label(metric)} on {group}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:  # one legend for every panel, outside them: lines are never hidden
        fig.legend(handles, labels, loc="outside right center", title="identities\nper batch")
    set_title(fig, (title or "Batch size P×K") + "\n" + SWEEP_NOTE if intervals is not None else
              (title or "Batch size P×K") + "\nerror bars: 95% t interval of the mean over seeds")
    return save_figure(fig, out, dpi)


def plot_image_size(points: "pd.DataFrame", out: str | Path, *, metrics: Sequence[str] = ("R1", "mAP"),
                    title: str = "", figsize: tuple[float, float] | None = None, dpi: int = DEFAULT_DPI,
                    intervals: "pd.DataFrame | None" = None) -> Path:
    """R1/mAP against input image size (ordered by pixel count), one panel per test set;
    error bars = 95 % t interval of the mean over seeds. With ``intervals`` (rows "H×W"), bars
    within the noise of the best size are hatched."""
    groups, present = _panels(points, metrics)
    stats = _agg(points, ["group", "metric", "image_h", "image_w", "image_size"])
    sizes = (stats[["image_h", "image_w", "image_size"]].drop_duplicates()
             .assign(area=lambda d: d["image_h"] * d["image_w"]).sort_values(["area", "image_h"]))
    order = list(sizes["image_size"])
    x_of = {s: i for i, s in enumerate(order)}
    fig, axes = new_figure(1, len(groups), figsize)
    width = 0.8 / len(present)
    for c, group in enumerate(groups):
        ax = axes[0][c]
        for i, metric in enumerate(present):
            sub = stats[(stats["group"] == group) & (stats["metric"] == metric)]
            xs = [x_of[s] - 0.4 + width * (i + 0.5) for s in sub["image_size"]]
            near = _within_best(intervals, group, metric)
            bars = ax.bar(xs, sub["mean"], width=width * 0.95, yerr=sub["ci"], capsize=3,
                          color=METRIC_COLORS.get(metric, f"C{i}"), label=metric_label(metric))
            if near is not None:
                for bar, size in zip(bars, sub["image_size"]):
                    if size in near:
                        bar.set_hatch("//")
            for x, v in zip(xs, sub["mean"]):
                ax.annotate(f"{v:.1f}", (x, v), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                            textcoords="offset points")
        ax.set_xticks(range(len(order)), order)
        ax.set_xlabel("image size H×W (pixels)")
        ax.set_ylabel("%")
        ax.set_title(f"Test on {group}")
        if c == 0:
            ax.legend()
    note = ("error bars: 95% t interval of the mean over seeds; hatched: within the noise of the best size "
            "(paired interval of the difference includes 0)") if intervals is not None else \
        "error bars: 95% t interval of the mean over seeds"
    set_title(fig, (title or "Input image size") + "\n" + note)
    return save_figure(fig, out, dpi)


# --------------------------------------------------------------------------- training curves


def curves_frame(epochs: Sequence[Any]) -> "pd.DataFrame":
    """Store epoch records → one row per epoch, one column per recorded value ("loss/id", "lr", ...)."""
    import pandas as pd

    rows = [{"epoch": e.epoch, **{k: v for k, v in e.values.items() if isinstance(v, (int, float))}} for e in epochs]
    return pd.DataFrame(rows).sort_values("epoch").reset_index(drop=True) if rows else pd.DataFrame()


def plot_curves(curves: "pd.DataFrame", out: str | Path, *, final: dict[str, float] | None = None,
                title: str = "", figsize: tuple[float, float] | None = None, dpi: int = DEFAULT_DPI) -> Path:
    """Three panels per epoch: every loss term, the learning rate (log scale), and the periodic
    evaluation ("<test>/mAP", "<test>/R1", percent) with the final metrics marked at the last epoch."""
    if curves.empty or "epoch" not in curves:
        raise ValueError("the run has no per-epoch history in the store (was it recorded by an older version?)")
    fig, axes = new_figure(1, 3, figsize, panel_size=(4.4, 3.4))
    ax_loss, ax_lr, ax_eval = axes[0]
    losses = [c for c in curves.columns if c.startswith("loss/")]
    for name in losses:
        ax_loss.plot(curves["epoch"], curves[name], marker=".", label=name.split("/", 1)[1])
    ax_loss.set(title="Training losses", xlabel="epoch", ylabel="loss (batch mean)")
    if losses:
        ax_loss.legend()
    if "lr" in curves:
        ax_lr.plot(curves["epoch"], curves["lr"], marker=".", drawstyle="steps-mid", color="tab:purple")
        ax_lr.set_yscale("log")
    ax_lr.set(title="Learning rate", xlabel="epoch", ylabel="learning rate")
    evals = [c for c in curves.columns if "/" in c and not c.startswith("loss/")]
    last = float(curves["epoch"].max())
    final = dict(final or {})
    for i, name in enumerate(dict.fromkeys([*evals, *final])):
        color = f"C{i}"  # a periodic curve and the final value of the same metric share a colour
        if name in evals:
            sub = curves[["epoch", name]].dropna()
            ax_eval.plot(sub["epoch"], 100 * sub[name], marker="o", color=color, label=f"{name} (periodic)")
        if name in final:
            ax_eval.plot([last], [100 * final[name]], marker="*", markersize=12, linestyle="none", color=color,
                         label=f"{name} (final)")
    ax_eval.set(title="Evaluation" if evals else "Evaluation (final only: eval.every_epochs = 0)",
                xlabel="epoch", ylabel="%")
    ax_eval.margins(y=0.15)
    ax_eval.set_xlim(float(curves["epoch"].min()) - 0.5, last + 0.5)
    if evals or final:
        ax_eval.legend(fontsize=8)
    from matplotlib.ticker import MaxNLocator

    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    set_title(fig, title or "Training curves")
    return save_figure(fig, out, dpi)


# --------------------------------------------------------------------------- ablation deltas


REFERENCE = {"cumulative": "previous step", "single": "the base",
             "leave-one-out": "all tricks (below 0: the removed trick helps)",
             "steps": "the first step of the step list",
             "factorial": "the base (effects: plot effects)", "fractional": "the base (effects: plot effects)"}


def ablation_deltas(frame: "pd.DataFrame", mode: str, metric: str = "mAP",
                    against: str | None = None) -> "pd.DataFrame":
    """Δ ``metric`` (points) of each step against its reference, per test-set group.

    Reference: the previous row (cumulative), the first row = the base (single), the first row =
    all tricks (leave-one-out: Δ < 0 means the removed trick helps), the first row (a step list);
    the row ``against`` names for every other row when given. Columns: step, reference,
    group, delta, std (of the difference of independent means: √(s_a² + s_b²), 0 for one seed).
    """
    import pandas as pd

    from reidbench.harness.report.significance import references

    if mode not in REFERENCE:
        raise ValueError(f"ablation mode {mode!r} is not known; valid: {', '.join(REFERENCE)}")
    use = frame[frame["metric"] == metric]
    stats = use.groupby(["row", "step", "group"], sort=True)["value"].agg(["mean", "std"]).reset_index()
    stats["std"] = stats["std"].fillna(0.0)
    ordered = frame.sort_values("row")
    has_variants = "variant" in frame.columns and "run_hash" in frame.columns
    default = ordered[ordered["variant"] == ""] if has_variants else ordered
    steps = list(dict.fromkeys(default["step"]))
    groups = list(dict.fromkeys(frame["group"]))
    value = {(r.step, r.group): (100 * r.mean, 100 * r.std) for r in stats.itertuples()}
    pairs = dict(references(mode, steps, against))
    if has_variants:  # a "step [evaluation]" row against the same models' default evaluation
        plain_of = dict(zip(default["run_hash"], default["step"]))
        for r in ordered[ordered["variant"] != ""].itertuples():
            if r.run_hash in plain_of:
                pairs.setdefault(r.step, plain_of[r.run_hash])
    rows = []
    for step, ref in pairs.items():
        for group in groups:
            a, b = value.get((step, group)), value.get((ref, group))
            if a is None or b is None:
                rows.append((step, ref, group, math.nan, math.nan))
            else:
                rows.append((step, ref, group, a[0] - b[0], math.hypot(a[1], b[1])))
    return pd.DataFrame(rows, columns=["step", "reference", "group", "delta", "std"])


UP_COLOR, DOWN_COLOR = "tab:green", "tab:red"
NOT_SIGNIFICANT_COLOR = "0.72"  # grey: the interval includes 0, or there is none
HATCH = "///"


def interval_legend(deltas: "pd.DataFrame", *, resamples: int = 1000, confidence: float = 0.95) -> str:
    """What the error bars of ``plot_ablation`` are, in one sentence (the legend's title)."""
    from reidbench.harness.stats import BOOTSTRAP_METHOD, T_METHOD

    if "ci_low" not in deltas.columns:
        return ("Error bars: ±√(s²_step + s²_reference), s = std over seeds (--interval none: "
                "no significance test)")
    parts = []
    methods = deltas["method"].astype(str)
    if (methods == T_METHOD).any():
        seeds = sorted({int(n) for n in deltas.loc[methods == T_METHOD, "n"]})
        parts.append(f"{T_METHOD} ({'/'.join(map(str, seeds))} seeds)")
    if (methods == BOOTSTRAP_METHOD).any():
        parts.append(f"{BOOTSTRAP_METHOD}, {resamples:,} resamples")
    how = "; ".join(parts) or "none could be computed"
    text = f"Error bars: {round(100 * confidence)}% interval of the difference ({how}). "
    text += "Hatched grey: the interval includes 0 (not significant)"
    lacking = int(methods.str.startswith("no interval").sum())
    if lacking:
        text += f" or there is none ({lacking} bar(s))"
    return text + "."


def ablation_bars(deltas: "pd.DataFrame") -> "pd.DataFrame":
    """What ``plot_ablation`` draws per bar: group, step, x, delta, err_low, err_high (the error bar's
    ends, points; NaN: none), color, hatch ("" or ``HATCH``), label (the annotation).

    ``deltas``: ``ablation_intervals`` rows of one metric (columns ci_low, ci_high, significant,
    method) — bars whose interval excludes 0 in colour (green up, red down), the others grey and
    hatched, error bars = the interval; or ``ablation_deltas`` (column std) — green/red bars with
    ±std error bars.
    """
    import pandas as pd

    with_intervals = "ci_low" in deltas.columns
    if "metric" in deltas.columns and deltas["metric"].nunique() > 1:
        raise ValueError(f"the differences hold several metrics ({', '.join(map(str, deltas['metric'].unique()))}); "
                         "plot one at a time")
    groups = list(dict.fromkeys(deltas["group"]))
    steps = list(dict.fromkeys(deltas["step"]))
    rows = []
    for group in groups:
        sub = deltas[deltas["group"] == group].drop_duplicates("step").set_index("step").reindex(steps)
        for x, step in enumerate(steps):
            d = float(sub.at[step, "delta"])
            if with_intervals:
                low, high = float(sub.at[step, "ci_low"]), float(sub.at[step, "ci_high"])
                has = not (math.isnan(low) or math.isnan(high))
                significant = has and (low > 0 or high < 0)
                color = (UP_COLOR if low > 0 else DOWN_COLOR) if significant else NOT_SIGNIFICANT_COLOR
                hatch = "" if significant else HATCH
                if not has:
                    low = high = math.nan
            else:
                std = sub.at[step, "std"]
                std = 0.0 if pd.isna(std) else float(std)
                low, high = (d - std, d + std) if not math.isnan(d) else (math.nan, math.nan)
                color = NOT_SIGNIFICANT_COLOR if math.isnan(d) else (UP_COLOR if d >= 0 else DOWN_COLOR)
                hatch = ""
            rows.append((group, step, x, d, low, high, color, hatch, "n/a" if math.isnan(d) else f"{d:+.1f}"))
    return pd.DataFrame(rows, columns=["group", "step", "x", "delta", "err_low", "err_high", "color", "hatch",
                                       "label"])


def draw_ablation(deltas: "pd.DataFrame", *, mode: str, metric: str = "mAP", title: str = "", note: str | None = None,
                  resamples: int = 1000, confidence: float = 0.95, figsize: tuple[float, float] | None = None) -> Any:
    """The figure of ``plot_ablation``, not saved (its axes hold the bars of ``ablation_bars`` in order)."""
    from matplotlib.patches import Patch

    groups = list(dict.fromkeys(deltas["group"]))
    if not groups:
        raise ValueError("the ablation has a single row: there is no difference to plot")
    if deltas["delta"].isna().all():
        raise ValueError("no difference can be computed yet: no step and its reference both have results "
                         "(`reidbench report` shows which runs are not done)")
    bars = ablation_bars(deltas)
    steps = list(dict.fromkeys(deltas["step"]))
    fig, axes = new_figure(1, len(groups), figsize, panel_size=(max(4.2, 0.75 * len(steps) + 1.5), 3.6))
    for c, group in enumerate(groups):
        ax = axes[0][c]
        sub = bars[bars["group"] == group]
        ax.bar(sub["x"], sub["delta"].fillna(0.0), color=list(sub["color"]), hatch=None, edgecolor="0.35",
               linewidth=0.6)
        for patch, hatch in zip(ax.patches, sub["hatch"]):
            patch.set_hatch(hatch or None)
        ends = sub.dropna(subset=["err_low", "err_high"])
        if not ends.empty:  # drawn from low to high exactly: an asymmetric interval stays asymmetric
            mid = (ends["err_low"] + ends["err_high"]) / 2
            ax.errorbar(ends["x"], mid, yerr=(ends["err_high"] - ends["err_low"]) / 2, fmt="none", ecolor="0.15",
                        elinewidth=1.1, capsize=3)
        ax.axhline(0, color="0.2", linewidth=0.8)
        for r in sub.itertuples():
            if math.isnan(r.delta):
                ax.annotate("n/a", (r.x, 0), ha="center", va="bottom", fontsize=8, xytext=(0, 3),
                            textcoords="offset points", color="0.4")
                continue
            up = r.delta >= 0  # label beyond the error bar's end, so neither hides the other
            end = (max(r.delta, r.err_high) if up else min(r.delta, r.err_low)) if not math.isnan(r.err_low) \
                else r.delta
            ax.annotate(r.label, (r.x, end), ha="center", va="bottom" if up else "top", fontsize=8,
                        xytext=(0, 3 if up else -3), textcoords="offset points")
        ax.set_xticks(range(len(steps)), steps, rotation=30, ha="right")
        ax.set_ylabel(f"Δ {metric_label(metric)} (points)")
        ax.set_title(f"Test on {group}")
        ax.margins(y=0.15)
    legend_title = note if note is not None else interval_legend(deltas, resamples=resamples, confidence=confidence)
    if "ci_low" in deltas.columns:
        handles = [Patch(facecolor=UP_COLOR, edgecolor="0.35", label="better, interval excludes 0"),
                   Patch(facecolor=DOWN_COLOR, edgecolor="0.35", label="worse, interval excludes 0"),
                   Patch(facecolor=NOT_SIGNIFICANT_COLOR, edgecolor="0.35", hatch=HATCH,
                         label="interval includes 0 / no interval")]
    else:
        handles = [Patch(facecolor=UP_COLOR, label="better"), Patch(facecolor=DOWN_COLOR, label="worse")]
    import textwrap

    width = max(50, int(fig.get_figwidth() * 13))  # characters per line of the 8 pt legend title
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, title_fontsize=8,
               title=textwrap.fill(legend_title, width), frameon=False)
    set_title(fig, title or f"Δ {metric_label(metric)} vs {REFERENCE.get(mode, 'reference')}")
    return fig


def plot_ablation(deltas: "pd.DataFrame", out: str | Path, *, mode: str, metric: str = "mAP", title: str = "",
                  note: str | None = None, resamples: int = 1000, confidence: float = 0.95,
                  figsize: tuple[float, float] | None = None, dpi: int = DEFAULT_DPI) -> Path:
    """One panel per test set: a bar per step = its difference from its reference, labelled with it.

    With intervals (``ablation_intervals`` rows of one metric): error bars = the interval
    (ci_low..ci_high), bars in colour when it excludes 0 (green up, red down), grey and hatched
    when it includes 0 or there is none; the legend says which interval. With ``ablation_deltas``
    (``--interval none``): ±std error bars, green up / red down. ``note`` replaces the legend's title.
    """
    fig = draw_ablation(deltas, mode=mode, metric=metric, title=title, note=note, resamples=resamples,
                        confidence=confidence, figsize=figsize)
    return save_figure(fig, out, dpi)
