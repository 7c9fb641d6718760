"""BoT Table 2 and Table 1's re-ranking row come from the same trained models (evaluation variants)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from reidbench.harness.cli import main
from reidbench.harness.evaluation.protocol import score
from reidbench.harness.store import Store

BOT = Path(__file__).resolve().parent.parent / "experiments" / "bot.yaml"
TABLE2 = "ft-euclidean,ft-cosine,fi-euclidean,fi-cosine"


def _base(tmp_path: Path, spec_file: Path) -> Path:
    # A tiny spec plus the evaluations: section shipped in experiments/bot.yaml.
    text = BOT.read_text()
    evaluations = text[text.index("evaluations:"):text.index("# Overlays picked with --profile.")]
    path = tmp_path / "tiny-bot.yaml"
    path.write_text(spec_file.read_text() + "\n" + evaluations)
    return path


def _args(base: Path, data: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["ablate", "--base", str(base), "--add", "bnneck,center", "--data", f"tiny={data}", "--profile", "cpu",
            "--epochs", "2", "--db", f"sqlite:///{tmp_path / 'r.db'}", "--runs-dir", str(tmp_path / "runs"),
            "--workers", "0", "--device", "cpu", *extra]


def test_table2_and_rerank_rows_rescore_the_cached_models(tmp_path, tiny_market, study_spec_file):
    base = _base(tmp_path, study_spec_file)
    first = CliRunner().invoke(main, _args(base, tiny_market, tmp_path))
    assert first.exit_code == 0, first.output
    assert "3 cached" not in first.output and "[f_t Euclidean]" not in first.output

    second = CliRunner().invoke(main, _args(base, tiny_market, tmp_path, "--eval", TABLE2 + ",rerank"))
    assert second.exit_code == 0, second.output
    assert "3 cached, 0 to run" in second.output and "need new evaluations (no retraining)" in second.output
    assert not re.search(r"epoch +\d+/\d+", second.output)  # nothing trained (no train.log epoch line)
    lines = second.output.splitlines()
    # Table 2 on the +BNNeck model only, the re-ranking row on the last step only.
    rows = [line for line in lines if line.startswith(("Baseline", "+BNNeck", "+center loss"))]  # the table
    for label in ("f_t Euclidean", "f_t cosine", "f_i Euclidean", "f_i cosine"):
        assert [r.split(" [")[0] for r in rows if f"[{label}]" in r] == ["+BNNeck"]
    assert [r.split(" [")[0] for r in rows if "[re-ranking]" in r] == ["+center loss"]

    # Each variant's numbers are the protocol applied to the saved features of the same model.
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    bnneck = next(r for r in store.list_runs() if r.label == "+BNNeck")
    by_variant = {e.variant: e for e in store.evaluations([bnneck.run_hash])}
    assert {"", "ft-euclidean", "ft-cosine", "fi-euclidean", "fi-cosine"} <= set(by_variant)
    for variant, feature, metric, normalize in (("ft-euclidean", "f_t", "euclidean", False),
                                                ("fi-cosine", "f_i", "cosine", True)):
        e = by_variant[variant]
        assert e.settings["feature"] == feature and e.settings["metric"] == metric
        with np.load(e.features_path) as npz:
            expected = score(npz["q_feats"], npz["g_feats"], npz["q_pids"], npz["g_pids"], npz["q_camids"],
                             npz["g_camids"], metric=metric, normalize=normalize)
        assert e.metrics["mAP"] == expected["mAP"] and e.metrics["R1"] == expected["R1"]
    # The default evaluation of a BNNeck model ranks f_i (normalised, squared Euclidean) = the f_i cosine ranking.
    assert by_variant[""].settings["feature"] == "f_i"
    assert by_variant[""].metrics["mAP"] == by_variant["fi-cosine"].metrics["mAP"]

    report = CliRunner().invoke(main, ["report", "--format", "csv", "--db", f"sqlite:///{tmp_path / 'r.db'}"])
    assert report.exit_code == 0, report.output
    assert "+BNNeck [f_t Euclidean]" in report.output and "rerank_mAP" in report.output

    third = CliRunner().invoke(main, _args(base, tiny_market, tmp_path, "--eval", TABLE2 + ",rerank"))
    assert third.exit_code == 0 and "need new evaluations" not in third.output  # all cached now


def test_an_unknown_variant_is_a_one_line_error(tmp_path, tiny_market, study_spec_file):
    base = _base(tmp_path, study_spec_file)
    result = CliRunner().invoke(main, _args(base, tiny_market, tmp_path, "--eval", "teleport", "--dry-run"))
    assert result.exit_code == 2
    assert "--eval 'teleport' is not an evaluation variant" in result.output and "ft-euclidean" in result.output
