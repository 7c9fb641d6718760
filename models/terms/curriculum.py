"""``curriculum_triplet``: triplet loss with Mancs' curriculum sampling of the negative (seed 002 §3.3).

For each anchor a *random* positive (another image of its identity); its N_n negatives in the
batch are ranked by distance to the anchor, hardest (closest) first, rank r = 0 … N_n − 1; the
negative is drawn with probability ∝ the Gaussian density at its rank,

    μ = [N_n − N_n·t/t0]₊,   σ = a·b^((t − t0)/(t1 − t0)),   P(r) ∝ exp(−(r − μ)² / 2σ²),

(truncated to the ranks present and normalised: a discretised Gaussian), then
``mean [m + D(a, p) − D(a, n)]₊`` with Euclidean D on un-normalised features, as ``triplet``.
t0 = 30, t1 = 60, a = 15, b = 0.001, m = 0.5 (seed §4.3). So training moves from the easiest
negatives (μ = N_n, and a very wide σ) to the hardest (μ = 0 from t0 on), and σ shrinks from a
at t0 to a·b at t1 (0.015: hard mining) and further after.

Readings (named options; defaults = the seed as written — docs/mancs.md):

- ``time``: ``epoch`` — t = the number of completed epochs (0 in the first epoch), constant within
  an epoch; ``continuous`` adds the fraction of the current epoch done. With
  ``schedule.granularity: step`` (the cpu profile, ``--epochs``) every phase of the run follows the
  optimizer step, the curriculum included: t is always continuous there, so ``time`` has nothing
  to choose and a spec holds it at its default (``RunSpec`` drops ``time: continuous``, the same run).
- ``schedule_epochs`` (160): t0 and t1 are stated for a run of that length and scale with the
  run's ``schedule.max_epochs`` (t0·E/160, t1·E/160), so a shortened run (``--epochs``, the cpu
  profile) keeps the curriculum's shape; the effective values are recorded (``describe``).
- ``early_sigma``: ``formula`` — σ before t0 is the formula's, a·b^(negative) > a (15 000 at t = 0:
  a near-uniform draw); ``constant`` holds σ = a until t0 (the reference's open question).
- ``positive``: ``random`` — one random positive per anchor (the seed's text, B triplets);
  ``all`` — every (anchor, positive) pair with its own negative draw, the P·K·(K − 1) triplets
  the seed's normaliser 1/(P(K−1)K) counts.
- ``margin``: 0.5; null = the soft margin log(1 + exp(D(a,p) − D(a,n))).

(The seed's loss formula omits D(a, p) — a transcription slip: without it the loss would pull
negatives closer. The standard triplet form is used.)

Randomness: the draws use torch's global generator (on the features' device), which the
training loop seeds from (seed, epoch) at every epoch start, so a run is reproducible and a
resumed run draws the same negatives. Ties in distance are ranked by batch position (stable sort).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from reidbench.models.losses import euclidean_distances
from reidbench.models.terms import LossTermEntry, TermContext, TrainProgress

POSITIVES = ("random", "all")
TIMES = ("epoch", "continuous")
EARLY_SIGMAS = ("formula", "constant")


@dataclass(frozen=True)
class CurriculumTripletParams:
    margin: float | None = 0.5
    t0_epochs: float = 30.0
    t1_epochs: float = 60.0
    a: float = 15.0
    b: float = 0.001
    schedule_epochs: int = 160
    time: str = "epoch"
    early_sigma: str = "formula"
    positive: str = "random"

    def validate(self, where: str) -> None:
        if self.margin is not None and self.margin < 0:
            raise ValueError(f"{where}.margin={self.margin!r} is not valid: a value >= 0 or null (soft margin)")
        if not 0 < self.t0_epochs < self.t1_epochs:
            raise ValueError(f"{where}.t0_epochs={self.t0_epochs!r}, t1_epochs={self.t1_epochs!r} are not valid: "
                             "0 < t0_epochs < t1_epochs")
        if not self.a > 0 or not 0 < self.b:
            raise ValueError(f"{where}.a={self.a!r}, b={self.b!r} are not valid: a > 0 and b > 0")
        if self.schedule_epochs < 1:
            raise ValueError(f"{where}.schedule_epochs={self.schedule_epochs!r} is not valid: an integer >= 1")
        for name, valid in (("time", TIMES), ("early_sigma", EARLY_SIGMAS), ("positive", POSITIVES)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{where}.{name}={getattr(self, name)!r} is not valid: {' or '.join(valid)}")


def effective_bounds(params: CurriculumTripletParams, max_epochs: int) -> tuple[float, float]:
    """(t0, t1) for a run of ``max_epochs``: the stated ones scaled by max_epochs / schedule_epochs."""
    scale = max_epochs / params.schedule_epochs
    return params.t0_epochs * scale, params.t1_epochs * scale


def effective_time(time: str, granularity: str = "epoch") -> str:
    """The reading of t a run uses: ``continuous`` in step granularity, else ``time``."""
    return "continuous" if granularity == "step" else time


def curriculum_time(progress: TrainProgress, time: str = "epoch") -> float:
    """t in epochs: completed epochs (``epoch``), plus the fraction of the current one (``continuous``,
    and always in step granularity: ``progress.granularity``)."""
    if effective_time(time, progress.granularity) == "continuous":
        return progress.elapsed
    return float(max(0, progress.epoch - 1))


def mu_fraction_sigma(t: float, t0: float, t1: float, a: float, b: float, early_sigma: str = "formula"
                      ) -> tuple[float, float]:
    """(μ / N_n, σ) at time t: μ = [N_n − N_n·t/t0]₊, σ = a·b^((t − t0)/(t1 − t0)) (σ = a before t0 if constant)."""
    mu_fraction = max(0.0, 1.0 - t / t0)
    sigma = a if (early_sigma == "constant" and t < t0) else a * b ** ((t - t0) / (t1 - t0))
    return mu_fraction, sigma


def rank_probabilities(counts: torch.Tensor, width: int, mu_fraction: float, sigma: float) -> torch.Tensor:
    """Row i: P(rank r) ∝ exp(−(r − μ_i)²/2σ²) over r < counts[i] (0 beyond), μ_i = mu_fraction·counts[i].

    float64; the squared distances are shifted by their row minimum first, so even a σ of 1e−200
    leaves the nearest rank with probability 1 instead of 0/0.
    """
    sigma = max(float(sigma), 1e-150)  # σ² stays a normal float64
    ranks = torch.arange(width, dtype=torch.float64, device=counts.device)
    valid = ranks[None, :] < counts[:, None]
    squared = (ranks[None, :] - mu_fraction * counts[:, None].double()) ** 2
    squared = squared.masked_fill(~valid, math.inf)
    shifted = squared - squared.min(dim=1, keepdim=True).values.clamp(max=1e300)
    logits = (-shifted / (2.0 * sigma * sigma)).masked_fill(~valid, -math.inf)
    return torch.softmax(logits, dim=1)


class CurriculumTripletLoss(nn.Module):
    """The term (see the module doc); ``progress`` is the loop's TrainProgress, read at every forward."""

    def __init__(self, params: CurriculumTripletParams, progress: TrainProgress) -> None:
        super().__init__()
        self.params = params
        self.progress = progress

    def schedule(self) -> tuple[float, float, float]:
        """(t, μ/N_n, σ) now."""
        p = self.params
        t0, t1 = effective_bounds(p, self.progress.max_epochs)
        t = curriculum_time(self.progress, p.time)
        return (t, *mu_fraction_sigma(t, t0, t1, p.a, p.b, p.early_sigma))

    def describe(self) -> dict[str, Any]:
        """What the run uses: effective t0/t1 and μ/N_n, σ at the start of every epoch (recorded with the run)."""
        p = self.params
        epochs = self.progress.max_epochs
        t0, t1 = effective_bounds(p, epochs)
        rows = [mu_fraction_sigma(float(e - 1), t0, t1, p.a, p.b, p.early_sigma) for e in range(1, epochs + 1)]
        return {"t0_epochs": t0, "t1_epochs": t1, "stated": [p.t0_epochs, p.t1_epochs, p.schedule_epochs],
                "max_epochs": epochs, "time": effective_time(p.time, self.progress.granularity),
                "early_sigma": p.early_sigma, "positive": p.positive,
                "mu_fraction_by_epoch": [round(m, 6) for m, _ in rows],
                "sigma_by_epoch": [float(f"{s:.6g}") for _, s in rows]}

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _, mu_fraction, sigma = self.schedule()
        return curriculum_triplet_loss(features, labels, mu_fraction, sigma, self.params.margin, self.params.positive)


