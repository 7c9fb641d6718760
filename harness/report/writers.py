"""Writers: a numeric summary table (see ``tables``) → LaTeX, Markdown, CSV or a standalone HTML page.

``render(table, fmt, caption=..., label=...)`` is the one entry point; every report (ablations,
studies) builds a numeric table with (group, metric, stat) columns and hands it here.
"""

from __future__ import annotations

import html as _html
from typing import TYPE_CHECKING

from reidbench.harness.report.tables import display_cells

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("latex", "markdown", "csv", "html")

# LaTeX specials first (backslash before anything that inserts one), then the Unicode a table may
# hold that pdflatex's default set-up cannot typeset (arrow, minus, plus-minus, times, dashes).
_LATEX_SPECIALS = [
    ("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"), ("_", r"\_"),
    ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\textasciicircum{}"),
]
_LATEX_UNICODE = {"→": r"$\rightarrow$", "−": "$-$", "±": r"$\pm$", "×": r"$\times$", "–": "--", "—": "---",
                  "λ": r"$\lambda$", "…": r"\dots{}", "†": r"$^\dagger$",
                  "Δ": r"$\Delta$", "ρ": r"$\rho$"}


def latex_escape(text: str) -> str:
    """Plain text → LaTeX source that typesets as that text with pdflatex (any Unicode we emit mapped)."""
    out = []
    for ch in str(text):
        special = next((rep for c, rep in _LATEX_SPECIALS if c == ch), None)
        out.append(special if special is not None else _LATEX_UNICODE.get(ch, ch))
    return "".join(out)


