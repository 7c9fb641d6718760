"""``mgn``: Multiple Granularity Network (Wang et al., ACM MM 2018; seed-systems.md §1).

Layout. A shared *trunk* (the backbone up to and including the first block of the stage before
last) feeds up to three *branches*, each with its own deep copy of the rest of the backbone, all
copies starting from the same (ImageNet, when ``model.pretrained``) weights:

- ``g`` (global): last stage strided as in the backbone (``model.last_stride`` 2, the paper), or
  unstrided with ``model.last_stride: 1`` — what fast-reid's ``LAST_STRIDE: 1`` does to its
  global branch, and what BoT's ``stride`` trick means on MGN.
- ``p2`` / ``p3`` (part-2 / part-3): last stage unstrided (the strided conv and the downsample of
  its first block get stride 1, no dilation), so their maps are twice the global one's (24×8 vs
  12×4 for a ResNet-50 at 384×128). Their maps are cut into 2 / 3 horizontal stripes.

Split points (trunk | branch), in the backbone's own module names:

- ResNets (resnet18/34/50/101, any timm ResNet such as ``timm:test_resnet``):
  ``conv1 bn1 act1 maxpool layer1 layer2 layer3[0]`` | ``layer3[1:] layer4``.
- ``mobilenetv2`` (torchvision ``features``): ``features[:8]`` | ``features[8:]``; ``features[7]``
  is the strided first block of the stride-16 stage (64 ch), ``features[14]`` the last strided
  block (its depthwise conv is unstrided in the part branches) — as TheBobbyliu's MGN.
- ``efficientnet_lite0`` (timm): ``conv_stem bn1 blocks[:3] blocks[3][0]`` | ``blocks[3][1:]
  blocks[4:] conv_head bn2``; ``blocks[3][0]`` is the strided first block of the stride-16 stage
  (80 ch), ``blocks[5][0]`` the last strided one. reidbench's reading (seed-systems §1.7 [U]).

Pooling. Each branch map is pooled whole (3 global vectors, C-d) and each part map in stripes
(2 + 3 local vectors). Stripes are explicit row slices, so any input height works: with h rows
and n stripes, stripe i has ``h // n`` rows plus one for the first ``h % n`` stripes (16 rows →
6, 5, 5; fast-reid's ``torch.chunk`` would give 6, 6, 4). A map shorter than n rows (only tiny
test inputs) gives stripe i the single row ``i * h // n``, so stripes then share rows.

Reductions. Eight separate (paper: "DO NOT share weights") 1×1 conv C→``reduction_dim`` without
bias + BN + ReLU, one per pooled vector; conv init kaiming (fan_in), BN weight N(1, 0.02), bias 0,
as the PyTorch re-implementations do.

Outputs (``forward`` → dict; only the chosen ``branches`` appear):

- ``f_g``, ``f_p2``, ``f_p3``: reduced global features (``reduction_dim``); the paper's triplet
  inputs.
- ``f_p2_1``, ``f_p2_2``, ``f_p3_1``, ``f_p3_2``, ``f_p3_3``: reduced part features, top to bottom.
- ``f_g_pooled``, ``f_p2_pooled``, ``f_p3_pooled``: pooled global vectors before the reduction
  (C-d: 2048 for a ResNet-50).
- training mode only: ``logits_g``, ``logits_p2``, ``logits_p3`` (from the pooled globals, or
  from the reduced ones with ``ce_on: reduced``) and ``logits_p2_1`` … ``logits_p3_3`` (from the
  reduced parts). Classifiers are Linear with bias, weight N(0, 0.001²), bias 0 (levyfan).

``test_feature`` is the concatenation, in this order, of ``f_g f_p2 f_p3 f_p2_1 f_p2_2 f_p3_1
f_p3_2 f_p3_3`` (the chosen branches only: 8 × ``reduction_dim`` = 2048-d for all three); the
order is the reference repos' ``torch.cat``. ``eval.flip`` averages each image's features with its
mirror's (the paper's test protocol) in the harness, as for every architecture.

Options (``MGNParams``, written flat in the ``model`` section; defaults = the paper), each one
of the disagreements in seed-systems §1.5 so that they can be ablated:

- ``branches`` (g, p2, p3): a subset, in this order; only those are built and output.
- ``ce_on`` pooled: the global classifiers read the C-d pooled vectors (paper); ``reduced`` reads
  the reduced ones (seathiefwang, GNAYUOHZ, fast-reid).
- ``pool`` max (paper) | avg (seathiefwang's default) | gem (fast-reid) with exponent ``gem_p``
  (3.0), fixed unless ``gem_learnable`` (fast-reid trains it: one p per pooled vector, 8 in all,
  as its 8 heads each have a ``GeneralizedMeanPoolingP``; ``models/pooling.py``).
- ``reduction_dim`` 256; ``reduction_relu`` true (fast-reid: false); ``shared_reduction`` false
  (GNAYUOHZ: true, one reduction for all eight vectors); ``reduction_bn`` true (false: the conv
  alone — with ``neck: bnneck`` that is fast-reid's head, whose one BN after the conv is the neck).

AGW / fast-reid options (docs/agw.md), off by default:

- ``nonlocal_layers`` [0, 0, 0, 0] and ``nonlocal_channels`` one | half: AGW's non-local blocks
  (``models/non_local.py``), inserted into the backbone before it is split, so blocks in the
  trunk are shared and those in the branch part are copied into every branch (AGW's [0, 2, 3, 0]
  on a ResNet: after layer2.2 and layer2.3 in the trunk, after layer3.3–3.5 in each branch).
  fast-reid's MGN rebuilds its branches from ``layer3[1:]`` and ``layer4`` and so silently drops
  the backbone's non-local blocks even though its config enables them.
- ``classifier`` linear | cosine: every classifier becomes a cosine classifier and outputs
  ``cosine_<key>`` instead of ``logits_<key>``, for the ``circle`` loss term (fast-reid's MGN
  uses circle softmax on its 8 heads).

Spec fields of the ``model`` section read besides the options: ``backbone``, ``pretrained``,
``weights_path``, ``last_stride`` (the global branch's, above) and ``neck``:

- ``neck: plain`` (the paper): as above.
- ``neck: bnneck`` (BoT's BNNeck carried over, as fast-reid's MGN heads do): every identity
  classifier reads a BatchNorm1d (bias frozen at 0) of its input and has no bias — the 5 part
  classifiers and, with ``ce_on: reduced``, the 3 global ones read ``f_*_bn`` = BN(reduced
  feature); with ``ce_on: pooled`` the 3 global classifiers get a BN of their own on the pooled
  C-d vector. The metric losses keep reading the pre-BN features (``f_g`` …, BoT's f_t) and the
  test feature becomes the concatenation of the eight ``f_*_bn`` (BoT infers on f_i).

The ``fastreid`` preset of ``experiments/mgn.yaml`` sets fast-reid's values: ``ce_on=reduced
pool=gem reduction_relu=false reduction_bn=false last_stride=1 neck=bnneck`` (conv → neck BN, as
its ``EmbeddingHead``), soft-margin triplet ×0.2 on the BN'd globals and on the part
concatenations (``NECK_FEAT: after``), CE with label smoothing 0.1 ×1/8 each. Not reproduced:
circle-softmax classifiers, a trained GeM exponent, IBN-a backbones, its solver and augmentations.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reidbench.models.heads import CosineClassifier

from reidbench.models import pooling as _pooling
from reidbench.models.architectures import Architecture

__all__ = ["ARCH", "MGN", "MGNParams", "Reduction", "build", "pool_map", "pool_stripes", "stripe_bounds"]

BRANCHES = ("g", "p2", "p3")
STRIPES = {"g": 0, "p2": 2, "p3": 3}  # horizontal stripes cut from each branch's map
CE_ON = ("pooled", "reduced")
POOLS = ("max", "avg", "gem")
GEM_EPS = _pooling.GEM_EPS  # GeM clamps activations to stay differentiable at 0 (fast-reid uses the same)
SUPPORTED = ("resnet18, resnet34, resnet50, resnet101, timm ResNets (e.g. timm:test_resnet), mobilenetv2, "
             "efficientnet_lite0")


@dataclass(frozen=True)
class MGNParams:
    branches: tuple[str, ...] = BRANCHES
    ce_on: str = "pooled"
    pool: str = "max"
    gem_p: float = 3.0
    reduction_dim: int = 256
    reduction_relu: bool = True
    reduction_bn: bool = True
    shared_reduction: bool = False
    # --- AGW / fast-reid ---
    gem_learnable: bool = False
    nonlocal_layers: tuple[int, ...] = (0, 0, 0, 0)
    nonlocal_channels: str = "one"
    classifier: str = "linear"

    def validate(self, where: str = "model") -> None:
        branches = list(self.branches)
        if not branches or any(b not in BRANCHES for b in branches) or len(set(branches)) != len(branches):
            raise ValueError(f"{where}.branches={branches} is invalid; valid: a non-empty subset of "
                             f"{list(BRANCHES)} without repeats")
        if branches != [b for b in BRANCHES if b in branches]:
            # One spelling per model: the order fixes the test feature's layout, so it is not free.
            raise ValueError(f"{where}.branches={branches} must keep the order {list(BRANCHES)}")
        if self.ce_on not in CE_ON:
            raise ValueError(f"{where}.ce_on={self.ce_on!r} is invalid; valid: {' or '.join(CE_ON)}")
        if self.pool not in POOLS:
            raise ValueError(f"{where}.pool={self.pool!r} is invalid; valid: {', '.join(POOLS)}")
        if not self.gem_p > 0:
            raise ValueError(f"{where}.gem_p={self.gem_p!r} is invalid; valid: a number > 0")
        if self.pool != "gem" and self.gem_p != MGNParams.gem_p:
            raise ValueError(f"{where}.gem_p={self.gem_p!r} is only read with {where}.pool=gem, not "
                             f"{self.pool!r}; drop it")
        if self.reduction_dim < 1:
            raise ValueError(f"{where}.reduction_dim={self.reduction_dim!r} is invalid; valid: an integer >= 1")
        # --- AGW / fast-reid ---
        from reidbench.models.non_local import check_agw_options

        check_agw_options(self, where)


# --------------------------------------------------------------------------- pooling


def stripe_bounds(height: int, count: int) -> list[tuple[int, int]]:
    """Row slices ``[start, stop)`` of ``count`` horizontal stripes of a map ``height`` rows tall.

    Stripe i has ``height // count`` rows, plus one for the first ``height % count`` stripes. A map
    with fewer rows than stripes gives stripe i the one row ``i * height // count``.
    """
    if height < 1 or count < 1:
        raise ValueError(f"stripe_bounds: height={height} and count={count} must both be >= 1")
    if height < count:
        return [(r, r + 1) for r in (i * height // count for i in range(count))]
    base, extra = divmod(height, count)
    bounds, start = [], 0
    for i in range(count):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def pool_map(feature_map: torch.Tensor, pool: str, gem_p: float = 3.0) -> torch.Tensor:
    """B×C×h×w → B×C by max, average or generalised-mean pooling over all h×w positions."""
    if pool == "max":
        return feature_map.amax(dim=(2, 3))
    if pool == "avg":
        return feature_map.mean(dim=(2, 3))
    if pool == "gem":
        return _pooling.gem(feature_map, gem_p)  # float32 inside: x**p overflows half precision
    raise ValueError(f"pool={pool!r} is invalid; valid: {', '.join(POOLS)}")


def pool_stripes(feature_map: torch.Tensor, count: int, pool: str, gem_p: float = 3.0) -> list[torch.Tensor]:
    """The ``count`` horizontal stripes of a B×C×h×w map (``stripe_bounds``), each pooled to B×C, top first."""
    return [pool_map(feature_map[:, :, a:b], pool, gem_p) for a, b in stripe_bounds(feature_map.shape[-2], count)]


# --------------------------------------------------------------------------- modules


class Reduction(nn.Module):
    """B×C → 1×1 conv (no bias) → BN (optional) → ReLU (optional) → B×d: MGN's per-feature dimension reduction."""

    def __init__(self, in_dim: int, out_dim: int, relu: bool = True, bn: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_dim) if bn else nn.Identity()
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_in")
        if bn:
            nn.init.normal_(self.bn.weight, mean=1.0, std=0.02)
            nn.init.zeros_(self.bn.bias)

    def forward(self, vector: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(vector[:, :, None, None]))).flatten(1)


