"""Ablation tables from a real store filled by the test: cells, bold, mean±std, paper numbers, writers, CLI."""

from __future__ import annotations

import io
import shutil
import subprocess

import click
import pandas as pd
import pytest
from click.testing import CliRunner

from reidbench.harness.ablation.expand import expand
from reidbench.harness.report.naming import group_label, parse_metrics
from reidbench.harness.report.paper import paper_value
from reidbench.harness.report.tables import (
    ablation_caption,
    ablation_context,
    ablation_frame,
    ablation_table,
    display_cells,
    format_cell,
    summarize,
)
from reidbench.harness.report.writers import latex_document, latex_escape, render, to_latex
from reidbench.harness.spec import RunSpec, replace_section, with_epochs
from reidbench.harness.store import Store
from reidbench.tricks import parse_trick_list

# (step, test set) → metric → (seed 0, seed 1); same-domain synth-a, cross-domain synth-b.
VALUES = {
    ("Baseline", "synth-a"): {"R1": (0.80, 0.90), "mAP": (0.60, 0.70)},
    ("+warmup", "synth-a"): {"R1": (0.86, 0.88), "mAP": (0.75, 0.75)},
    ("+REA", "synth-a"): {"R1": (0.90, 0.91), "mAP": (0.70, 0.72)},
    ("Baseline", "synth-b"): {"R1": (0.40, 0.40), "mAP": (0.20, 0.22)},
    ("+warmup", "synth-b"): {"R1": (0.50, 0.44), "mAP": (0.25, 0.27)},
    ("+REA", "synth-b"): {"R1": (0.30, 0.36), "mAP": (0.10, 0.10)},
}


def result_dict(step, metrics, *, synthetic=True, pretrained=True, out_dir="/nonexistent"):
    datasets = {step.spec.data.train, *step.spec.data.test}
    return {
        "run_hash": step.run_hash, "spec": step.spec.to_dict(), "metrics": metrics,
        "history": [{"epoch": 1, "losses": {"id": 2.0}, "lr": 1e-4, "images_per_s": 10.0, "extra": {}}],
        "provenance": {d: {"name": d, "root": "/data", "format": "market", "synthetic": synthetic} for d in datasets},
        "model_info": {"pretrained_source": "imagenet" if pretrained else None},
        "environment": {"device": "cpu"}, "seconds_train": 1.0, "seconds_eval": 1.0, "out_dir": out_dir,
    }


def fill_ablation(store, *, train="synth-a", tests=("synth-b", "synth-a"), values=VALUES, tricks="warmup,rea",
                  mode="cumulative", seeds=(0, 1), skip=(), synthetic=True, pretrained=True, rerank=False,
                  name="abl"):
    """Record an ablation whose runs carry the hand-made ``values`` (``skip``: (step, seed) left pending)."""
    base = with_epochs(replace_section(RunSpec(profile="cpu"), "data", train=train, test=tuple(tests)), 6)
    steps = expand(base, parse_trick_list(tricks), mode, list(seeds))
    for s in steps:
        store.ensure_run(s.run_hash, s.spec.to_dict(), s.label)
    for s in steps:
        if (s.step, s.seed) in skip or store.find_run(s.run_hash).status == "done":  # shared with another ablation
            continue
        metrics = {}
        for test in tests:
            per = {m: v[s.seed] for m, v in values[(s.step, test)].items()}
            if rerank:
                per.update({f"rerank_{m}": min(1.0, v + 0.05) for m, v in per.items()})
            metrics[test] = per
        assert store.claim(s.run_hash, "test")
        store.record_result(s.run_hash, "test", result_dict(s, metrics, synthetic=synthetic, pretrained=pretrained))
    meta = {"profile": "cpu", "epochs": 6, "full_epochs": 120, "tricks": tricks.split(","), "train": train,
            "test": list(tests), "seeds": list(seeds), "command": "ablate"}
    return store.record_ablation(name, "bot", mode, meta, [
        {"position": s.position, "run_hash": s.run_hash, "label": s.label, "step": s.step, "seed": s.seed}
        for s in steps])


