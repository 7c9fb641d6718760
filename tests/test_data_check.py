"""check_dataset: one test per kind of problem, and a clean tree that reports none."""

import io
from pathlib import Path

import pytest
from PIL import Image

from reidbench.harness.data.check import check_dataset, format_report


def _image(path: Path, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), (200, 20, 30)).save(path, format=fmt)


def _market(root: Path) -> Path:
    names = {
        "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s1_000001_01.jpg"],
        "query": ["0002_c1s1_000801_00.jpg", "0007_c2s1_000101_00.jpg"],
        "bounding_box_test": ["0002_c3s1_000201_01.jpg", "0007_c4s1_000301_01.jpg", "0000_c5s1_000401_01.jpg",
                              "-1_c6s1_000501_01.jpg"],
    }
    for folder, files in names.items():
        for name in files:
            _image(root / folder / name)
    return root


def test_clean_market_tree_reports_no_problem(tmp_path):
    report = check_dataset(_market(tmp_path / "market1501"), "market")
    assert report.ok and report.problems == ()
    assert [(s.name, s.num_ids, s.num_images, s.num_cams) for s in report.splits] == [
        ("train", 2, 3, 3), ("query", 2, 2, 2), ("gallery", 3, 3, 3)]
    assert report.num_images_verified == 8
    text = format_report(report)
    assert "no problems found" in text and "gallery" in text and "images verified: 8" in text


def test_missing_split_folder(tmp_path):
    root = _market(tmp_path / "m")
    for path in (root / "query").iterdir():
        path.unlink()
    (root / "query").rmdir()
    report = check_dataset(root, "market")
    assert len(report.problems) == 1 and "missing split folder" in report.problems[0]
    assert report.problems[0].endswith("query")


def test_unparseable_names_count_and_first_five(tmp_path):
    root = _market(tmp_path / "m")
    for i in range(7):
        _image(root / "bounding_box_train" / f"person{i}.jpg")
    report = check_dataset(root, "market", verify_images=False)
    assert len(report.problems) == 1
    line = report.problems[0]
    assert "\n" not in line and "7 file name(s)" in line
    assert all(f"person{i}.jpg" in line for i in range(5)) and "person5.jpg" not in line and "..." in line


def test_corrupt_and_non_image_files(tmp_path):
    root = _market(tmp_path / "m")
    (root / "bounding_box_test" / "0007_c1s1_000999_01.jpg").write_text("this is text, not a jpeg")
    good = io.BytesIO()
    Image.new("RGB", (64, 128), (1, 2, 3)).save(good, format="JPEG")
    truncated = good.getvalue()[: len(good.getvalue()) // 2]
    (root / "bounding_box_train" / "0007_c2s1_000998_01.jpg").write_bytes(truncated)
    report = check_dataset(root, "market")
    assert len(report.problems) == 1
    line = report.problems[0]
    assert line.startswith("2 unreadable or corrupt image(s)")
    assert "0007_c1s1_000999_01.jpg" in line and "0007_c2s1_000998_01.jpg" in line
    assert str(root) not in line  # paths shown relative to the dataset root
    assert check_dataset(root, "market", verify_images=False).ok  # names are fine


def test_query_identities_absent_from_gallery(tmp_path):
    root = _market(tmp_path / "m")
    _image(root / "query" / "0042_c1s1_000001_00.jpg")
    report = check_dataset(root, "market", verify_images=False)
    assert len(report.problems) == 1
    assert "1 query identity never appears in the gallery" in report.problems[0] and "42" in report.problems[0]


def test_empty_split(tmp_path):
    root = _market(tmp_path / "m")
    for path in (root / "bounding_box_train").iterdir():
        path.unlink()
    report = check_dataset(root, "market")
    assert len(report.problems) == 1 and report.problems[0].startswith("train: no usable images")


def _msmt(root: Path) -> Path:
    lists = {"list_train.txt": ("train", ["0000/0000_000_01_0303morning_0015_0.jpg 0"]),
             "list_val.txt": ("train", ["0000/0000_001_02_0303morning_0016_0.jpg 0"]),
             "list_query.txt": ("test", ["0000/0000_000_03_0303morning_0001_0.jpg 0"]),
             "list_gallery.txt": ("test", ["0000/0000_000_04_0303morning_0002_0.jpg 0"])}
    for list_name, (folder, lines) in lists.items():
        for line in lines:
            _image(root / folder / line.split()[0])
        (root / list_name).write_text("\n".join(lines) + "\n")
    return root


def test_msmt_clean_then_missing_list_file(tmp_path):
    root = _msmt(tmp_path / "MSMT17_V1")
    assert check_dataset(root, "msmt17").ok
    (root / "list_query.txt").unlink()
    report = check_dataset(root, "msmt17")
    assert len(report.problems) == 1 and "missing list file" in report.problems[0]


def test_msmt_list_line_pointing_at_missing_file(tmp_path):
    root = _msmt(tmp_path / "MSMT17_V1")
    (root / "test" / "0000" / "0000_000_04_0303morning_0002_0.jpg").unlink()
    report = check_dataset(root, "msmt17")
    assert report.problems == (
        "gallery: 1 line(s) of list_gallery.txt point at missing files under test/ "
        "(e.g. line 1: 0000/0000_000_04_0303morning_0002_0.jpg)",)


def test_missing_root_is_a_problem_not_a_traceback(tmp_path):
    report = check_dataset(tmp_path / "nothing_here", "market")
    assert not report.ok and "does not exist" in report.problems[0]
    assert "1 problem(s)" in format_report(report)


def test_unknown_format_is_a_user_error(tmp_path):
    with pytest.raises(ValueError, match="valid formats"):
        check_dataset(tmp_path, "imagenet")
