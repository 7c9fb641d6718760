"""Do the measured effects agree with the papers'? Directions and ranks of effects, never absolute numbers.

Every comparison a report makes — a row against its reference row (``report/significance``: the
step before, the base, all tricks, a variant's default evaluation), per test column and metric —
whose two rows both have a published number gets the *published* difference beside the measured
one and its 95 % interval:

- **Which paper numbers.** ``report/paper.paper_value`` for each row (BoT Tables 1–3; MGN, Mancs,
  SPReID, AGW, SGGNN as those tables and notes give them), plus the BoT all-tricks mINP of the AGW
  survey's README (``SURVEY_BOT_MINP``: the row its AGW mINP is compared with). A difference of two
  rows of one paper table is an ablation delta; a difference across papers (AGW or MGN against BoT)
  is marked as such in ``source``.
- **Which dataset's Δ.** Runs on Market-1501 / DukeMTMC-reID are compared with the Δ of that
  dataset (or dataset pair, cross-domain). Any other data — the synthetic benchmark included — is
  compared with the **mean of the Market and Duke Δ** (same domain: Table 1's Market and Duke
  columns; cross domain: Table 3's M→D and D→M), both shown; ``datasets_disagree`` flags a mean
  whose two Δ have opposite signs.
- **Verdict.** ``agrees``: the measured interval excludes 0 and the measured Δ has the published
  sign; ``opposite``: it excludes 0 with the other sign; ``within the noise``: it includes 0;
  ``no interval``: none could be computed (the reason is in ``method``). A published Δ of exactly 0
  has no sign: ``paper: no change``.
- **Summary.** The sign agreement over the comparisons whose interval excludes 0, and Spearman's ρ
  (``scipy.stats.spearmanr``) between published and measured Δ over every compared pair, with n.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

from reidbench.harness.report.naming import metric_label, paper_dataset
from reidbench.harness.report.paper import ALL_TRICKS, paper_value

if TYPE_CHECKING:
    import pandas as pd

AGREES, OPPOSITE, NOISE, NO_INTERVAL, NO_CHANGE = "agrees", "opposite", "within the noise", "no interval", \
    "paper: no change"
AGREEMENT_CODE = {AGREES: 1, OPPOSITE: -1, NOISE: 0}  # the CSV's agreement column
# BoT with all six tricks, mINP (%), from the AGW survey's README (mangye16/ReID-Survey, seed-systems.md §6):
# the BagTricks row beside AGW's. BoT's own paper reports no mINP.
SURVEY_BOT_MINP: dict[str, float] = {"market": 59.4, "duke": 40.7}
SYSTEM_NAMES = {"bot": "BoT", "agw": "AGW", "mgn": "MGN", "mancs": "Mancs", "spreid": "SPReID", "sggnn": "SGGNN"}
COLUMNS = ["step", "reference", "group", "test_set", "metric", "published", "per_dataset", "datasets_disagree",
           "source", "delta", "ci_low", "ci_high", "significant", "method", "verdict"]
CAPTION = ("Agreement with the papers: for each comparison of this table whose two rows have published numbers, "
           "the published difference (paper Δ, points) beside the measured one with its 95% interval. Runs on "
           "Market-1501/DukeMTMC-reID are compared with that dataset's Δ; any other data (synthetic included) with "
           "the mean of the Market and Duke Δ (both shown; same domain: BoT Table 1, cross domain: Table 3). "
           "Only the direction and the rank of effects are compared, never absolute numbers across datasets. "
           "agrees: the interval excludes 0 with the published sign; opposite: it excludes 0 with the other sign; "
           "within the noise: it includes 0.")


def _number(src: str, dst: str, tricks: Sequence[str], metric: str, ranking: str | None, system: str | None
            ) -> float | None:
    value = paper_value(src, dst, tricks, metric, synthetic=False, ranking=ranking, system=system)
    if value is None and metric == "mINP" and system == "bot" and src == dst and ranking is None \
            and frozenset(tricks) == ALL_TRICKS:
        value = SURVEY_BOT_MINP.get(src)
    return value


def _pairs(train: str, test: str, synthetic: bool) -> list[tuple[str, str]]:
    """The paper's (train, test) dataset pairs a column is compared with (see the module doc)."""
    src, dst = paper_dataset(train), paper_dataset(test)
    if not synthetic and src is not None and dst is not None:
        return [(src, dst)]
    if train == test:
        return [("market", "market"), ("duke", "duke")]
    return [("market", "duke"), ("duke", "market")]


def _pair_label(pair: tuple[str, str]) -> str:
    short = {"market": "Market", "duke": "Duke"}
    return short[pair[0]] if pair[0] == pair[1] else f"{short[pair[0]][0]}→{short[pair[1]][0]}"


