"""What a study searches: the paper's batch-size and image-size grids, their CPU-profile scaling,
and how a trial suggests one point. Pure (no optuna import at module level, no I/O).

Parameter encoding (Optuna categoricals must be primitives, so pairs become strings):

- grid sampler: ``batch`` is ONE categorical string "PxK" ("16x4") and ``image_size`` a categorical
  "HxW" ("256x128"). The paper's ten P×K pairs are not a full product of P ∈ {8, 16, 32} and
  K ∈ {3, 4, 6, 8} (32×6 and 32×8 are missing), and GridSampler only walks full products of its
  parameters; one "batch" parameter holding the exact pairs walks exactly the paper's rows.
- tpe sampler: ``P`` and ``K`` are integers in the grid's ranges and ``image_size`` is the same
  categorical string; TPE models the two integers separately.

Every trial also carries user attributes P, K, batch and image_size, whichever sampler made it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

# Table 5 (P×K) and Table 6 (height×width) of Luo et al. 2019, in the paper's row order.
PAPER_BATCHES: tuple[tuple[int, int], ...] = (
    (8, 3), (8, 4), (8, 6), (8, 8), (16, 3), (16, 4), (16, 6), (16, 8), (32, 3), (32, 4),
)
PAPER_IMAGE_SIZES: tuple[tuple[int, int], ...] = ((256, 128), (224, 224), (384, 128), (384, 192))
# The cpu profile trains at 128×64 instead of 256×128: every size is halved, keeping the ratios.
CPU_SIZE_DIVISOR = 2

SPACES = ("batch-size", "image-size", "both")
SAMPLERS = ("grid", "tpe")
OBJECTIVES = {"map": "mAP", "r1": "R1"}


def format_pair(a: int, b: int) -> str:
    return f"{int(a)}x{int(b)}"


def parse_pair(text: str, what: str) -> tuple[int, int]:
    """"16x4" → (16, 4); a bad item fails naming ``what`` (the option) and the valid form."""
    left, sep, right = str(text).strip().lower().replace("×", "x").partition("x")
    if not sep or not left.strip().isdigit() or not right.strip().isdigit():
        raise ValueError(f"{what} {text!r} is not valid: use AxB with integers, e.g. 16x4 or 256x128")
    return int(left), int(right)


def parse_pair_list(text: str, what: str) -> tuple[tuple[int, int], ...]:
    items = [s for s in str(text).split(",") if s.strip()]
    if not items:
        raise ValueError(f"{what} {text!r} is empty: give comma-separated AxB items, e.g. 16x4,32x4")
    pairs = tuple(parse_pair(s, what) for s in items)
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"{what} {text!r} lists a value twice")
    return pairs


@dataclass(frozen=True)
class Point:
    """One configuration a trial trains: P identities × K images per batch, at height×width pixels."""

    ids_per_batch: int
    imgs_per_id: int
    image_size: tuple[int, int]

    @property
    def batch(self) -> str:
        return format_pair(self.ids_per_batch, self.imgs_per_id)

    @property
    def size(self) -> str:
        return format_pair(*self.image_size)

    def attrs(self) -> dict[str, Any]:
        return {"P": self.ids_per_batch, "K": self.imgs_per_id, "batch": self.batch, "image_size": self.size}


def profile_image_sizes(profile: str) -> tuple[tuple[int, int], ...]:
    """The paper's Table 6 sizes for the paper profile, halved for the cpu profiles (cpu, cpu-v1, ...)."""
    if profile.startswith("cpu"):  # cpu, cpu-v1, cpu-converged: the laptop-sized profiles
        return tuple((h // CPU_SIZE_DIVISOR, w // CPU_SIZE_DIVISOR) for h, w in PAPER_IMAGE_SIZES)
    return PAPER_IMAGE_SIZES


def scale_batches(batches: Sequence[tuple[int, int]], num_train_ids: int | None
                  ) -> tuple[tuple[tuple[int, int], ...], str | None]:
    """Scale P proportionally when the training set has fewer identities than the largest P.

    The sampler needs P distinct identities per batch. P' = max(2, floor(P · n / max P)) keeps the
    paper's ratios between rows; rows that collapse onto one another are kept once. Returns the
    batches and a note saying what was scaled (None when nothing was).
    """
    batches = tuple(batches)
    top = max(p for p, _ in batches)
    if num_train_ids is None or top <= num_train_ids:
        return batches, None
    if num_train_ids < 2:
        raise ValueError(f"the training set has {num_train_ids} identity; a P×K batch needs at least 2")
    scaled = tuple(dict.fromkeys((max(2, (p * num_train_ids) // top), k) for p, k in batches))
    note = (f"P scaled by {num_train_ids}/{top} because the training set has only {num_train_ids} identities "
            f"(P×K {', '.join(format_pair(*b) for b in batches)} → {', '.join(format_pair(*b) for b in scaled)})")
    return scaled, note


@dataclass(frozen=True)
class StudySpace:
    """The search space of one study. ``batches``/``image_sizes`` are the grid values (and, for
    tpe, the ranges and choices); ``base_batch``/``base_size`` fill the dimension not searched."""

    space: str  # batch-size | image-size | both
    sampler: str  # grid | tpe
    batches: tuple[tuple[int, int], ...]
    image_sizes: tuple[tuple[int, int], ...]
    base_batch: tuple[int, int]
    base_size: tuple[int, int]

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"--space {self.space!r} is not valid: {', '.join(SPACES)}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"--sampler {self.sampler!r} is not valid: {', '.join(SAMPLERS)}")
        for p, k in self.batches:
            if p < 2 or k < 1:
                raise ValueError(f"batch {format_pair(p, k)} is not valid: P >= 2 identities and K >= 1 images")
        for h, w in self.image_sizes:
            if h < 16 or w < 8:
                raise ValueError(f"image size {format_pair(h, w)} is not valid: height >= 16 and width >= 8")

    @property
    def searches_batch(self) -> bool:
        return self.space in ("batch-size", "both")

    @property
    def searches_size(self) -> bool:
        return self.space in ("image-size", "both")

    @property
    def p_range(self) -> tuple[int, int]:
        ps = [p for p, _ in self.batches]
        return min(ps), max(ps)

    @property
    def k_range(self) -> tuple[int, int]:
        ks = [k for _, k in self.batches]
        return min(ks), max(ks)

    def grid_search_space(self) -> dict[str, list[str]]:
        """GridSampler's search space: the exact values of each searched categorical."""
        out: dict[str, list[str]] = {}
        if self.searches_batch:
            out["batch"] = [format_pair(*b) for b in self.batches]
        if self.searches_size:
            out["image_size"] = [format_pair(*s) for s in self.image_sizes]
        return out

    def grid_points(self) -> list[dict[str, str]]:
        """Every grid point as Optuna params, in the paper's table order (batch-major)."""
        batches = [format_pair(*b) for b in self.batches] if self.searches_batch else [None]
        sizes = [format_pair(*s) for s in self.image_sizes] if self.searches_size else [None]
        points = []
        for b in batches:
            for s in sizes:
                params = {}
                if b is not None:
                    params["batch"] = b
                if s is not None:
                    params["image_size"] = s
                points.append(params)
        return points

    def point_from_params(self, params: dict[str, Any]) -> Point:
        """Params of either sampler (missing dimensions from the base) → a Point."""
        if "batch" in params:
            p, k = parse_pair(params["batch"], "batch")
        elif "P" in params or "K" in params:
            p, k = int(params.get("P", self.base_batch[0])), int(params.get("K", self.base_batch[1]))
        else:
            p, k = self.base_batch
        size = parse_pair(params["image_size"], "image_size") if "image_size" in params else self.base_size
        return Point(p, k, size)

    def suggest(self, trial: Any) -> Point:
        """Ask ``trial`` (an optuna Trial) for one point of this space."""
        params: dict[str, Any] = {}
        if self.sampler == "grid":
            for name, values in self.grid_search_space().items():
                params[name] = trial.suggest_categorical(name, values)
        else:
            if self.searches_batch:
                params["P"] = trial.suggest_int("P", *self.p_range)
                params["K"] = trial.suggest_int("K", *self.k_range)
            if self.searches_size:
                params["image_size"] = trial.suggest_categorical(
                    "image_size", [format_pair(*s) for s in self.image_sizes])
        return self.point_from_params(params)

    def num_points(self) -> int:
        """Number of grid points (tpe: the number of distinct points its ranges allow)."""
        if self.sampler == "grid":
            return len(self.grid_points())
        n = 1
        if self.searches_batch:
            (p0, p1), (k0, k1) = self.p_range, self.k_range
            n *= (p1 - p0 + 1) * (k1 - k0 + 1)
        if self.searches_size:
            n *= len(self.image_sizes)
        return n

    def to_attrs(self) -> dict[str, Any]:
        """JSON-able description stored in the study's user attributes."""
        return {
            "space": self.space,
            "sampler": self.sampler,
            "batches": [format_pair(*b) for b in self.batches],
            "image_sizes": [format_pair(*s) for s in self.image_sizes],
            "base_batch": format_pair(*self.base_batch),
            "base_image_size": format_pair(*self.base_size),
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> "StudySpace":
        return cls(
            space=attrs["space"], sampler=attrs["sampler"],
            batches=tuple(parse_pair(b, "batch") for b in attrs["batches"]),
            image_sizes=tuple(parse_pair(s, "image_size") for s in attrs["image_sizes"]),
            base_batch=parse_pair(attrs["base_batch"], "batch"),
            base_size=parse_pair(attrs["base_image_size"], "image_size"),
        )


def build_space(space: str, sampler: str, profile: str, base_batch: tuple[int, int], base_size: tuple[int, int],
                *, batches: Sequence[tuple[int, int]] | None = None,
                image_sizes: Sequence[tuple[int, int]] | None = None,
                num_train_ids: int | None = None) -> tuple[StudySpace, list[str]]:
    """The study's space for ``profile`` and notes on what was scaled or overridden.

    ``batches``/``image_sizes`` replace the paper's grids (they are used as given; a P larger than
    the training set's identities is an error then). Without them the cpu profile halves the image
    sizes and P is scaled down only if the training set is too small for P = 32.
    """
    notes: list[str] = []
    if batches is not None:
        chosen_batches = tuple(batches)
        kind = "grid" if sampler == "grid" else "range from"
        notes.append(f"P×K {kind} --batches: {', '.join(format_pair(*b) for b in chosen_batches)}")
        if num_train_ids is not None and space != "image-size":
            too_big = [format_pair(*b) for b in chosen_batches if b[0] > num_train_ids]
            if too_big:
                raise ValueError(f"--batches {', '.join(too_big)}: P is larger than the {num_train_ids} "
                                 "training identities; lower P")
    else:
        chosen_batches = PAPER_BATCHES
        if space != "image-size":
            chosen_batches, note = scale_batches(PAPER_BATCHES, num_train_ids)
            if note:
                notes.append(note)
            elif profile.startswith("cpu"):
                notes.append("cpu profile: P×K grid kept as in the paper")
    if image_sizes is not None:
        chosen_sizes = tuple(image_sizes)
        notes.append(f"image sizes from --image-sizes: {', '.join(format_pair(*s) for s in chosen_sizes)}")
    else:
        chosen_sizes = profile_image_sizes(profile)
        if profile.startswith("cpu") and space != "batch-size":
            notes.append("cpu profile: image sizes halved ("
                         + ", ".join(format_pair(*s) for s in chosen_sizes) + ")")
    if space == "image-size" and num_train_ids is not None and base_batch[0] > num_train_ids:
        raise ValueError(f"the base batch P={base_batch[0]} is larger than the {num_train_ids} training identities")
    return StudySpace(space, sampler, chosen_batches, chosen_sizes, tuple(base_batch), tuple(base_size)), notes
