"""Part masks for architectures that pool with them (SPReID): where each image's five region maps come from.

A *mask provider* is chosen by the spec field ``data.masks`` (hashed when set, recorded with the
run, and named in reports):

``""`` (default)
    no masks; every architecture but ``spreid`` trains this way.
``oracle`` — reports: "oracle parsing"
    the ground truth the synthetic generator draws (``harness/data/synth/parts.py``), read from
    ``<dataset root>/masks/``; drawn on first use for the embedded datasets and for any folder
    ``reidbench data synth`` wrote. SPReID's parser was trained on LIP; a perfect parser is the
    upper bound of what it can give, so oracle runs measure SPReID with perfect parsing.
``stripes`` — reports: "stripe prior (deviation)"
    a fixed prior, the same for every image, so SPReID runs on any dataset: horizontal bands
    (head rows [0, ⅛), upper body [⅛, ½), lower body [½, ⅞), shoes [⅞, 1]) times a foreground
    prior across the width (a Gaussian centred on the image, σ = ¼ of the width). Not SPReID: it
    has no parser at all; it is a deviation, labelled as one.
``folder:PATH`` — reports: "user masks"
    the user's masks for real data: one file per image at the image's path relative to its
    dataset root, under PATH, with the suffix ``.npz`` or ``.png``. ``{name}`` in PATH is replaced
    by the dataset's name (``folder:/data/parsing/{name}``), so one spec serves a training set and
    test sets held in different folders. The path is the masks' identity in the run hash, as
    ``model.weights_path`` is: new masks belong in a new folder.

File formats (``read_mask_file``):

* ``.npz`` with an array ``masks`` of shape ``5 × H × W``, channels foreground, head, upper body,
  lower body, shoes (``REGIONS``), uint8 0–255 or float 0–1; foreground should equal the sum of
  the four parts (SPReID: foreground = 1 − p(background) and every LIP class belongs to one part).
* ``.png``: one channel ("L" or palette "P") of LIP labels 0–19 — what SCHP's ``simple_extractor``
  writes with ``--dataset lip`` — grouped as SPReID's code groups them (``LIP_GROUPS``); hard 0/1 maps.

H × W must be the image's size. No parsing weights can be downloaded here: a user runs a human
parser (SCHP, trained on LIP) elsewhere and points ``folder:`` at its output;
``reidbench data check ROOT --masks PATH`` reports missing, unreadable, wrongly sized and
inconsistent files.

Masks travel with their images through the loader (same resize, same flip and crop, erased boxes
become background) and reach the model as float ``B × 5 × H × W`` in [0, 1].

Importing this module is cheap (no torch, numpy or Pillow at import): ``hashing`` reads
``masks_identity`` from it.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

REGIONS = ("foreground", "head", "upper", "lower", "shoes")  # channel order everywhere
PROVIDERS = ("oracle", "stripes", "folder:PATH")
LABELS = {"oracle": "oracle parsing", "stripes": "stripe prior (deviation)", "folder": "user masks"}
FOLDER_PREFIX = "folder:"
MASK_SUFFIXES = (".npz", ".png")
# Bump when the stripe prior changes: runs that used it become new runs.
STRIPES_VERSION = 1
STRIPE_BANDS = (0.125, 0.5, 0.875)  # head | upper | lower | shoes boundaries, fractions of the height
STRIPE_SIGMA = 0.25  # the foreground prior's standard deviation, fraction of the width
# SPReID's grouping of the 20 LIP labels (emrahbasaran/SPReID modelx.py); 0 is background.
LIP_GROUPS = {
    "head": (1, 2, 4, 13),  # hat, hair, sunglasses, face
    "upper": (5, 6, 7, 10, 11, 3, 14, 15),  # upper clothes, dress, coat, jumpsuits, scarf, glove, arms
    "lower": (9, 16, 17, 12),  # pants, legs, skirt
    "shoes": (18, 19, 8),  # shoes, socks
}
NUM_LIP_LABELS = 20
# `data check`: largest |foreground − sum of the parts| allowed at any pixel, in [0, 1] units.
SUM_TOLERANCE = 0.1


class MaskError(ValueError):
    """A mask file that cannot be used; the message is one line naming the file and what is wrong."""


# --------------------------------------------------------------------------- the spec field (pure)


def parse_masks(value: str, where: str = "data.masks") -> tuple[str, str]:
    """``(kind, path)`` of a ``data.masks`` value: ``("", "")``, ``("oracle", "")``, ``("stripes", "")``, ``("folder", PATH)``."""
    if not isinstance(value, str):
        raise ValueError(f"{where}={value!r} is not valid: oracle, stripes or folder:PATH")
    if value in ("", "oracle", "stripes"):
        return value, ""
    if value.startswith(FOLDER_PREFIX) and value[len(FOLDER_PREFIX):].strip():
        return "folder", value[len(FOLDER_PREFIX):].strip()
    raise ValueError(f"{where}={value!r} is not valid: oracle (synthetic data), stripes (any data; a deviation) "
                     "or folder:PATH (one .npz or .png per image; see docs/spreid.md)")


def masks_identity(value: str) -> str:
    """What the run hash records of the masks besides the spec value: the provider's version."""
    from reidbench.harness.data.synth.generate import MASKS_VERSION  # pure: no torch, no I/O

    kind, path = parse_masks(value)
    if kind == "oracle":
        return f"oracle-v{MASKS_VERSION}"
    if kind == "stripes":
        return f"stripes-v{STRIPES_VERSION}"
    return f"folder:{path}"


