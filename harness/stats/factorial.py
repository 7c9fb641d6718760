"""Two-level factorial designs over tricks: generation, alias structure, effects with intervals, Shapley values.

Pure functions and frozen records (numpy, scipy, statsmodels, pyDOE; no I/O, no torch, nothing
printed). docs/factorial.md gives the definitions with references; in short:

* **Coding.** Factor ``i`` is the i-th trick of ``--add``; a design point is the set of tricks
  applied, held as a bitmask (bit ``i`` set: trick ``i`` on). Coded ``x_i = +1`` when trick ``i``
  is applied, ``-1`` when not.
* **Terms.** A term is a set of factors (a bitmask): ``{A}`` a main effect, ``{A, B}`` the
  two-factor interaction A×B. Its contrast column is the product of its members' coded columns.
* **Effect** (the classical one, Box, Hunter & Hunter 2005 ch. 5; Montgomery 2017 ch. 6): the mean
  response where the term's column is +1 minus the mean where it is -1, which equals **2 × the
  term's coefficient** in the least-squares fit of the ±1-coded model. A main effect is "with the
  trick − without", averaged over the other tricks; the A×B effect is half of (A's effect with B
  applied − A's effect without B). Everything reported here is an effect in that sense, never a
  coefficient.
* **Fractions.** A regular 2^(k−p) fraction is ``fracfact_by_res`` of pyDOE (the smallest one of
  the requested resolution), its sign chosen so that the base (no trick) is a design point. Its
  *defining relation* (the words whose column is constant) follows from the design matrix by
  linear algebra over GF(2) (``design_from_points``), and with it the *alias structure*: the
  column of term ``t`` is, up to sign, the column of every ``t·w`` for ``w`` in the relation, so
  the fit estimates the sum of their effects (signed).
* **Shapley value** of trick ``i`` (full factorials only): the average over all k! orders of adding
  the tricks of its marginal contribution, ``Σ_{S ∌ i} |S|!(k−|S|−1)!/k! · (v(S∪{i}) − v(S))``
  with ``v(S)`` the mean response at point ``S``; the values sum to ``v(all) − v(none)``.

Intervals (``fit_design``): with 2+ seeds the seeds are blocks and the t interval uses the
pure error of the saturated model (treatment × seed, ``(seeds−1)(points−1)`` df when complete);
with one seed, effects use the residual of the main-effect + two-factor-interaction model when it
has degrees of freedom (the higher-order interactions pooled as error); otherwise the caller
bootstraps query identities (``identity_bootstrap``), every run resampled with the same draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from itertools import combinations
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["Design", "Estimate", "DesignFit", "SEEDS_METHOD", "RESIDUAL_METHOD", "design_from_points", "design_from_matrix", "bootstrap_interval", "marginal_contributions",
           "two_factor_terms",
           "full_factorial", "fractional_factorial", "fit_design", "identity_bootstrap", "shapley_weights",
           "shapley_values", "popcount", "RESOLUTIONS"]

SEEDS_METHOD = "t over seed replicates (OLS, seeds as blocks, pure error)"
RESIDUAL_METHOD = "t from the residual (OLS, main effects + two-factor interactions; higher-order pooled as error)"
RESOLUTIONS = {"IV": 4, "V": 5}  # what --resolution accepts; III would alias main effects with interactions
ROMAN = {3: "III", 4: "IV", 5: "V", 6: "VI", 7: "VII", 8: "VIII"}
# One letter per factor in the alias notation, skipping I (the identity word), as Montgomery's tables do.
FACTOR_LETTERS = "ABCDEFGHJKLMNOPQRSTUVWXYZ"
MAX_FACTORS = len(FACTOR_LETTERS)


def popcount(mask: int) -> int:
    return bin(mask).count("1")


def _members(mask: int) -> tuple[int, ...]:
    return tuple(i for i in range(mask.bit_length()) if mask >> i & 1)


def _order_key(mask: int) -> tuple[int, tuple[int, ...]]:
    """Terms sorted by order, then by their factors' positions: A, B, AB, AC, BC, ABC."""
    return popcount(mask), _members(mask)


