"""Write a synthetic domain to disk in exact Market-1501 layout, plus a ``meta.json``.

Same arguments give byte-identical files on the same Pillow/numpy versions: every image comes
from RNGs keyed by (seed, domain, identity, camera, index), JPEGs use a fixed quality and
subsampling, and nothing time-dependent is written. ``meta.json`` is written last, so a folder
without it is an interrupted generation.

Parsing masks (``masks=True``, ``reidbench data synth --masks``; ``ensure_masks`` adds them to a
folder generated without). One ``masks/<split folder>/<image name>.npz`` per image, holding
``masks``: uint8 ``5 × H × W`` — foreground, head, upper body, lower body, shoes (``parts``), soft
values × 255 — beside a ``masks/meta.json`` with ``MASKS_VERSION``. The images, their names and
``GENERATOR_VERSION`` are untouched (masks are drawn in the same pass by the same calls), so a
dataset's fingerprint, and the hash of every run trained without masks, stay the same. A new
``MASKS_VERSION`` (a change of the labels only) regenerates the masks and enters the hash of the
runs that use them (``harness/data/masks.py``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import PIL

from .domains import get_domain
from .layout import SPLIT_DIRS, ImageJob, Plan, plan_domain
from .parts import REGIONS
from .render import Renderer

# Bump whenever any change alters generated pixels, names or splits: cached default datasets
# carry this number in their folder name and are regenerated when it changes.
# 1: development snapshots (caches made while the generator was written); 2: first release.
GENERATOR_VERSION = 2
GENERATOR_NAME = "reidbench-synth"
META_FILE = "meta.json"
JPEG_QUALITY = 90
JPEG_SUBSAMPLING = "4:2:0"
# Bump whenever a change alters the parsing masks (not the images): masks are regenerated, and runs
# that pooled with them are new runs. 1: first release.
MASKS_VERSION = 1
MASKS_DIR = "masks"
# The images re-rendered for ``ensure_masks`` must match the folder's (else the masks would not
# overlay them): mean absolute difference of the decoded pixels, JPEG round trip included.
_MATCH_TOLERANCE = 1.0
_MATCH_CHECKS = 3
_MASKS_LOCK = f".{MASKS_DIR}.lock"  # held while ensure_masks draws a folder's masks


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
    ours = set(SPLIT_DIRS.values()) | {META_FILE, META_FILE + ".tmp", MASKS_DIR, _MASKS_LOCK}
    entries = {p.name for p in out.iterdir()}
    foreign = sorted(entries - ours)
    if foreign:
        raise ValueError(f"{out}: folder is not empty (holds {', '.join(foreign[:3])}); choose a new or empty folder")
    (out / META_FILE).unlink(missing_ok=True)  # first, so the folder never looks complete while rewritten
    (out / (META_FILE + ".tmp")).unlink(missing_ok=True)
    for name in (*SPLIT_DIRS.values(), MASKS_DIR):
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
                    image_size: tuple[int, int] = (128, 64), progress: bool = True, masks: bool = False) -> Path:
    """Write synthetic domain ``domain`` into ``out_dir`` in Market-1501 layout; returns the folder.

    ``num_ids`` defaults to the domain's size (half become train, half test identities);
    ``image_size`` is (height, width). ``out_dir`` must be new, empty, or an earlier output of
    this function (which is replaced). ``masks`` also writes each image's parsing masks (module doc).
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
    if masks:
        for name in SPLIT_DIRS.values():
            (out / MASKS_DIR / name).mkdir(parents=True)
    with _progress_bar(len(plan.jobs), progress, f"synth {spec.name}") as bar:
        for job in plan.jobs:
            if masks:
                img, maps = renderer.render_with_masks(job)
                _save_masks(out / MASKS_DIR, job, maps)
            else:
                img = renderer.render(job)
            img.save(out / job.relpath, "JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)
            bar.update(1)
    if masks:
        _write_json(out / MASKS_DIR / META_FILE, masks_meta((height, width)))
    meta = build_meta(spec.name, n, int(seed), (height, width), plan)
    tmp = out / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out / META_FILE)
    return out


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def masks_meta(image_size: tuple[int, int]) -> dict:
    return {"generator": GENERATOR_NAME, "masks_version": MASKS_VERSION, "generator_version": GENERATOR_VERSION,
            "regions": list(REGIONS), "image_size": [int(image_size[0]), int(image_size[1])],
            "format": "one .npz per image (same relative path), array 'masks': uint8 5 x H x W, soft value x 255"}


