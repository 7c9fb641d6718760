#!/usr/bin/env bash
# Compile a table written by `reidbench report --format latex` with pdflatex + booktabs.
#
#   scripts/check_latex.sh            # a sample ablation table (special characters, ±, →, paper columns)
#   scripts/check_latex.sh DB_URL     # the latest ablation of that results database
#
# Installs texlive-latex-base + texlive-latex-recommended (pdflatex, booktabs) with apt-get when
# pdflatex or booktabs.sty is missing. PYTHON defaults to .venv/bin/python.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
DB_URL="${1:-}"

if ! command -v pdflatex >/dev/null 2>&1 || ! kpsewhich booktabs.sty >/dev/null 2>&1; then
    echo "check_latex: installing pdflatex and booktabs (texlive-latex-base, texlive-latex-recommended)" >&2
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "check_latex: need root or sudo to apt-get install texlive" >&2; exit 1; }
        SUDO="sudo"
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        texlive-latex-base texlive-latex-recommended >/dev/null
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

"$PYTHON" - "$WORK/table.tex" "$DB_URL" <<'PY'
import sys
from pathlib import Path

from reidbench.harness.report.writers import latex_document, render

out, db_url = Path(sys.argv[1]), sys.argv[2]
if db_url:
    from reidbench.harness.report.tables import ablation_caption, ablation_table, default_metrics, load_ablation
    from reidbench.harness.store import Store

    frame, context = load_ablation(Store(db_url), "latest")
    metrics = default_metrics(frame)
    table = ablation_table(frame, metrics, paper=True)
    caption = ablation_caption(context, metrics, paper=True)
else:
    import pandas as pd

    from reidbench.harness.report.tables import PAPER_STAT, summarize

    # Every character class the writers must handle: _ % & # in names, −, →, ±, a missing cell.
    rows = [("Baseline", "my_set", 0.80), ("Baseline", "my_set", 0.90), ("+REA", "my_set", 0.91),
            ("−REA", "my_set", float("nan")), ("Baseline", "my_set→B&W#1 (50%)", 0.40),
            ("+REA", "my_set→B&W#1 (50%)", 0.45)]
    tidy = pd.DataFrame(rows, columns=["step", "group", "value"]).assign(metric="mAP")
    table = summarize(tidy, ["mAP", "rerank_mAP"])
    table[("my_set", "mAP", PAPER_STAT)] = [85.9, 79.3, None]
    table = table[sorted(table.columns, key=lambda c: list(table.columns).index(c))]
    caption = "mAP (%) on my_set; synthetic data; mean±std over 2 seeds; λ=0.3 & 100% escaped_chars #1."
Path(out).write_text(latex_document(render(table, "latex", caption=caption, label="tab:check")))
PY

(cd "$WORK" && pdflatex -interaction=nonstopmode -halt-on-error table.tex >pdflatex.log 2>&1) || {
    echo "check_latex: pdflatex failed; the end of its log:" >&2
    tail -n 30 "$WORK/pdflatex.log" >&2
    echo "--- table.tex ---" >&2
    cat "$WORK/table.tex" >&2
    exit 1
}
echo "check_latex: OK (pdflatex wrote a $(wc -c <"$WORK/table.pdf")-byte PDF)"