@pytest.fixture()
def store(tmp_path):
    st = Store(f"sqlite:///{tmp_path / 'results.db'}")
    yield st
    st.close()


def test_tidy_frame_holds_every_member_value(store):
    fill_ablation(store)
    frame = ablation_frame(store)
    assert len(frame) == 3 * 2 * 2 * 2  # steps × seeds × test sets × metrics
    row = frame[(frame.step == "+warmup") & (frame.seed == 1) & (frame.test_set == "synth-b") & (frame.metric == "R1")]
    assert row["value"].tolist() == [0.44]
    assert set(frame.group) == {"synth-a", "synth-a→synth-b"}
    assert frame.groupby("step", sort=False)["row"].first().to_dict() == {"Baseline": 0, "+warmup": 1, "+REA": 2}


def test_table_cells_mean_std_and_order(store):
    fill_ablation(store)
    table = ablation_table(ablation_frame(store), ["R1", "mAP"])
    assert list(table.index) == ["Baseline", "+warmup", "+REA"]
    # same-domain group first although the ablation listed synth-b first
    assert list(dict.fromkeys(table.columns.get_level_values(0))) == ["synth-a", "synth-a→synth-b"]
    assert table.loc["Baseline", ("synth-a", "R1", "mean")] == pytest.approx(85.0)
    assert table.loc["Baseline", ("synth-a", "R1", "std")] == pytest.approx(100 * 0.1 / 2 ** 0.5)
    assert table.loc["Baseline", ("synth-a", "R1", "n")] == 2
    text, best = display_cells(table)
    assert text.loc["Baseline", ("synth-a", "R1")] == "85.0±7.1"
    assert text.loc["+warmup", ("synth-a→synth-b", "R1")] == "47.0±4.2"
    assert text.loc["+warmup", ("synth-a", "mAP")] == "75.0±0.0"
    expected_best = {("synth-a", "R1"): "+REA", ("synth-a", "mAP"): "+warmup",
                     ("synth-a→synth-b", "R1"): "+warmup", ("synth-a→synth-b", "mAP"): "+warmup"}
    for col, step in expected_best.items():
        assert best[col][best[col]].index.tolist() == [step], col


def test_missing_runs_show_a_dash_and_single_seed_has_no_std(store):
    fill_ablation(store, skip={("+REA", 1), ("+warmup", 0), ("+warmup", 1)})
    text, best = display_cells(ablation_table(ablation_frame(store), ["R1"]))
    assert text.loc["+warmup", ("synth-a", "R1")] == "–"
    assert text.loc["+REA", ("synth-a", "R1")] == "90.0"
    assert text.loc["Baseline", ("synth-a", "R1")] == "85.0±7.1"
    assert bool(best.loc["+REA", ("synth-a", "R1")]) and not best.loc["+warmup", ("synth-a", "R1")]
    ctx = ablation_context(store)
    assert ctx.statuses == {"done": 3, "pending": 3}
    assert "run not done (3 of 6)" in ablation_caption(ctx, ["R1"])


def test_format_cell():
    assert format_cell(85.0, 7.0710678, 2) == "85.0±7.1"
    assert format_cell(85.04, float("nan"), 1) == "85.0"
    assert format_cell(float("nan")) == "–"


def test_caption_states_what_the_numbers_are(store):
    fill_ablation(store, pretrained=False)
    caption = ablation_caption(ablation_context(store), ["R1", "mAP"])
    for fragment in ("synthetic data", "profile cpu", "6 epochs (shortened from 120)", "mean±std over 2 seeds (0, 1)",
                     "trained from scratch", "without re-ranking", "trained on synth-a", "tricks added cumulatively"):
        assert fragment in caption, fragment


