"""Image transforms with the Bag-of-Tricks reference semantics, split into two stages.

Reference train pipeline (PIL): resize → horizontal flip → zero-pad → random crop → to [0, 1]
→ normalise → random erasing. Test: resize → to [0, 1] → normalise. The ``autoaug`` trick
(fast-reid's SBS) adds ImageNet AutoAugment with a probability as the first random step.

Resize comes first and is deterministic, so it is a separate stage, :func:`load_resized`
(decode + Pillow bilinear resize, exactly what ``torchvision.transforms.Resize`` does to a PIL
image), whose uint8 ``3×H×W`` output can be cached. The random stage works on that uint8 tensor:
flip, pad and crop only move pixels, so applying them to the cached tensor gives bit-identical
results to applying them to the PIL image. Both transforms also accept a PIL image and then do
the resize themselves.

All randomness comes from torch's global CPU generator (torchvision v2 draws with
``torch.rand``/``torch.randint``, and so does :class:`RandomErasing`), so seeding torch — or
the per-sample seeding in :mod:`.loader` — makes augmentations reproducible.

Part masks (``harness/data/masks.py``). Both transforms take an optional uint8 ``5×H×W`` mask
tensor beside the image and then return ``(image, masks)``, masks as float32 in [0, 1]. Flip and
pad-and-crop move the mask pixels exactly as the image's (one torchvision v2 call on the pair:
the same drawn parameters; padding is background), and a randomly erased box is background in
every map (SPReID parses the image it is given, and a parser sees no person in a grey box).
Without masks nothing changes: the random draws, and so the image, are the same either way.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_size(image_size: Sequence[int]) -> tuple[int, int]:
    if len(image_size) != 2 or any(int(s) != s or s < 1 for s in image_size):
        raise ValueError(f"image_size must be (height, width) in pixels, got {tuple(image_size)}")
    return int(image_size[0]), int(image_size[1])


def resize_pil(image: Image.Image, image_size: Sequence[int]) -> Image.Image:
    """RGB + bilinear resize to ``(height, width)``, as the reference ``Resize`` on a PIL image."""
    height, width = _check_size(image_size)
    return image.convert("RGB").resize((width, height), Image.BILINEAR)


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """``H×W×3`` PIL RGB image → contiguous uint8 tensor ``3×H×W``."""
    # The HWC→CHW copy is done by NumPy (single-threaded): a torch copy of this size would open
    # an intra-op parallel region per image, which costs more than the copy itself.
    return torch.from_numpy(np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)))


def load_resized(path: str | os.PathLike, image_size: Sequence[int]) -> torch.Tensor:
    """Decode ``path`` and resize it: uint8 tensor ``3×height×width`` (the cacheable stage)."""
    with Image.open(path) as image:
        return pil_to_uint8(resize_pil(image, image_size))


def _as_resized_uint8(image: Image.Image | torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    if isinstance(image, Image.Image):
        return pil_to_uint8(resize_pil(image, image_size))
    if image.dtype != torch.uint8 or image.ndim != 3 or tuple(image.shape[1:]) != image_size:
        raise ValueError(f"expected a uint8 tensor 3x{image_size[0]}x{image_size[1]} from load_resized, "
                         f"got {image.dtype} {tuple(image.shape)}")
    return image


def _as_masks(masks: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    if masks.dtype != torch.uint8 or masks.ndim != 3 or tuple(masks.shape[1:]) != image_size:
        raise ValueError(f"expected uint8 part masks Kx{image_size[0]}x{image_size[1]} (the image's size), "
                         f"got {masks.dtype} {tuple(masks.shape)}")
    return masks


def masks_to_float(masks: torch.Tensor) -> torch.Tensor:
    """uint8 maps (value × 255) → plain float32 tensor in [0, 1]."""
    return masks.as_subclass(torch.Tensor).to(torch.float32).div_(255)


def to_normalized_float(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``3×H×W`` → float32, ``/255`` then ``(x − mean)/std`` per channel.

    ``div(255)`` as in ``ToTensor`` (the reference); ``v2.ToDtype(scale=True)`` multiplies by
    1/255 instead, which differs in the last bit for some values.
    """
    return F.normalize(image.to(torch.float32).div_(255), list(mean), list(std), inplace=True)


