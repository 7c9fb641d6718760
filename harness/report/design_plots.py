"""Figures of a factorial or fractional ablation: main effects with intervals, interaction plots.

Both take what ``report/factorial`` computes (``load_design`` and ``analyse``'s effects frame) and
draw in the style of ``plot ablation`` (``report/plots.draw_ablation``): green up / red down when
the 95 % interval excludes 0, grey and hatched when it includes 0 or there is none.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reidbench.harness.report.figures import DEFAULT_DPI, new_figure, save_figure, set_title
from reidbench.harness.report.naming import metric_label

if TYPE_CHECKING:
    import pandas as pd

    from reidbench.harness.report.factorial import DesignAblation

LEVEL_COLORS = ("tab:blue", "tab:orange")  # second trick off, on
HATCH = "///"


def _methods(frame: "pd.DataFrame", resamples: int, confidence: float = 0.95) -> str:
    from reidbench.harness.report.factorial import interval_methods

    how = interval_methods(frame, resamples)
    return f"{round(100 * confidence)}% interval ({how})" if how else "no interval could be computed"


def figure_title(data: "DesignAblation", what: str) -> str:
    """"<what> — ablation NAME: design, resolution, seeds; data, profile, epochs"."""
    ctx, design = data.context, data.design
    seeds = f"{len(ctx.seeds)} seed(s)" if ctx.seeds else "seeds unknown"
    data_kind = {"synthetic": "synthetic", "real": "real"}.get(ctx.data_kind, ctx.data_kind)
    epochs = f", {ctx.epochs} epochs" if ctx.epochs else ""
    return (f"{what} — ablation {ctx.name}: {design.describe()}, {seeds}; trained on {ctx.train} ({data_kind}), "
            f"profile {ctx.profile}{epochs}")


def plot_effects(data: "DesignAblation", effects: "pd.DataFrame", out: str | Path, *, metric: str = "mAP",
                 resamples: int = 1000, figsize: tuple[float, float] | None = None, dpi: int = DEFAULT_DPI) -> Path:
    """One panel per test set: a bar per trick = its main effect on ``metric`` (points), error bar = its
    95 % interval; coloured when the interval excludes 0, grey and hatched otherwise."""
    from reidbench.harness.report.plots import draw_ablation

    mains = effects[(effects["kind"] == "main") & (effects["metric"] == metric)]
    if mains.empty:
        raise ValueError(f"no {metric} effects in ablation {data.context.name}")
    if mains["effect"].isna().all():
        raise ValueError(f"no effect can be computed yet: {mains['method'].iloc[0].removeprefix('no estimate: ')} "
                         "(`reidbench report --table runs` shows which runs are not done)")
    deltas = mains.rename(columns={"term": "step", "effect": "delta"})
    note = (f"Error bars: each effect's {_methods(mains, resamples)}. Effect = mean with the trick − mean without (= 2 × the OLS "
            "coefficient of its ±1-coded column). Hatched grey: the interval includes 0 (not significant) or there "
            "is none.")
    groups = mains["group"].nunique()
    size = figsize or (max(7.0, (0.75 * len(mains) / groups + 1.5) * groups), 4.8)  # room for the legend row
    fig = draw_ablation(deltas, mode="factorial", metric=metric, note=note, figsize=size,
                        title=figure_title(data, f"Main effects on {metric_label(metric)}"))
    for ax in fig.axes:
        ax.set_ylabel(f"effect on {metric_label(metric)} (points)")
    return save_figure(fig, out, dpi)


def interaction_means(data: "DesignAblation", test_set: str, metric: str, i: int, j: int) -> dict[tuple[int, int], float]:
    """Mean of ``metric`` (percent) over the design points at each (trick i on?, trick j on?), each point
    first averaged over its seeds: the four corners of the A × B interaction plot."""
    from reidbench.harness.report.factorial import _Observations

    obs = _Observations(data, test_set, metric)
    per_point: dict[int, list[float]] = {}
    for point, value in zip(obs.points, obs.values):
        per_point.setdefault(point, []).append(value)
    corners: dict[tuple[int, int], list[float]] = {}
    for point, values in per_point.items():
        corners.setdefault((point >> i & 1, point >> j & 1), []).append(sum(values) / len(values))
    return {key: sum(v) / len(v) for key, v in corners.items()}


def plot_interactions(data: "DesignAblation", effects: "pd.DataFrame", out: str | Path, *, metric: str = "mAP",
                      top: int = 4, resamples: int = 1000, figsize: tuple[float, float] | None = None,
                      dpi: int = DEFAULT_DPI) -> tuple[Path, int]:
    """Rows = test sets, columns = the ``top`` two-trick interactions with the largest |effect| there.

    Each panel: x = the first trick off / on, one line per level of the second, y = the mean over
    the design points at those levels (``interaction_means``); the title gives the interaction
    effect and its interval; hatched grey background when the interval includes 0 or there is none.
    Returns (path, number of panels drawn).
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    pairs = effects[(effects["kind"] == "interaction") & (effects["metric"] == metric)]
    if pairs.empty:
        raise ValueError(f"ablation {data.context.name} has no two-trick interaction to draw")
    if pairs["effect"].isna().all():
        raise ValueError(f"no interaction can be computed yet: {pairs['method'].iloc[0].removeprefix('no estimate: ')}")
    groups = list(dict.fromkeys(pairs["group"]))
    ncols = min(top, int(pairs.groupby("group").size().max()))
    fig, axes = new_figure(len(groups), ncols, figsize, panel_size=(3.3, 3.1))
    factors = list(data.design.factors)
    drawn = 0
    for r, group in enumerate(groups):
        sub = pairs[pairs["group"] == group].copy()
        sub["strength"] = sub["effect"].abs().fillna(-1.0)
        chosen = sub.sort_values("strength", ascending=False, kind="stable").head(ncols)
        for c in range(ncols):
            ax = axes[r][c]
            if c >= len(chosen):
                ax.set_visible(False)
                continue
            row = chosen.iloc[c]
            a, b = (factors.index(n) for n in str(row["factors"]).split(","))
            corners = interaction_means(data, str(row["test_set"]), metric, a, b)
            for level, color, style in ((0, LEVEL_COLORS[0], "--"), (1, LEVEL_COLORS[1], "-")):
                ys = [corners.get((x, level), math.nan) for x in (0, 1)]
                ax.plot([0, 1], ys, linestyle=style, marker="o", color=color)
                for x, y in zip((0, 1), ys):
                    if y == y:
                        ax.annotate(f"{y:.1f}", (x, y), xytext=(6 if x == 0 else -6, 0), textcoords="offset points",
                                    ha="left" if x == 0 else "right", va="center", fontsize=7, color=color)
            ax.set_xticks([0, 1], [f"without\n{factors[a]}", f"with\n{factors[a]}"])
            ax.set_xlim(-0.3, 1.3)
            ax.margins(y=0.2)
            ax.set_ylabel(f"{metric_label(metric)} (%) on {group}" if c == 0 else "")
            low, high = float(row["ci_low"]), float(row["ci_high"])
            interval = "" if math.isnan(low) else f" [{low:+.1f}, {high:+.1f}]"
            ax.set_title(f"{textwrap.fill(str(row['term']), 34)}\n"
                         f"effect {float(row['effect']):+.1f}{interval}", fontsize=9)
            if not bool(row["significant"]):
                ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, hatch=HATCH,
                                       edgecolor="0.85", linewidth=0, zorder=0))
            ax.legend(handles=[Line2D([], [], color=LEVEL_COLORS[0], linestyle="--", marker="o",
                                      label=f"without {factors[b]}"),
                               Line2D([], [], color=LEVEL_COLORS[1], linestyle="-", marker="o",
                                      label=f"with {factors[b]}")], fontsize=7, loc="best")
            drawn += 1
    note = (f"Each point: mean {metric_label(metric)} over the design points at that level of both tricks "
            f"(seeds averaged); parallel lines = no interaction. Title: the A × B effect = half of (A's effect "
            f"with B − without B) and its {_methods(pairs, resamples)}. Hatched panel: the interval includes 0 or there "
            f"is none.")
    width = max(50, int(fig.get_figwidth() * 13))
    fig.legend(handles=[Patch(facecolor="white", edgecolor="0.6", hatch=HATCH, label="interval includes 0")],
               loc="outside lower center", fontsize=8, title_fontsize=8, title=textwrap.fill(note, width),
               frameon=False)
    set_title(fig, figure_title(data, f"Strongest two-trick interactions on {metric_label(metric)}"))
    return save_figure(fig, out, dpi), drawn


def effect_bar_rows(effects: "pd.DataFrame", metric: str) -> Any:
    """The bars ``plot_effects`` draws (``plots.ablation_bars`` of the main effects): for tests."""
    from reidbench.harness.report.plots import ablation_bars

    mains = effects[(effects["kind"] == "main") & (effects["metric"] == metric)]
    return ablation_bars(mains.rename(columns={"term": "step", "effect": "delta"}))
