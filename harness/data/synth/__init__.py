"""Synthetic person re-identification benchmark (pure numpy + Pillow).

Generates folders in exact Market-1501 layout (``bounding_box_train/``, ``bounding_box_test/``,
``query/``, names ``PPPP_cXsY_FFFFFF_BB.jpg``) from a registry of domains (``DOMAINS``), and
keeps embedded default datasets (``DEFAULT_DATASETS``) in a cache folder. Importing this package
does no I/O and does not import torch.

Modules: ``domains`` (cameras, palettes, sizes), ``identity`` (persistent attributes),
``person`` (drawing), ``scene`` (backgrounds, occluders), ``camera`` (optics, light, noise),
``layout`` (splits and names), ``parts`` (ground-truth parsing), ``render`` (one image), ``generate``
(a folder, its parsing masks), ``cache`` (embedded datasets), ``preview`` (picture grid),
``difficulty`` (colour-histogram baseline).
"""

from .cache import (
    DEFAULT_DATASETS,
    DefaultDataset,
    cache_root,
    default_dataset_path,
    ensure_default_dataset,
    list_datasets,
)
from .domains import DOMAINS, CameraSpec, DomainSpec, get_domain
from .generate import GENERATOR_VERSION, MASKS_VERSION, ensure_masks, generate_domain, masks_complete, read_meta
from .layout import NAME_PATTERN, SPLIT_DIRS
from .preview import render_preview

__all__ = [
    "DEFAULT_DATASETS",
    "DOMAINS",
    "GENERATOR_VERSION",
    "MASKS_VERSION",
    "NAME_PATTERN",
    "SPLIT_DIRS",
    "CameraSpec",
    "DefaultDataset",
    "DomainSpec",
    "cache_root",
    "default_dataset_path",
    "ensure_masks",
    "ensure_default_dataset",
    "generate_domain",
    "get_domain",
    "list_datasets",
    "masks_complete",
    "read_meta",
    "render_preview",
]
