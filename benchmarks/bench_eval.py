"""Benchmark: Market-size evaluation (distances + CMC + mAP + mINP) against the distance GEMM alone.

Synthetic features with identity structure (751 identities x 6 cameras, ~18% pid-0 distractors in
the gallery, 3,368 queries x 15,913 gallery x 2,048-d at --scale 1) so that mAP is meaningful.
Prints the GEMM time, the full evaluation time (compute_distance + evaluate, and the fused
score()), their ratio, and an argsort-based reference timed on a subset of queries (extrapolated)
together with the largest difference of its scores from ours on that subset.

    .venv/bin/python benchmarks/bench_eval.py            # full Market size
    .venv/bin/python benchmarks/bench_eval.py --scale 0.05   # smoke run

Times are the best of --repeat runs; the machine may be shared, so compare figures from one run.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from reidbench.harness.evaluation.protocol import compute_distance, evaluate, score

MARKET = {"num_query": 3368, "num_gallery": 15913, "num_ids": 751, "num_cams": 6, "distractor_frac": 0.176}


def synthetic_features(scale: float, dim: int, noise: float, seed: int
                       ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """L2-normalised features = identity centre + camera offset + noise; distractors are noise."""
    gen = torch.Generator().manual_seed(seed)
    num_query = max(2, round(MARKET["num_query"] * scale))
    num_gallery = max(4, round(MARKET["num_gallery"] * scale))
    num_ids = max(2, round(MARKET["num_ids"] * scale))
    centres = torch.randn(num_ids + 1, dim, generator=gen)
    cam_offset = 0.6 * torch.randn(MARKET["num_cams"], dim, generator=gen)
    num_distractors = round(num_gallery * MARKET["distractor_frac"])
    q_pids = torch.randint(1, num_ids + 1, (num_query,), generator=gen)
    g_pids = torch.cat([torch.randint(1, num_ids + 1, (num_gallery - num_distractors,), generator=gen),
                        torch.zeros(num_distractors, dtype=torch.long)])
    q_cams = torch.randint(0, MARKET["num_cams"], (num_query,), generator=gen)
    g_cams = torch.randint(0, MARKET["num_cams"], (num_gallery,), generator=gen)

    def feats(pids: torch.Tensor, cams: torch.Tensor) -> torch.Tensor:
        f = centres[pids] + cam_offset[cams] + noise * torch.randn(len(pids), dim, generator=gen)
        distractor = pids == 0
        f[distractor] = (1 + noise ** 2) ** 0.5 * torch.randn(int(distractor.sum()), dim, generator=gen)
        return torch.nn.functional.normalize(f, dim=1)

    return (feats(q_pids, q_cams), feats(g_pids, g_cams), q_pids.numpy(), g_pids.numpy(), q_cams.numpy(),
            g_cams.numpy())


def argsort_reference(dist: np.ndarray, q_pids, g_pids, q_cams, g_cams, max_rank: int = 50) -> dict:
    """The classic per-row argsort evaluation (torchreid's eval_market1501 logic)."""
    order = np.argsort(dist, axis=1)
    cmcs, aps, inps = [], [], []
    for i in range(dist.shape[0]):
        row = order[i]
        keep = ~((g_pids[row] == q_pids[i]) & (g_cams[row] == q_cams[i]))
        hits = (g_pids[row][keep] == q_pids[i]).astype(np.float64)
        if not hits.any():
            continue
        cmc = np.minimum(hits.cumsum(), 1.0)
        cmcs.append(np.concatenate([cmc, np.full(max(0, max_rank - cmc.size), 1.0)])[:max_rank])
        pos = np.flatnonzero(hits) + 1.0
        aps.append(np.mean(np.arange(1, pos.size + 1) / pos))
        inps.append(pos.size / pos[-1])
    return {"cmc": np.mean(cmcs, 0), "mAP": float(np.mean(aps)), "mINP": float(np.mean(inps))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the Market sizes (default 1)")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension (default 2048)")
    parser.add_argument("--noise", type=float, default=2.7,
                        help="per-dimension noise vs identity centre (2.7: mAP ~0.77)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing; the best is printed")
    parser.add_argument("--reference-queries", type=int, default=300,
                        help="queries for the argsort reference (0 to skip)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    q, g, q_pids, g_pids, q_cams, g_cams = synthetic_features(args.scale, args.dim, args.noise, args.seed)
    print(f"sizes: {q.shape[0]} queries x {g.shape[0]} gallery x {q.shape[1]}-d float32, "
          f"{len(np.unique(g_pids))} gallery ids; torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f} (shared machine)")

    # interleaved, best of --repeat each: on a shared machine both see the same spells of load
    times = {"gemm": [], "dist": [], "eval": [], "score": []}
    for _ in range(args.repeat):
        start = time.perf_counter()
        torch.mm(q, g.T)
        times["gemm"].append(time.perf_counter() - start)
        start = time.perf_counter()
        dist = compute_distance(q, g, "euclidean")
        times["dist"].append(time.perf_counter() - start)
        start = time.perf_counter()
        res = evaluate(dist, q_pids, g_pids, q_cams, g_cams)
        times["eval"].append(time.perf_counter() - start)
        start = time.perf_counter()
        fused = score(q, g, q_pids, g_pids, q_cams, g_cams, metric="euclidean")
        times["score"].append(time.perf_counter() - start)
    t_gemm, t_dist, t_eval, t_score = (min(times[k]) for k in ("gemm", "dist", "eval", "score"))
    t_full = min(d + e for d, e in zip(times["dist"], times["eval"]))

    print(f"scores: R1 {res['cmc'][0]:.4f}  R5 {res['cmc'][4]:.4f}  mAP {res['mAP']:.4f}  mINP {res['mINP']:.4f}  "
          f"({res['num_valid_queries']} valid queries)")
    print(f"GEMM alone (torch.mm q x g^T):          {t_gemm:7.3f} s")
    print(f"compute_distance (euclidean):            {t_dist:7.3f} s")
    print(f"evaluate (CMC + mAP + mINP):             {t_eval:7.3f} s")
    print(f"full = compute_distance + evaluate:      {t_full:7.3f} s   ratio to GEMM {t_full / t_gemm:.2f}")
    print(f"score() fused chunked (same metrics):    {t_score:7.3f} s   ratio to GEMM {t_score / t_gemm:.2f}")
    agree = max(abs(fused["mAP"] - res["mAP"]), abs(fused["mINP"] - res["mINP"]), abs(fused["R1"] - res["cmc"][0]))
    print(f"score() vs evaluate() max |diff|: {agree:.2e}")

    if args.reference_queries > 0:
        n = min(args.reference_queries, q.shape[0])
        sub = dist[:n].numpy()
        start = time.perf_counter()
        ref = argsort_reference(sub, q_pids[:n], g_pids, q_cams[:n], g_cams)
        t_ref = time.perf_counter() - start
        ours = evaluate(sub, q_pids[:n], g_pids, q_cams[:n], g_cams)
        diff = max(abs(ref["mAP"] - ours["mAP"]), abs(ref["mINP"] - ours["mINP"]),
                   float(np.abs(ref["cmc"] - ours["cmc"]).max()))
        print(f"argsort reference on {n} queries: {t_ref:.3f} s -> {t_ref * q.shape[0] / n:.2f} s extrapolated "
              f"to {q.shape[0]} queries (evaluate alone: {t_eval:.3f} s); max |diff| of scores {diff:.2e}")


if __name__ == "__main__":
    main()
