"""Benchmark: SGGNN re-scoring at Market size (3,368 queries x top-100 of 15,913 gallery items, 2,048-d).

Prints the wall time and peak resident memory above the baseline (as bench_rerank measures them) of

1. training the re-scorer for a fixed number of steps (default parameters: 48 identities x (1 probe
   + 3 gallery) per batch, top-100 nodes per probe) on random identity-clustered training features
   (Market's 751 identities x 17 images), and
2. re-scoring every query's top-100 and scoring the result with the Market protocol (the blocks are
   produced and scored one at a time, as ``evaluate --rescore sggnn`` does).

A re-scorer trained for a few steps on random features is enough for timing: the cost does not
depend on what it learned. Then the plain (base) ranking's scores are printed next to the re-scored
ones, so a broken re-scoring (e.g. NaN) shows.

    .venv/bin/python benchmarks/bench_sggnn.py                       # full Market size
    .venv/bin/python benchmarks/bench_sggnn.py --scale 0.05 --train-steps 2   # smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from reidbench.harness.evaluation.protocol import score, score_blocks
from reidbench.harness.evaluation.rescorers import sggnn_net
from reidbench.harness.evaluation.rescorers.sggnn import SGGNNParams

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_eval import synthetic_features  # noqa: E402  (same synthetic features as bench_eval)
from bench_rerank import measure_peak  # noqa: E402


def training_features(num_ids: int, per_id: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_ids, dim, generator=gen)
    pids = torch.arange(num_ids).repeat_interleave(per_id)
    feats = torch.nn.functional.normalize(centres[pids] + noise * torch.randn(len(pids), dim, generator=gen), dim=1)
    return feats.numpy(), pids.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the Market sizes (default 1)")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension (default 2048)")
    parser.add_argument("--noise", type=float, default=2.7, help="per-dimension noise vs identity centre")
    parser.add_argument("--train-steps", type=int, default=5, help="training steps timed (default 5)")
    parser.add_argument("--k", type=int, default=100, help="top-k nodes per query (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    q, g, q_pids, g_pids, q_cams, g_cams = synthetic_features(args.scale, args.dim, args.noise, args.seed)
    train_ids = max(2, round(751 * args.scale))
    train_feats, train_pids = training_features(train_ids, 17, args.dim, args.noise, args.seed + 1)
    params = SGGNNParams(k=args.k, steps=args.train_steps)
    print(f"sizes: {q.shape[0]} queries x top-{args.k} of {g.shape[0]} gallery, {args.dim}-d float32; training set "
          f"{len(train_pids)} images of {train_ids} ids; torch threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.1f} (shared machine)")

    (model, history), seconds, cpu_seconds, peak_mb = measure_peak(
        lambda: sggnn_net.train_sggnn(train_feats, train_pids, params, "sqeuclidean"))
    ids = min(params.ids_per_batch, train_ids)
    print(f"train {args.train_steps} steps (batch {ids} probes x top-{min(args.k, 3 * ids)} of {3 * ids} gallery): {seconds:.1f} s wall ({cpu_seconds:.1f} s CPU), "
          f"{seconds / args.train_steps:.2f} s/step, peak RSS above baseline {peak_mb:.0f} MB; "
          f"last loss {history[-1]['loss']:.3f}")

    q_t, g_t = torch.from_numpy(q.numpy()), torch.from_numpy(g.numpy())
    out, seconds, cpu_seconds, peak_mb = measure_peak(
        lambda: score_blocks(sggnn_net.rescored_blocks(model, q_t, g_t, "sqeuclidean", params), q_pids, g_pids,
                             q_cams, g_cams, per_query=True))
    print(f"re-score + protocol: {seconds:.1f} s wall ({cpu_seconds:.1f} s CPU), peak RSS above baseline "
          f"{peak_mb:.0f} MB; load average {os.getloadavg()[0]:.1f}")
    start = time.perf_counter()
    plain = score(q, g, q_pids, g_pids, q_cams, g_cams, metric="sqeuclidean")
    print(f"plain protocol alone {time.perf_counter() - start:.1f} s; base R1 {100 * plain['R1']:.1f} mAP "
          f"{100 * plain['mAP']:.1f} | re-scored (random-feature re-scorer) R1 {100 * out['R1']:.1f} "
          f"mAP {100 * out['mAP']:.1f}")


if __name__ == "__main__":
    main()
