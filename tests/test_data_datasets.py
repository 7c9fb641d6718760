"""Dataset parsers on tiny fake folders."""

from pathlib import Path

import pytest
from PIL import Image

from reidbench.harness.data.formats import (
    FORMATS,
    ImageRecord,
    guess_format,
    load_dataset,
    parse_cuhk03np,
    parse_duke,
    parse_market,
    parse_msmt17,
)


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), (10, 20, 30)).save(path)


def _tree(root: Path, files: dict[str, list[str]]) -> Path:
    for folder, names in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            _image(root / folder / name)
    return root


MARKET_FILES = {
    "bounding_box_train": [
        "0010_c6s1_000001_01.jpg", "0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg",
        "0007_c3s2_001001_02.jpg", "0000_c1s1_000001_00.jpg", "-1_c1s1_000002_00.jpg",
    ],
    "query": ["0002_c1s1_000801_00.jpg", "0007_c2s1_000101_00.jpg"],
    "bounding_box_test": [
        "0002_c3s1_000201_01.jpg", "0007_c4s1_000301_01.jpg", "0000_c5s1_000401_01.jpg",
        "-1_c6s1_000501_01.jpg",
    ],
}


def _by_name(records):
    return {Path(r.path).name: r for r in records}


def test_image_record_orig_pid_defaults_to_pid():
    assert ImageRecord("a.jpg", 3, 0).orig_pid == 3
    assert ImageRecord("a.jpg", 0, 0, orig_pid=17).orig_pid == 17


def test_market_relabels_train_drops_junk_keeps_gallery_distractors(tmp_path):
    root = _tree(tmp_path / "market1501", MARKET_FILES)
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")
    ds = parse_market(root)
    assert ds.problems == ()
    assert ds.format == "market" and ds.name == "market1501"
    train = _by_name(ds.train)
    # junk (-1) and distractors (0) never train; labels follow sorted original pids 2, 7, 10.
    assert set(train) == {"0010_c6s1_000001_01.jpg", "0002_c1s1_000451_03.jpg",
                          "0002_c2s1_000551_01.jpg", "0007_c3s2_001001_02.jpg"}
    assert [(train[n].pid, train[n].orig_pid, train[n].camid) for n in sorted(train)] == [
        (0, 2, 0), (0, 2, 1), (1, 7, 2), (2, 10, 5)]
    assert ds.num_train_pids == 3 and ds.num_train_cams == 4
    gallery = _by_name(ds.gallery)
    assert set(gallery) == {"0002_c3s1_000201_01.jpg", "0007_c4s1_000301_01.jpg", "0000_c5s1_000401_01.jpg"}
    assert gallery["0000_c5s1_000401_01.jpg"].pid == 0 and gallery["0000_c5s1_000401_01.jpg"].camid == 4
    # query/gallery keep original pids so they match each other.
    assert sorted((r.pid, r.camid) for r in ds.query) == [(2, 0), (7, 1)]
    assert any("junk" in n for n in ds.notes) and any("Thumbs.db" in n for n in ds.notes)


def test_market_accepts_single_nested_folder(tmp_path):
    _tree(tmp_path / "market" / "Market-1501-v15.09.15", MARKET_FILES)
    ds = parse_market(tmp_path / "market")
    assert ds.problems == () and len(ds.train) == 4 and ds.root.endswith("Market-1501-v15.09.15")


def test_market_collects_bad_names_and_cameras(tmp_path):
    files = {k: list(v) for k, v in MARKET_FILES.items()}
    files["bounding_box_train"] += ["img_001.jpg", "0003_c0s1_000001_01.jpg"]
    ds = parse_market(_tree(tmp_path / "m", files))
    assert len(ds.problems) == 2
    assert "1 file name(s)" in ds.problems[0] and "img_001.jpg" in ds.problems[0]
    assert "camera outside >= 1" in ds.problems[1]
    assert len(ds.train) == 4  # the good images are still parsed


def test_duke_cameras_one_to_eight(tmp_path):
    files = {
        "bounding_box_train": ["0005_c2_f0046985.jpg", "0005_c8_f0046999.jpg", "0012_c1_f0000001.jpg"],
        "query": ["0005_c1_f0050000.jpg"],
        "bounding_box_test": ["0005_c3_f0060000.jpg", "0099_c7_f0000003.jpg"],
    }
    ds = parse_duke(_tree(tmp_path / "DukeMTMC-reID", files))
    assert ds.problems == ()
    assert sorted((r.pid, r.orig_pid, r.camid) for r in ds.train) == [(0, 5, 1), (0, 5, 7), (1, 12, 0)]
    files["query"].append("0005_c9_f0050001.jpg")
    ds = parse_duke(_tree(tmp_path / "duke2", files))
    assert len(ds.problems) == 1 and "camera outside 1..8" in ds.problems[0]