def masks_label(value: str) -> str:
    """How reports name the provider: oracle parsing, stripe prior (deviation) or user masks."""
    kind, _ = parse_masks(value)
    return LABELS.get(kind, "")


# --------------------------------------------------------------------------- maps


@functools.lru_cache(maxsize=8)
def _stripe_prior(height: int, width: int) -> Any:
    maps = stripe_prior(height, width)
    maps.setflags(write=False)  # shared by every image: never modified in place
    return maps


def stripe_prior(height: int, width: int) -> Any:
    """The ``stripes`` provider's uint8 ``5 × height × width`` maps (module doc); parts sum to the foreground."""
    import numpy as np

    rows = (np.arange(height) + 0.5) / height  # pixel centres
    band = np.searchsorted(np.asarray(STRIPE_BANDS), rows, side="right")  # 0 head .. 3 shoes
    cols = (np.arange(width) + 0.5) - width / 2
    fg = np.exp(-0.5 * (cols / (STRIPE_SIGMA * width)) ** 2)
    parts = np.stack([(band == k)[:, None] * fg[None, :] for k in range(4)])
    maps = np.concatenate([parts.sum(axis=0, keepdims=True), parts])
    return np.rint(maps * 255).astype(np.uint8)


def read_mask_file(path: str | os.PathLike) -> Any:
    """uint8 ``5 × H × W`` maps from an ``.npz`` or label ``.png`` (module doc); ``MaskError`` otherwise."""
    import numpy as np

    path = Path(path)
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                if "masks" not in npz.files:
                    raise MaskError(f"{path}: no array 'masks' (has {', '.join(npz.files) or 'none'}); save the five "
                                    "maps as np.savez(path, masks=array of shape 5 x H x W)")
                maps = npz["masks"]
        except MaskError:
            raise
        except Exception as exc:  # zip/format errors: one line, not a traceback
            raise MaskError(f"{path}: not a readable .npz file ({str(exc).splitlines()[0] if str(exc) else exc})") \
                from None
        if maps.ndim != 3 or maps.shape[0] != len(REGIONS):
            raise MaskError(f"{path}: 'masks' has shape {tuple(maps.shape)}; expected 5 x H x W (foreground, head, "
                            "upper, lower, shoes)")
        if maps.dtype == np.uint8:
            return maps
        if not np.issubdtype(maps.dtype, np.floating) or not np.all(np.isfinite(maps)):
            raise MaskError(f"{path}: 'masks' is {maps.dtype}; expected uint8 0-255 or finite floats 0-1")
        if maps.min() < 0 or maps.max() > 1:
            raise MaskError(f"{path}: float 'masks' range {maps.min():.3g}..{maps.max():.3g} is outside 0-1")
        return np.rint(maps * 255).astype(np.uint8)
    if path.suffix.lower() == ".png":
        from PIL import Image

        try:
            with Image.open(path) as image:
                if image.mode not in ("L", "P"):
                    raise MaskError(f"{path}: a {image.mode} picture; a label PNG has one channel (mode L or P) of "
                                    f"LIP labels 0-{NUM_LIP_LABELS - 1}")
                labels = np.asarray(image)
        except MaskError:
            raise
        except Exception as exc:
            raise MaskError(f"{path}: not a readable PNG ({str(exc).splitlines()[0] if str(exc) else exc})") from None
        if labels.max(initial=0) >= NUM_LIP_LABELS:
            raise MaskError(f"{path}: label {int(labels.max())} found; LIP labels are 0-{NUM_LIP_LABELS - 1}")
        parts = [np.isin(labels, LIP_GROUPS[p]) for p in REGIONS[1:]]
        return (np.stack([labels != 0, *parts]) * np.uint8(255)).astype(np.uint8)
    raise MaskError(f"{path}: unknown mask file type; use .npz (5 soft maps) or .png (LIP labels)")


def resize_maps(maps: Any, image_size: Sequence[int]) -> Any:
    """uint8 ``5 × h × w`` → ``5 × H × W`` by Pillow's bilinear resize, channel by channel (what images get)."""
    import numpy as np
    from PIL import Image

    height, width = int(image_size[0]), int(image_size[1])
    if tuple(maps.shape[1:]) == (height, width):
        return np.ascontiguousarray(maps)
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(m)).resize((width, height), Image.BILINEAR))
                     for m in maps])


# --------------------------------------------------------------------------- providers