def _source(step: Any, ref: Any, same_domain: bool) -> str:
    systems = (step["system"], ref["system"])
    if systems == ("bot", "bot"):
        if step["ranking"] or ref["ranking"]:
            return "BoT Table 2"
        return "BoT Table 1" if same_domain else "BoT Table 3"
    names = [SYSTEM_NAMES.get(str(s), str(s)) for s in systems]
    if step["ranking"] and str(step["ranking"]).endswith(" + sggnn"):
        names[0] = "SGGNN"
    return f"across papers: {names[0]} vs {names[1]}"


def _verdict(published: float, delta: float, low: float, high: float, significant: bool) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return NO_INTERVAL
    if not significant:
        return NOISE
    if published == 0:
        return NO_CHANGE
    return AGREES if (delta > 0) == (published > 0) else OPPOSITE


def _facts(frame: "pd.DataFrame") -> dict[tuple[str, str], dict[str, Any]]:
    """Per (row, column group): what the paper lookup needs (as ``tables.ablation_table`` reads it)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for (step, group), part in frame.groupby(["step", "group"], sort=False):
        first = part.iloc[0]
        variant = str(first["variant"] or "")
        out[(str(step), str(group))] = {
            "train": str(first["train"]), "test_set": str(first["test_set"]),
            "tricks": [t for t in str(first["tricks"]).split(",") if t], "synthetic": bool(part["synthetic"].any()),
            "ranking": str(first["ranking"]) if variant and first["ranking"] else None,
            "system": first["system"] if isinstance(first["system"], str) else None,
        }
    return out


def agreement_frame(frame: "pd.DataFrame", intervals: "pd.DataFrame", metrics: Sequence[str] | None = None
                    ) -> "pd.DataFrame":
    """One row per compared (step, reference, column, metric) with a published Δ: that Δ (``published``,
    points; ``per_dataset``: {"Market": Δ, ...}), the measured Δ and interval from ``intervals``
    (``significance.ablation_intervals``) and the verdict. Metrics re-ranked (``rerank_*``) have no
    published per-step Δ and are left out."""
    import pandas as pd

    facts = _facts(frame)
    rows = []
    for r in intervals.itertuples():
        if metrics is not None and r.metric not in metrics:
            continue
        step, ref = facts.get((str(r.step), str(r.group))), facts.get((str(r.reference), str(r.group)))
        if step is None or ref is None:
            continue
        per_dataset: dict[str, float] = {}
        for src, dst in _pairs(step["train"], step["test_set"], step["synthetic"] or ref["synthetic"]):
            a = _number(src, dst, step["tricks"], r.metric, step["ranking"], step["system"])
            b = _number(src, dst, ref["tricks"], r.metric, ref["ranking"], ref["system"])
            if a is not None and b is not None:
                per_dataset[_pair_label((src, dst))] = round(a - b, 6)
        if not per_dataset:
            continue
        values = list(per_dataset.values())
        published = round(sum(values) / len(values), 6)
        disagree = any(v > 0 for v in values) and any(v < 0 for v in values)
        low, high = float(r.ci_low), float(r.ci_high)
        rows.append((r.step, r.reference, r.group, r.test_set, r.metric, published, per_dataset, disagree,
                     _source(step, ref, step["train"] == step["test_set"]), float(r.delta), low, high,
                     bool(r.significant), str(r.method), _verdict(published, float(r.delta), low, high,
                                                                  bool(r.significant))))
    return pd.DataFrame(rows, columns=COLUMNS)


def summary(agreement: "pd.DataFrame") -> dict[str, Any]:
    """Counts of each verdict, the sign agreement and Spearman's ρ (None below 3 pairs or with a constant side)."""
    verdicts = list(agreement["verdict"]) if len(agreement) else []
    decided = [v for v in verdicts if v in (AGREES, OPPOSITE)]
    pairs = [(p, d) for p, d in zip(agreement.get("published", []), agreement.get("delta", []))
             if math.isfinite(p) and math.isfinite(d)]
    rho = p_value = None
    if len(pairs) >= 3 and len({p for p, _ in pairs}) > 1 and len({d for _, d in pairs}) > 1:
        from scipy.stats import spearmanr

        result = spearmanr([p for p, _ in pairs], [d for _, d in pairs])
        rho, p_value = float(result.statistic), float(result.pvalue)
    return {"agrees": verdicts.count(AGREES), "opposite": verdicts.count(OPPOSITE), "noise": verdicts.count(NOISE),
            "no_interval": verdicts.count(NO_INTERVAL), "no_change": verdicts.count(NO_CHANGE),
            "decided": len(decided), "rho": rho, "p_value": p_value, "n": len(pairs),
            "disagreeing_datasets": int(agreement["datasets_disagree"].sum()) if len(agreement) else 0}


