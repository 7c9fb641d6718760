"""benchmarks/bench_regime.py: its candidates keep the base's LR milestones in proportion and load as profiles."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from reidbench.harness.spec.loading import load_spec_file

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_regime", ROOT / "benchmarks" / "bench_regime.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_milestones_keep_each_base_s_share_of_the_steps(bench):
    # BoT: x0.1 at epochs 40 and 70 of 120 (1-based), i.e. after 39/120 and 69/120 of the run.
    assert bench.milestones("bot", 8) == [1 + 39 * 8 / 120, round(1 + 69 * 8 / 120, 4)]
    # Geng: every 40 of 170 epochs; over 6 epochs the first decay starts after 39/170 of the steps.
    assert bench.milestones("geng", 6) == [2.376471, 3.788235, 5.2, 6.611765]


@pytest.mark.parametrize("base", ["bot", "geng"])
def test_every_candidate_loads_as_a_profile_of_its_base(bench, base, tmp_path):
    path = bench.write_base(tmp_path, base)
    for name, overlay in bench.CANDIDATES[base].items():
        spec = load_spec_file(path, profile=name)
        assert spec.schedule.granularity == "step"
        assert spec.schedule.max_epochs == overlay["schedule"]["max_epochs"]
        assert list(spec.schedule.milestones) == overlay["schedule"]["milestones"]
        if base == "geng":  # the paper's SGD is swapped for Adam, and SGD's momentum leaves with it
            assert spec.optim.name == "adam"