def draw_triplets(distances: torch.Tensor, labels: torch.Tensor, mu_fraction: float, sigma: float,
                  positive: str = "random") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchor, positive, negative, negative rank) index tensors of the drawn triplets.

    Anchors without a positive or a negative are left out. Draws from torch's global generator.
    """
    n = len(labels)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=labels.device)
    positives = same & ~eye
    negatives = ~same
    if positive == "random":
        has = positives.any(dim=1)
        weights = positives.double().masked_fill(~has[:, None] & eye, 1.0)  # a row must have some weight
        chosen = torch.multinomial(weights, 1).squeeze(1)
        anchor = torch.arange(n, device=labels.device)
        keep = has
        anchor, pos = anchor[keep], chosen[keep]
    elif positive == "all":
        anchor, pos = positives.nonzero(as_tuple=True)
    else:
        raise ValueError(f"positive={positive!r} is not valid: {' or '.join(POSITIVES)}")
    counts = negatives.sum(dim=1)
    ok = counts[anchor] > 0
    anchor, pos = anchor[ok], pos[ok]
    # Negatives hardest (closest) first; non-negatives sorted to the end.
    order = torch.sort(distances.detach().masked_fill(~negatives, math.inf), dim=1, stable=True).indices
    width = int(counts.max()) if n else 0
    if len(anchor) == 0 or width == 0:
        empty = anchor[:0]
        return empty, empty, empty, empty
    probabilities = rank_probabilities(counts[anchor], width, mu_fraction, sigma)
    rank = torch.multinomial(probabilities, 1).squeeze(1)
    neg = order[anchor, rank]
    return anchor, pos, neg, rank


def curriculum_triplet_loss(features: torch.Tensor, labels: torch.Tensor, mu_fraction: float, sigma: float,
                            margin: float | None = 0.5, positive: str = "random") -> torch.Tensor:
    distances = euclidean_distances(features)
    anchor, pos, neg, _ = draw_triplets(distances, labels, mu_fraction, sigma, positive)
    if len(anchor) == 0:
        return distances.sum() * 0.0  # no triplet in this batch: zero, still connected to the graph
    gap = distances[anchor, pos] - distances[anchor, neg]
    return F.softplus(gap).mean() if margin is None else F.relu(gap + margin).mean()


def build(context: TermContext) -> nn.Module:
    return CurriculumTripletLoss(context.params, context.progress)


TERM = LossTermEntry(name="curriculum_triplet",
                     summary="triplet with Mancs' curriculum sampling: random positive, negative drawn by a "
                             "Gaussian over its hardness rank moving easy to hard (t0, t1 rescaled to the run)",
                     build=build, params=CurriculumTripletParams, default_label="triplet")
