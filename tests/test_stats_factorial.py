"""Factorial designs against independent computations: effects and t intervals worked by hand (textbook
formulas, not the OLS fit), exact Shapley values of a 2^3 toy worked over its 6 orders, the alias
structure of the 2^(6−2) design E = ABC, F = BCD written out by hand and checked against pyDOE's own
alias map, and the joint identity bootstrap against paired_bootstrap and against resampling by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from reidbench.harness.stats import paired_bootstrap
from reidbench.harness.stats.factorial import (
    RESIDUAL_METHOD,
    SEEDS_METHOD,
    bootstrap_interval,
    design_from_matrix,
    design_from_points,
    fit_design,
    fractional_factorial,
    full_factorial,
    identity_bootstrap,
    shapley_values,
    shapley_weights,
)

T_975_1 = 12.706205  # Student t, 97.5 % quantile, 1 degree of freedom (tables)
T_975_3 = 3.182446  # 3 degrees of freedom


def _mask(word: str, factors: str = "ABCDEF") -> int:
    return sum(1 << factors.index(ch) for ch in word)


def _effect_by_hand(design, means: dict[int, float], term: int) -> float:
    """Mean of the point means where the term's column is +1 minus where it is −1 (the definition)."""
    plus, minus = [], []
    for point, value in means.items():
        sign = 1
        for i in range(design.k):
            if term >> i & 1:
                sign *= 1 if point >> i & 1 else -1
        (plus if sign > 0 else minus).append(value)
    return sum(plus) / len(plus) - sum(minus) / len(minus)


# --------------------------------------------------------------------------- designs


def test_full_factorial_has_every_combination_base_first():
    design = full_factorial(["stride", "bnneck", "center"])
    assert sorted(design.points) == list(range(8))
    assert design.points[0] == 0 and design.points[-1] == 7  # base first, all tricks last
    assert [bin(p).count("1") for p in design.points] == [0, 1, 1, 1, 2, 2, 2, 3]
    assert design.is_full and design.resolution is None and design.defining_relation == ()
    assert len(design.chains()) == 7  # every term estimable on its own
    assert all(len(chain) == 1 for chain in design.chains())


def test_alias_structure_of_the_2_6_2_design_E_ABC_F_BCD():
    """Montgomery's 2^(6−2)_IV: E = ABC, F = BCD, so I = ABCE = BCDF = ADEF (their product)."""
    import pydoe

    design = design_from_matrix(list("ABCDEF"), pydoe.fracfact("a b c d abc bcd"))
    assert design.resolution == 4 and design.p == 2 and len(design.points) == 16
    assert design.generator_text() == ["E = ABC", "F = BCD"]
    assert {w for w, s in design.defining_relation} == {_mask("ABCE"), _mask("BCDF"), _mask("ADEF")}
    assert all(s == 1 for _, s in design.defining_relation)
    # Two-factor aliases by hand: multiply each two-factor term by each word of I.
    by_hand = [{"AB", "CE"}, {"AC", "BE"}, {"AD", "EF"}, {"AE", "BC", "DF"}, {"AF", "DE"}, {"BD", "CF"},
               {"BF", "CD"}]
    chains = [{design.word(m) for m, _ in chain if bin(m).count("1") == 2} for chain in design.chains()]
    assert sorted(map(sorted, (c for c in chains if c))) == sorted(map(sorted, by_hand))
    # Main effects are aliased only with three-factor and longer interactions (resolution IV).
    for i, letter in enumerate("ABCDEF"):
        chain = design.aliases(1 << i)
        assert min(bin(m).count("1") for m, _ in chain[1:]) == 3, letter
    assert {design.word(m) for m, _ in design.aliases(_mask("A"))} == {"A", "BCE", "DEF", "ABCDF"}


def test_alias_chains_agree_with_pydoes_alias_map():
    """Every alias class (all 2^p members) equals the one pyDOE's fracfact_aliasing finds independently."""
    import pydoe

    matrix = pydoe.fracfact("a b c d abc bcd")
    design = design_from_matrix(list("ABCDEF"), matrix)
    theirs, _ = pydoe.fracfact_aliasing(matrix)
    theirs = {frozenset(w.strip().upper() for w in line.split("=")) for line in theirs}
    ours = {frozenset(design.word(m) for m, _ in chain) for chain in design.chains()}
    relation = frozenset(design.word(w) for w, _ in design.defining_relation)
    assert ours | {relation} == theirs


