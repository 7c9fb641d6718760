"""Write a synthetic domain to disk in exact Market-1501 layout, plus a ``meta.json``.

Same arguments give byte-identical files on the same Pillow/numpy versions: every image comes
from RNGs keyed by (seed, domain, identity, camera, index), JPEGs use a fixed quality and
subsampling, and nothing time-dependent is written. ``meta.json`` is written last, so a folder
without it is an interrupted generation.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import PIL

from .domains import get_domain
from .layout import SPLIT_DIRS, Plan, plan_domain
from .render import Renderer

# Bump whenever any change alters generated pixels, names or splits: cached default datasets
# carry this number in their folder name and are regenerated when it changes.
# 1: development snapshots (caches made while the generator was written); 2: first release.
GENERATOR_VERSION = 2
GENERATOR_NAME = "reidbench-synth"
META_FILE = "meta.json"
JPEG_QUALITY = 90
JPEG_SUBSAMPLING = "4:2:0"


def _check_image_size(image_size: tuple[int, int]) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(
            f"image_size={image_size!r} is not valid: give (height, width) in pixels, e.g. (128, 64)"
        ) from None
    if height < 16 or width < 8:
        raise ValueError(f"image_size={image_size!r} is too small: use at least (16, 8) pixels (height, width)")
    return height, width


def _prepare_out_dir(out: Path) -> None:
    """Create ``out``; clear it only if it holds nothing but an earlier synthetic dataset."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder; choose a folder for the dataset")
    out.mkdir(parents=True, exist_ok=True)
    ours = set(SPLIT_DIRS.values()) | {META_FILE, META_FILE + ".tmp"}
    entries = {p.name for p in out.iterdir()}
    foreign = sorted(entries - ours)
    if foreign:
        raise ValueError(f"{out}: folder is not empty (holds {', '.join(foreign[:3])}); choose a new or empty folder")
    (out / META_FILE).unlink(missing_ok=True)  # first, so the folder never looks complete while rewritten
    (out / (META_FILE + ".tmp")).unlink(missing_ok=True)
    for name in SPLIT_DIRS.values():
        if (out / name).exists():
            shutil.rmtree(out / name)


def _progress_bar(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not (enabled and sys.stderr.isatty()), leave=False)


def summarize(plan: Plan) -> dict[str, dict[str, int]]:
    """Image and identity counts per split, with distractor/junk counts for the gallery."""
    counts: dict[str, dict[str, int]] = {}
    for split in SPLIT_DIRS:
        jobs = [j for j in plan.jobs if j.split == split]
        kinds = Counter(j.kind for j in jobs)
        counts[split] = {
            "images": len(jobs),
            "ids": len({j.pid for j in jobs if j.kind == "person"}),
            "cameras": len({j.cam for j in jobs}),
        }
        if split == "gallery":
            counts[split]["distractors"] = kinds["distractor"]
            counts[split]["junk"] = kinds["junk"]
    return counts


def build_meta(domain_name: str, num_ids: int, seed: int, image_size: tuple[int, int], plan: Plan) -> dict:
    domain = get_domain(domain_name)
    return {
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "domain": domain.name,
        "description": domain.description,
        "seed": int(seed),
        "num_ids": int(num_ids),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "num_cameras": domain.num_cams,
        "jpeg_quality": JPEG_QUALITY,
        "train_ids": list(plan.train_ids),
        "test_ids": list(plan.test_ids),
        "counts": summarize(plan),
        # JPEG bytes depend on the encoder: record it (not hashed by anyone, but useful provenance).
        "libraries": {"pillow": PIL.__version__, "numpy": np.__version__},
    }


def generate_domain(out_dir: str | Path, domain: str = "A", num_ids: int | None = None, seed: int = 0,
                    image_size: tuple[int, int] = (128, 64), progress: bool = True) -> Path:
    """Write synthetic domain ``domain`` into ``out_dir`` in Market-1501 layout; returns the folder.

    ``num_ids`` defaults to the domain's size (half become train, half test identities);
    ``image_size`` is (height, width). ``out_dir`` must be new, empty, or an earlier output of
    this function (which is replaced).
    """
    spec = get_domain(domain)
    height, width = _check_image_size(image_size)
    n = spec.default_num_ids if num_ids is None else int(num_ids)
    plan = plan_domain(spec, n, int(seed))  # validates num_ids before touching the disk
    out = Path(out_dir).expanduser()
    _prepare_out_dir(out)
    for name in SPLIT_DIRS.values():
        (out / name).mkdir()
    renderer = Renderer(spec, int(seed), (height, width))
    with _progress_bar(len(plan.jobs), progress, f"synth {spec.name}") as bar:
        for job in plan.jobs:
            img = renderer.render(job)
            img.save(out / job.relpath, "JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)
            bar.update(1)
    meta = build_meta(spec.name, n, int(seed), (height, width), plan)
    tmp = out / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out / META_FILE)
    return out


def read_meta(root: str | Path) -> dict | None:
    """The ``meta.json`` of a generated folder, or None when absent or unreadable."""
    path = Path(root) / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("generator") == GENERATOR_NAME else None
