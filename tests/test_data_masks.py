"""Part masks: the data.masks field, the stripe prior, user mask folders, `data check --masks`, and masks
travelling through the transforms and the loader with their images."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from reidbench.harness.cli import main
from reidbench.harness.data.check import check_dataset
from reidbench.harness.data.formats import load_dataset
from reidbench.harness.data.loader import build_test_loader, build_train_loader
from reidbench.harness.data.masks import (
    MaskError,
    mask_source,
    masks_identity,
    masks_label,
    parse_masks,
    read_mask_file,
    stripe_prior,
)
from reidbench.harness.data.transforms import TestTransform, TrainTransform
from reidbench.harness.spec import RunSpec, SpecError, spec_from_dict
from reidbench.harness.spec.hashing import run_hash, training_identity

# --------------------------------------------------------------------------- the spec field


def test_masks_field_values_labels_and_identity():
    assert parse_masks("") == ("", "") and parse_masks("oracle") == ("oracle", "")
    assert parse_masks("folder: /x/{name} ") == ("folder", "/x/{name}")
    for bad in ("parser", "folder:", "ORACLE"):
        with pytest.raises(ValueError, match="is not valid: oracle .synthetic data., stripes"):
            parse_masks(bad)
    assert masks_label("oracle") == "oracle parsing" and masks_label("stripes") == "stripe prior (deviation)"
    assert masks_label("folder:/m") == "user masks"
    assert masks_identity("oracle") == "oracle-v1" and masks_identity("stripes") == "stripes-v1"
    assert masks_identity("folder:/m") == "folder:/m"


def _spreid(masks: str | None = "oracle", arch: str = "spreid") -> dict:
    raw = {"model": {"arch": arch, "backbone": "timm:test_resnet", "pretrained": False}, "loss": {"terms": [
        {"kind": "ce", "reads": "logits"}]}}
    if masks is not None:
        raw["data"] = {"masks": masks}
    return raw


def test_spec_refuses_spreid_without_masks_and_masks_without_spreid():
    with pytest.raises(SpecError, match="model.arch=spreid pools with part masks: set data.masks"):
        spec_from_dict(_spreid(None))
    with pytest.raises(SpecError, match="data.masks='stripes' is only read by .*spreid.*drop data.masks"):
        spec_from_dict({"data": {"masks": "stripes"}})
    with pytest.raises(SpecError, match="data.masks='parser' is not valid"):
        spec_from_dict(_spreid("parser"))


def test_masks_enter_the_hash_only_when_set():
    plain = RunSpec()
    assert "masks" not in training_identity(plain, train_fingerprint="dir:a")["data"]
    oracle = spec_from_dict(_spreid("oracle"))
    stripes = spec_from_dict(_spreid("stripes"))
    assert training_identity(oracle, train_fingerprint="dir:a")["data"] == {"train": "dir:a", "masks": "oracle-v1"}
    assert run_hash(oracle, train_fingerprint="dir:a") != run_hash(stripes, train_fingerprint="dir:a")
    bumped = dataclasses.replace(oracle)  # same spec, newer generator masks -> another run

    import reidbench.harness.data.synth.generate as generate

    before = run_hash(oracle, train_fingerprint="dir:a")
    old, generate.MASKS_VERSION = generate.MASKS_VERSION, generate.MASKS_VERSION + 1
    try:
        assert run_hash(bumped, train_fingerprint="dir:a") != before
    finally:
        generate.MASKS_VERSION = old


# --------------------------------------------------------------------------- stripe prior


def test_stripe_prior_bands_and_centred_foreground():
    maps = stripe_prior(16, 8).astype(np.int64)
    assert maps.shape == (5, 16, 8) and maps.dtype == np.int64
    # rows (centres (r + .5)/16): head [0, 1/8) = rows 0-1, upper rows 2-7, lower rows 8-13, shoes rows 14-15
    for channel, rows in ((1, range(0, 2)), (2, range(2, 8)), (3, range(8, 14)), (4, range(14, 16))):
        band = maps[channel].any(axis=1)
        assert list(np.nonzero(band)[0]) == list(rows)
    assert np.abs(maps[0] - maps[1:].sum(0)).max() <= 2  # parts partition the foreground (uint8 rounding)
    fg = maps[0, 0] / 255  # one row: a Gaussian across the width, sigma = width / 4, centred
    x = np.arange(8) + 0.5 - 4
    assert np.allclose(fg, np.exp(-0.5 * (x / 2.0) ** 2), atol=1 / 255)
    assert np.array_equal(maps[0, :, :4], maps[0, :, ::-1][:, :4])  # symmetric about the centre


# --------------------------------------------------------------------------- files and folders


def _write_masks(dataset, masks_root: Path, kind: str = "npz") -> None:
    for record in (*dataset.train, *dataset.query, *dataset.gallery):
        rel = Path(record.path).relative_to(dataset.root)
        with Image.open(record.path) as image:
            w, h = image.size
        target = (masks_root / rel).with_suffix("." + kind)
        target.parent.mkdir(parents=True, exist_ok=True)
        if kind == "npz":
            maps = np.zeros((5, h, w), np.float32)
            maps[1, : h // 2] = 1.0  # head = top half, shoes = bottom half; foreground their sum
            maps[4, h // 2:] = 1.0
            maps[0] = maps[1:].sum(0)
            np.savez(target, masks=maps)
        else:
            labels = np.zeros((h, w), np.uint8)
            labels[: h // 3] = 13  # face -> head
            labels[h // 3: 2 * h // 3, : w // 2] = 14  # left arm -> upper
            labels[2 * h // 3:, : w // 2] = 19  # right shoe -> shoes
            Image.fromarray(labels, "L").save(target)


def test_read_mask_file_npz_and_lip_png(tmp_path):
    maps = np.zeros((5, 6, 4), np.float32)
    maps[2] = 0.5
    maps[0] = 0.5
    np.savez(tmp_path / "a.npz", masks=maps)
    got = read_mask_file(tmp_path / "a.npz")
    assert got.dtype == np.uint8 and got.shape == (5, 6, 4) and got[2, 0, 0] == 128 and got[1].max() == 0
    labels = np.array([[0, 13, 2, 5], [9, 18, 8, 11]], np.uint8)
    Image.fromarray(labels, "L").save(tmp_path / "b.png")
    got = read_mask_file(tmp_path / "b.png") // 255
    # SPReID's grouping: head {1,2,4,13}, upper {3,5,6,7,10,11,14,15}, lower {9,12,16,17}, shoes {8,18,19}
    assert got[0].tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]
    assert got[1].tolist() == [[0, 1, 1, 0], [0, 0, 0, 0]]
    assert got[2].tolist() == [[0, 0, 0, 1], [0, 0, 0, 1]]
    assert got[3].tolist() == [[0, 0, 0, 0], [1, 0, 0, 0]]
    assert got[4].tolist() == [[0, 0, 0, 0], [0, 1, 1, 0]]
    np.savez(tmp_path / "c.npz", parsing=maps)
    Image.fromarray(np.full((2, 2), 25, np.uint8), "L").save(tmp_path / "d.png")
    Image.new("RGB", (2, 2)).save(tmp_path / "e.png")
    np.savez(tmp_path / "f.npz", masks=maps * 3)
    for name, fragment in (("c.npz", "no array 'masks'"), ("d.png", "label 25"), ("e.png", "one channel"),
                           ("f.npz", "outside 0-1")):
        with pytest.raises(MaskError, match=fragment):
            read_mask_file(tmp_path / name)


def test_folder_provider_loads_each_images_masks_at_the_image_size(tmp_path, tiny_market):
    dataset = load_dataset(tiny_market, "market", name="tiny")
    _write_masks(dataset, tmp_path / "m" / "tiny", "png")
    source = mask_source(f"folder:{tmp_path / 'm' / '{name}'}", dataset)
    assert source.kind == "folder" and source.label == "user masks"
    record = dataset.train[0]
    maps = source.load(record.path, (64, 32)).numpy()  # the 32x16 file resized like its image
    assert maps.shape == (5, 64, 32) and maps.dtype == np.uint8
    assert maps[1, :18].min() == 255 and maps[1, 26:].max() == 0  # head: top third
    assert maps[4, 50:, :14].min() == 255 and maps[4, 50:, 18:].max() == 0  # shoes: bottom-left
    with pytest.raises(MaskError, match="not a folder"):
        mask_source(f"folder:{tmp_path / 'nowhere'}", dataset)
    (tmp_path / "m" / "tiny" / Path(record.path).relative_to(dataset.root).with_suffix(".png")).unlink()
    with pytest.raises(MaskError, match=r"no mask for image bounding_box_train/.*reidbench data check"):
        source.load(record.path, (64, 32))


def test_data_check_reports_missing_wrongly_sized_and_inconsistent_masks(tmp_path, tiny_market):
    dataset = load_dataset(tiny_market, "market", name="tiny")
    masks = tmp_path / "masks"
    _write_masks(dataset, masks, "npz")
    clean = check_dataset(tiny_market, "market", verify_images=False, masks_dir=masks)
    assert clean.ok, clean.problems
    rels = [Path(r.path).relative_to(dataset.root).with_suffix(".npz") for r in dataset.train[:3]]
    (masks / rels[0]).unlink()
    np.savez(masks / rels[1], masks=np.zeros((5, 10, 10), np.uint8))
    bad = np.zeros((5, 32, 16), np.float32)
    bad[0] = 1.0  # foreground everywhere, no part anywhere
    np.savez(masks / rels[2], masks=bad)
    report = check_dataset(tiny_market, "market", verify_images=False, masks_dir=masks)
    text = "\n".join(report.problems)
    assert "1 image(s) without a mask file" in text and rels[0].with_suffix(".jpg").as_posix() in text
    assert "1 mask(s) not the size of their image" in text and "10x10, image 32x16" in text
    assert "foreground is not the sum of the four parts" in text and "reaches 1.00" in text
    assert not any("empty foreground" in n for n in report.notes)
    result = CliRunner().invoke(main, ["data", "check", str(tiny_market), "--format", "market", "--no-verify-images",
                                       "--masks", str(masks)])
    assert result.exit_code == 1 and "without a mask file" in result.output and "Traceback" not in result.output


# --------------------------------------------------------------------------- transforms and loader


def _positional(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(1, 256, (3, 32, 16), dtype=torch.uint8, generator=g)
    return image, image[[0, 0, 0, 0, 0]].clone()  # every map is the image's red channel


def test_flip_crop_and_erasing_move_the_masks_with_the_image():
    # With mean 0 and std 1 the transformed red channel is the moved uint8 red channel / 255, so every
    # map must equal it exactly: same flip, same crop offset, same zero padding, same erased box (fill 0).
    transform = TrainTransform((32, 16), flip_prob=0.5, pad_px=4, random_erasing_prob=0.5, mean=(0, 0, 0),
                               std=(1, 1, 1))
    flipped = erased = 0
    for seed in range(40):
        image, masks = _positional(seed)
        torch.manual_seed(seed)
        out, maps = transform(image, masks)
        torch.manual_seed(seed)
        alone = transform(image)  # the same draws without masks: the same image
        assert torch.equal(out, alone)
        assert maps.dtype == torch.float32 and maps.shape == (5, 32, 16)
        assert torch.equal(maps, out[0].expand(5, -1, -1))
        erased += int((maps == 0).all(0).sum() > 40)
        torch.manual_seed(seed)
        if bool(torch.rand(1) < 0.5):  # v2.RandomHorizontalFlip draws first
            flipped += 1
    assert flipped > 5 and erased > 5


def test_flip_alone_mirrors_masks_and_test_transform_keeps_them():
    image, masks = _positional(1)
    masks[1] = 0
    masks[1, :, :4] = 255  # a left band
    out, maps = TrainTransform((32, 16), flip_prob=1.0, pad_px=0)(image, masks)
    assert maps[1, :, -4:].min() == 1.0 and maps[1, :, :-4].max() == 0.0
    out, maps = TestTransform((32, 16))(image, masks)
    assert torch.equal(maps, masks.float() / 255) and torch.equal(out, TestTransform((32, 16))(image))


def test_loaders_add_masks_as_a_fifth_element_and_keep_the_images(tiny_market):
    dataset = load_dataset(tiny_market, "market", name="tiny")
    stripes = mask_source("stripes", dataset)
    kwargs = dict(image_size=(32, 16), ids_per_batch=3, imgs_per_id=2, seed=3, pad_px=2, random_erasing_prob=0.5)
    plain = build_train_loader(dataset.train, **kwargs)
    masked = build_train_loader(dataset.train, masks=stripes, **kwargs)
    for loader in (plain, masked):
        loader.batch_sampler.set_epoch(2)
    for a, b in zip(plain, masked):
        assert len(a) == 4 and len(b) == 5
        assert all(torch.equal(x, y) for x, y in zip(a, b[:4]))  # images, labels and order unchanged
        assert b[4].shape == (6, 5, 32, 16) and 0 <= b[4].min() and b[4].max() <= 1
    test = next(iter(build_test_loader(dataset.query, (32, 16), batch_size=4, masks=stripes)))
    assert torch.allclose(test[4][0], torch.from_numpy(stripe_prior(32, 16)).float() / 255)
