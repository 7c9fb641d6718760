"""Transforms: bit-exact against the torchvision v1 reference pipeline; RandomErasing semantics."""

import math
import random

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from reidbench.harness.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomErasing,
    build_test_transform,
    build_train_transform,
    load_resized,
)

H, W = 64, 32
FILL = (0.485, 0.456, 0.406)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 23, 3), dtype=np.uint8))


def _reference_train(flip_prob, pad_px):
    """The reference train pipeline (torchvision v1 on PIL), random erasing excluded."""
    return T.Compose([T.Resize((H, W)), T.RandomHorizontalFlip(flip_prob), T.Pad(pad_px),
                      T.RandomCrop((H, W)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def load_resized_from_pil(photo):
    return torch.from_numpy(np.array(photo.resize((W, H), Image.BILINEAR))).permute(2, 0, 1).contiguous()


def test_test_transform_equals_manual_resize_and_normalise(photo, tmp_path):
    path = tmp_path / "p.png"
    photo.save(path)
    resized = np.asarray(photo.resize((W, H), Image.BILINEAR), dtype=np.float32) / 255.0
    manual = (resized - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    manual = torch.from_numpy(manual).permute(2, 0, 1)
    out = build_test_transform((H, W))(load_resized(path, (H, W)))
    assert out.shape == (3, H, W) and out.dtype == torch.float32
    torch.testing.assert_close(out, manual, rtol=0, atol=1e-6)
    reference = T.Compose([T.Resize((H, W)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.equal(build_test_transform((H, W))(photo), reference(photo))


def test_load_resized_is_uint8_chw(photo, tmp_path):
    path = tmp_path / "p.jpg"
    photo.save(path)
    x = load_resized(path, (H, W))
    assert x.dtype == torch.uint8 and x.shape == (3, H, W) and x.is_contiguous()


@pytest.mark.parametrize("flip_prob, pad_px", [(0.5, 10), (1.0, 3), (0.0, 0)])
def test_train_transform_bit_exact_with_reference_pipeline(photo, flip_prob, pad_px):
    ours = build_train_transform((H, W), flip_prob=flip_prob, pad_px=pad_px)
    reference = _reference_train(flip_prob, pad_px)
    cached = load_resized_from_pil(photo)
    outputs = set()
    for seed in range(12):
        torch.manual_seed(seed)
        expected = reference(photo)
        torch.manual_seed(seed)
        from_pil = ours(photo)
        torch.manual_seed(seed)
        from_cache = ours(cached)
        assert torch.equal(from_pil, expected) and torch.equal(from_cache, expected)
        outputs.add(from_cache.numpy().tobytes())
    assert from_cache.shape == (3, H, W) and from_cache.dtype == torch.float32
    assert (len(outputs) > 1) == (pad_px > 0 or 0 < flip_prob < 1)
    assert torch.equal(cached, load_resized_from_pil(photo))  # the cached tensor is never modified


def test_train_transform_normalisation_and_padding_values(photo):
    cached = load_resized_from_pil(photo)
    out = build_train_transform((H, W), flip_prob=0.0, pad_px=10)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    padded = torch.nn.functional.pad(cached, (10, 10, 10, 10)).float() / 255
    expected_windows = {(t, l): ((padded[:, t:t + H, l:l + W] - mean) / std) for t in range(21) for l in range(21)}
    for seed in range(5):
        torch.manual_seed(seed)
        x = out(cached)
        assert any(torch.allclose(x, window, atol=1e-6) for window in expected_windows.values())


def test_train_transform_rejects_wrong_cached_size():
    with pytest.raises(ValueError, match="uint8 tensor 3x64x32"):
        build_train_transform((H, W))(torch.zeros(3, 10, 10, dtype=torch.uint8))


def test_train_transform_erasing_uses_normalisation_mean_as_fill(photo):
    cached = load_resized_from_pil(photo)
    tf = build_train_transform((H, W), flip_prob=0.0, pad_px=0, random_erasing_prob=1.0)
    torch.manual_seed(0)
    x = tf(cached)
    for c in range(3):
        assert (x[c] == FILL[c]).sum() >= 0.02 * H * W * 0.8


# ----------------------------------------------------------------------------- RandomErasing


def _brute_force_erasing(image, p, sl=0.02, sh=0.4, r1=0.3, fill=FILL):
    """Reference algorithm written out, drawing from torch in the documented order."""
    image = image.clone()
    if torch.rand((), dtype=torch.float64).item() >= p:
        return image
    _, height, width = image.shape
    for _ in range(100):
        target = (sl + (sh - sl) * torch.rand((), dtype=torch.float64).item()) * height * width
        aspect = r1 + (1 / r1 - r1) * torch.rand((), dtype=torch.float64).item()
        h = int(round(math.sqrt(target * aspect)))
        w = int(round(math.sqrt(target / aspect)))
        if h < height and w < width:
            top = int(torch.randint(0, height - h + 1, ()).item())
            left = int(torch.randint(0, width - w + 1, ()).item())
            for c in range(3):
                for i in range(top, top + h):
                    for j in range(left, left + w):
                        image[c, i, j] = fill[c]
            return image
    return image


def test_random_erasing_matches_brute_force_with_same_draws():
    erasing = RandomErasing(0.5)
    for seed in range(25):
        image = torch.randn(3, 24, 12, generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)
        expected = _brute_force_erasing(image, 0.5)
        torch.manual_seed(seed)
        assert torch.equal(erasing(image.clone()), expected)


def _erased_box(image):
    mask = image[0] == FILL[0]
    if not mask.any():
        return None
    rows = mask.any(1).nonzero().flatten()
    cols = mask.any(0).nonzero().flatten()
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    for c in range(3):  # an exact rectangle, each channel filled with its constant
        box = image[c, top:bottom, left:right]
        assert torch.equal(box, torch.full_like(box, FILL[c]))
        assert (image[c] == FILL[c]).sum() == box.numel()
    return int(bottom - top), int(right - left)


def _reference_box(rng: random.Random, height: int, width: int):
    """Independent run of the reference (Python `random`, as in the original code): (h, w)."""
    for _ in range(100):
        target = rng.uniform(0.02, 0.4) * height * width
        aspect = rng.uniform(0.3, 1 / 0.3)
        h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if w < width and h < height:
            return h, w
    return None


def test_random_erasing_statistics_match_reference():
    height, width = 128, 64
    torch.manual_seed(0)
    half = RandomErasing(0.5)
    erased = sum(_erased_box(half(torch.full((3, height, width), -5.0))) is not None for _ in range(1500))
    assert abs(erased / 1500 - 0.5) < 0.05  # p respected
    always = RandomErasing(1.0)
    boxes = [_erased_box(always(torch.full((3, height, width), -5.0))) for _ in range(1500)]
    assert all(b is not None for b in boxes)
    assert RandomErasing(0.0)(torch.full((3, 8, 8), -5.0)).eq(-5.0).all()
    fractions = np.array([h * w / (height * width) for h, w in boxes])
    # area U(0.02, 0.4) of H·W, up to rounding of h and w (at most ~0.6% here)
    assert fractions.min() >= 0.02 - 0.006 and fractions.max() <= 0.4 + 0.006
    rng = random.Random(0)
    reference = [_reference_box(rng, height, width) for _ in range(3000)]
    ratios = np.array([h / w for h, w in boxes])
    reference_ratios = np.array([h / w for h, w in reference])
    # Uniform-in-ratio aspect: median h/w ≈ 1.9 here; a log-uniform aspect (torchvision) gives ≈ 1.2.
    assert abs(np.median(ratios) - np.median(reference_ratios)) < 0.12
    assert abs(fractions.mean() - np.mean([h * w for h, w in reference]) / (height * width)) < 0.012


def test_random_erasing_validates_arguments():
    with pytest.raises(ValueError, match="probability"):
        RandomErasing(1.5)
    with pytest.raises(ValueError, match="fill has 3 values"):
        RandomErasing(1.0)(torch.zeros(2, 8, 8))
