"""RunSpec: the frozen, typed description of one training run.

The spec fully determines a run: two runs with equal specs (and equal applied-trick versions)
share one hash (see ``hashing``). Runtime options that do not change the numbers (output folder,
device, loader workers, data root path) live outside the spec, in ``RuntimeOptions``.

Pure data: no torch import, so the CLI can validate specs for ``--help``/``--dry-run`` quickly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping

SCHEMA_VERSION = 1

PROFILES = ("paper", "cpu")
NECKS = ("plain", "bnneck")
FEATURES = ("auto", "f_t", "f_i")
METRICS = ("euclidean", "sqeuclidean", "cosine")
OPTIMIZERS = ("adam",)
AMP_MODES = ("off", "bf16", "fp16")


class SpecError(ValueError):
    """A spec field holds a value that is not valid; the message names field, value and the valid set."""


def _fail(where: str, value: Any, valid: str) -> None:
    raise SpecError(f"{where}={value!r} is not valid: {valid}")


@dataclass(frozen=True)
class ModelSpec:
    backbone: str = "resnet50"
    pretrained: bool = True
    # A local weights file; part of the hash because different weights give different numbers.
    weights_path: str | None = None
    last_stride: int = 2
    neck: str = "plain"

    def validate(self, where: str = "model") -> None:
        if self.last_stride not in (1, 2):
            _fail(f"{where}.last_stride", self.last_stride, "1 or 2")
        if self.neck not in NECKS:
            _fail(f"{where}.neck", self.neck, " or ".join(NECKS))
        if not isinstance(self.backbone, str) or not self.backbone:
            _fail(f"{where}.backbone", self.backbone, "a backbone name such as resnet50")


@dataclass(frozen=True)
class DataSpec:
    train: str = "synth-a"
    test: tuple[str, ...] = ("synth-a", "synth-b")
    image_size: tuple[int, int] = (256, 128)  # (height, width) in pixels
    ids_per_batch: int = 16  # P
    imgs_per_id: int = 4  # K
    flip_prob: float = 0.5
    pad_px: int = 10
    random_erasing_prob: float = 0.0

    def validate(self, where: str = "data") -> None:
        h, w = self.image_size
        if h < 16 or w < 8:
            _fail(f"{where}.image_size", list(self.image_size), "[height, width] with height >= 16 and width >= 8")
        if self.ids_per_batch < 2:
            _fail(f"{where}.ids_per_batch", self.ids_per_batch, "an integer >= 2")
        if self.imgs_per_id < 1:
            _fail(f"{where}.imgs_per_id", self.imgs_per_id, "an integer >= 1")
        for name in ("flip_prob", "random_erasing_prob"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                _fail(f"{where}.{name}", p, "a probability in [0, 1]")
        if self.pad_px < 0:
            _fail(f"{where}.pad_px", self.pad_px, "an integer >= 0")
        if not self.test:
            _fail(f"{where}.test", list(self.test), "a non-empty list of dataset names")

    @property
    def batch_size(self) -> int:
        return self.ids_per_batch * self.imgs_per_id


@dataclass(frozen=True)
class LossSpec:
    id_weight: float = 1.0
    label_smoothing: float = 0.0  # epsilon
    triplet_weight: float = 1.0
    triplet_margin: float | None = 0.3  # None = soft margin
    center_weight: float = 0.0  # beta; 0 disables the center loss
    center_lr: float = 0.5

    def validate(self, where: str = "loss") -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            _fail(f"{where}.label_smoothing", self.label_smoothing, "a value in [0, 1)")
        for name in ("id_weight", "triplet_weight", "center_weight", "center_lr"):
            if getattr(self, name) < 0:
                _fail(f"{where}.{name}", getattr(self, name), "a value >= 0")
        if self.triplet_margin is not None and self.triplet_margin < 0:
            _fail(f"{where}.triplet_margin", self.triplet_margin, "a value >= 0 or null (soft margin)")
        if self.id_weight == 0 and self.triplet_weight == 0:
            _fail(f"{where}.id_weight", self.id_weight, "id_weight or triplet_weight must be > 0")


@dataclass(frozen=True)
class OptimSpec:
    name: str = "adam"
    base_lr: float = 3.5e-4
    weight_decay: float = 5e-4  # coupled L2 (torch Adam weight_decay), as the reference
    betas: tuple[float, float] = (0.9, 0.999)

    def validate(self, where: str = "optim") -> None:
        if self.name not in OPTIMIZERS:
            _fail(f"{where}.name", self.name, " or ".join(OPTIMIZERS))
        if not self.base_lr > 0:
            _fail(f"{where}.base_lr", self.base_lr, "a value > 0")
        if self.weight_decay < 0:
            _fail(f"{where}.weight_decay", self.weight_decay, "a value >= 0")


@dataclass(frozen=True)
class ScheduleSpec:
    max_epochs: int = 120
    milestones: tuple[int, ...] = (40, 70)  # 1-based epochs at which the LR is multiplied by gamma
    gamma: float = 0.1
    warmup_epochs: int = 0
    warmup_factor: float = 0.01

    def validate(self, where: str = "schedule") -> None:
        if self.max_epochs < 1:
            _fail(f"{where}.max_epochs", self.max_epochs, "an integer >= 1")
        if list(self.milestones) != sorted(self.milestones) or any(m < 1 for m in self.milestones):
            _fail(f"{where}.milestones", list(self.milestones), "increasing epochs >= 1")
        if self.warmup_epochs < 0:
            _fail(f"{where}.warmup_epochs", self.warmup_epochs, "an integer >= 0")
        if not 0 < self.warmup_factor <= 1:
            _fail(f"{where}.warmup_factor", self.warmup_factor, "a value in (0, 1]")


@dataclass(frozen=True)
class EvalSpec:
    feature: str = "auto"  # auto = f_i with BNNeck (the reference), else the pooled feature
    normalize: bool = True  # L2-normalise before ranking (the reference does, for every row)
    metric: str = "sqeuclidean"
    flip: bool = False
    rerank: bool = False
    batch_size: int = 128
    # Evaluate on the first test set every N epochs for training curves (0 = only at the end).
    every_epochs: int = 0

    def validate(self, where: str = "eval") -> None:
        if self.feature not in FEATURES:
            _fail(f"{where}.feature", self.feature, " or ".join(FEATURES))
        if self.metric not in METRICS:
            _fail(f"{where}.metric", self.metric, " or ".join(METRICS))
        if self.batch_size < 1:
            _fail(f"{where}.batch_size", self.batch_size, "an integer >= 1")
        if self.every_epochs < 0:
            _fail(f"{where}.every_epochs", self.every_epochs, "an integer >= 0")


@dataclass(frozen=True)
class TrainSpec:
    seed: int = 0
    amp: str = "bf16"  # used on CUDA only; CPU trains in float32
    channels_last: bool = True  # NHWC activations (faster convolutions on CUDA and on CPU)
    deterministic: bool = False
    checkpoint_every_epochs: int = 1

    def validate(self, where: str = "train") -> None:
        if self.amp not in AMP_MODES:
            _fail(f"{where}.amp", self.amp, " or ".join(AMP_MODES))
        if self.checkpoint_every_epochs < 1:
            _fail(f"{where}.checkpoint_every_epochs", self.checkpoint_every_epochs, "an integer >= 1")


@dataclass(frozen=True)
class RunSpec:
    profile: str = "paper"
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    loss: LossSpec = field(default_factory=LossSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    # Names of the tricks applied to the base, kept sorted so patch order does not matter.
    tricks: tuple[str, ...] = ()
    # The base's full schedule length, kept when --epochs shortens a run so reports can say so.
    full_epochs: int | None = None

    def validate(self) -> "RunSpec":
        if self.profile not in PROFILES:
            _fail("profile", self.profile, " or ".join(PROFILES))
        for section in (self.model, self.data, self.loss, self.optim, self.schedule, self.eval, self.train):
            section.validate()
        # A milestone past max_epochs simply never fires; allowed, as in the reference configs.
        return self

    @property
    def feature_key(self) -> str:
        """Which model output is used at test time."""
        if self.eval.feature != "auto":
            return self.eval.feature
        return "f_i" if self.model.neck == "bnneck" else "f_t"

    @property
    def shortened(self) -> bool:
        return self.full_epochs is not None and self.schedule.max_epochs < self.full_epochs

    def to_dict(self) -> dict[str, Any]:
        return _to_jsonable(self)

    def to_json(self) -> str:
        return canonical_json(self.to_dict())


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, NaN forbidden: the bytes the run hash is computed over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _to_jsonable(obj: Any) -> Any:
    if is_dataclass(obj):
        return {f.name: _to_jsonable(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_to_jsonable(x) for x in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        raise SpecError(f"non-finite number {obj!r} in spec")
    return obj


_SECTIONS = {
    "model": ModelSpec,
    "data": DataSpec,
    "loss": LossSpec,
    "optim": OptimSpec,
    "schedule": ScheduleSpec,
    "eval": EvalSpec,
    "train": TrainSpec,
}


def _coerce(cls: type, where: str, raw: Any) -> Any:
    """Build a section dataclass from a mapping, rejecting unknown keys with the list of valid ones."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where} must be a mapping of fields, got {type(raw).__name__}")
    valid = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in valid:
            raise SpecError(f"{where}.{key} is not a known field; valid: {', '.join(valid)}")
        default = getattr(cls(), key)
        if value is None and "None" in str(valid[key].type):
            kwargs[key] = None
            continue
        if isinstance(default, tuple) and isinstance(value, (list, tuple)):
            value = tuple(value)
        elif isinstance(default, tuple) and isinstance(value, str) and key == "test":
            value = tuple(v for v in value.split(",") if v)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise SpecError(f"{where}.{key}={value!r} is not valid: true or false")
        elif isinstance(default, int) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, int):
                raise SpecError(f"{where}.{key}={value!r} is not valid: an integer")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SpecError(f"{where}.{key}={value!r} is not valid: a number")
            value = float(value)
        kwargs[key] = value
    return cls(**kwargs)