def summary_line(agreement: "pd.DataFrame") -> str:
    """"Signs agree on 4 of 5 comparisons whose interval excludes 0 (…); Spearman's ρ … (n = 12)."."""
    s = summary(agreement)
    text = (f"Signs agree on {s['agrees']} of {s['decided']} comparisons whose interval excludes 0"
            + (f" ({s['opposite']} opposite)" if s["opposite"] else "") + f"; {s['noise']} within the noise")
    if s["no_interval"]:
        text += f", {s['no_interval']} without an interval"
    if s["no_change"]:
        text += f", {s['no_change']} with a published Δ of 0"
    rho = ("undefined" if s["rho"] is None else f"{s['rho']:+.2f} (p = {s['p_value']:.2g})")
    text += f". Spearman's ρ between published and measured Δ: {rho}, n = {s['n']} comparisons"
    if s["disagreeing_datasets"]:
        text += (f"; in {s['disagreeing_datasets']} of them the paper's Market and Duke Δ have opposite signs "
                 "(compared with their mean)")
    return text + "."


def with_agreement(table: "pd.DataFrame", agreement: "pd.DataFrame") -> "pd.DataFrame":
    """The numeric table with, after each (group, metric)'s stats, ``paper_delta`` (the published Δ, points)
    and ``agreement`` (1 agrees, -1 opposite, 0 within the noise; empty otherwise): the CSV's form."""
    import numpy as np
    import pandas as pd

    cols = []
    for g, m in dict.fromkeys((g, m) for g, m, _ in table.columns):
        cols.extend(c for c in table.columns if c[:2] == (g, m))
        cols.extend([(g, m, "paper_delta"), (g, m, "agreement")])
    out = table.reindex(columns=pd.MultiIndex.from_tuples(cols, names=table.columns.names))
    for r in agreement.itertuples():
        if r.step in out.index and (r.group, r.metric, "paper_delta") in out.columns:
            out.loc[r.step, (r.group, r.metric, "paper_delta")] = r.published
            out.loc[r.step, (r.group, r.metric, "agreement")] = AGREEMENT_CODE.get(r.verdict, np.nan)
    return out


def _signed(value: float, keep: bool = False) -> str:
    """+1.2, −3.9; with ``keep`` a mean of two published one-decimal Δ keeps its second decimal (+2.05)."""
    text = f"{value:+.2f}" if keep and abs(round(value, 1) - value) > 1e-9 else f"{value:+.1f}"
    return text.replace("-", "−")


def _cells(agreement: "pd.DataFrame") -> list[list[str]]:
    rows = []
    for r in agreement.itertuples():
        paper = _signed(r.published, keep=True)
        if len(r.per_dataset) > 1:
            paper += " (" + ", ".join(f"{k} {_signed(v)}" for k, v in r.per_dataset.items()) + ")"
        measured = _signed(r.delta)
        if math.isfinite(r.ci_low):
            measured += f" [{_signed(r.ci_low)}, {_signed(r.ci_high)}]"
        rows.append([str(r.step), str(r.reference), str(r.group), metric_label(str(r.metric)), paper, measured,
                     r.verdict, r.source])
    return rows


HEADER = ["step", "vs", "column", "metric", "paper Δ", "measured Δ [95% CI]", "verdict", "source"]


def render_agreement(agreement: "pd.DataFrame", fmt: str, label: str = "tab:agreement",
                     data_kind: str = "unknown") -> str:
    """The agreement block (a table, its summary line and caption) in markdown, latex or html."""
    from reidbench.harness.report.writers import latex_escape

    caption = CAPTION + (" Synthetic data: effects on another dataset, so only their direction can agree."
                         if data_kind in ("synthetic", "mixed") else "")
    line = summary_line(agreement)
    cells = _cells(agreement)
    if fmt == "latex":
        body = "\n".join(" & ".join(latex_escape(c) for c in row) + r" \\" for row in cells)
        return ("\\begin{table}\n\\centering\n\\caption{" + latex_escape(f"{caption} {line}") + "}\n\\label{"
                + label + "}\n\\begin{tabular}{llllrrll}\n\\toprule\n"
                + " & ".join(latex_escape(h) for h in HEADER) + " \\\\\n\\midrule\n" + body
                + "\n\\bottomrule\n\\end{tabular}\n\\end{table}\n")
    if fmt == "html":
        import html

        head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
        return (f"<h2>Agreement with the papers</h2>\n<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
                f"<caption>{html.escape(caption)} {html.escape(line)}</caption></table>")

    def md(text: str) -> str:
        return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")

    lines = ["**Agreement with the papers**", "", "| " + " | ".join(HEADER) + " |",
             "|---|---|---|---|---:|---:|---|---|"]
    lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in cells]
    return "\n".join(lines) + f"\n\n{line}\n\n{caption}\n"