def mask_relpath(relpath: str) -> str:
    """``masks/`` path of an image's mask file, relative to the mask folder: the image's, with ``.npz``."""
    return str(Path(relpath).with_suffix(".npz").as_posix())


def _save_masks(mask_root: Path, job: ImageJob, maps: np.ndarray) -> None:
    np.savez_compressed(mask_root / mask_relpath(job.relpath), masks=maps)


def masks_complete(root: str | Path) -> bool:
    """Whether ``root`` (a generated folder) holds parsing masks of the current ``MASKS_VERSION``."""
    try:
        meta = json.loads((Path(root) / MASKS_DIR / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("masks_version") == MASKS_VERSION


def ensure_masks(root: str | Path, progress: bool = True) -> Path:
    """``root/masks`` of a folder this generator wrote, drawing the masks first if they are missing or stale.

    The folder's recipe comes from its ``meta.json``; the images are re-rendered (not rewritten) and
    the first few compared with the files, so masks are never laid over pictures they do not match.
    Written into a temporary folder renamed into place under a lock, as the embedded datasets are.
    """
    from .cache import _exclusive_lock

    root = Path(root)
    target = root / MASKS_DIR
    if masks_complete(root):
        return target
    meta = read_meta(root)
    if meta is None:
        raise ValueError(f"{root}: not a folder written by reidbench's synthetic generator (no {META_FILE}), so "
                         "it has no ground-truth parsing; use data.masks: stripes or folder:PATH (docs/spreid.md)")
    if meta.get("generator_version") != GENERATOR_VERSION:
        raise ValueError(f"{root}: written by synthetic generator version {meta.get('generator_version')}, this is "
                         f"version {GENERATOR_VERSION}; regenerate it (reidbench data synth --masks) to get masks")
    with _exclusive_lock(root / _MASKS_LOCK):
        if masks_complete(root):
            return target
        spec = get_domain(meta["domain"])
        size = (int(meta["image_size"][0]), int(meta["image_size"][1]))
        plan = plan_domain(spec, int(meta["num_ids"]), int(meta["seed"]))
        renderer = Renderer(spec, int(meta["seed"]), size)
        tmp = root / f".{MASKS_DIR}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            for name in SPLIT_DIRS.values():
                (tmp / name).mkdir(parents=True)
            with _progress_bar(len(plan.jobs), progress, f"parsing masks {spec.name}") as bar:
                for i, job in enumerate(plan.jobs):
                    img, maps = renderer.render_with_masks(job)
                    if i < _MATCH_CHECKS:
                        _check_same_picture(root, job, img)
                    _save_masks(tmp, job, maps)
                    bar.update(1)
            _write_json(tmp / META_FILE, masks_meta(size))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _check_same_picture(root: Path, job: ImageJob, img) -> None:
    import io

    from PIL import Image

    path = root / job.relpath
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)
    try:
        with Image.open(path) as stored:
            on_disk = np.asarray(stored.convert("RGB"), dtype=np.float32)
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc}); regenerate the folder with reidbench data synth --masks") \
            from None
    drawn = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32)
    if on_disk.shape != drawn.shape or float(np.abs(on_disk - drawn).mean()) > _MATCH_TOLERANCE:
        raise ValueError(f"{path}: differs from what this generator draws for it (another reidbench or Pillow "
                         "version?), so masks drawn now would not overlay it; regenerate the folder with "
                         "reidbench data synth --masks")


def read_meta(root: str | Path) -> dict | None:
    """The ``meta.json`` of a generated folder, or None when absent or unreadable."""
    path = Path(root) / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("generator") == GENERATOR_NAME else None