@dataclass(frozen=True)
class Design:
    """A regular two-level design: the factors, the design points (bitmasks) and its defining relation.

    ``points``: table order (by number of tricks, then by ``--add`` position: the base first);
    ``generators``: each generated factor's defining word as (mask, sign), e.g. E = ABC is
    (ABCE, +1): the product of the A, B, C, E columns is +1 on every point. Empty for a full factorial.
    """

    factors: tuple[str, ...]
    points: tuple[int, ...]
    generators: tuple[tuple[int, int], ...] = ()
    base_factors: tuple[int, ...] = ()

    @property
    def k(self) -> int:
        return len(self.factors)

    @property
    def p(self) -> int:
        return len(self.generators)

    @property
    def is_full(self) -> bool:
        return not self.generators

    @property
    def letters(self) -> tuple[str, ...]:
        return tuple(FACTOR_LETTERS[: self.k])

    def word(self, mask: int, sign: int = 1) -> str:
        """``ABE`` (or ``−ABE``); ``I`` for the empty word."""
        text = "".join(self.letters[i] for i in _members(mask)) or "I"
        return ("−" if sign < 0 else "") + text

    def term_name(self, mask: int, labels: Sequence[str] | None = None, sep: str = " × ") -> str:
        names = labels or self.factors
        return sep.join(names[i] for i in _members(mask))

    @property
    def defining_relation(self) -> tuple[tuple[int, int], ...]:
        """Every non-identity word of the defining relation (products of the generators' words), sorted."""
        words: dict[int, int] = {0: 1}
        for gen, sign in self.generators:
            for w, s in list(words.items()):
                words[w ^ gen] = s * sign
        return tuple(sorted(((w, s) for w, s in words.items() if w), key=lambda ws: _order_key(ws[0])))

    @property
    def resolution(self) -> int | None:
        """Length of the shortest defining word; None for a full factorial (nothing is aliased)."""
        relation = self.defining_relation
        return min(popcount(w) for w, _ in relation) if relation else None

    def aliases(self, mask: int) -> tuple[tuple[int, int], ...]:
        """The alias chain of term ``mask``: (term, sign relative to ``mask``) for ``mask`` and every
        ``mask·w`` (w in the defining relation), sorted by order (``mask`` itself first among equals)."""
        chain = [(mask, 1)] + [(mask ^ w, s) for w, s in self.defining_relation]
        return tuple(sorted(chain, key=lambda ms: (_order_key(ms[0]), ms[0] != mask)))

    def representative(self, mask: int) -> int:
        """The lowest-order member of ``mask``'s alias chain (the label the fit uses for the chain)."""
        return min((m for m, _ in self.aliases(mask)), key=_order_key)

    def chains(self) -> list[tuple[tuple[int, int], ...]]:
        """Every estimable alias chain (2^(k−p) − 1 of them), each relative to its representative,
        sorted by the representative: main effects, then two-factor chains, then higher ones."""
        seen: set[int] = set()
        out = []
        for sub in range(1, 1 << len(self.base_factors)):
            mask = sum(1 << self.base_factors[j] for j in range(len(self.base_factors)) if sub >> j & 1)
            rep = self.representative(mask)
            if rep in seen:
                continue
            seen.add(rep)
            out.append(self.aliases(rep))
        return sorted(out, key=lambda chain: _order_key(chain[0][0]))

    def column(self, mask: int) -> np.ndarray:
        """The ±1 contrast column of term ``mask`` over the design points (in ``points`` order)."""
        x = self._coded
        col = np.ones(len(self.points))
        for i in _members(mask):
            col = col * x[:, i]
        return col

    def coded(self) -> np.ndarray:
        """points × factors, +1 where the trick is applied, −1 where not."""
        return self._coded.copy()

    @cached_property
    def _coded(self) -> np.ndarray:
        return np.array([[1 if p >> i & 1 else -1 for i in range(self.k)] for p in self.points], dtype=float)

    def describe(self) -> str:
        """``full factorial 2^3 (8 points)`` / ``2^(6−2) fraction, resolution IV (16 points)``."""
        if self.is_full:
            return f"full factorial 2^{self.k} ({len(self.points)} points)"
        return (f"2^({self.k}−{self.p}) fraction, resolution {ROMAN.get(self.resolution or 0, self.resolution)} "
                f"({len(self.points)} points)")

    def generator_text(self) -> list[str]:
        """``E = ABC`` per generated factor (sign included: ``F = −ABD``)."""
        out = []
        for word, sign in self.generators:
            generated = max(_members(word))
            out.append(f"{self.letters[generated]} = {self.word(word & ~(1 << generated), sign)}")
        return out

    def relation_text(self) -> str:
        return "I = " + " = ".join(self.word(w, s) for w, s in self.defining_relation)


def _sorted_points(points: Sequence[int]) -> tuple[int, ...]:
    return tuple(sorted(dict.fromkeys(points), key=_order_key))


