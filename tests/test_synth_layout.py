"""Synthetic benchmark: Market-1501 layout, naming and split rules of a generated folder."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from PIL import Image

from reidbench.harness.data.synth import DOMAINS, generate_domain, get_domain
from reidbench.harness.data.synth.layout import plan_domain

NAME = re.compile(r"^(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")
SPLITS = ("bounding_box_train", "bounding_box_test", "query")


def parse(folder: Path) -> list[tuple[int, int, str]]:
    """(pid, cam, name) of every file, asserting the Market name pattern on each."""
    rows = []
    for path in sorted(folder.iterdir()):
        m = NAME.match(path.name)
        assert m, f"bad name {path.name}"
        rows.append((int(m.group(1)), int(m.group(2)), path.name))
    return rows


@pytest.fixture(scope="module")
def tiny_a(tmp_path_factory) -> Path:
    return generate_domain(tmp_path_factory.mktemp("synth") / "A", "A", num_ids=6, seed=3, image_size=(64, 32),
                           progress=False)


def test_folder_has_exactly_market_layout(tiny_a: Path):
    assert sorted(p.name for p in tiny_a.iterdir()) == sorted(SPLITS + ("meta.json",))
    for split in SPLITS:
        rows = parse(tiny_a / split)
        assert rows, split
        assert all(1 <= cam <= 6 for _, cam, _ in rows)


def test_train_and_test_identities_are_disjoint_halves(tiny_a: Path):
    train = {pid for pid, _, _ in parse(tiny_a / "bounding_box_train")}
    query = {pid for pid, _, _ in parse(tiny_a / "query")}
    gallery = {pid for pid, _, _ in parse(tiny_a / "bounding_box_test")} - {0, -1}
    assert len(train) == 3 and len(query) == 3
    assert not train & (query | gallery)
    assert query == gallery
    assert train | query == set(range(1, 7))


def test_one_query_per_identity_and_camera_with_a_match_in_another_camera(tiny_a: Path):
    queries = Counter((pid, cam) for pid, cam, _ in parse(tiny_a / "query"))
    gallery_cams = defaultdict(Counter)
    for pid, cam, _ in parse(tiny_a / "bounding_box_test"):
        gallery_cams[pid][cam] += 1
    assert set(queries.values()) == {1}
    for pid, cam in queries:
        assert any(c != cam for c in gallery_cams[pid]), f"query {pid} c{cam} has no cross-camera match"
        assert gallery_cams[pid][cam] >= 2  # the other images of the same walk past the camera
    # every camera where a test identity appears has exactly its one query
    for pid, cams in gallery_cams.items():
        if pid > 0:
            assert {c for c in cams} == {c for p, c in queries if p == pid}


def test_distractors_and_junk_only_in_gallery(tiny_a: Path):
    gallery = Counter(pid for pid, _, _ in parse(tiny_a / "bounding_box_test"))
    assert gallery[0] >= 1 and gallery[-1] >= 1
    assert any(name.startswith("-1_c") for _, _, name in parse(tiny_a / "bounding_box_test"))
    for split in ("bounding_box_train", "query"):
        assert not {pid for pid, _, _ in parse(tiny_a / split)} & {0, -1}


def test_several_images_per_identity_and_camera_in_train(tiny_a: Path):
    per_track = Counter((pid, cam) for pid, cam, _ in parse(tiny_a / "bounding_box_train"))
    lo, hi = get_domain("A").train_imgs_per_cam
    assert all(lo <= n <= hi for n in per_track.values())
    assert all(n >= 2 for n in Counter(pid for pid, _ in per_track).values())  # >= 2 cameras per identity


def test_images_decode_at_requested_size(tiny_a: Path):
    for split in SPLITS:
        for path in sorted((tiny_a / split).iterdir())[:5]:
            with Image.open(path) as img:
                assert img.format == "JPEG" and img.mode == "RGB" and img.size == (32, 64)


def test_meta_counts_match_files(tiny_a: Path):
    meta = json.loads((tiny_a / "meta.json").read_text())
    assert meta["domain"] == "A" and meta["seed"] == 3 and meta["num_ids"] == 6 and meta["image_size"] == [64, 32]
    for split, folder in (("train", "bounding_box_train"), ("gallery", "bounding_box_test"), ("query", "query")):
        rows = parse(tiny_a / folder)
        assert meta["counts"][split]["images"] == len(rows)
        assert meta["counts"][split]["ids"] == len({pid for pid, _, _ in rows} - {0, -1})
    gallery = Counter(pid for pid, _, _ in parse(tiny_a / "bounding_box_test"))
    assert meta["counts"]["gallery"]["distractors"] == gallery[0]
    assert meta["counts"]["gallery"]["junk"] == gallery[-1]
    assert sorted(meta["train_ids"]) == sorted({pid for pid, _, _ in parse(tiny_a / "bounding_box_train")})


@pytest.mark.parametrize("name, cams", [("A", 6), ("B", 8), ("C", 4)])
def test_camera_count_per_domain(name: str, cams: int):
    assert get_domain(name).num_cams == cams
    plan = plan_domain(get_domain(name), 80, seed=0)  # names only, nothing rendered
    assert {job.cam for job in plan.jobs} == set(range(1, cams + 1))
    assert len({job.relpath for job in plan.jobs}) == len(plan.jobs)  # file names are unique


def test_domain_b_writes_eight_camera_names(tmp_path: Path):
    root = generate_domain(tmp_path / "B", "B", num_ids=4, image_size=(32, 16), progress=False)
    cams = {cam for split in SPLITS for _, cam, _ in parse(root / split)}
    assert cams <= set(range(1, 9)) and len(cams) >= 3


def test_unknown_domain_lists_valid_ones(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown synthetic domain 'Z'.*A, B"):
        generate_domain(tmp_path / "x", "Z", progress=False)
    assert not (tmp_path / "x").exists()
    assert get_domain("b") is DOMAINS["B"]


@pytest.mark.parametrize("kwargs, message", [
    ({"num_ids": 1}, "num_ids=1"),
    ({"image_size": (8, 4)}, "image_size"),
    ({"image_size": "big"}, "image_size"),
])
def test_bad_arguments_are_value_errors(tmp_path: Path, kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        generate_domain(tmp_path / "x", "A", progress=False, **kwargs)


def test_refuses_foreign_folder_but_replaces_own_output(tmp_path: Path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        generate_domain(foreign, "A", num_ids=2, image_size=(32, 16), progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"

    own = generate_domain(tmp_path / "own", "A", num_ids=4, seed=1, image_size=(32, 16), progress=False)
    generate_domain(own, "A", num_ids=2, seed=1, image_size=(32, 16), progress=False)
    meta = json.loads((own / "meta.json").read_text())
    assert meta["num_ids"] == 2
    for split, folder in (("train", "bounding_box_train"), ("gallery", "bounding_box_test"), ("query", "query")):
        assert len(list((own / folder).iterdir())) == meta["counts"][split]["images"]  # no stale files
