"""Benchmark: k-reciprocal re-ranking at Market size (3,368 + 15,913 items, 2,048-d).

Prints the wall time of ``re_rank`` and its peak resident memory above the baseline just before the
call (Linux: the kernel's high-water mark, reset through /proc/self/clear_refs; elsewhere the
process peak from getrusage, which can only over-report the baseline). Then checks the result
against an exact, dense float64 re-ranking written straight from the description (loops per item,
like the reference implementation) at a smaller size, and prints the largest absolute difference.

    .venv/bin/python benchmarks/bench_rerank.py                 # full Market size
    .venv/bin/python benchmarks/bench_rerank.py --scale 0.05    # smoke run

Targets (see the evaluator brief): the torchreid/BoT float16 implementation took ~140 s and ~7.1 GB
above baseline at full size on this 2-core machine; the goal is <= 28 s and <= ~2.3 GB. The
machine may be shared: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from reidbench.harness.evaluation.rerank import re_rank

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_eval import synthetic_features  # noqa: E402  (same synthetic features as bench_eval)


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_freed_memory() -> None:
    gc.collect()
    try:  # give freed heap pages back to the OS so the baseline is what is really held
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_peak(fn):
    """(result, wall seconds, CPU seconds of all threads, peak MB above the RSS just before the call)."""
    _release_freed_memory()
    hwm_reset = False
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        hwm_reset = True
    except OSError:
        pass
    base_kb = _status_kb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start, cpu_start = time.perf_counter(), time.process_time()
    out = fn()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak_kb = _status_kb("VmHWM") if hwm_reset else None
    if peak_kb is None:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return out, seconds, cpu_seconds, (peak_kb - base_kb) / 1024


def exact_rerank_float64(q: np.ndarray, g: np.ndarray, k1: int = 20, k2: int = 6, lam: float = 0.3) -> np.ndarray:
    """Dense float64 re-ranking, item by item as the description reads (slow; small sizes only)."""
    x = np.concatenate([q, g]).astype(np.float64)
    num_query, num_all = len(q), len(x)
    sq = (x * x).sum(1)
    dist = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    dist /= dist.max(axis=1, keepdims=True)
    rank = np.argsort(dist, axis=1, kind="stable")
    half = int(np.around(k1 / 2))

    def reciprocal(i: int, k: int) -> np.ndarray:
        forward = rank[i, : k + 1]
        return forward[(rank[forward, : k + 1] == i).any(1)]

    v = np.zeros((num_all, num_all))
    for i in range(num_all):
        own = reciprocal(i, k1)
        expanded = [own]
        for cand in own:
            cand_set = reciprocal(cand, half)
            if len(np.intersect1d(cand_set, own)) > 2 / 3 * len(cand_set):
                expanded.append(cand_set)
        members = np.unique(np.concatenate(expanded))
        w = np.exp(-dist[i, members])
        v[i, members] = w / w.sum()
    if k2 != 1:
        v = v[rank[:, :k2]].mean(1)
    out = np.empty((num_query, num_all - num_query))
    v_gallery = v[num_query:]
    for i in range(num_query):
        s = np.minimum(v[i][None, :], v_gallery).sum(1)
        out[i] = (1 - lam) * (1 - s / (2 - s)) + lam * dist[i, num_query:]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the Market sizes (default 1)")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension (default 2048)")
    parser.add_argument("--noise", type=float, default=2.7, help="per-dimension noise vs identity centre")
    parser.add_argument("--check-scale", type=float, default=0.08,
                        help="size of the float64 check, as a fraction of Market (0 to skip; default 0.08)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    q, g, *_ = synthetic_features(args.scale, args.dim, args.noise, args.seed)
    q, g = q.numpy(), g.numpy()
    print(f"sizes: {q.shape[0]} queries + {g.shape[0]} gallery, {q.shape[1]}-d float32; torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} (shared machine)")
    out, seconds, cpu_seconds, peak_mb = measure_peak(lambda: re_rank(q, g, k1=20, k2=6, lambda_value=0.3))
    print(f"re_rank: {seconds:.1f} s wall ({cpu_seconds:.1f} s CPU), peak RSS above baseline {peak_mb:.0f} MB "
          f"(output {out.shape[0]}x{out.shape[1]} {out.dtype}, {out.nbytes / 2**20:.0f} MB)")
    # for scale on a shared machine: the one GEMM any exact method needs, timed right after
    feats = torch.from_numpy(np.concatenate([q, g]))
    start, cpu_start = time.perf_counter(), time.process_time()
    torch.mm(feats, feats.T)
    print(f"for scale: the full (q+g)^2 float32 GEMM alone takes {time.perf_counter() - start:.1f} s wall "
          f"({time.process_time() - cpu_start:.1f} s CPU) here now; load average {os.getloadavg()[0]:.1f}")
    del feats
    del out

    if args.check_scale > 0:
        q_small, g_small, *_ = synthetic_features(args.check_scale, args.dim, args.noise, args.seed + 1)
        q_small, g_small = q_small.numpy(), g_small.numpy()
        start = time.perf_counter()
        exact = exact_rerank_float64(q_small, g_small)
        t_exact = time.perf_counter() - start
        ours = re_rank(q_small, g_small)
        diff = float(np.abs(exact - ours).max())
        print(f"check vs exact float64 at {q_small.shape[0]}+{g_small.shape[0]} items: max |diff| {diff:.2e} "
              f"(dense float64 reference took {t_exact:.1f} s)")


if __name__ == "__main__":
    main()