def feature_keys(branches: tuple[str, ...]) -> list[str]:
    """Pooled-vector keys in test-feature order: the globals (``g p2 p3``), then the stripes top first."""
    parts = [f"{b}_{i}" for b in branches for i in range(1, STRIPES[b] + 1)]
    return list(branches) + parts


class MGN(nn.Module):
    """Trunk → branches → pooled vectors → reductions (+ classifiers in training); see the module doc."""

    def __init__(self, trunk: nn.Module, branches: dict[str, nn.Module], channels: int, num_classes: int,
                 params: MGNParams, bnneck: bool = False) -> None:
        super().__init__()
        self.params = params
        self.bnneck = bnneck
        self.trunk = trunk
        self.branches = nn.ModuleDict(branches)
        keys = feature_keys(tuple(branches))
        dim = params.reduction_dim
        if params.shared_reduction:
            self.reductions = nn.ModuleDict({"shared": Reduction(channels, dim, params.reduction_relu,
                                                                 params.reduction_bn)})
        else:
            self.reductions = nn.ModuleDict({k: Reduction(channels, dim, params.reduction_relu, params.reduction_bn)
                                             for k in keys})
        # BNNeck: one BN per reduced feature (classifier input and test feature) and, for global
        # classifiers on the pooled vectors, one per pooled vector (see the module doc).
        self.necks = nn.ModuleDict()
        self.pooled_necks = nn.ModuleDict()
        if bnneck:
            for k in keys:
                self.necks[k] = _neck_bn(dim)
            for b in branches:
                if params.ce_on == "pooled":
                    self.pooled_necks[b] = _neck_bn(channels)
        self.classifiers = nn.ModuleDict()
        self.logit_prefix = "logits" if params.classifier == "linear" else "cosine"
        for k in keys:
            in_dim = channels if (k in branches and params.ce_on == "pooled") else dim
            if params.classifier == "cosine":
                self.classifiers[k] = CosineClassifier(in_dim, num_classes)
                continue
            classifier = nn.Linear(in_dim, num_classes, bias=not bnneck)
            nn.init.normal_(classifier.weight, mean=0.0, std=0.001)
            if classifier.bias is not None:
                nn.init.zeros_(classifier.bias)
            self.classifiers[k] = classifier
        if params.pool == "gem" and params.gem_learnable:
            # One trained exponent per pooled vector (fast-reid: a GeneralizedMeanPoolingP per head).
            self.pools = nn.ModuleDict({k: _pooling.GeneralizedMeanPooling(params.gem_p, learnable=True)
                                        for k in keys})
        self.feature_dims = {**{f"f_{k}": dim for k in keys}, **{f"f_{b}_pooled": channels for b in branches}}
        if bnneck:
            self.feature_dims.update({f"f_{k}_bn": dim for k in keys})
        self.test_feature = tuple(f"f_{k}_bn" if bnneck else f"f_{k}" for k in keys)

    def branch_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each branch's final B×C×h×w map."""
        shared = self.trunk(images)
        return {name: branch(shared) for name, branch in self.branches.items()}

    def pool_features(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{``g``/``p2``/``p3``: whole-map vector, ``p2_1`` … ``p3_3``: stripe vectors} for the maps given."""
        p = self.params
        if hasattr(self, "pools"):  # learnable GeM: each vector has its own exponent
            pooled = {name: self.pools[name](m) for name, m in maps.items()}
            for name, m in maps.items():
                for i, (a, b) in enumerate(stripe_bounds(m.shape[-2], STRIPES[name]) if STRIPES[name] else [],
                                           start=1):
                    pooled[f"{name}_{i}"] = self.pools[f"{name}_{i}"](m[:, :, a:b])
            return pooled
        pooled = {name: pool_map(m, p.pool, p.gem_p) for name, m in maps.items()}
        for name, m in maps.items():
            if not STRIPES[name]:
                continue  # the global branch has no stripes
            for i, v in enumerate(pool_stripes(m, STRIPES[name], p.pool, p.gem_p), start=1):
                pooled[f"{name}_{i}"] = v
        return pooled

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.pool_features(self.branch_maps(images))
        out: dict[str, torch.Tensor] = {}
        for key, vector in pooled.items():
            reduction = self.reductions["shared" if self.params.shared_reduction else key]
            reduced = reduction(vector)
            out[f"f_{key}"] = reduced
            if self.bnneck:
                reduced = out[f"f_{key}_bn"] = self.necks[key](reduced)
            is_global = key in self.branches
            if is_global:
                out[f"f_{key}_pooled"] = vector
            if self.training:
                if is_global and self.params.ce_on == "pooled":
                    ce_input = self.pooled_necks[key](vector) if self.bnneck else vector
                else:
                    ce_input = reduced
                out[f"{self.logit_prefix}_{key}"] = self.classifiers[key](ce_input)
        return out


def _neck_bn(dim: int) -> nn.BatchNorm1d:
    """BoT's BNNeck BN: weight 1, bias 0 and frozen (bot.md)."""
    bn = nn.BatchNorm1d(dim)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    bn.bias.requires_grad_(False)
    return bn


# --------------------------------------------------------------------------- splitting a backbone

# A piece: (module path in the backbone, start, stop); start None = the whole module, else the
# children [start:stop] of a Sequential (stop None = to the end).
Piece = tuple[str, "int | None", "int | None"]


@dataclass(frozen=True)
class Split:
    family: str
    trunk: tuple[Piece, ...]
    branch: tuple[Piece, ...]


_RESNET_STEM = ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4")


def split_of(name: str, backbone: nn.Module) -> Split:
    """Where ``backbone`` splits into trunk | branch (module doc); one-line error if it cannot."""
    from reidbench.models.backbones import TorchvisionFeatures

    if all(hasattr(backbone, a) for a in _RESNET_STEM) and len(backbone.layer3) >= 1:
        return Split("resnet",
                     trunk=(("conv1", None, None), ("bn1", None, None), ("act1", None, None), ("maxpool", None, None),
                            ("layer1", None, None), ("layer2", None, None), ("layer3", 0, 1)),
                     branch=(("layer3", 1, None), ("layer4", None, None)))
    features = getattr(backbone, "features", None)
    if (isinstance(backbone, TorchvisionFeatures) and len(features) == 19
            and type(features[7]).__name__ == "InvertedResidual"):
        return Split("mobilenetv2", trunk=(("features", 0, 8),), branch=(("features", 8, None),))
    blocks = getattr(backbone, "blocks", None)
    if type(backbone).__name__ == "EfficientNet" and blocks is not None and len(blocks) == 7:
        return Split("efficientnet",
                     trunk=(("conv_stem", None, None), ("bn1", None, None), ("blocks", 0, 3), ("blocks.3", 0, 1)),
                     branch=(("blocks.3", 1, None), ("blocks", 4, None), ("conv_head", None, None),
                             ("bn2", None, None)))
    raise ValueError(f"model.backbone={name!r} cannot be split into an mgn trunk and branches; supported: {SUPPORTED}")


def _piece_label(piece: Piece) -> str:
    path, start, stop = piece
    if start is None:
        return path
    if stop == start + 1:
        return f"{path}[{start}]"
    return f"{path}[{start}:{'' if stop is None else stop}]"


def _take(backbone: nn.Module, pieces: tuple[Piece, ...]) -> nn.Sequential:
    """The pieces as one Sequential; children keep the backbone's names and indices (``layer3.1``)."""
    taken: OrderedDict[str, nn.Module] = OrderedDict()
    for path, start, stop in pieces:
        module = backbone.get_submodule(path)
        if start is not None:
            stop = len(module) if stop is None else stop
            module = nn.Sequential(OrderedDict((str(i), module[i]) for i in range(start, stop)))
        taken[path.replace(".", "_")] = module
    return nn.Sequential(taken)


def _in_pieces(module_name: str, pieces: tuple[Piece, ...]) -> bool:
    for path, start, stop in pieces:
        if not module_name.startswith(path + "."):
            continue
        if start is None:
            return True
        index = int(module_name[len(path) + 1:].split(".")[0])
        if start <= index < (stop if stop is not None else index + 1):
            return True
    return False


def build(model: Any, num_classes: int) -> MGN:
    from reidbench.models.architectures import arch_params
    from reidbench.models.backbones import build_backbone, unstride_last_stage
    from reidbench.models.non_local import insert_non_local

    params: MGNParams = arch_params(model)
    backbone, channels = build_backbone(model.backbone, pretrained=model.pretrained, weights_path=model.weights_path,
                                        last_stride=2)
    split = split_of(model.backbone, backbone)
    # Before splitting and copying: trunk blocks are shared, branch blocks copied into each branch.
    nonlocal_after = [n.rsplit(".extra", 1)[0] for n in
                      insert_non_local(backbone, tuple(params.nonlocal_layers), params.nonlocal_channels)]

    unstrided: list[str] = []
    stride1 = None  # a copy of the whole backbone with its last stage unstrided (part branches)
    if any(b != "g" for b in params.branches) or model.last_stride == 1:
        stride1 = copy.deepcopy(backbone)
        unstrided = unstride_last_stage(stride1, model.backbone)
        outside = [n for n in unstrided if not _in_pieces(n, split.branch)]
        if outside:
            raise ValueError(f"model.backbone={model.backbone!r}: its last down-sampling {outside} lies in the mgn "
                             f"trunk, not the branches; supported: {SUPPORTED}")

    trunk = _take(backbone, split.trunk)
    branches: dict[str, nn.Module] = {}
    for b in params.branches:
        source = backbone if (b == "g" and model.last_stride == 2) else stride1
        # Deep copies: every branch owns its parameters, all starting from the same weights.
        branches[b] = copy.deepcopy(_take(source, split.branch))

    net = MGN(trunk, branches, channels, num_classes, params, bnneck=model.neck == "bnneck")
    heads = ("reductions", "necks", "pooled_necks", "classifiers", *(("pools",) if hasattr(net, "pools") else ()))
    groups = {
        "trunk": ("trunk",),
        "branches": ("branches",),
        "reductions": ("reductions",),
        "necks": ("necks", "pooled_necks"),
        "classifiers": ("classifiers",),
    }
    # ``backbone``/``head`` alias the groups bot has, so stages and optimiser groups written for it apply.
    groups.update(pretrained=("trunk", "branches"), new=heads, backbone=("trunk", "branches"), head=heads)
    net.module_groups = groups
    info = backbone.reid_info
    net.reid_info = {
        "backbone": model.backbone,
        "source": info.get("source"),
        "pretrained_source": info.get("pretrained_source"),
        "pretrained_digest": info.get("pretrained_digest"),
        "split": {"family": split.family, "trunk": [_piece_label(p) for p in split.trunk],
                  "branch": [_piece_label(p) for p in split.branch]},
        "branches": list(params.branches),
        "unstrided": unstrided,  # in the part branches (and the global one with last_stride 1)
        "stripes": {b: STRIPES[b] for b in params.branches if STRIPES[b]},
        "stripe_rule": "first h % n stripes get one extra row",
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(params).items()},
        "neck": model.neck,
        "global_stride": model.last_stride,
        "test_feature": list(net.test_feature),
    }
    if nonlocal_after:
        net.reid_info["nonlocal_after"] = nonlocal_after
    return net


ARCH = Architecture(name="mgn", summary="Multiple Granularity Network: shared trunk, global + part-2 + part-3 "
                                        "branches, 8 reduced features (f_g, f_p2_1, ..., logits_g, ...)",
                    build=build, params=MGNParams)