@pytest.mark.parametrize("k", [4, 5, 6, 7, 8])
@pytest.mark.parametrize("resolution", ["IV", "V"])
def test_fractions_have_the_resolution_asked_and_contain_the_base(k, resolution):
    design = fractional_factorial([f"t{i}" for i in range(k)], resolution)
    wanted = {"IV": 4, "V": 5}[resolution]
    assert design.is_full or design.resolution >= wanted
    assert 0 in design.points  # the base is a design point (its sign chosen for that)
    # Brute force: every word of the defining relation has a constant column over the points.
    x = design.coded()
    for word, sign in design.defining_relation:
        column = np.prod(x[:, [i for i in range(k) if word >> i & 1]], axis=1)
        assert np.all(column == sign)
    # and no shorter constant product exists (the resolution is exact)
    if not design.is_full:
        shortest = min(len(c) for r in range(1, k + 1) for c in itertools.combinations(range(k), r)
                       if abs(np.prod(x[:, list(c)], axis=1).sum()) == len(design.points))
        assert shortest == design.resolution


def test_six_tricks_at_resolution_iv_need_16_runs():
    design = fractional_factorial(["warmup", "rea", "ls", "stride", "bnneck", "center"], "IV")
    assert len(design.points) == 16 and design.resolution == 4 and design.p == 2


def test_points_that_are_not_a_regular_fraction_are_refused():
    with pytest.raises(ValueError, match="power of 2"):
        design_from_points(["a", "b"], [0, 1, 2])
    with pytest.raises(ValueError, match="not a regular two-level fraction"):
        design_from_points(["a", "b", "c"], [0, 1, 2, 4])  # 4 points, but all 3 factors vary independently


# --------------------------------------------------------------------------- effects and intervals


def test_replicated_2x2_effects_and_t_intervals_by_hand():
    """Two seeds as blocks: effect = difference of means; interval = RCBD pure error (Montgomery ch. 4)."""
    design = full_factorial(["a", "b"])  # points 0, A, B, AB
    y = {0: {0: 10.0, 1: 12.0}, 1: {0: 14.0, 1: 15.0}, 2: {0: 12.0, 1: 15.0}, 3: {0: 20.0, 1: 23.0}}
    points, seeds, values = zip(*[(p, s, v) for p, by_seed in y.items() for s, v in by_seed.items()])
    fit = fit_design(design, points, seeds, values)
    assert fit.method == SEEDS_METHOD and fit.df_resid == 3  # (2 − 1)(4 − 1)
    means = {p: np.mean(list(v.values())) for p, v in y.items()}
    # residuals y − point mean − seed mean + grand mean; MSE on (s−1)(t−1) df
    seed_mean = {s: np.mean([y[p][s] for p in y]) for s in (0, 1)}
    grand = np.mean([v for by in y.values() for v in by.values()])
    sse = sum((y[p][s] - means[p] - seed_mean[s] + grand) ** 2 for p in y for s in (0, 1))
    mse = sse / 3
    se = math.sqrt(mse / 2)  # effect = ½ Σ ±mean, each mean of 2 seeds: var = 4 · ¼ · σ²/2
    for term, expected in ((1, 5.75), (2, 4.75), (3, 2.25)):  # A, B, AB worked out by hand
        assert _effect_by_hand(design, means, term) == pytest.approx(expected)
        e = fit.estimate(fit.effect_vector(term))
        assert e.estimate == pytest.approx(expected)
        assert e.low == pytest.approx(expected - T_975_3 * se, abs=1e-5)
        assert e.high == pytest.approx(expected + T_975_3 * se, abs=1e-5)
    assert T_975_3 * se == pytest.approx(1.5235, abs=1e-4)  # MSE = 1.375 / 3
    assert fit.estimate(fit.effect_vector(1)).significant and fit.estimate(fit.effect_vector(3)).significant


