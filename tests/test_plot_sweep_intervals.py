"""Sweep plots draw 95 % t intervals of the mean over seeds and mark points within the noise of the best."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from reidbench.harness.report.plots import _agg, plot_batch_size  # noqa: E402
from reidbench.harness.report.significance import study_intervals  # noqa: E402

T_975_2 = 4.302653


def _points():
    values = {(8, 4): (70.0, 71.0, 72.0), (16, 4): (80.0, 82.0, 81.0), (32, 4): (79.0, 82.5, 80.0)}
    rows = []
    for (p, k), vs in values.items():
        for seed, v in enumerate(vs):
            rows.append((f"{p}x{k}-{seed}", seed, p, k, f"{p}×{k}", 256, 128, "256×128", "synth-a", "synth-a",
                         "synth-a", "mAP", v))
    return pd.DataFrame(rows, columns=["run_hash", "seed", "ids_per_batch", "imgs_per_id", "batch", "image_h",
                                       "image_w", "image_size", "train", "test_set", "group", "metric", "value"])


def test_error_bars_are_t_intervals_of_the_mean():
    stats = _agg(_points(), ["batch"]).set_index("batch")
    # 16×4: mean 81, s = 1, n = 3 → half-width 4.302653 / √3
    assert stats.loc["16×4", "ci"] == pytest.approx(T_975_2 * 1.0 / math.sqrt(3))
    one = _agg(_points().head(1), ["batch"])
    assert one["ci"].tolist() == [0.0]  # one seed: no interval


def test_points_within_the_noise_of_the_best_are_hollow(tmp_path, monkeypatch):
    from reidbench.harness.report import plots

    points = _points()
    intervals = study_intervals(None, points, "batch", ["mAP"], method="seeds")
    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, out, dpi: drawn.append(fig) or out)
    plot_batch_size(points, tmp_path / "b.png", metrics=("mAP",), intervals=intervals)
    (fig,) = drawn
    hollow = [line for ax in fig.axes for line in ax.lines
              if isinstance(line.get_markerfacecolor(), str) and line.get_markerfacecolor() == "white"]
    xs = sorted((float(x), round(float(y), 3)) for line in hollow for x, y in zip(*line.get_data()))
    # the best point (16×4, mean 81) and 32×4 (interval of the difference includes 0); not 8×4.
    assert xs == [(4.0, 80.5), (4.0, 81.0)]