def test_rerank_columns_appear_by_default_and_in_caption(store):
    fill_ablation(store, rerank=True, synthetic=False)
    frame = ablation_frame(store)
    table = ablation_table(frame)
    metrics = list(dict.fromkeys(table.columns.get_level_values(1)))
    assert metrics == ["R1", "mAP", "rerank_R1", "rerank_mAP"]
    text, _ = display_cells(table)
    assert text.loc["Baseline", ("synth-a", "R1 (RR)")] == "90.0±7.1"
    caption = ablation_caption(ablation_context(store), metrics)
    assert "re-ranking" in caption and "without re-ranking" not in caption and "real data" in caption


def test_paper_numbers_beside_real_market_duke_rows(store):
    values = {(step, t): v for (step, test), v in VALUES.items() for t in (("market",) if test == "synth-a" else ("duke",))}
    fill_ablation(store, train="market", tests=("market", "duke"), values=values, synthetic=False)
    table = ablation_table(ablation_frame(store), ["R1", "mAP"], paper=True)
    assert table.loc["Baseline", ("Market-1501", "R1", "paper")] == 87.7
    assert table.loc["+REA", ("Market-1501", "mAP", "paper")] == 79.3
    assert table.loc["+warmup", ("Market→Duke", "R1", "paper")] == 26.3
    text, best = display_cells(table)
    assert list(text.columns.get_level_values(1)[:4]) == ["R1", "R1 paper", "mAP", "mAP paper"]
    assert text.loc["+REA", ("Market→Duke", "mAP paper")] == "10.2"
    assert not best[("Market-1501", "R1 paper")].any()  # the paper's numbers are never "best"


def test_paper_numbers_never_match_synthetic_data(store):
    values = {(step, t): v for (step, test), v in VALUES.items() for t in (("market",) if test == "synth-a" else ("duke",))}
    fill_ablation(store, train="market", tests=("market", "duke"), values=values, synthetic=True)
    table = ablation_table(ablation_frame(store), ["R1"], paper=True)
    assert table.xs("paper", axis=1, level="stat").isna().all().all()
    assert [c for c in display_cells(table)[0].columns if "paper" in c[1]] == []


def test_paper_lookup():
    everything = ("warmup", "rea", "ls", "stride", "bnneck", "center")
    assert paper_value("market", "market", (), "R1") == 87.7
    assert paper_value("duke-full", "duke", everything, "mAP") == 76.4
    assert paper_value("market", "market", everything, "rerank_mAP") == 94.2
    assert paper_value("market", "market", ("warmup",), "rerank_mAP") is None
    assert paper_value("duke", "market", [t for t in everything if t != "rea"], "R1") == 54.3  # Table 3 −REA
    assert paper_value("market", "market", [t for t in everything if t != "rea"], "R1") is None  # not in Table 1
    assert paper_value("market", "duke", ("rea",), "R1") is None  # single-trick rows are not the paper's
    assert paper_value("market", "market", (), "mINP") is None
    assert paper_value("market", "market", (), "R1", synthetic=True) is None
    assert paper_value("msmt17", "market", (), "R1") is None


def test_naming():
    assert group_label("market", "market") == "Market-1501"
    assert group_label("market", "duke") == "Market→Duke"
    assert group_label("synth-a", "synth-b") == "synth-a→synth-b"
    assert parse_metrics("r1, MAP,minp,rerank_map") == ("R1", "mAP", "mINP", "rerank_mAP")
    with pytest.raises(ValueError, match="'r3' is not a metric"):
        parse_metrics("r1,r3")


def test_latex_escaping():
    assert latex_escape("my_set 5% A&B #1 {x} ~^\\") == (
        r"my\_set 5\% A\&B \#1 \{x\} \textasciitilde{}\textasciicircum{}\textbackslash{}")
    assert latex_escape("a→b −REA 1.0±0.2") == r"a$\rightarrow$b $-$REA 1.0$\pm$0.2"