def test_unreplicated_2_3_effects_with_the_three_factor_interaction_as_error():
    design = full_factorial(["a", "b", "c"])
    y = {0: 60.0, 1: 72.0, 2: 54.0, 4: 68.0, 3: 68.0, 5: 83.0, 6: 60.0, 7: 80.0}
    fit = fit_design(design, list(y), [0] * 8, list(y.values()))
    assert fit.method == RESIDUAL_METHOD and fit.df_resid == 1
    abc = _effect_by_hand(design, y, 7)
    mse = 8 * (abc / 2) ** 2  # SS of the ABC contrast: N · (effect / 2)², 1 df
    se = math.sqrt(mse / 2)
    for term in (1, 2, 4, 3, 5, 6):
        expected = _effect_by_hand(design, y, term)
        e = fit.estimate(fit.effect_vector(term))
        assert e.estimate == pytest.approx(expected)
        assert (e.high - e.low) / 2 == pytest.approx(T_975_1 * se, rel=1e-5)
    assert _effect_by_hand(design, y, 1) == pytest.approx((72 + 68 + 83 + 80) / 4 - (60 + 54 + 68 + 60) / 4)


def test_a_saturated_unreplicated_fit_has_no_t_interval():
    design = full_factorial(["a", "b"])
    fit = fit_design(design, [0, 1, 2, 3], [0] * 4, [1.0, 2.0, 3.0, 5.0])
    assert fit.df_resid == 0 and fit.method == ""
    e = fit.estimate(fit.effect_vector(1))
    assert e.estimate == pytest.approx(1.5) and math.isnan(e.low)


def test_fraction_effects_are_the_contrasts_of_the_alias_chains():
    """In the 2^(6−2) design, the AB estimate is the (hand) AB contrast, which is also CE's: their sum."""
    import pydoe

    design = design_from_matrix(list("ABCDEF"), pydoe.fracfact("a b c d abc bcd"))
    rng = np.random.default_rng(3)
    y = {p: float(rng.normal(50, 5)) for p in design.points}
    fit = fit_design(design, list(y), [0] * 16, list(y.values()))
    assert fit.df_resid == 16 - 1 - 6 - 7  # 6 mains, 7 two-factor chains
    for term in (_mask("A"), _mask("AB"), _mask("AE")):
        rep = design.representative(term)
        assert fit.estimate(fit.effect_vector(rep)).estimate == pytest.approx(_effect_by_hand(design, y, term))
    assert _effect_by_hand(design, y, _mask("AB")) == pytest.approx(_effect_by_hand(design, y, _mask("CE")))


def test_missing_design_point_is_a_clear_error():
    design = full_factorial(["a", "b"])
    with pytest.raises(ValueError, match="1 design point"):
        fit_design(design, [0, 1, 2], [0, 0, 0], [1.0, 2.0, 3.0])


# --------------------------------------------------------------------------- Shapley


def _shapley_by_orders(values: dict[int, float], k: int) -> list[float]:
    """The definition: average over all k! orders of each player's marginal contribution."""
    totals = [0.0] * k
    orders = list(itertools.permutations(range(k)))
    for order in orders:
        coalition = 0
        for player in order:
            totals[player] += values[coalition | 1 << player] - values[coalition]
            coalition |= 1 << player
    return [t / len(orders) for t in totals]


def test_exact_shapley_of_a_2_3_toy_worked_by_hand():
    # v: A alone 2, B and C alone 0, AB 4, AC 2, BC 1, all 6. Over the 6 orders A contributes
    # 2, 2, 4, 5, 2, 5 (→ 20/6), B 2, 4, 0, 0, 4, 1 (→ 11/6), C 2, 0, 2, 1, 0, 0 (→ 5/6).
    v = {0: 0.0, 1: 2.0, 2: 0.0, 4: 0.0, 3: 4.0, 5: 2.0, 6: 1.0, 7: 6.0}
    assert shapley_values(v, 3) == pytest.approx([20 / 6, 11 / 6, 5 / 6])
    assert _shapley_by_orders(v, 3) == pytest.approx([20 / 6, 11 / 6, 5 / 6])


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_shapley_is_efficient_and_matches_the_average_over_orders(k):
    rng = np.random.default_rng(k)
    v = {s: float(rng.normal(50, 10)) for s in range(1 << k)}
    phi = shapley_values(v, k)
    assert sum(phi) == pytest.approx(v[(1 << k) - 1] - v[0])  # efficiency: they share the total gain
    assert phi == pytest.approx(_shapley_by_orders(v, k))
    for i in range(k):
        assert sum(shapley_weights(k, i).values()) == pytest.approx(0.0)  # a contrast


