"""Synthetic benchmark: what the drawing shows (logo only from the front, backpack from the back,
bag only on its visible side), textures, and every camera of every domain rendering."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from reidbench.harness.data.synth import DOMAINS
from reidbench.harness.data.synth.identity import Identity, Texture
from reidbench.harness.data.synth.layout import ImageJob
from reidbench.harness.data.synth.person import Pose, draw_person, texture_image
from reidbench.harness.data.synth.render import Renderer

LOGO, PACK, BAG = (255, 0, 0), (255, 255, 0), (0, 255, 255)


def person(**changes) -> Identity:
    base = dict(height=1.0, width=1.0, skin=(200, 160, 120), hair=(30, 20, 10), hair_style="short",
                upper=Texture("plain", (0, 0, 200), (0, 0, 200), 0.06), long_sleeves=True, coat=False,
                lower=Texture("plain", (0, 120, 0), (0, 120, 0), 0.06), lower_style="trousers",
                shoes=(10, 10, 10), logo=LOGO, logo_shape="square", hat=None, glasses=False,
                carry="none", carry_colour=BAG, carry_side=1)
    base.update(changes)
    return Identity(**base)


def count(ident: Identity, view: str, facing: int = 1) -> dict[tuple[int, int, int], int]:
    img = Image.new("RGB", (128, 256), (128, 128, 128))
    draw_person(img, ident, Pose(view=view, facing=facing, cx=64, foot_y=250, height_px=230, phase=0.4))
    pixels = np.asarray(img).reshape(-1, 3)
    return {c: int(np.all(pixels == c, axis=1).sum()) for c in (LOGO, PACK, BAG)}


def test_logo_is_seen_from_the_front_only():
    ident = person()
    assert count(ident, "front")[LOGO] > 50
    assert count(ident, "back")[LOGO] == 0
    assert count(ident, "side")[LOGO] == 0


def test_backpack_shows_from_the_back_straps_from_the_front():
    ident = person(logo=None, carry="backpack", carry_colour=PACK)
    back, front = count(ident, "back")[PACK], count(ident, "front")[PACK]
    assert back > 3 * front > 0


def test_shoulder_bag_is_seen_on_its_side_only():
    ident = person(logo=None, carry="shoulder_bag", carry_colour=BAG, carry_side=-1)  # left shoulder
    # walking right, the camera sees the person's left side; walking left, the right side
    seen, hidden = count(ident, "side", facing=1)[BAG], count(ident, "side", facing=-1)[BAG]
    assert seen > 2 * hidden
    # from the front the bag hangs on the picture's right (the person's left)
    img = Image.new("RGB", (128, 256), (128, 128, 128))
    draw_person(img, ident, Pose(view="front", facing=1, cx=64, foot_y=250, height_px=230, phase=0.0))
    xs = np.nonzero(np.all(np.asarray(img) == BAG, axis=2))[1]
    assert xs.size and np.median(xs) > 64


def test_stripes_texture_repeats_with_its_period():
    tex = texture_image(Texture("stripes", (0, 0, 0), (255, 255, 255), 0.05), 10, (20, 40))
    column = np.asarray(tex)[:, 3, 0]
    expected = np.where(np.arange(column.size) % 10 < 5, 255, 0)  # band = 0.45 * 10 rounded half up = 5 rows
    assert np.array_equal(column, expected)


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_every_camera_of_every_domain_renders(name: str):
    domain = DOMAINS[name]
    renderer = Renderer(domain, seed=0, image_size=(32, 16))
    for cam in range(1, domain.num_cams + 1):
        for kind, pid in (("person", 1), ("distractor", 0), ("junk", 1)):
            img = renderer.render(ImageJob("gallery", kind, pid, cam, 1, 1, 1, 0))
            assert img.size == (16, 32) and img.mode == "RGB"
            assert np.asarray(img).std() > 2.0  # not a blank picture


def test_cameras_change_the_same_person():
    """The same identity and pose index look different under two cameras (light, scene)."""
    renderer = Renderer(DOMAINS["A"], seed=0, image_size=(64, 32))
    a = np.asarray(renderer.render(ImageJob("train", "person", 1, 1, 1, 1, 1, 0)), dtype=float)
    b = np.asarray(renderer.render(ImageJob("train", "person", 1, 2, 1, 1, 1, 0)), dtype=float)
    assert np.abs(a - b).mean() > 10