def test_latex_table_structure_escapes_and_bold(store):
    fill_ablation(store, train="my_set", tests=("my_set", "B&W#1"),
                  values={(s, "my_set" if t == "synth-a" else "B&W#1"): v for (s, t), v in VALUES.items()})
    table = ablation_table(ablation_frame(store), ["R1", "mAP"])
    latex = to_latex(table, caption="R1 and mAP (%) on my_set", label="tab:abl")
    for fragment in (r"\toprule", r"\midrule", r"\bottomrule", r"\multicolumn{2}{c}{my\_set}",
                     r"\multicolumn{2}{c}{my\_set$\rightarrow$B\&W\#1}", r"\caption{R1 and mAP (\%) on my\_set}",
                     r"\label{tab:abl}", r"\cmidrule(lr){2-3} \cmidrule(lr){4-5}", r"\begin{tabular}{lrrrr}"):
        assert fragment in latex, fragment
    row = next(line for line in latex.splitlines() if line.startswith("+REA"))
    assert row == r"+REA & \textbf{90.5$\pm$0.7} & 71.0$\pm$1.4 & 33.0$\pm$4.2 & 10.0$\pm$0.0 \\"
    body = latex.split(r"\midrule")[1]
    assert "_" not in body.replace(r"\_", "") and "#" not in body.replace(r"\#", "") and "±" not in latex


def test_markdown_csv_html_writers(store):
    fill_ablation(store)
    table = ablation_table(ablation_frame(store), ["R1", "mAP"])
    md = render(table, "markdown", caption="Caption here.")
    lines = md.splitlines()
    assert lines[0] == "| step | synth-a R1 | synth-a mAP | synth-a→synth-b R1 | synth-a→synth-b mAP |"
    assert lines[2] == "| Baseline | 85.0±7.1 | 65.0±7.1 | 40.0±0.0 | 21.0±1.4 |"
    assert lines[4] == "| +REA | **90.5±0.7** | 71.0±1.4 | 33.0±4.2 | 10.0±0.0 |"
    assert md.rstrip().endswith("Caption here.")
    csv = pd.read_csv(io.StringIO(render(table, "csv")), index_col=0)
    assert csv.loc["Baseline", "synth-a R1 mean"] == pytest.approx(85.0)
    assert csv.loc["Baseline", "synth-a R1 std"] == pytest.approx(7.0711, abs=1e-4)
    assert csv.loc["+REA", "synth-a→synth-b mAP n"] == 2
    page = render(table, "html", caption="a <b> caption", title="t")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "font-weight: bold" in page and "a &lt;b&gt; caption" in page and "85.0±7.1" in page
    with pytest.raises(ValueError, match="--format 'xls' is not valid"):
        render(table, "xls")


def test_summarize_is_the_extension_point_for_other_reports():
    tidy = pd.DataFrame({"row": ["16×4", "16×4", "32×4"], "group": ["Market-1501"] * 3, "metric": ["mAP"] * 3,
                         "value": [0.5, 0.6, 0.7]})
    table = summarize(tidy, ["mAP"], row="row")
    text, best = display_cells(table)
    assert text[("Market-1501", "mAP")].tolist() == ["55.0±7.1", "70.0"]
    assert best[("Market-1501", "mAP")].tolist() == [False, True]
    assert r"\textbf{70.0}" in render(table, "latex")


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not on PATH (scripts/check_latex.sh installs it)")
def test_latex_output_compiles_with_pdflatex(store, tmp_path):
    fill_ablation(store, train="my_set", tests=("my_set", "B&W#1"), rerank=True,
                  values={(s, "my_set" if t == "synth-a" else "B&W#1"): v for (s, t), v in VALUES.items()})
    frame = ablation_frame(store)
    table = ablation_table(frame, paper=True)
    caption = ablation_caption(ablation_context(store), ["R1", "mAP", "rerank_R1", "rerank_mAP"], paper=True)
    (tmp_path / "t.tex").write_text(latex_document(to_latex(table, caption=caption, label="tab:x")))
    out = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:]
    assert (tmp_path / "t.pdf").stat().st_size > 1000