def _markdown_escape(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


PROFILE_GROUP = ""  # column group of the profile column (a row label, not a test set)


def _cells(table: "pd.DataFrame", bold: bool, row_info: "pd.DataFrame | None") -> tuple["pd.DataFrame", "pd.DataFrame"]:
    """``display_cells``, with a first "profile" column when ``row_info`` says the rows' profiles differ."""
    text, best = display_cells(table, bold=bold)
    if row_info is None or "profile" not in row_info or row_info["profile"].nunique() < 2:
        return text, best
    profiles = row_info["profile"].reindex(text.index).fillna("")
    text.insert(0, (PROFILE_GROUP, "profile"), list(profiles))
    best.insert(0, (PROFILE_GROUP, "profile"), [False] * len(best))
    return text, best


def to_latex(table: "pd.DataFrame", caption: str = "", label: str = "tab:reidbench", bold: bool = True,
             row_info: "pd.DataFrame | None" = None) -> str:
    """A booktabs ``table`` float: a multicolumn header per group, best per column in \\textbf; a
    profile column first when the rows' profiles differ (``row_info``)."""
    text, best = _cells(table, bold, row_info)
    return cells_to_latex(text, best, caption=caption, label=label)


def _no_best(text: "pd.DataFrame") -> "pd.DataFrame":
    return text.map(lambda _: False)


def cells_to_latex(text: "pd.DataFrame", best: "pd.DataFrame | None" = None, caption: str = "",
                   label: str = "tab:reidbench") -> str:
    """Text cells with (group, column) headers → a booktabs ``table`` float (``best`` cells in \\textbf)."""
    best = _no_best(text) if best is None else best.copy()
    escaped = text.map(latex_escape)
    escaped.columns = escaped.columns.map(lambda c: tuple(latex_escape(x) for x in c))
    escaped.columns.names = [None, None]
    escaped.index = escaped.index.map(latex_escape)
    escaped.index.name = None
    best.columns, best.index = escaped.columns, escaped.index
    styler = escaped.style.apply(lambda _: best.map(lambda b: "textbf:--rwrap;" if b else ""), axis=None)
    ncols = escaped.shape[1]
    latex = styler.to_latex(
        column_format="l" + "r" * ncols, hrules=True, multicol_align="c", position_float="centering",
        caption=latex_escape(caption) if caption else None, label=label or None,
    )
    return _add_group_rules(latex, escaped.columns)


def _add_group_rules(latex: str, columns: "pd.MultiIndex") -> str:
    """Under the group header row, a \\cmidrule per group (booktabs style), as the paper's tables."""
    spans: list[tuple[int, int]] = []
    start = 2  # column 1 holds the row labels
    for group in dict.fromkeys(c[0] for c in columns):
        width = sum(1 for c in columns if c[0] == group)
        spans.append((start, start + width - 1))
        start += width
    rules = " ".join(f"\\cmidrule(lr){{{a}-{b}}}" for a, b in spans)
    lines = latex.split("\n")
    for i, line in enumerate(lines):
        if "\\multicolumn" in line or (line.strip().endswith("\\\\") and i > 0 and "\\toprule" in lines[i - 1]):
            lines.insert(i + 1, rules)
            break
    return "\n".join(lines)


def latex_document(table_latex: str) -> str:
    """A standalone document around a table from ``to_latex``: what ``check_latex`` compiles."""
    return ("\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs}\n"
            "\\begin{document}\n" + table_latex + "\n\\end{document}\n")


def to_markdown(table: "pd.DataFrame", caption: str = "", bold: bool = True,
                row_info: "pd.DataFrame | None" = None) -> str:
    """A GitHub-flavoured Markdown table (headers "group metric"), best per column in **bold**; a
    profile column first when the rows' profiles differ (``row_info``)."""
    text, best = _cells(table, bold, row_info)
    return cells_to_markdown(text, best, caption=caption, index_name=str(table.index.name or ""))


def cells_to_markdown(text: "pd.DataFrame", best: "pd.DataFrame | None" = None, caption: str = "",
                      index_name: str | None = None) -> str:
    """Text cells with (group, column) headers → a Markdown table (``best`` cells in **bold**)."""
    best = _no_best(text) if best is None else best
    name = str(text.index.name or "") if index_name is None else index_name
    header = [name] + [f"{g} {c}".strip() for g, c in text.columns]
    lines = ["| " + " | ".join(_markdown_escape(h) for h in header) + " |",
             "|" + "---|" + "---:|" * text.shape[1]]
    for (idx, row), (_, marks) in zip(text.iterrows(), best.iterrows()):
        cells = [f"**{_markdown_escape(v)}**" if b else _markdown_escape(v) for v, b in zip(row, marks)]
        lines.append("| " + " | ".join([_markdown_escape(idx), *cells]) + " |")
    out = "\n".join(lines) + "\n"
    if caption:
        out += f"\n{caption}\n"
    return out


def to_csv(table: "pd.DataFrame", row_info: "pd.DataFrame | None" = None) -> str:
    """Numbers, not text: one column per (group, metric, stat), e.g. ``Market-1501 R1 mean``; then the
    per-row facts of ``row_info`` (``tables.row_info``: profile, runs, converged, not converged)."""
    import pandas as pd

    flat = table.copy()
    for col in flat.columns:
        if col[-1] == "n":
            flat[col] = flat[col].fillna(0).astype(int)
        if col[-1] in ("significant", "agreement"):  # 1/0(/-1), empty where there is nothing to say
            flat[col] = flat[col].astype("Int64")
    flat.columns = [" ".join(str(x) for x in c) for c in table.columns]
    if row_info is not None:
        info = row_info.reindex(flat.index)
        for name in info.columns:
            numeric = pd.api.types.is_numeric_dtype(info[name])
            flat[name] = info[name].astype("Int64") if numeric else info[name]
    return flat.to_csv(float_format="%.4f")


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: 0.3em 0.8em; text-align: right; }}
th {{ border-bottom: 1px solid #444; }}
caption {{ caption-side: bottom; text-align: left; padding-top: 0.8em; max-width: 60em; color: #333; }}
tbody th {{ text-align: left; }}
</style>
</head>
<body>
{table}
</body>
</html>
"""


def to_html(table: "pd.DataFrame", caption: str = "", title: str = "reidbench report", bold: bool = True,
            row_info: "pd.DataFrame | None" = None) -> str:
    """A standalone HTML page with the table (best per column bold; a profile column first when the
    rows' profiles differ) and its caption."""
    text, best = _cells(table, bold, row_info)
    return cells_to_html(text, best, caption=caption, title=title)


def cells_to_html(text: "pd.DataFrame", best: "pd.DataFrame | None" = None, caption: str = "",
                  title: str = "reidbench report") -> str:
    """Text cells with (group, column) headers → a standalone HTML page (``best`` cells bold)."""
    text = text.copy()
    best = _no_best(text) if best is None else best.copy()
    text.columns.names = [None, None]
    text.index.name = None  # else Styler adds a header row holding only the index name
    best.columns, best.index = text.columns, text.index
    styler = (text.style.apply(lambda _: best.map(lambda b: "font-weight: bold" if b else ""), axis=None)
              .format(escape="html").format_index(escape="html", axis=0).format_index(escape="html", axis=1))
    body = styler.to_html(caption=_html.escape(caption) if caption else None)
    return _PAGE.format(title=_html.escape(title), table=body)


def render(table: "pd.DataFrame", fmt: str, caption: str = "", label: str = "tab:reidbench",
           title: str = "reidbench report", row_info: "pd.DataFrame | None" = None) -> str:
    """The numeric table in ``fmt`` (latex, markdown, csv, html). CSV carries no caption: its rows
    carry ``row_info`` (profile, runs, converged, not converged) instead."""
    if fmt == "latex":
        return to_latex(table, caption=caption, label=label, row_info=row_info)
    if fmt == "markdown":
        return to_markdown(table, caption=caption, row_info=row_info)
    if fmt == "csv":
        return to_csv(table, row_info=row_info)
    if fmt == "html":
        return to_html(table, caption=caption, title=title, row_info=row_info)
    raise ValueError(f"--format {fmt!r} is not valid: {', '.join(FORMATS)}")


def render_cells(text: "pd.DataFrame", fmt: str, caption: str = "", label: str = "tab:reidbench",
                 title: str = "reidbench report") -> str:
    """Already formatted text cells (index = rows, columns = (group, column)) in ``fmt`` (latex,
    markdown, html; CSV is numbers, so each report writes its own). Nothing is bold."""
    if fmt == "latex":
        return cells_to_latex(text, caption=caption, label=label)
    if fmt == "markdown":
        return cells_to_markdown(text, caption=caption)
    if fmt == "html":
        return cells_to_html(text, caption=caption, title=title)
    raise ValueError(f"--format {fmt!r} is not valid for text cells: latex, markdown, html")