def _check_factors(factors: Sequence[str]) -> tuple[str, ...]:
    names = tuple(factors)
    if len(names) < 2:
        raise ValueError(f"a factorial design needs at least 2 tricks in --add, got {len(names)}")
    if len(names) > MAX_FACTORS:
        raise ValueError(f"a factorial design takes at most {MAX_FACTORS} tricks, got {len(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"the factors repeat a trick: {', '.join(names)}")
    return names


def full_factorial(factors: Sequence[str]) -> Design:
    """All 2^k on/off combinations (pyDOE's ``ff2n``), in table order."""
    from pydoe import ff2n

    names = _check_factors(factors)
    points = [sum(1 << i for i, v in enumerate(row) if v > 0) for row in ff2n(len(names))]
    return Design(names, _sorted_points(points), (), tuple(range(len(names))))


def fractional_factorial(factors: Sequence[str], resolution: int | str) -> Design:
    """The smallest regular 2^(k−p) fraction of at least ``resolution`` (pyDOE's ``fracfact_by_res``).

    The fraction is the one that contains the base: each generated factor's sign is chosen so that
    the point with no trick applied is a design point (the alternative fraction, same resolution).
    With few factors the smallest design of that resolution can be the full factorial (p = 0).
    """
    from pydoe import fracfact_by_res

    names = _check_factors(factors)
    res = RESOLUTIONS.get(str(resolution).upper(), resolution) if isinstance(resolution, str) else resolution
    if res not in RESOLUTIONS.values():
        raise ValueError(f"--resolution {resolution!r} is not valid; valid: {', '.join(RESOLUTIONS)}")
    matrix = np.asarray(fracfact_by_res(len(names), int(res)))
    design = design_from_matrix(names, matrix)
    if 0 in design.points:
        return design
    flips = np.ones(len(names))
    for word, sign in design.generators:
        # the generated column at the base (every other factor −1) is sign × (−1)^(base letters):
        # negate it where that is +1, so the base satisfies every generator
        generated = max(_members(word))
        flips[generated] = -1.0 if sign * (-1) ** (popcount(word) - 1) > 0 else 1.0
    # Flipping a generated column changes only that generator's sign: a fraction of the same resolution.
    return design_from_matrix(names, matrix * flips)


def design_from_matrix(factors: Sequence[str], matrix: Any) -> Design:
    """A ±1 design matrix (rows = points, columns = factors) → ``Design`` (see ``design_from_points``)."""
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[1] != len(factors) or not np.isin(m, (-1, 1)).all():
        raise ValueError(f"a design matrix must be points × {len(factors)} factors of ±1, got shape {m.shape}")
    return design_from_points(factors, [sum(1 << i for i, v in enumerate(row) if v > 0) for row in m])


def design_from_points(factors: Sequence[str], points: Sequence[int]) -> Design:
    """The structure of a set of design points (bitmasks): base factors, generators, defining relation.

    Linear algebra over GF(2): a factor column is the set of points where the trick is off, the
    product of ±1 columns is the symmetric difference, and a word of the defining relation is a set
    of columns whose product is constant (+1: empty set, −1: every point). Factors are taken in
    order; one independent of the earlier ones is a base factor, any other is generated by them.
    A set of points that is not a regular fraction (2^m distinct points, every factor a ±product
    of m base factors) is a ValueError.
    """
    names = tuple(factors)
    pts = tuple(dict.fromkeys(int(p) for p in points))
    n = len(pts)
    if n < 2 or n & (n - 1):
        raise ValueError(f"{n} distinct design point(s): a regular two-level design has a power of 2")
    everything = (1 << n) - 1
    # basis rows: (vector, factors combined, sign flag), kept with distinct leading bits
    basis: list[tuple[int, int, int]] = [(everything, 0, 1)]
    base: list[int] = []
    generators: list[tuple[int, int]] = []
    for i in range(len(names)):
        vec = sum(1 << r for r, p in enumerate(pts) if not p >> i & 1)
        combo, neg = 1 << i, 0
        for bvec, bcombo, bneg in sorted(basis, key=lambda b: -b[0].bit_length()):
            if vec >> (bvec.bit_length() - 1) & 1:
                vec, combo, neg = vec ^ bvec, combo ^ bcombo, neg ^ bneg
        if vec:
            basis.append((vec, combo, neg))
            base.append(i)
        else:
            generators.append((combo, -1 if neg else 1))
    if 1 << len(base) != n:
        raise ValueError(f"the {n} design points are not a regular two-level fraction of "
                         f"{', '.join(names)} ({len(base)} independent factors need {1 << len(base)} points)")
    return Design(names, _sorted_points(pts), tuple(generators), tuple(base))


# --------------------------------------------------------------------------- fitting


@dataclass(frozen=True)
class Estimate:
    """One estimated quantity (an effect or a contrast of point means) and its interval.

    ``low``/``high`` NaN when no interval could be computed (``method`` then says why);
    ``df``: the t interval's degrees of freedom (None otherwise).
    """

    estimate: float
    low: float = math.nan
    high: float = math.nan
    method: str = ""
    df: float | None = None

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class DesignFit:
    """OLS of the observations on a set of alias chains (+ seed blocks), fitted by statsmodels.

    ``terms``: the representative of each fitted chain, in column order after the intercept;
    ``linear_map``: (1 + terms + blocks) × observations, the map from observation values to the
    coefficients (what the bootstrap applies to resampled values).
    """

    design: Design
    terms: tuple[int, ...]
    seeds: tuple[Any, ...]
    result: Any = field(repr=False)
    linear_map: np.ndarray = field(repr=False)
    method: str = ""

    @property
    def df_resid(self) -> float:
        return float(self.result.df_resid)

    def coefficient_vector(self, weights: Mapping[int, float]) -> np.ndarray:
        """The coefficient combination equal to ``Σ weights[point] × mean(point)`` (a contrast: Σ weights = 0)."""
        total = sum(weights.values())
        if abs(total) > 1e-9:
            raise ValueError(f"a contrast of point means must have weights summing to 0, got {total}")
        index = {p: r for r, p in enumerate(self.design.points)}
        columns = np.stack([self.design.column(t) for t in self.terms], axis=1)  # points × terms
        vec = np.zeros(self.linear_map.shape[0])
        for point, w in weights.items():
            vec[1:1 + len(self.terms)] += w * columns[index[point]]
        return vec

    def effect_vector(self, term: int) -> np.ndarray:
        vec = np.zeros(self.linear_map.shape[0])
        vec[1 + self.terms.index(term)] = 2.0  # effect = 2 × coefficient
        return vec

    def estimate(self, vec: np.ndarray, confidence: float = 0.95) -> Estimate:
        """``vec · coefficients`` with its t interval when the fit has residual degrees of freedom."""
        value = float(vec @ self.result.params)
        if self.result.df_resid < 1 or not self.method:
            return Estimate(value, method="", df=None)
        test = self.result.t_test(vec[None, :])
        low, high = np.asarray(test.conf_int(alpha=1 - confidence)).reshape(-1)
        return Estimate(value, float(low), float(high), self.method, float(test.df_denom))


def fit_design(design: Design, points: Sequence[int], seeds: Sequence[Any], values: Sequence[float], *,
               saturated: bool | None = None) -> DesignFit:
    """Fit observations (one per run: its design point, its seed, its value) by OLS (statsmodels).

    Terms: with two or more seeds, or ``saturated=True``, every estimable alias chain (the
    saturated model: its residual is pure error between seeds) and one block per seed beyond the
    first; with one seed (``saturated`` None or False), the main effects and two-factor chains only.
    Every design point needs at least one observation. ``method`` of the result names the t
    interval its residual supports ("" when it has no degrees of freedom).
    """
    import statsmodels.api as sm

    if not (len(points) == len(seeds) == len(values)) or not len(points):
        raise ValueError("fit_design needs one point, seed and value per observation")
    missing = [p for p in design.points if p not in set(points)]
    if missing:
        raise ValueError(f"{len(missing)} design point(s) have no result "
                         f"({', '.join(design.word(p) if p else 'base' for p in missing[:4])}"
                         f"{', …' if len(missing) > 4 else ''})")
    unknown = [p for p in points if p not in set(design.points)]
    if unknown:
        raise ValueError(f"observation at {design.word(unknown[0])} is not a point of the design")
    seed_order = tuple(dict.fromkeys(seeds))
    replicated = len(seed_order) > 1
    full = replicated if saturated is None else saturated
    chains = design.chains()
    terms = tuple(c[0][0] for c in chains if full or popcount(c[0][0]) <= 2)  # c[0]: lowest order
    index = {p: r for r, p in enumerate(design.points)}
    columns = {t: design.column(t) for t in terms}
    rows = []
    for point, seed in zip(points, seeds):
        r = index[point]
        row = [1.0] + [columns[t][r] for t in terms]
        row += [1.0 if seed == s else 0.0 for s in seed_order[1:]]
        rows.append(row)
    x = np.array(rows)
    y = np.asarray(values, dtype=float)
    result = sm.OLS(y, x).fit()
    if result.df_resid >= 1:
        method = SEEDS_METHOD if full and replicated else (RESIDUAL_METHOD if not full else "")
    else:
        method = ""
    return DesignFit(design, terms, seed_order, result, np.asarray(result.model.pinv_wexog), method)


# --------------------------------------------------------------------------- bootstrap


def identity_bootstrap(per_query: Sequence[Mapping[str, Any]], query_pids: Any, metric: str, *,
                       resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """``metric`` of every run on each bootstrap resample of query identities: resamples × runs (fractions).

    The same cluster bootstrap as ``paired_bootstrap`` (same draws for the same ``seed``: the
    identities with a valid query, ascending pid, ``default_rng(seed).integers(0, n, size=n)`` per
    resample) applied to any number of runs at once, every run resampled with the same draw, so
    any linear combination of the runs' metrics (an effect, a Shapley value) gets its
    distribution. All runs must have scored the same queries (same length, same valid mask).
    """
    from reidbench.harness.stats.paired import _check_metric, _metric_values, _per_query_arrays, resample_counts

    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    key = _check_metric(metric)
    runs = [_per_query_arrays(pq, f"run {i}") for i, pq in enumerate(per_query)]
    if not runs:
        raise ValueError("identity_bootstrap needs at least one run")
    pids = np.asarray(query_pids)
    valid = runs[0]["valid"]
    for i, run in enumerate(runs):
        if run["valid"].size != pids.size or not np.array_equal(run["valid"], valid):
            raise ValueError(f"run {i} was not scored on the same queries as run 0 (query count or valid "
                             "queries differ): a joint bootstrap needs the same test data")
    if not valid.any():
        raise ValueError(f"no query is valid, so {metric} is undefined")
    clusters, cluster = np.unique(pids[valid], return_inverse=True)
    n = int(clusters.size)
    counts = np.bincount(cluster, minlength=n).astype(float)
    sums = np.stack([np.bincount(cluster, weights=_metric_values(run, key)[0][valid], minlength=n)
                     for run in runs], axis=1)  # identities × runs
    out = np.empty((resamples, len(runs)))
    for start, weights in resample_counts(n, resamples, seed):
        out[start:start + len(weights)] = (weights @ sums) / (weights @ counts)[:, None]
    return out


def bootstrap_interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval (numpy's linear interpolation), as ``paired_bootstrap`` takes it."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [tail, 1.0 - tail])
    return float(low), float(high)


# --------------------------------------------------------------------------- Shapley


def shapley_weights(k: int, player: int) -> dict[int, float]:
    """Weights ``w`` such that player's Shapley value = Σ_S w[S] · v(S) over the 2^k coalitions (bitmasks).

    φ_i = Σ_{S ∌ i} |S|! (k − |S| − 1)! / k! · (v(S ∪ {i}) − v(S)): the average over the k! orders
    of i's marginal contribution. The weights sum to 0 (a contrast).
    """
    if not 0 <= player < k:
        raise ValueError(f"player {player} is not one of 0..{k - 1}")
    weights: dict[int, float] = {}
    for coalition in range(1 << k):
        if coalition >> player & 1:
            continue
        s = popcount(coalition)
        w = math.factorial(s) * math.factorial(k - s - 1) / math.factorial(k)
        weights[coalition | 1 << player] = weights.get(coalition | 1 << player, 0.0) + w
        weights[coalition] = weights.get(coalition, 0.0) - w
    return weights


def shapley_values(values: Mapping[int, float], k: int) -> list[float]:
    """Exact Shapley value of each of k players from the value of every coalition (bitmask → value)."""
    missing = [s for s in range(1 << k) if s not in values]
    if missing:
        raise ValueError(f"Shapley values need the value of every coalition: {len(missing)} of {1 << k} missing")
    return [sum(w * values[s] for s, w in shapley_weights(k, i).items()) for i in range(k)]


def marginal_contributions(values: Mapping[int, float], k: int, player: int) -> dict[int, float]:
    """v(S ∪ {i}) − v(S) for every coalition S without ``player``: what adding it after S contributes."""
    return {s: values[s | 1 << player] - values[s] for s in range(1 << k) if not s >> player & 1}


def two_factor_terms(design: Design) -> list[tuple[int, int]]:
    """Every pair of factors as a term mask with its alias chain's representative, in pair order."""
    return [(1 << i | 1 << j, design.representative(1 << i | 1 << j)) for i, j in combinations(range(design.k), 2)]