# --------------------------------------------------------------------------- CLI


def cli():
    from reidbench.harness.cli.report import plot, report

    return click.Group(commands=[report, plot])


def test_cli_report_formats_and_files(store, tmp_path):
    fill_ablation(store, name="first")
    fill_ablation(store, name="second", tricks="rea", mode="single",
                  values={**VALUES, **{("+REA", t): v for (s, t), v in VALUES.items() if s == "+warmup"}})
    runner = CliRunner()
    db = ["--db", store.url]
    out = runner.invoke(cli(), ["report", *db])  # latest = the single-mode one, markdown on stdout
    assert out.exit_code == 0, out.output
    assert "| +REA | **87.0±1.4** |" in out.output and "each trick alone" in out.output
    out = runner.invoke(cli(), ["report", *db, "--ablation", "1", "--metrics", "map", "--format", "latex"])
    assert out.exit_code == 0, out.output
    assert r"\begin{table}" in out.output and "R1" not in out.output.split(r"\midrule")[0].split("tabular")[1]
    target = tmp_path / "sub" / "table.tex"
    out = runner.invoke(cli(), ["report", *db, "--ablation", "first", "--out", str(target)])
    assert out.exit_code == 0 and target.read_text().startswith(r"\begin{table}")
    out = runner.invoke(cli(), ["report", *db, "--out", str(tmp_path / "t.html")])
    assert "<html" in (tmp_path / "t.html").read_text()
    out = runner.invoke(cli(), ["report", *db, "--paper"])
    assert out.exit_code == 0 and "note: --paper: no row matches the paper" in out.output


@pytest.mark.parametrize("args, fragment", [
    (["--ablation", "7"], "no ablation 7"),
    (["--metrics", "r1,top5"], "'top5' is not a metric"),
])
def test_cli_report_errors_are_one_line(store, args, fragment):
    fill_ablation(store)
    out = CliRunner().invoke(cli(), ["report", "--db", store.url, *args])
    assert out.exit_code == 2
    assert fragment in out.output and "Traceback" not in out.output
    assert out.output.strip().count("\n") == 0


def test_cli_module_imports_no_heavy_packages():
    import sys

    code = ("import sys; import reidbench.harness.cli.report as m; "
            "print(sorted(x for x in ('torch', 'pandas', 'matplotlib', 'numpy') if x in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_table2_paper_numbers_are_looked_up_by_how_a_variant_ranks():
    from reidbench.harness.report.paper import paper_value
    from reidbench.harness.report.tables import ranking_of

    table2_model = ["warmup", "rea", "ls", "stride", "bnneck"]  # every trick but the center loss
    assert ranking_of({"feature": "f_t", "normalize": False, "metric": "euclidean"}) == "f_t Euclidean"
    assert ranking_of({"feature": "f_i", "normalize": True, "metric": "sqeuclidean"}) == "f_i cosine"
    assert ranking_of({"feature": "f_t", "normalize": False, "metric": "cosine"}) == "f_t cosine"
    # bot.md Table 2: f_t Euclidean 94.2/85.5 (Market), f_i Euclidean 86.6/73.0 (Duke).
    assert paper_value("market", "market", table2_model, "R1", ranking="f_t Euclidean") == 94.2
    assert paper_value("market", "market", table2_model, "mAP", ranking="f_t Euclidean") == 85.5
    assert paper_value("duke", "duke", table2_model, "mAP", ranking="f_i Euclidean") == 73.0
    assert paper_value("market", "duke", table2_model, "R1", ranking="f_t cosine") is None  # same domain only
    assert paper_value("market", "market", [*table2_model, "center"], "R1", ranking="f_t cosine") is None
    assert paper_value("synth-a", "synth-a", table2_model, "R1", synthetic=True, ranking="f_t cosine") is None