def spec_from_dict(raw: Mapping[str, Any], where: str = "spec") -> RunSpec:
    """Build and validate a RunSpec from plain data (YAML/JSON)."""
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where} must be a mapping with sections {', '.join(_SECTIONS)}")
    top_valid = {f.name for f in fields(RunSpec)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in top_valid:
            raise SpecError(f"{where}: unknown field {key!r}; valid: {', '.join(sorted(top_valid))}")
        if key in _SECTIONS:
            kwargs[key] = _coerce(_SECTIONS[key], key, value)
        elif key == "tricks":
            kwargs[key] = tuple(sorted(value or ()))
        else:
            kwargs[key] = value
    return RunSpec(**kwargs).validate()


def spec_from_json(text: str) -> RunSpec:
    return spec_from_dict(json.loads(text))


def replace_section(spec: RunSpec, section: str, **changes: Any) -> RunSpec:
    """Return a copy of ``spec`` with some fields of one section changed (used by tricks)."""
    return dataclasses.replace(spec, **{section: dataclasses.replace(getattr(spec, section), **changes)})


def merge_dicts(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``override`` wins. Used for profile overlays in base YAML files."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def with_epochs(spec: RunSpec, epochs: int) -> RunSpec:
    """Shorten (or lengthen) the schedule to ``epochs``, scaling milestones and warmup proportionally.

    The original length is kept in ``full_epochs`` so reports can say the run was cut short.
    """
    if epochs < 1:
        raise SpecError(f"--epochs={epochs} is not valid: an integer >= 1")
    sched = spec.schedule
    full = spec.full_epochs or sched.max_epochs
    if epochs == sched.max_epochs:
        return spec
    scale = epochs / sched.max_epochs
    # A milestone scaled down to epoch 1 would decay the LR before any training at the base rate.
    milestones = tuple(sorted({max(2, round(m * scale)) if m >= 2 else m for m in sched.milestones}))
    # A warmup of one epoch would be no warmup at all (epoch 1 already at full rate): keep >= 2.
    warmup = max(2, round(sched.warmup_epochs * scale)) if sched.warmup_epochs >= 2 else sched.warmup_epochs
    new = dataclasses.replace(
        spec,
        schedule=dataclasses.replace(sched, max_epochs=epochs, milestones=milestones, warmup_epochs=warmup),
        full_epochs=full if epochs != full else None,
    )
    return new.validate()


def load_yaml(path: str | Path) -> Any:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{p}: spec file not found")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{p}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None


def load_spec_file(path: str | Path, profile: str | None = None) -> RunSpec:
    """Load a run spec YAML. A base file may hold ``profiles: {name: overrides}``; pick one with ``profile``.

    Without ``profile`` the file's own ``profile`` field (default ``paper``) is used.
    """
    raw = load_yaml(path)
    if not isinstance(raw, Mapping):
        raise SpecError(f"{path}: expected a mapping of spec sections at the top level")
    raw = dict(raw)
    raw.pop("name", None)
    raw.pop("description", None)
    profiles = raw.pop("profiles", {}) or {}
    chosen = profile or raw.get("profile", "paper")
    if chosen not in PROFILES:
        _fail("profile", chosen, " or ".join(PROFILES))
    if chosen in profiles:
        raw = merge_dicts(raw, profiles[chosen])
    elif profiles and profile is not None:
        raise SpecError(f"{path}: profile {chosen!r} not defined; defined: {', '.join(profiles)}")
    raw["profile"] = chosen
    try:
        return spec_from_dict(raw, where=str(path))
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None
