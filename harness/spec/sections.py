"""RunSpec and its sections: the frozen, typed description of one training run and its default evaluation.

The spec fully determines a run. Which of its fields identify the *training* (and so enter the
run hash) is declared here, field by field: ``field(metadata={"hash": False})`` marks the ones
that do not change the trained weights (checkpoint frequency, the test sets, the whole ``eval``
section, ...). See ``hashing`` for how the identity is computed from the rest.

Components are chosen by name from registries — ``model.arch``, each ``loss.terms[].kind``,
``data.sampler``, ``schedule.kind``, ``optim.name`` — and a chosen component's own parameters
are written flat next to the name (``{kind: triplet, reads: f_t, margin: 0.3}``). They are kept
here as sparse ``(key, value)`` pairs holding only values that differ from the component's
defaults, so the spec module itself never needs the (torch-importing) registries to exist;
``loading`` validates them against the registries.

Pure data: no torch import.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Mapping

# The profiles every shipped base file defines (``profiles:`` keys). A base file may define more
# (``cpu-v1``: the cpu profile before its phases became step-granular); a profile is a label of the
# overlay a run was loaded with, never part of its identity (what the overlay sets is).
PROFILES = ("paper", "cpu")
PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NECKS = ("plain", "bnneck")
METRICS = ("euclidean", "sqeuclidean", "cosine")
AMP_MODES = ("off", "bf16", "fp16")
COMBINES = ("mean", "sum", "concat")
SCHEDULE_UNITS = ("epochs", "fraction")
# epoch: the LR, stages and freeze change once per epoch, at its start (the BoT reference);
# step: they are functions of the epochs elapsed at each optimizer step, x = (epoch - 1) + step / steps_per_epoch
# (harness/train/schedules.py), so phase lengths may be fractional.
GRANULARITIES = ("epoch", "step")
# Loss-term options that step granularity makes redundant: there every phase already follows the
# optimizer step, so the option at this value trains the same run (the curriculum's
# ``time: continuous``); a step-granular RunSpec drops it, so both writings share one identity.
STEP_REDUNDANT_TERM_OPTIONS: dict[tuple[str, str], Any] = {("curriculum_triplet", "time"): "continuous"}
SYNC_BN = ("head", "all", "off")

Options = tuple[tuple[str, Any], ...]  # a component's non-default parameters, sorted by key

UNHASHED = {"hash": False}


class SpecError(ValueError):
    """A spec field holds a value that is not valid; the message names field, value and the valid set."""


def fail(where: str, value: Any, valid: str) -> None:
    raise SpecError(f"{where}={value!r} is not valid: {valid}")


@dataclass(frozen=True)
class ModelSpec:
    arch: str = "bot"  # architecture registry name (models/architectures)
    backbone: str = "resnet50"
    pretrained: bool = True
    # A local weights file; part of the identity because different weights give different numbers.
    weights_path: str | None = None
    last_stride: int = 2
    neck: str = "plain"
    options: Options = ()  # the architecture's own parameters (non-default values only)

    def validate(self, where: str = "model") -> None:
        if not isinstance(self.arch, str) or not self.arch:
            fail(f"{where}.arch", self.arch, "an architecture name such as bot")
        if self.last_stride not in (1, 2):
            fail(f"{where}.last_stride", self.last_stride, "1 or 2")
        if self.neck not in NECKS:
            fail(f"{where}.neck", self.neck, " or ".join(NECKS))
        if not isinstance(self.backbone, str) or not self.backbone:
            fail(f"{where}.backbone", self.backbone, "a backbone name such as resnet50")
        if self.weights_path is not None and not self.pretrained:
            fail(f"{where}.weights_path", self.weights_path,
                 f"only read with {where}.pretrained=true; set it, or drop {where}.weights_path")


def _pair(value: Any, where: str) -> tuple[float, float]:
    if len(value) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        fail(where, list(value), "two numbers [low, high]")
    return float(value[0]), float(value[1])


@dataclass(frozen=True)
class DataSpec:
    # The training set's *name*; its identity in the run hash is the data fingerprint instead.
    train: str = field(default="synth-a", metadata=UNHASHED)
    # Test sets are evaluations, not training: never part of the run hash.
    test: tuple[str, ...] = field(default=("synth-a", "synth-b"), metadata=UNHASHED)
    image_size: tuple[int, int] = (256, 128)  # (height, width) in pixels
    ids_per_batch: int = 16  # P
    imgs_per_id: int = 4  # K
    flip_prob: float = 0.5
    pad_px: int = 10
    random_erasing_prob: float = 0.0
    # Random resized crop before the flip (Mancs): area fraction range of the crop (None = off) and
    # its height/width range; the crop is resized back to image_size.
    crop_scale: tuple[float, float] | None = None
    crop_aspect: tuple[float, float] = (2.0, 3.0)
    sampler: str = "pk"  # batch sampler registry name (harness/data/samplers)
    sampler_options: Options = ()  # the sampler's own parameters (non-default values only)
    # --- AGW / fast-reid ---
    # ImageNet AutoAugment applied with this probability, first of the random transforms (the
    # ``autoaug`` trick: 0.1, fast-reid's SBS; harness/data/transforms.py).
    autoaug_prob: float = 0.0
    # Part masks for architectures that pool with them (spreid): "" none, oracle, stripes or
    # folder:PATH (harness/data/masks.py). The provider's version enters the run hash with it.
    masks: str = ""

    def validate(self, where: str = "data") -> None:
        h, w = self.image_size
        if h < 16 or w < 8:
            fail(f"{where}.image_size", list(self.image_size), "[height, width] with height >= 16 and width >= 8")
        if self.ids_per_batch < 2:
            fail(f"{where}.ids_per_batch", self.ids_per_batch, "an integer >= 2")
        if self.imgs_per_id < 1:
            fail(f"{where}.imgs_per_id", self.imgs_per_id, "an integer >= 1")
        for name in ("flip_prob", "random_erasing_prob", "autoaug_prob"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                fail(f"{where}.{name}", p, "a probability in [0, 1]")
        if self.pad_px < 0:
            fail(f"{where}.pad_px", self.pad_px, "an integer >= 0")
        if not self.test:
            fail(f"{where}.test", list(self.test), "a non-empty list of dataset names")
        if self.crop_scale is not None:
            lo, hi = _pair(self.crop_scale, f"{where}.crop_scale")
            if not 0.0 < lo <= hi <= 1.0:
                fail(f"{where}.crop_scale", list(self.crop_scale),
                     "[low, high] area fractions with 0 < low <= high <= 1, or null (no random resized crop)")
        lo, hi = _pair(self.crop_aspect, f"{where}.crop_aspect")
        if not 0.0 < lo <= hi:
            fail(f"{where}.crop_aspect", list(self.crop_aspect), "[low, high] height/width ratios with 0 < low <= high")
        if self.crop_scale is None and tuple(self.crop_aspect) != (2.0, 3.0):
            fail(f"{where}.crop_aspect", list(self.crop_aspect), "only read with data.crop_scale set; drop it")
        if self.masks:
            from reidbench.harness.data.masks import parse_masks  # pure: no torch, no I/O

            try:
                parse_masks(self.masks, f"{where}.masks")
            except ValueError as exc:
                raise SpecError(str(exc)) from None
            if self.autoaug_prob > 0:  # AutoAugment's shears and rotations would not move the masks
                fail(f"{where}.autoaug_prob", self.autoaug_prob, "0 with part masks (data.masks); drop the autoaug trick")

    @property
    def batch_size(self) -> int:
        return self.ids_per_batch * self.imgs_per_id


@dataclass(frozen=True)
class LossTermSpec:
    """One named, weighted loss term reading one or more model outputs.

    ``reads``: an output name (``f_t``), a list of names, or a glob (``logits_*``); with several
    outputs the term is applied to each and the results are averaged (``combine: mean``, the
    default) or summed (``sum``), or the outputs are concatenated along the feature axis and the
    term applied once (``concat``). ``name`` labels the loss value in logs and curves (default:
    the kind's own, e.g. ``id`` for ``ce``).
    """

    kind: str
    reads: str | tuple[str, ...]
    weight: float = 1.0
    name: str | None = None
    combine: str = "mean"
    options: Options = ()  # the kind's own parameters (non-default values only)

    def validate(self, where: str) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            fail(f"{where}.kind", self.kind, "a loss term kind such as ce, triplet or center")
        reads = (self.reads,) if isinstance(self.reads, str) else self.reads
        if not reads or not all(isinstance(r, str) and r for r in reads):
            fail(f"{where}.reads", self.reads, "an output name, a list of names or a glob such as logits_*")
        if not self.weight >= 0 or not math.isfinite(self.weight):
            fail(f"{where}.weight", self.weight, "a finite number >= 0")
        if self.combine not in COMBINES:
            fail(f"{where}.combine", self.combine, " or ".join(COMBINES))

    @property
    def read_names(self) -> tuple[str, ...]:
        return (self.reads,) if isinstance(self.reads, str) else tuple(self.reads)


def _without_step_redundant(term: LossTermSpec) -> LossTermSpec:
    """``term`` without the options ``STEP_REDUNDANT_TERM_OPTIONS`` names (step granularity only)."""
    options = tuple((k, v) for k, v in term.options
                    if STEP_REDUNDANT_TERM_OPTIONS.get((term.kind, k), object()) != v)
    return term if options == term.options else dataclasses.replace(term, options=options)


def _bot_terms() -> tuple[LossTermSpec, ...]:
    # Baseline-S: cross-entropy on the logits + batch-hard triplet (margin 0.3) on f_t.
    return (LossTermSpec(kind="ce", reads="logits"), LossTermSpec(kind="triplet", reads="f_t"))


@dataclass(frozen=True)
class LossSpec:
    terms: tuple[LossTermSpec, ...] = field(default_factory=_bot_terms)

    def validate(self, where: str = "loss") -> None:
        if not self.terms:
            fail(f"{where}.terms", [], "at least one loss term")
        for i, term in enumerate(self.terms):
            term.validate(f"{where}.terms[{i}]")
        if all(t.weight == 0 for t in self.terms):
            fail(f"{where}.terms", "all weights 0", "at least one term with weight > 0")


@dataclass(frozen=True)
class GroupSpec:
    """A parameter group: parameters matched by module-group names or name globs get their own LR."""

    match: tuple[str, ...]
    lr_scale: float = 1.0
    weight_decay: float | None = None  # None = the optimiser's weight_decay

    def validate(self, where: str) -> None:
        if not self.match or not all(isinstance(m, str) and m for m in self.match):
            fail(f"{where}.match", list(self.match), "a list of module-group names (e.g. new) or parameter globs")
        if not self.lr_scale >= 0:
            fail(f"{where}.lr_scale", self.lr_scale, "a number >= 0")
        if self.weight_decay is not None and self.weight_decay < 0:
            fail(f"{where}.weight_decay", self.weight_decay, "a number >= 0 or null")


@dataclass(frozen=True)
class OptimSpec:
    name: str = "adam"  # optimiser registry name: adam (coupled L2, the reference), adamw, sgd
    base_lr: float = 3.5e-4
    weight_decay: float = 5e-4
    # Owned by the optimisers that declare them in their parameters (harness/spec/reads.py):
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    groups: tuple[GroupSpec, ...] = ()  # first matching group wins; the rest use base_lr
    grad_clip_norm: float | None = None  # clip the global gradient norm (None: no clipping)
    options: Options = ()  # the optimiser's other parameters (adam: eps), non-default values only

    def validate(self, where: str = "optim") -> None:
        if not isinstance(self.name, str) or not self.name:
            fail(f"{where}.name", self.name, "adam, adamw or sgd")
        if not self.base_lr > 0:
            fail(f"{where}.base_lr", self.base_lr, "a value > 0")
        if self.weight_decay < 0:
            fail(f"{where}.weight_decay", self.weight_decay, "a value >= 0")
        if not 0 <= self.momentum < 1:
            fail(f"{where}.momentum", self.momentum, "a value in [0, 1)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            fail(f"{where}.betas", list(self.betas), "two values in [0, 1)")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            fail(f"{where}.grad_clip_norm", self.grad_clip_norm, "a value > 0 or null")
        for i, group in enumerate(self.groups):
            group.validate(f"{where}.groups[{i}]")


@dataclass(frozen=True)
class ScheduleSpec:
    kind: str = "multistep"  # schedule registry name: multistep, cosine, poly
    max_epochs: int = 120
    # In ``unit``: epochs (1-based epochs at which the LR is multiplied by gamma) or fractions of the run.
    milestones: tuple[float, ...] = (40, 70)
    gamma: float = 0.1
    warmup_epochs: float = 0  # in ``unit``
    warmup_factor: float = 0.01
    unit: str = "epochs"  # epochs | fraction: how milestones, warmup and delay are stated
    options: Options = ()  # the schedule's own parameters (cosine: delay_epochs, min_factor; poly: power)
    # --- AGW / fast-reid ---
    # Freeze-backbone warm-up (fast-reid's FREEZE_ITERS / FREEZE_LAYERS): the module groups or
    # globs in ``freeze_modules`` get no update and keep their BatchNorm statistics for the first
    # ``freeze_epochs`` of the run (in ``unit``; fractional, honoured to the iteration).
    freeze_epochs: float = 0
    freeze_modules: tuple[str, ...] = ("backbone",)
    # --- phases ---
    # epoch (the reference): the LR and the stages change once per epoch, phase lengths are whole
    # epochs; step: every phase (warmup, milestones, cosine delay, stages) is a function of the
    # fractional epochs elapsed at each optimizer step, so its share of the run is exact.
    granularity: str = "epoch"

    def validate(self, where: str = "schedule") -> None:
        if self.max_epochs < 1:
            fail(f"{where}.max_epochs", self.max_epochs, "an integer >= 1")
        if self.unit not in SCHEDULE_UNITS:
            fail(f"{where}.unit", self.unit, " or ".join(SCHEDULE_UNITS))
        if self.granularity not in GRANULARITIES:
            fail(f"{where}.granularity", self.granularity, " or ".join(GRANULARITIES))
        if list(self.milestones) != sorted(self.milestones):
            fail(f"{where}.milestones", list(self.milestones), "increasing values")
        milestones = self.milestones if self.kind == "multistep" else ()  # only multistep reads them
        step = self.granularity == "step"
        if self.unit == "epochs" and step:
            if any(isinstance(m, bool) or not m >= 1 for m in milestones):
                fail(f"{where}.milestones", list(self.milestones),
                     "increasing epochs >= 1 (m: the first epoch at the decayed rate; fractional with granularity step)")
            if isinstance(self.warmup_epochs, bool) or not self.warmup_epochs >= 0:
                fail(f"{where}.warmup_epochs", self.warmup_epochs, "a number of epochs >= 0")
        elif self.unit == "epochs":
            if any(not float(m).is_integer() or m < 1 for m in milestones):
                fail(f"{where}.milestones", list(self.milestones),
                     "increasing integer epochs >= 1 (fractional ones need schedule.granularity: step)")
            if not float(self.warmup_epochs).is_integer() or self.warmup_epochs < 0:
                fail(f"{where}.warmup_epochs", self.warmup_epochs,
                     "an integer >= 0 (a fractional one needs schedule.granularity: step)")
        else:
            if any(not 0 < m <= 1 for m in milestones):
                fail(f"{where}.milestones", list(self.milestones), "fractions of the run in (0, 1]")
            if not 0 <= self.warmup_epochs < 1:
                fail(f"{where}.warmup_epochs", self.warmup_epochs, "a fraction of the run in [0, 1)")
        if not 0 < self.warmup_factor <= 1:
            fail(f"{where}.warmup_factor", self.warmup_factor, "a value in (0, 1]")
        # --- AGW / fast-reid ---
        limit = self.max_epochs if self.unit == "epochs" else 1
        if isinstance(self.freeze_epochs, bool) or not 0 <= self.freeze_epochs < limit:
            fail(f"{where}.freeze_epochs", self.freeze_epochs,
                 f"a number of epochs >= 0 and below max_epochs={self.max_epochs}" if self.unit == "epochs"
                 else "a fraction of the run in [0, 1)")
        if not self.freeze_modules or not all(isinstance(m, str) and m for m in self.freeze_modules):
            fail(f"{where}.freeze_modules", list(self.freeze_modules),
                 "a non-empty list of module-group names (e.g. backbone) or module-name globs")


@dataclass(frozen=True)
class StageSpec:
    """A stretch of the run: its length, what is frozen (no update, BatchNorm in eval mode), its LR.

    ``frozen`` / ``train_only`` name module groups of the architecture (``backbone``, ``new``,
    ``pretrained``, ...) or module-name globs; ``train_only`` freezes everything else.
    ``losses`` names the loss terms (by kind, e.g. ``ce``, or label, e.g. ``id``) the stage trains
    with; the others are not computed in it (no value, no gradient). Empty: every term.
    """

    # Whole epochs; with schedule.granularity step any length > 0 (the stage boundaries are then
    # honoured to the optimizer step).
    epochs: float
    name: str = ""
    frozen: tuple[str, ...] = ()
    train_only: tuple[str, ...] = ()
    lr_scale: float = 1.0
    losses: tuple[str, ...] = ()

    def validate(self, where: str, granularity: str = "epoch") -> None:
        if granularity == "step":
            if isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, float)) or not self.epochs > 0 \
                    or not math.isfinite(self.epochs):
                fail(f"{where}.epochs", self.epochs, "a number of epochs > 0")
        elif isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            fail(f"{where}.epochs", self.epochs,
                 "an integer >= 1 (a fractional stage length needs schedule.granularity: step)")
        if self.frozen and self.train_only:
            fail(f"{where}.train_only", list(self.train_only), "either frozen or train_only, not both")
        if not self.lr_scale >= 0:
            fail(f"{where}.lr_scale", self.lr_scale, "a number >= 0")
        if not all(isinstance(n, str) and n for n in self.losses):
            fail(f"{where}.losses", list(self.losses), "loss term kinds or labels such as ce or id")


@dataclass(frozen=True)
class EvalSpec:
    """The run's default evaluation settings. None of them changes the trained weights."""

    feature: str = "auto"  # auto = the architecture's test feature; or an output name, or names joined by +
    normalize: bool = True  # L2-normalise before ranking (the reference does, for every row)
    metric: str = "sqeuclidean"
    flip: bool = False
    rerank: bool = False
    batch_size: int = 128
    # Evaluate on the first test set every N epochs for training curves (0 = only at the end).
    every_epochs: int = 0

    def validate(self, where: str = "eval") -> None:
        if not isinstance(self.feature, str) or not self.feature or any(not p for p in self.feature.split("+")):
            fail(f"{where}.feature", self.feature, "auto, an output name such as f_t or f_i, or names joined by +")
        if self.metric not in METRICS:
            fail(f"{where}.metric", self.metric, " or ".join(METRICS))
        if self.batch_size < 1:
            fail(f"{where}.batch_size", self.batch_size, "an integer >= 1")
        if self.every_epochs < 0:
            fail(f"{where}.every_epochs", self.every_epochs, "an integer >= 0")


@dataclass(frozen=True)
class TrainSpec:
    seed: int = 0
    amp: str = "bf16"  # used on CUDA only; CPU trains in float32
    channels_last: bool = True  # NHWC activations (faster convolutions on CUDA and on CPU)
    deterministic: bool = False
    checkpoint_every_epochs: int = field(default=1, metadata=UNHASHED)
    # Which BatchNorm layers compute their statistics over the global batch when one run trains on
    # several processes (--gpus-per-run G > 1): head = those the architecture adds on top of the
    # pretrained backbone (its "new" module group: BoT's BNNeck BN, MGN's reductions and necks),
    # all = every one (the single-process semantics), off = none. With one process all three train
    # identically. Hashed only when not "head" (docs/distributed.md).
    sync_bn: str = "head"

    def validate(self, where: str = "train") -> None:
        if self.amp not in AMP_MODES:
            fail(f"{where}.amp", self.amp, " or ".join(AMP_MODES))
        if self.sync_bn not in SYNC_BN:
            fail(f"{where}.sync_bn", self.sync_bn, " or ".join(SYNC_BN))
        if self.checkpoint_every_epochs < 1:
            fail(f"{where}.checkpoint_every_epochs", self.checkpoint_every_epochs, "an integer >= 1")


@dataclass(frozen=True)
class RunSpec:
    # The base file's profile overlay the spec was loaded with: a label (reports, captions), not part
    # of the identity — the overlay's fields are.
    profile: str = field(default="paper", metadata=UNHASHED)
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    loss: LossSpec = field(default_factory=LossSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    # Training stages; empty = one stage of schedule.max_epochs with nothing frozen.
    stages: tuple[StageSpec, ...] = ()
    eval: EvalSpec = field(default_factory=EvalSpec, metadata=UNHASHED)
    train: TrainSpec = field(default_factory=TrainSpec)
    # Names of the tricks applied to the base, kept sorted so patch order does not matter.
    tricks: tuple[str, ...] = ()
    # The base's full schedule length, kept when --epochs shortens a run so reports can say so.
    full_epochs: int | None = None

    def __post_init__(self) -> None:
        if getattr(self.schedule, "granularity", "epoch") != "step" or not isinstance(self.loss, LossSpec):
            return
        terms = tuple(_without_step_redundant(t) for t in self.loss.terms)
        if terms != self.loss.terms:
            object.__setattr__(self, "loss", dataclasses.replace(self.loss, terms=terms))

    def validate(self) -> "RunSpec":
        if not isinstance(self.profile, str) or not PROFILE_NAME.fullmatch(self.profile):
            fail("profile", self.profile, "a profile name of letters, digits, '.', '_' or '-' such as "
                 + " or ".join(PROFILES))
        for name in ("model", "data", "loss", "optim", "schedule", "eval", "train"):
            getattr(self, name).validate(name)
        for i, stage in enumerate(self.stages):
            stage.validate(f"stages[{i}]", self.schedule.granularity)
        if self.stages and not math.isclose(sum(s.epochs for s in self.stages), self.schedule.max_epochs,
                                            rel_tol=0.0, abs_tol=1e-6):
            fail("stages", [s.epochs for s in self.stages],
                 f"epochs that add up to schedule.max_epochs={self.schedule.max_epochs}")
        from reidbench.harness.spec.reads import unread_fields  # lazy: it consults the registries

        unread = unread_fields(self)
        if unread:
            raise SpecError(unread[0].message())
        return self

    @property
    def shortened(self) -> bool:
        return self.full_epochs is not None and self.schedule.max_epochs < self.full_epochs

    def to_dict(self) -> dict[str, Any]:
        """Plain data of every field, except component-owned ones the chosen components do not read."""
        from reidbench.harness.spec.reads import prune_unread_keys

        return prune_unread_keys(to_jsonable(self), self)

    def to_json(self) -> str:
        return canonical_json(self.to_dict())


SECTIONS: dict[str, type] = {
    "model": ModelSpec,
    "data": DataSpec,
    "loss": LossSpec,
    "optim": OptimSpec,
    "schedule": ScheduleSpec,
    "eval": EvalSpec,
    "train": TrainSpec,
}
# Sparse component options are written flat in their section/element (see the module doc).
OPTION_FIELDS = {ModelSpec: "options", DataSpec: "sampler_options", LossTermSpec: "options", ScheduleSpec: "options",
                 OptimSpec: "options"}


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, NaN forbidden: the bytes hashes are computed over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _number(value: Any) -> Any:
    # 40.0 and 40 must serialise alike, so a milestone written as a float hashes as the int.
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def to_jsonable(obj: Any, *, prune_defaults: bool = False, hashed_only: bool = False) -> Any:
    """Plain JSON data of a spec value.

    ``prune_defaults`` drops every dataclass field equal to its default (recursively), so a field
    added later with a default never changes an existing identity; ``hashed_only`` drops fields
    marked ``metadata={"hash": False}``. Component options are emitted flat beside the fields.
    """
    if is_dataclass(obj):
        out: dict[str, Any] = {}
        defaults = field_defaults(type(obj))
        option_field = OPTION_FIELDS.get(type(obj))
        for f in fields(obj):
            if hashed_only and not f.metadata.get("hash", True):
                continue
            value = getattr(obj, f.name)
            if f.name == option_field:
                out.update({k: to_jsonable(v, prune_defaults=prune_defaults, hashed_only=hashed_only)
                            for k, v in value})
                continue
            if prune_defaults and f.name in defaults and defaults[f.name] == value:
                continue
            converted = to_jsonable(value, prune_defaults=prune_defaults, hashed_only=hashed_only)
            if prune_defaults and is_dataclass(value) and f.name in defaults and converted == {}:
                continue  # a section whose every field is at its default (e.g. a grown subclass)
            out[f.name] = converted
        return out
    if isinstance(obj, (tuple, list)):
        return [to_jsonable(x, prune_defaults=prune_defaults, hashed_only=hashed_only) for x in obj]
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise SpecError(f"non-finite number {obj!r} in spec")
        return _number(obj) if prune_defaults else obj
    return obj


def field_defaults(cls: type) -> dict[str, Any]:
    """Field defaults of a dataclass (fields without a default are always emitted)."""
    out = {}
    for f in fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def replace_section(spec: RunSpec, section: str, **changes: Any) -> RunSpec:
    """Return a copy of ``spec`` with some fields of one section changed (used by tricks)."""
    return dataclasses.replace(spec, **{section: dataclasses.replace(getattr(spec, section), **changes)})


def with_options(options: Options, **changes: Any) -> Options:
    """Sparse options with ``changes`` applied (a value of None removes the key)."""
    merged = dict(options)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = tuple(value) if isinstance(value, list) else value
    return tuple(sorted(merged.items()))


def options_from(raw: Mapping[str, Any]) -> Options:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in raw.items()))