@dataclass(frozen=True)
class MaskSource:
    """Maps for the images of one dataset: ``load(image_path, image_size)`` → uint8 tensor ``5 × H × W``."""

    kind: str  # oracle | stripes | folder
    label: str
    root: str | None  # the folder mask files are read from (None: stripes)
    dataset_root: str

    def file_for(self, image_path: str) -> Path | None:
        """The image's mask file, or None when there is none."""
        base = Path(self.root) / os.path.relpath(image_path, self.dataset_root)
        for suffix in MASK_SUFFIXES:
            if base.with_suffix(suffix).is_file():
                return base.with_suffix(suffix)
        return None

    def load(self, image_path: str, image_size: Sequence[int]) -> Any:
        import torch

        if self.kind == "stripes":
            return torch.from_numpy(_stripe_prior(int(image_size[0]), int(image_size[1])).copy())
        path = self.file_for(image_path)
        if path is None:
            rel = Path(os.path.relpath(image_path, self.dataset_root)).with_suffix("")
            raise MaskError(f"data.masks ({self.label}): no mask for image {rel.as_posix()} (looked for {rel.as_posix()}"
                            f".npz / .png under {self.root}); `reidbench data check {self.dataset_root} --masks "
                            f"{self.root}` lists every missing one")
        return torch.from_numpy(resize_maps(read_mask_file(path), image_size))

    def describe(self) -> dict[str, Any]:
        """What the run records about its masks (model_info / provenance)."""
        return {"provider": self.kind, "label": self.label, "root": self.root}


def mask_source(value: str, dataset: Any, progress: bool = False) -> MaskSource | None:
    """The provider ``value`` (``data.masks``) for ``dataset`` (a parsed ``ReidDataset``); None for no masks."""
    kind, path = parse_masks(value)
    if not kind:
        return None
    label = LABELS[kind]
    if kind == "stripes":
        return MaskSource("stripes", label, None, dataset.root)
    if kind == "oracle":
        from reidbench.harness.data.synth.generate import ensure_masks

        root = ensure_masks(dataset.root, progress=progress)
        return MaskSource("oracle", label, str(root), dataset.root)
    folder = Path(path.replace("{name}", dataset.name)).expanduser()
    if not folder.is_dir():
        raise MaskError(f"data.masks={value}: {folder} is not a folder (for dataset {dataset.name}); put one .npz or "
                        ".png per image there, at the image's path relative to the dataset root (docs/spreid.md)")
    return MaskSource("folder", label, str(folder), dataset.root)


# --------------------------------------------------------------------------- checking


def check_masks(records: Sequence[Any], dataset_root: str, masks_root: str | os.PathLike
                ) -> tuple[list[str], list[str]]:
    """(problems, notes) of the mask files of ``records`` under ``masks_root`` — one line each, never raises.

    Problems: missing or unreadable files, a size other than the image's, foreground ≠ sum of the
    parts (beyond ``SUM_TOLERANCE`` at some pixel). Notes: images with an empty foreground (their
    region features will be zero vectors: background-only distractors have them legitimately).
    """
    import numpy as np
    from PIL import Image

    from reidbench.harness.data.formats import MAX_EXAMPLES

    root = Path(masks_root).expanduser()
    if not root.is_dir():
        return [f"masks: {root} is not a folder"], []
    source = MaskSource("folder", LABELS["folder"], str(root), str(dataset_root))
    missing, unreadable, sized, unsummed, empty = [], [], [], [], []
    for record in records:
        rel = Path(os.path.relpath(record.path, dataset_root)).as_posix()
        path = source.file_for(record.path)
        if path is None:
            missing.append(rel)
            continue
        try:
            maps = read_mask_file(path)
        except MaskError as exc:
            unreadable.append(str(exc).replace(str(path), Path(os.path.relpath(path, root)).as_posix()))
            continue
        try:
            with Image.open(record.path) as image:
                width, height = image.size
        except OSError:
            continue  # the image check reports unreadable images
        if tuple(maps.shape[1:]) != (height, width):
            sized.append(f"{rel}: {maps.shape[1]}x{maps.shape[2]}, image {height}x{width}")
            continue
        values = maps.astype(np.float32) / 255
        gap = float(np.abs(values[1:].sum(axis=0) - values[0]).max())
        if gap > SUM_TOLERANCE:
            unsummed.append(f"{rel}: |foreground - (head+upper+lower+shoes)| reaches {gap:.2f}")
        if not maps[0].any():
            empty.append(rel)

    def examples(items: list[str]) -> str:
        return "; ".join(items[:MAX_EXAMPLES]) + (", ..." if len(items) > MAX_EXAMPLES else "")

    problems, notes = [], []
    if missing:
        problems.append(f"masks: {len(missing)} image(s) without a mask file (.npz or .png at the same relative path "
                        f"under {root}; e.g. {examples(missing)})")
    if unreadable:
        problems.append(f"masks: {len(unreadable)} unusable mask file(s) (e.g. {examples(unreadable)})")
    if sized:
        problems.append(f"masks: {len(sized)} mask(s) not the size of their image (e.g. {examples(sized)})")
    if unsummed:
        problems.append(f"masks: {len(unsummed)} mask(s) whose foreground is not the sum of the four parts "
                        f"(tolerance {SUM_TOLERANCE}; e.g. {examples(unsummed)})")
    if empty:
        notes.append(f"masks: {len(empty)} image(s) with an empty foreground (zero region features), e.g. "
                     f"{examples(empty)}")
    return problems, notes
