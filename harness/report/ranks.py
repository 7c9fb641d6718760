"""Ranked lists: a query image and its top-k gallery images, matches framed green, others red.

Reads the features the runner saved (``<out_dir>/features-<test>.npz``) and ranks them the way the
run was evaluated (``eval.normalize``, ``eval.metric``), dropping gallery images of the query's
identity seen by the query's camera, as the Market protocol does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from reidbench.harness.report.figures import DEFAULT_DPI, new_figure, save_figure, set_title

QUERY_CHOICES = ("best", "worst", "random")
_CHUNK = 256  # queries per distance block: bounds memory on Market-size galleries


@dataclass(frozen=True)
class RankedQuery:
    index: int  # into the query set
    path: str
    pid: int
    camid: int
    ap: float  # average precision of this query (fraction)
    gallery: tuple[int, ...]  # top-k gallery indices after the same-camera filter
    matches: tuple[bool, ...]


def load_features(path: str | Path) -> dict[str, Any]:
    """The arrays of a features file; a missing file or key fails in one line naming it."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: features file not found (the run saves it when it evaluates; "
                                "was the run folder moved or deleted?)")
    with np.load(p, allow_pickle=False) as npz:
        needed = ("q_feats", "g_feats", "q_pids", "g_pids", "q_camids", "g_camids", "q_paths", "g_paths")
        missing = [k for k in needed if k not in npz.files]
        if missing:
            raise ValueError(f"{p}: missing arrays {', '.join(missing)}; expected {', '.join(needed)}")
        return {k: npz[k] for k in needed}


def distances(q: Any, g: Any, metric: str, normalize: bool) -> Any:
    """q×g distance block in float32; ranking by euclidean equals ranking by its square."""
    import numpy as np

    q = np.asarray(q, dtype=np.float32)
    g = np.asarray(g, dtype=np.float32)
    if normalize or metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    if metric == "cosine":
        return 1.0 - q @ g.T
    if metric in ("euclidean", "sqeuclidean"):
        return (q * q).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2.0 * q @ g.T
    raise ValueError(f"eval.metric={metric!r} is not valid: cosine, euclidean or sqeuclidean")


def rank_queries(arrays: Mapping[str, Any], *, metric: str = "sqeuclidean", normalize: bool = True,
                 top: int = 10) -> list[RankedQuery]:
    """Every valid query (one with a match left after the camera filter), its AP and top-k list."""
    import numpy as np

    q_pids, g_pids = np.asarray(arrays["q_pids"]), np.asarray(arrays["g_pids"])
    q_cams, g_cams = np.asarray(arrays["q_camids"]), np.asarray(arrays["g_camids"])
    out: list[RankedQuery] = []
    for start in range(0, len(q_pids), _CHUNK):
        stop = min(start + _CHUNK, len(q_pids))
        dist = distances(arrays["q_feats"][start:stop], arrays["g_feats"], metric, normalize)
        order = np.argsort(dist, axis=1, kind="stable")
        for row, qi in enumerate(range(start, stop)):
            ranked = order[row]
            keep = ~((g_pids[ranked] == q_pids[qi]) & (g_cams[ranked] == q_cams[qi]))
            ranked = ranked[keep]
            hits = g_pids[ranked] == q_pids[qi]
            if not hits.any():
                continue  # the protocol skips queries without a match
            positions = np.flatnonzero(hits) + 1
            ap = float(np.mean(np.arange(1, len(positions) + 1) / positions))
            out.append(RankedQuery(qi, str(arrays["q_paths"][qi]), int(q_pids[qi]), int(q_cams[qi]), ap,
                                   tuple(int(i) for i in ranked[:top]), tuple(bool(h) for h in hits[:top])))
    return out


def choose(ranked: Sequence[RankedQuery], how: str, n: int, seed: int = 0) -> list[RankedQuery]:
    """The ``n`` best (highest AP), worst (lowest AP) or random queries."""
    import random

    if how not in QUERY_CHOICES:
        raise ValueError(f"--queries {how!r} is not valid: {', '.join(QUERY_CHOICES)}")
    if how == "random":
        return random.Random(seed).sample(list(ranked), min(n, len(ranked)))
    ordered = sorted(ranked, key=lambda r: (r.ap, -r.index), reverse=how == "best")
    return ordered[:n]


def resolve_image(path: str, dataset_root: str | None, image_root: str | Path | None) -> Path:
    """The image file: as recorded, else moved under ``image_root`` (same path relative to the root)."""
    p = Path(path)
    if p.is_file() or image_root is None:
        return p
    base = Path(image_root)
    candidates = []
    if dataset_root and str(p).startswith(str(dataset_root).rstrip("/") + "/"):
        candidates.append(base / str(p)[len(str(dataset_root).rstrip("/")) + 1:])
    candidates += [base / p.parent.name / p.name, base / p.name]
    return next((c for c in candidates if c.is_file()), candidates[0])


def plot_ranks(chosen: Sequence[RankedQuery], g_paths: Sequence[str], g_pids: Sequence[int],
               out: str | Path, *, title: str = "", dataset_root: str | None = None,
               image_root: str | Path | None = None, figsize: tuple[float, float] | None = None,
               dpi: int = DEFAULT_DPI) -> Path:
    """One row per query: the query (blue frame) then its top-k gallery images (green = same
    identity, red = another), each titled with its file name and identity."""
    from PIL import Image

    if not chosen:
        raise ValueError("no valid query to show (no query has a match in the gallery)")
    top = max(len(q.gallery) for q in chosen)
    files = {}
    for q in chosen:
        for p in (q.path, *(str(g_paths[i]) for i in q.gallery)):
            files[p] = resolve_image(p, dataset_root, image_root)
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) not found, e.g. {missing[0]}; "
                                "give the dataset folder with --image-root DIR")
    fig, axes = new_figure(len(chosen), top + 1, figsize, panel_size=(1.25, 2.7))
    for r, q in enumerate(chosen):
        cells = [(q.path, "tab:blue", f"query (AP {100 * q.ap:.1f}%)\nid {q.pid}")]
        cells += [(str(g_paths[i]), "tab:green" if m else "tab:red", f"#{k + 1}  id {int(g_pids[i])}")
                  for k, (i, m) in enumerate(zip(q.gallery, q.matches))]
        for c in range(top + 1):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if c >= len(cells):
                ax.set_axis_off()
                continue
            path, color, head = cells[c]
            with Image.open(files[path]) as img:
                ax.imshow(img.convert("RGB"))
            ax.set_aspect("auto")
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color(color)
                spine.set_linewidth(4)
            ax.set_title(head, fontsize=8, color=color if c else "black")
            ax.set_xlabel(Path(path).name, fontsize=6)
    set_title(fig, title or "Ranked lists")
    return save_figure(fig, out, dpi)