class RandomErasing:
    """Reference random erasing (Zhong et al.) on a normalised ``C×H×W`` float tensor, in place.

    With probability ``probability``: up to ``max_attempts`` tries of area ``U(sl, sh)·H·W`` and
    aspect ``U(r1, 1/r1)`` (uniform in the ratio itself), ``h = round(√(area·aspect))``,
    ``w = round(√(area/aspect))``; the first box with ``h < H`` and ``w < W`` gets a uniform
    top-left corner and is filled per channel with ``fill`` — constants written into the
    *normalised* tensor (the reference passes the ImageNet mean there, not a pixel colour).

    ``torchvision.transforms.v2.RandomErasing`` is not the same augmentation: it samples the
    aspect ratio log-uniformly (more square-ish boxes), defaults to scale (0.02, 0.33) and ratio
    (0.3, 3.3), tries 10 times instead of 100, and fills with 0 or random normal noise unless
    given a value. Hence this hand-written version, drawing from torch's generator.
    """

    def __init__(
        self,
        probability: float = 0.5,
        sl: float = 0.02,
        sh: float = 0.4,
        r1: float = 0.3,
        fill: Sequence[float] = IMAGENET_MEAN,
        max_attempts: int = 100,
    ) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"random erasing probability must be in [0, 1], got {probability}")
        if not 0.0 < sl <= sh <= 1.0:
            raise ValueError(f"random erasing area fractions need 0 < sl <= sh <= 1, got sl={sl}, sh={sh}")
        if not 0.0 < r1 <= 1.0:
            raise ValueError(f"random erasing r1 must be in (0, 1], got {r1}")
        self.probability = probability
        self.sl, self.sh, self.r1 = sl, sh, r1
        self.fill = tuple(float(v) for v in fill)
        self.max_attempts = max_attempts

    @staticmethod
    def _uniform(low: float, high: float) -> float:
        # float64 draw: the same resolution as Python's random.uniform in the reference.
        return low + (high - low) * torch.rand((), dtype=torch.float64).item()

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        self.erase(image)
        return image

    def erase(self, image: torch.Tensor) -> tuple[int, int, int, int] | None:
        """Erase in place as ``__call__`` does; returns the box ``(top, left, height, width)`` or None."""
        if torch.rand((), dtype=torch.float64).item() >= self.probability:
            return None
        channels, height, width = image.shape
        if channels != len(self.fill) and channels != 1:
            raise ValueError(f"random erasing fill has {len(self.fill)} values for a {channels}-channel image")
        area = height * width
        for _ in range(self.max_attempts):
            target_area = self._uniform(self.sl, self.sh) * area
            aspect_ratio = self._uniform(self.r1, 1.0 / self.r1)
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if h < height and w < width:
                top = int(torch.randint(0, height - h + 1, ()).item())
                left = int(torch.randint(0, width - w + 1, ()).item())
                for channel in range(channels):
                    image[channel, top:top + h, left:left + w] = self.fill[channel]
                return top, left, h, w
        return None

    def __repr__(self) -> str:
        return (f"RandomErasing(probability={self.probability}, sl={self.sl}, sh={self.sh}, r1={self.r1}, "
                f"fill={self.fill}, max_attempts={self.max_attempts})")


def resized_crop(image_size: Sequence[int], scale: Sequence[float], aspect: Sequence[float]) -> v2.RandomResizedCrop:
    """Mancs' random crop: area fraction in ``scale``, **height/width** in ``aspect``, resized back to ``image_size``.

    torchvision's ``RandomResizedCrop`` states the ratio as width/height, so (2, 3) becomes
    (1/3, 1/2); it draws the area uniformly and the ratio log-uniformly, tries 10 times and falls
    back to a centre crop (the seed states only the ranges). Bilinear with antialiasing, on the
    resized uint8 tensor.
    """
    lo, hi = float(aspect[0]), float(aspect[1])
    return v2.RandomResizedCrop(_check_size(image_size), scale=(float(scale[0]), float(scale[1])),
                                ratio=(1.0 / hi, 1.0 / lo), antialias=True)


def build_autoaugment(probability: float) -> v2.RandomApply:
    """torchvision's ImageNet AutoAugment policy, applied with ``probability`` (fast-reid's
    ``RandomApply([AutoAugment()], p=AUTOAUG.PROB)``; its SBS config uses 0.1)."""
    if not 0.0 < probability <= 1.0:
        raise ValueError(f"autoaug probability must be in (0, 1], got {probability}")
    return v2.RandomApply([v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)], p=probability)


