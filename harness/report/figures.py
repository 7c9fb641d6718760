"""Shared figure plumbing: Agg backend, readable fonts, output format from the file extension."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FIGURE_FORMATS = ("png", "pdf", "svg")
DEFAULT_DPI = 150

_STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 12,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def figure_format(out: str | Path) -> str:
    """``x.png`` → ``png``; anything but png/pdf/svg fails naming the valid extensions."""
    ext = Path(out).suffix.lower().lstrip(".")
    if ext not in FIGURE_FORMATS:
        raise ValueError(f"--out {out}: unknown figure type {('.' + ext) if ext else '(no extension)'}; "
                         f"use .png, .pdf or .svg")
    return ext


def new_figure(nrows: int, ncols: int, figsize: tuple[float, float] | None = None,
               panel_size: tuple[float, float] = (4.2, 3.0), **kwargs: Any):
    """A constrained-layout figure (no ``bbox_inches="tight"``: the saved size is the requested size)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update(_STYLE)
    size = figsize or (panel_size[0] * ncols, panel_size[1] * nrows + 0.6)
    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False, layout="constrained", **kwargs)
    return fig, axes


def set_title(fig: Any, title: str) -> None:
    """Figure title wrapped to the figure's width (long "what — where" titles stay readable)."""
    import textwrap

    width = max(40, int(fig.get_figwidth() * 9))  # characters per line at the 12 pt title size
    if len(title) > width:
        title = title.replace(" — ", "\n", 1)  # "what" on the first line, "where" below
    fig.suptitle("\n".join(textwrap.fill(part, width) for part in title.split("\n")))


def save_figure(fig: Any, out: str | Path, dpi: int = DEFAULT_DPI) -> Path:
    """Write ``fig`` to ``out`` (format from the extension) and close it; creates the folder."""
    import matplotlib.pyplot as plt

    path = Path(out)
    fmt = figure_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, format=fmt, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def parse_figsize(text: str | None) -> tuple[float, float] | None:
    """``"10x6"`` (inches, width×height) → (10.0, 6.0); None stays None."""
    if text is None:
        return None
    w, sep, h = text.lower().partition("x")
    try:
        size = (float(w), float(h))
    except ValueError:
        size = (0.0, 0.0)
    if not sep or not all(0 < v <= 100 for v in size):
        raise ValueError(f"--figsize {text!r} is not valid: use WIDTHxHEIGHT in inches, e.g. 10x6")
    return size