def test_shapley_symmetry_and_null_player():
    # A and B are interchangeable; C never changes anything (v(S ∪ C) = v(S)).
    base = {0: 1.0, 1: 3.0, 2: 3.0, 3: 8.0}
    v = {s: base[s & 3] for s in range(8)}
    phi = shapley_values(v, 3)
    assert phi[0] == pytest.approx(phi[1]) and phi[2] == pytest.approx(0.0)
    assert phi[0] == pytest.approx(3.5)  # (8 − 1) / 2


def test_shapley_contrast_of_a_replicated_fit_is_the_shapley_of_the_means():
    design = full_factorial(["a", "b", "c"])
    rng = np.random.default_rng(1)
    obs = [(p, s, float(rng.normal(50 + 3 * p, 1))) for p in design.points for s in (0, 1, 2)]
    fit = fit_design(design, *zip(*obs))
    means = {p: np.mean([v for q, _, v in obs if q == p]) for p in design.points}
    for i, expected in enumerate(shapley_values(means, 3)):
        e = fit.estimate(fit.coefficient_vector(shapley_weights(3, i)))
        assert e.estimate == pytest.approx(expected)
        assert e.method == SEEDS_METHOD and e.low < e.estimate < e.high


# --------------------------------------------------------------------------- bootstrap


def _per_query(ap: np.ndarray) -> dict[str, np.ndarray]:
    return {"ap": ap, "inp": ap / 2, "first_match_rank": np.where(ap > 0.5, 1, 4), "valid": np.ones(ap.size, bool)}


def test_joint_bootstrap_of_two_runs_is_the_paired_bootstrap():
    """A one-factor design's effect is y(on) − y(off): its interval must be paired_bootstrap's exactly."""
    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(25), 4)
    off, on = _per_query(rng.uniform(0, 1, 100)), _per_query(np.clip(rng.uniform(0, 1, 100) + 0.1, 0, 1))
    samples = identity_bootstrap([off, on], pids, "mAP", resamples=500, seed=7)
    low, high = bootstrap_interval(samples @ np.array([-1.0, 1.0]))
    expected = paired_bootstrap(off, on, pids, metrics=("mAP",), resamples=500, seed=7)["mAP"]
    assert (low, high) == pytest.approx((expected.low, expected.high), abs=1e-12)


def test_joint_bootstrap_equals_resampling_queries_by_hand():
    rng = np.random.default_rng(2)
    pids = np.repeat(np.array([3, 8, 9, 20]), [2, 3, 1, 2])
    runs = [_per_query(rng.uniform(0, 1, pids.size)) for _ in range(3)]
    samples = identity_bootstrap(runs, pids, "R1", resamples=20, seed=5)
    draw = np.random.default_rng(5)
    clusters = np.unique(pids)
    for b in range(20):
        chosen = clusters[draw.integers(0, clusters.size, size=clusters.size)]
        rows = np.concatenate([np.flatnonzero(pids == c) for c in chosen])
        expected = [np.mean(run["first_match_rank"][rows] <= 1) for run in runs]
        assert samples[b] == pytest.approx(expected)


def test_joint_bootstrap_refuses_runs_scored_on_other_queries():
    pids = np.arange(10)
    a = _per_query(np.full(10, 0.5))
    b = dict(_per_query(np.full(10, 0.5)), valid=np.arange(10) > 0)
    with pytest.raises(ValueError, match="not scored on the same queries"):
        identity_bootstrap([a, b], pids, "mAP", resamples=10)