class TrainTransform:
    """resize → [AutoAugment(p)] → [random resized crop] → hflip(p) → zero-pad → random crop → [0, 1]
    → normalise → random erasing (if p > 0).

    Call it on a PIL image or on the uint8 tensor from :func:`load_resized`. ``crop_scale`` (None:
    off) turns on Mancs' random resized crop (:func:`resized_crop`) before the flip, as the seed
    orders it: resize, crop, resize back, flip, erase. AutoAugment (``autoaug_prob`` > 0) runs on
    the resized uint8 image, before flip and crop. fast-reid applies it to the decoded image
    *before* resizing; here the resize is the cached stage, so the policy's geometric operations
    (shear, translate, rotate: relative to the image size) see the resized image — the same
    operations, interpolated at the training resolution.
    """

    def __init__(
        self,
        image_size: Sequence[int],
        flip_prob: float = 0.5,
        pad_px: int = 10,
        random_erasing_prob: float = 0.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        crop_scale: Sequence[float] | None = None,
        crop_aspect: Sequence[float] = (2.0, 3.0),
        autoaug_prob: float = 0.0,
    ) -> None:
        self.image_size = _check_size(image_size)
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        if pad_px < 0:
            raise ValueError(f"pad_px must be >= 0, got {pad_px}")
        self.mean, self.std = tuple(mean), tuple(std)
        # v2.RandomCrop(padding=...) zero-pads then crops: the reference's Pad(10) + RandomCrop.
        steps = [resized_crop(self.image_size, crop_scale, crop_aspect)] if crop_scale is not None else []
        self.geometric = v2.Compose([
            *steps,
            v2.RandomHorizontalFlip(flip_prob),
            v2.RandomCrop(self.image_size, padding=pad_px or None, fill=0),
        ])
        self.erasing = RandomErasing(random_erasing_prob, fill=self.mean) if random_erasing_prob > 0 else None
        if not 0.0 <= autoaug_prob <= 1.0:
            raise ValueError(f"autoaug_prob must be in [0, 1], got {autoaug_prob}")
        self.autoaug = build_autoaugment(autoaug_prob) if autoaug_prob > 0 else None

    def __call__(self, image: Image.Image | torch.Tensor, masks: torch.Tensor | None = None
                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        image = _as_resized_uint8(image, self.image_size)
        if masks is None:
            if self.autoaug is not None:
                image = self.autoaug(image)
            image = to_normalized_float(self.geometric(image), self.mean, self.std)
            return self.erasing(image) if self.erasing is not None else image
        if self.autoaug is not None:  # its shears, rotations and translations would not move the masks
            raise ValueError("data.autoaug_prob > 0 cannot be combined with part masks (data.masks)")
        # One call moves image and masks alike (flip, pad/crop, and Mancs' resized crop when set).
        image, moved = self.geometric(image, tv_tensors.Mask(_as_masks(masks, self.image_size)))
        image = to_normalized_float(image, self.mean, self.std)
        maps = masks_to_float(moved)
        box = self.erasing.erase(image) if self.erasing is not None else None
        if box is not None:
            top, left, h, w = box
            maps[:, top:top + h, left:left + w] = 0.0
        return image, maps

    def __repr__(self) -> str:
        auto = f"autoaug={self.autoaug}, " if self.autoaug is not None else ""
        return f"TrainTransform(image_size={self.image_size}, {auto}{self.geometric}, erasing={self.erasing})"


class TestTransform:
    """resize → [0, 1] → normalise. Call it on a PIL image or on a :func:`load_resized` tensor."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        image_size: Sequence[int],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.image_size = _check_size(image_size)
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: Image.Image | torch.Tensor, masks: torch.Tensor | None = None
                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        image = to_normalized_float(_as_resized_uint8(image, self.image_size), self.mean, self.std)
        if masks is None:
            return image
        return image, masks_to_float(_as_masks(masks, self.image_size))

    def __repr__(self) -> str:
        return f"TestTransform(image_size={self.image_size})"


def build_train_transform(
    image_size: Sequence[int],
    flip_prob: float = 0.5,
    pad_px: int = 10,
    random_erasing_prob: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_scale: Sequence[float] | None = None,
    crop_aspect: Sequence[float] = (2.0, 3.0),
    autoaug_prob: float = 0.0,
) -> TrainTransform:
    return TrainTransform(image_size, flip_prob, pad_px, random_erasing_prob, mean, std, crop_scale=crop_scale,
                          crop_aspect=crop_aspect, autoaug_prob=autoaug_prob)


def build_test_transform(
    image_size: Sequence[int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> TestTransform:
    return TestTransform(image_size, mean, std)
