"""The synthetic generator's ground-truth parsing: masks overlay the drawn person, and nothing else changes.

Pictures and fingerprints are pinned to values computed with the generator *before* masks existed,
so every cached run (and its hash) keeps matching.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from reidbench.harness.data.fingerprint import synthetic_fingerprint
from reidbench.harness.data.synth import ensure_default_dataset, ensure_masks, generate_domain, masks_complete
from reidbench.harness.data.synth import render as render_mod
from reidbench.harness.data.synth.domains import get_domain
from reidbench.harness.data.synth.identity import sample_identity
from reidbench.harness.data.synth.layout import SPLIT_DIRS, plan_domain
from reidbench.harness.data.synth.parts import BACKGROUND, HEAD, LOWER, SHOES, UPPER, new_label_image, soft_masks
from reidbench.harness.data.synth.person import Pose, draw_person
from reidbench.harness.data.synth.render import Renderer
from reidbench.harness.data.synth.seeding import rng_for

FG, HEAD_C, UPPER_C, LOWER_C, SHOES_C = range(5)  # channels of a mask file

# sha256 over the raw RGB bytes of every image of a plan, computed with the generator before parsing
# masks were added (commit 6cbe1f1): (domain, num_ids, size) -> (images, digest).
PINNED_PIXELS = {
    ("A", 40, (128, 64)): (655, "430d684d57afbbb734d00ac07fe5af091d4b50d53e18ed4d26f19e6d3f591e54"),
    ("B", 30, (64, 32)): (426, "2b59f2dcac752ea3a3b8210235f479d35df07bfc70b83821d1f16c5987c462c0"),
}
# The embedded datasets' fingerprints (part of every run hash), before masks existed.
PINNED_FINGERPRINTS = {
    "synth-a": ("synth:764f4b2dafc0e26951eacc36", "synth:ab04eb6eddfd7b255be38e4b"),
    "synth-b": ("synth:af69fb43b0c0f3538333b0d0", "synth:ee8e307cedcd40bf73fb8388"),
}


@pytest.mark.parametrize("key", list(PINNED_PIXELS), ids=lambda k: f"{k[0]}-{k[2][0]}x{k[2][1]}")
def test_pictures_are_bit_identical_with_and_without_masks(key):
    domain, num_ids, size = key
    spec = get_domain(domain)
    plan = plan_domain(spec, num_ids, 0)
    plain, masked = hashlib.sha256(), hashlib.sha256()
    r1, r2 = Renderer(spec, 0, size), Renderer(spec, 0, size)
    for job in plan.jobs:
        plain.update(np.asarray(r1.render(job)).tobytes())
        masked.update(np.asarray(r2.render_with_masks(job)[0]).tobytes())
    assert (len(plan.jobs), plain.hexdigest()) == PINNED_PIXELS[key]
    assert masked.hexdigest() == plain.hexdigest()


def test_embedded_fingerprints_are_unchanged():
    for name, (train, test) in PINNED_FINGERPRINTS.items():
        fp = synthetic_fingerprint(name)
        assert (fp.train, fp.test) == (train, test)


def test_a_drawn_person_is_labelled_region_by_region():
    # A person in a known pose on an empty canvas: the pose fixes where head, body, legs and feet are.
    ident = dataclasses.replace(sample_identity(get_domain("A"), rng_for(0, "A", "identity", 7)), coat=False,
                                lower_style="trousers", carry="backpack", hat=(200, 0, 0), long_sleeves=True)
    canvas = Image.new("RGB", (128, 256), (0, 0, 0))
    labels = new_label_image(canvas.size)
    u, top, cx = 200.0, 40.0, 64.0
    draw_person(canvas, ident, Pose(view="back", facing=1, cx=cx, foot_y=top + u, height_px=u, phase=0.0), labels)
    lab = np.asarray(labels)

    def at(frac: float, dx: float = 0.0) -> int:
        return int(lab[int(round(top + frac * u)), int(round(cx + dx * u))])

    assert at(0.078) == HEAD  # the head's centre
    assert at(0.01) == HEAD  # the hat on top of it
    assert at(0.33) == BACKGROUND  # the backpack seen from the back covers the torso: background, as in LIP
    assert at(0.47) == UPPER  # the torso below the backpack
    assert at(0.40, dx=0.17 * ident.width) == UPPER  # a long sleeve, beside the torso
    assert at(0.54) == LOWER  # hip block of the trousers
    assert at(0.75, dx=0.0627 * ident.width) == LOWER  # a knee
    assert at(0.97, dx=0.066 * ident.width) == SHOES  # the right foot
    assert lab[5, 5] == BACKGROUND and lab[-3, 3] == BACKGROUND  # far from the figure
    # soft masks at half the resolution: fractions of 2×2 blocks, foreground = sum of the parts
    maps = soft_masks(labels, 2).astype(int)
    assert maps.shape == (5, 128, 64)
    assert np.abs(maps[0] - maps[1:].sum(0)).max() <= 2  # uint8 rounding
    assert set(np.unique(maps[HEAD_C])) <= {0, 64, 128, 191, 255}


def _spy_on_drawing(monkeypatch):
    """Record every draw_person / draw_occluder call the renderer makes (to know who was drawn last)."""
    calls = []

    def person(canvas, ident, pose, labels=None):
        calls.append(("person", ident, pose))
        return real_person(canvas, ident, pose, labels)

    def occluder(*args, **kwargs):
        calls.append(("occluder", None, None))
        return real_occluder(*args, **kwargs)

    real_person, real_occluder = render_mod.draw_person, render_mod.draw_occluder
    monkeypatch.setattr(render_mod, "draw_person", person)
    monkeypatch.setattr(render_mod, "draw_occluder", occluder)
    return calls


def test_generated_masks_overlay_the_person_drawn_in_each_picture(monkeypatch):
    calls = _spy_on_drawing(monkeypatch)
    spec = get_domain("A")
    renderer = Renderer(spec, 0, (128, 64))  # canvas 256×128 (supersampled 2×)
    checked = 0
    for job in [j for j in plan_domain(spec, 30, 0).jobs if j.kind == "person"][:80]:
        calls.clear()
        _, maps = renderer.render_with_masks(job)
        main = renderer.identity(job.pid)
        if len(calls) != 1 or calls[0][1] is not main:
            continue  # a passer-by or an occluder may cover the person: check the clean pictures
        pose = calls[0][2]
        u, top = pose.height_px, pose.foot_y - pose.height_px

        def value(channel: int, frac: float) -> int:  # the mask at the body's axis, output pixels
            row, col = int((top + frac * u) / 2), int(pose.cx / 2)
            if not (0 <= row < 128 and 0 <= col < 64):
                return -1
            return int(maps[channel, row, col])

        head = value(HEAD_C, 0.078)
        if head >= 0:  # the head may be cut off by a badly placed box
            assert head >= 128 and value(FG, 0.078) >= 128, (job, head)
        # top to bottom: head, upper body, lower body, shoes (mean rows of each map, where present)
        rows = np.arange(128)[:, None]
        centre = [float((maps[c] * rows).sum() / maps[c].sum()) if maps[c].any() else None
                  for c in (HEAD_C, UPPER_C, LOWER_C, SHOES_C)]
        present = [c for c in centre if c is not None]
        assert present == sorted(present), (job, centre)
        if centre[3] is not None:  # shoes at the feet: around the pose's foot line
            assert abs(centre[3] - pose.foot_y / 2) < 0.06 * u / 2, (job, centre[3], pose.foot_y / 2)
        # the top corner on the far side from a figure (centred within ±0.3 of the width) is background
        far = 0 if pose.cx / 2 > 32 else 63
        assert maps[FG, 0, far] == 0, job
        checked += 1
    assert checked >= 20  # most pictures are clean


def test_background_only_distractors_have_an_empty_foreground(monkeypatch):
    calls = _spy_on_drawing(monkeypatch)
    spec = get_domain("A")
    renderer = Renderer(spec, 0, (64, 32))
    empty = 0
    for job in [j for j in plan_domain(spec, 60, 0).jobs if j.kind == "distractor"]:
        calls.clear()
        _, maps = renderer.render_with_masks(job)
        people = [c for c in calls if c[0] == "person"]
        if not people:
            assert not maps.any(), job  # nothing drawn but the scene (and maybe an object): no foreground
            empty += 1
        else:
            assert maps[FG].any() or people  # a passer-by, possibly at the edge
    assert empty >= 1


def test_data_synth_masks_writes_one_npz_per_image_and_ensure_masks_matches_it(tmp_path):
    with_masks = generate_domain(tmp_path / "a", "B", num_ids=6, image_size=(32, 16), progress=False, masks=True)
    plain = generate_domain(tmp_path / "b", "B", num_ids=6, image_size=(32, 16), progress=False)
    images = sorted(p.relative_to(with_masks).as_posix() for d in SPLIT_DIRS.values()
                    for p in (with_masks / d).glob("*.jpg"))
    assert images and all((with_masks / i).read_bytes() == (plain / i).read_bytes() for i in images)
    meta = json.loads((with_masks / "masks" / "meta.json").read_text())
    assert meta["masks_version"] == 1 and meta["regions"] == ["foreground", "head", "upper", "lower", "shoes"]
    assert masks_complete(with_masks) and not masks_complete(plain)
    ensure_masks(plain, progress=False)  # drawn afterwards for a folder generated without
    for rel in images:
        npz = rel[:-4] + ".npz"
        with np.load(with_masks / "masks" / npz) as a, np.load(plain / "masks" / npz) as b:
            assert a["masks"].dtype == np.uint8 and a["masks"].shape == (5, 32, 16)
            assert np.array_equal(a["masks"], b["masks"])
    assert not any(p.name.startswith(".masks.tmp") for p in plain.iterdir())
    generate_domain(plain, "B", num_ids=6, image_size=(32, 16), progress=False)  # its lock file is no foreign entry
    # regenerating a folder with masks in it is allowed (the masks folder is the generator's own)
    generate_domain(tmp_path / "a", "B", num_ids=6, image_size=(32, 16), progress=False)
    assert not (tmp_path / "a" / "masks").exists()


def test_ensure_masks_refuses_folders_whose_pictures_it_did_not_draw(tmp_path):
    root = generate_domain(tmp_path / "s", "A", num_ids=4, image_size=(32, 16), progress=False)
    first = plan_domain(get_domain("A"), 4, 0).jobs[0]
    Image.new("RGB", (16, 32), (255, 0, 255)).save(root / first.relpath)
    with pytest.raises(ValueError, match="would not overlay"):
        ensure_masks(root, progress=False)
    assert not (root / "masks").exists()
    with pytest.raises(ValueError, match="not a folder written by reidbench's synthetic generator"):
        ensure_masks(tmp_path, progress=False)


def test_embedded_datasets_get_masks_on_first_use_without_changing_their_folder(tmp_path):
    root = ensure_default_dataset("synth-b", cache_dir=tmp_path, progress=False, num_ids=4, image_size=(32, 16))
    before = {p: p.read_bytes() for p in root.rglob("*.jpg")}
    meta_before = (root / "meta.json").read_bytes()
    ensure_masks(root, progress=False)
    assert masks_complete(root) and (root / "meta.json").read_bytes() == meta_before
    assert {p: p.read_bytes() for p in root.rglob("*.jpg")} == before
    assert len(list((root / "masks").rglob("*.npz"))) == len(before)