def _msmt_tree(root: Path, version: str) -> Path:
    train_dir, test_dir = {"v1": ("train", "test"), "v2": ("mask_train_v2", "mask_test_v2")}[version]
    lists = {
        ("list_train.txt", train_dir): [("0000/0000_000_01_0303morning_0015_0.jpg", 0),
                                        ("0000/0000_001_05_0303morning_0016_0.jpg", 0),
                                        ("0003/0003_000_15_0303noon_0001_1.jpg", 3)],
        ("list_val.txt", train_dir): [("0001/0001_000_02_0303morning_0030_0.jpg", 1)],
        ("list_query.txt", test_dir): [("0000/0000_000_07_0303morning_0001_0.jpg", 0)],
        ("list_gallery.txt", test_dir): [("0000/0000_003_09_0303morning_0002_0.jpg", 0),
                                         ("0001/0001_001_12_0303morning_0003_0.jpg", 1)],
    }
    for (list_name, folder), lines in lists.items():
        for rel, _ in lines:
            _image(root / folder / rel)
        (root / list_name).write_text("".join(f"{rel} {pid}\n" for rel, pid in lines))
    return root


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_msmt17_lists_val_merged_and_camera_from_name(tmp_path, version):
    root = _msmt_tree(tmp_path / f"MSMT17_{version.upper()}", version)
    ds = parse_msmt17(root)
    assert ds.problems == ()
    # train ids 0, 3 (list_train) + 1 (list_val) relabelled in sorted order 0, 1, 3 -> 0, 1, 2.
    assert sorted((r.pid, r.orig_pid, r.camid) for r in ds.train) == [(0, 0, 0), (0, 0, 4), (1, 1, 1), (2, 3, 14)]
    assert [(r.pid, r.camid) for r in ds.query] == [(0, 6)]
    assert [(r.pid, r.camid) for r in ds.gallery] == [(0, 8), (1, 11)]
    assert all(Path(r.path).is_file() for r in ds.train + ds.query + ds.gallery)
    without_val = parse_msmt17(root, include_val=False)
    assert sorted(r.orig_pid for r in without_val.train) == [0, 0, 3]


def test_msmt17_reports_bad_lines_and_missing_files(tmp_path):
    root = _msmt_tree(tmp_path / "msmt17", "v1")
    with open(root / "list_gallery.txt", "a") as handle:
        handle.write("0000/0000_004_03_0303morning_0099_0.jpg 0\n")  # file does not exist
        handle.write("garbage line with words\n")
    ds = parse_msmt17(root)
    assert len(ds.problems) == 2
    assert any("not '<path> <pid>'" in p and "line 4" in p for p in ds.problems)
    assert any("point at missing files" in p and "0000_004_03" in p for p in ds.problems)
    assert len(ds.gallery) == 2


def test_cuhk03np_variants_and_direct_root(tmp_path):
    det = {"bounding_box_train": ["0001_c1_1.png", "0001_c2_2.png"], "query": ["0001_c1_3.png"],
           "bounding_box_test": ["0001_c2_4.png"]}
    lab = {"bounding_box_train": ["0005_c1_1.png"], "query": ["0005_c1_2.png"],
           "bounding_box_test": ["0005_c2_3.png"]}
    root = tmp_path / "cuhk03-np"
    _tree(root / "detected", det)
    _tree(root / "labeled", lab)
    detected = parse_cuhk03np(root)
    assert detected.problems == () and detected.name == "cuhk03-np-detected"
    assert sorted((r.pid, r.orig_pid, r.camid) for r in detected.train) == [(0, 1, 0), (0, 1, 1)]
    labeled = parse_cuhk03np(root, variant="labeled")
    assert [r.orig_pid for r in labeled.train] == [5] and labeled.name == "cuhk03-np-labeled"
    direct = parse_cuhk03np(root / "labeled")
    assert direct.train == labeled.train and direct.name == "cuhk03-np-labeled"
    with pytest.raises(ValueError, match="valid: detected, labeled"):
        parse_cuhk03np(root, variant="both")


def test_load_dataset_registry_errors_and_strictness(tmp_path):
    assert set(FORMATS) == {"market", "duke", "msmt17", "cuhk03np"}
    root = _tree(tmp_path / "custom", MARKET_FILES)
    with pytest.raises(ValueError, match="valid formats: market, duke, msmt17, cuhk03np"):
        load_dataset(root, "viper")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(tmp_path / "nowhere", "market")
    with pytest.raises(ValueError, match="does not take option.*variant; valid: name"):
        load_dataset(root, "market", variant="labeled")
    ds = load_dataset(root, "market", name="mine")
    assert ds.name == "mine" and len(ds.train) == 4
    _image(root / "query" / "bad-name.jpg")
    with pytest.raises(ValueError, match="reidbench data check"):
        load_dataset(root, "market")
    assert len(load_dataset(root, "market", strict=False).problems) == 1


@pytest.mark.parametrize("name, expected", [
    ("market1501", "market"), ("Market", "market"), ("/data/Market-1501-v15.09.15", "market"),
    ("dukemtmcreid", "duke"), ("/data/DukeMTMC-reID", "duke"), ("msmt17", "msmt17"),
    ("/x/MSMT17_V2", "msmt17"), ("cuhk03", "cuhk03np"), ("/x/cuhk03-np/detected", "cuhk03np"),
    ("my_shop_cameras", "market"), ("/data/duke_user/market1501", "market"),
])
def test_guess_format(name, expected):
    assert guess_format(name) == expected


def test_guess_format_from_folder_contents(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "list_train.txt").write_text("")
    (tmp_path / "b" / "labeled").mkdir(parents=True)
    assert guess_format(tmp_path / "a") == "msmt17"
    assert guess_format(tmp_path / "b") == "cuhk03np"
