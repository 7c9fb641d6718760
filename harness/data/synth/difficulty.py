"""A no-learning difficulty check: whole-image colour-histogram nearest neighbour.

If this baseline scored high the benchmark would be measuring colour matching, not re-ID. The
evaluation is the project's Market-1501 protocol (junk ignored, same identity in the same camera
ignored, distractors kept).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from .layout import SPLIT_DIRS

_NAME = re.compile(r"^(-?\d+)_c(\d+)")


def read_split(root: str | Path, split: str) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Paths, identities and cameras of one split folder (``train``, ``query`` or ``gallery``)."""
    folder = Path(root) / SPLIT_DIRS[split]
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    paths, pids, cams = [], [], []
    for path in sorted(folder.glob("*.jpg")):
        m = _NAME.match(path.name)
        if m:
            paths.append(path)
            pids.append(int(m.group(1)))
            cams.append(int(m.group(2)))
    return paths, np.asarray(pids, dtype=np.int64), np.asarray(cams, dtype=np.int64)


REGIONS = ("whole", "centre")


def colour_histograms(paths: list[Path], bins: int = 8, region: str = "whole") -> np.ndarray:
    """Joint RGB histograms (``bins``^3), L1-normalised then square-rooted (Hellinger embedding).

    ``region="centre"`` keeps the middle of the crop (rows 12-90 %, columns 28-72 %), mostly the
    person's clothes: a fairer test of whether clothing colour alone identifies people.
    """
    if region not in REGIONS:
        raise ValueError(f"region={region!r} is not valid; valid: {', '.join(REGIONS)}")
    feats = np.empty((len(paths), bins ** 3), dtype=np.float32)
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"), dtype=np.int64)
        if region == "centre":
            h, w = pixels.shape[:2]
            pixels = pixels[int(0.12 * h):int(0.9 * h), int(0.28 * w):int(0.72 * w)]
        q = pixels * bins // 256
        codes = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
        hist = np.bincount(codes.ravel(), minlength=bins ** 3).astype(np.float32)
        feats[i] = np.sqrt(hist / hist.sum())
    return feats


def market_rank1_map(dist: np.ndarray, q_pids: np.ndarray, q_cams: np.ndarray, g_pids: np.ndarray,
                     g_cams: np.ndarray, cross_camera_only: bool = True) -> dict[str, float]:
    """Rank-1, rank-5 and mAP under the Market-1501 rules, via ``harness.evaluation.evaluate``.

    Gallery junk (identity -1) is dropped first. With ``cross_camera_only=False`` the query's own
    camera counts too (a sanity check): every query is then given a camera no gallery image has,
    so the protocol's same-identity-same-camera filter removes nothing.
    """
    from reidbench.harness.evaluation.protocol import evaluate

    keep = g_pids != -1
    q_cams_used = q_cams if cross_camera_only else np.full_like(q_cams, int(g_cams.max()) + 1)
    out = evaluate(dist[:, keep], q_pids, g_pids[keep], q_cams_used, g_cams[keep], max_rank=5)
    return {"rank1": float(out["cmc"][0]), "rank5": float(out["cmc"][4]), "mAP": float(out["mAP"]),
            "num_valid_queries": int(out["num_valid_queries"])}


def colour_histogram_baseline(root: str | Path, bins: int = 8, cross_camera_only: bool = True,
                              region: str = "whole") -> dict[str, float]:
    """Rank-1 / rank-5 / mAP of colour-histogram nearest neighbour on a Market-layout folder."""
    q_paths, q_pids, q_cams = read_split(root, "query")
    g_paths, g_pids, g_cams = read_split(root, "gallery")
    q, g = colour_histograms(q_paths, bins, region), colour_histograms(g_paths, bins, region)
    dist = (q * q).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2.0 * q @ g.T
    return market_rank1_map(dist, q_pids, q_cams, g_pids, g_cams, cross_camera_only)
