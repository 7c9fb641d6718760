"""Ranked lists: a query image and its top-k gallery images, matches framed green, others red.

Reads the features the runner saved (``<out_dir>/features-<test>.npz``) and ranks them the way the
run was evaluated (``eval.normalize``, ``eval.metric``), dropping gallery images of the query's
identity seen by the query's camera, as the Market protocol does.

The AP shown per query is the evaluator's (``per_query_scores`` on ``compute_distance``), so it is
the AP that averages to the mAP ``score`` gives for these features. Only the top-k listing is made
here, from the same distance block, with the evaluator's tie rule (a non-match at the same distance
as a match is listed before it), so the listed match positions are the ranks the AP was scored on.
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
    ap: float  # the evaluator's average precision of this query (fraction)
    gallery: tuple[int, ...]  # top-k gallery indices after the same-camera filter
    matches: tuple[bool, ...]


def draw_cell(ax, image_file, color: str = "black", title: str = "", *, title_color: str = "black",
              fontsize: int = 8, xlabel: str | None = None) -> None:
    """One image of a ranked list in ``ax``: the picture framed in ``color`` (None: an empty cell)."""
    from PIL import Image

    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if image_file is None:
        ax.set_axis_off()
        return
    with Image.open(image_file) as img:
        ax.imshow(img.convert("RGB"))
    ax.set_aspect("auto")
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_color(color)
        spine.set_linewidth(4)
    ax.set_title(title, fontsize=fontsize, color=title_color)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=6)


def load_features(path: str | Path) -> dict[str, Any]:
    """The arrays of a features file; a missing file or key fails in one line naming it."""
    import numpy as np

    from reidbench.harness.evaluation.features import load_features_npz

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: features file not found (the run saves it when it evaluates; "
                                "was the run folder moved or deleted?)")
    arrays = load_features_npz(p)  # checks the six arrays the evaluator needs
    with np.load(p, allow_pickle=False) as npz:
        missing = [k for k in ("q_paths", "g_paths") if k not in npz.files]
        if missing:
            raise ValueError(f"{p}: missing arrays {', '.join(missing)}; ranked lists need the image paths")
        for side in ("q", "g"):
            paths = npz[f"{side}_paths"]
            if paths.shape != (len(arrays[f"{side}_pids"]),):
                raise ValueError(f"{p}: {side}_paths has shape {paths.shape}, expected "
                                 f"({len(arrays[f'{side}_pids'])},) to match {side}_feats")
            arrays[f"{side}_paths"] = paths
    return arrays


def rank_queries(arrays: Mapping[str, Any], *, metric: str = "sqeuclidean", normalize: bool = True,
                 top: int = 10) -> list[RankedQuery]:
    """Every valid query (one with a match left after the camera filter), its AP and top-k list."""
    import numpy as np
    import torch

    from reidbench.harness.evaluation.protocol import METRICS, compute_distance, per_query_scores

    if metric not in METRICS:
        raise ValueError(f"eval.metric={metric!r} is not valid: {', '.join(METRICS)}")
    if top < 1:
        raise ValueError(f"top={top} is not valid: at least 1 gallery image per query")
    q, g = _features(arrays["q_feats"], "q_feats"), _features(arrays["g_feats"], "g_feats")
    if q.dtype != g.dtype:
        q, g = q.double(), g.double()
    if normalize:  # as score() does before computing distances
        q, g = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1)
    q_pids, g_pids = np.asarray(arrays["q_pids"]), np.asarray(arrays["g_pids"])
    q_cams, g_cams = np.asarray(arrays["q_camids"]), np.asarray(arrays["g_camids"])
    out: list[RankedQuery] = []
    for start in range(0, len(q_pids), _CHUNK):
        stop = min(start + _CHUNK, len(q_pids))
        dist = compute_distance(q[start:stop], g, metric).numpy()
        scores = per_query_scores(dist, q_pids[start:stop], g_pids, q_cams[start:stop], g_cams)
        match = q_pids[start:stop, None] == g_pids[None, :]
        junk = match & (q_cams[start:stop, None] == g_cams[None, :])
        for row, (gallery, hits) in enumerate(_top_lists(dist, match, junk, top)):
            qi = start + row
            if not scores["valid"][row]:
                continue  # the protocol skips queries without a match
            out.append(RankedQuery(qi, str(arrays["q_paths"][qi]), int(q_pids[qi]), int(q_cams[qi]),
                                   float(scores["ap"][row]), tuple(int(i) for i in gallery),
                                   tuple(bool(h) for h in hits)))
    return out


def _features(x: Any, name: str) -> Any:
    """A float32 (or float64) tensor of finite features; float16 files are widened as score() does."""
    import numpy as np
    import torch

    arr = np.asarray(x)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values; the run's features cannot be ranked")
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t if t.dtype == torch.float64 else t.float()


def _top_lists(dist: Any, match: Any, junk: Any, top: int) -> list[tuple[Any, Any]]:
    """Per row: the ``top`` nearest non-junk gallery indices in rank order and their match flags.

    Order: distance, then non-matches before matches (the evaluator's pessimistic ties), then
    gallery index. Only the entries up to the k-th smallest distance are sorted.
    """
    import numpy as np

    key = np.where(junk, np.inf, dist)  # junk sorts last and is dropped below
    k = min(top, key.shape[1])
    kth = np.partition(key, k - 1, axis=1)[:, k - 1]
    lists = []
    for row in range(key.shape[0]):
        # every entry tied with the k-th is a candidate: the tie rule decides which of them are listed
        cand = np.flatnonzero((key[row] <= kth[row]) & ~junk[row])
        order = cand[np.lexsort((cand, match[row, cand], key[row, cand]))][:top]
        lists.append((order, match[row, order]))
    return lists


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
            if c >= len(cells):
                draw_cell(axes[r][c], None)
                continue
            path, color, head = cells[c]
            draw_cell(axes[r][c], files[path], color, head, title_color=color if c else "black",
                      xlabel=Path(path).name)
    set_title(fig, title or "Ranked lists")
    return save_figure(fig, out, dpi)
