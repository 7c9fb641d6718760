"""Dataset fingerprints: folder digests (cached per folder) and synthetic recipe digests."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from reidbench.harness.data import formats as formats_mod
from reidbench.harness.data.fingerprint import DataFingerprint, dataset_fingerprint, folder_fingerprint
from reidbench.harness.data.named import dataset_root, load_named_dataset
from reidbench.harness.data.synth import cache as cache_mod
from reidbench.harness.data.synth import generate as generate_mod



def _load_conftest():
    # --import-mode=importlib keeps tests/ off sys.path, so `from conftest import ...` fails.
    spec = importlib.util.spec_from_file_location("_fingerprint_conftest", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_market_folder = _load_conftest().make_market_folder
TINY = dict(num_train_ids=3, num_test_ids=2, cams=2, per_cam=1, size_hw=(12, 6))
HOUR_NS = 3600 * 10**9


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("REIDBENCH_DATA", str(path))
    return path


@pytest.fixture
def parses(monkeypatch) -> list[Path]:
    """Roots parsed by the fingerprinting code (each call of ``formats.load_dataset``)."""
    seen: list[Path] = []
    real = formats_mod.load_dataset

    def counting(root, *args, **kwargs):
        seen.append(Path(root))
        return real(root, *args, **kwargs)

    monkeypatch.setattr(formats_mod, "load_dataset", counting)
    return seen


def _aged(root: Path) -> Path:
    """Backdate every folder's mtime by an hour: a just-written folder is too fresh to cache."""
    past_ns = time.time_ns() - HOUR_NS
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        os.utime(folder, ns=(past_ns, past_ns))
    return root


@pytest.fixture
def market(tmp_path: Path) -> Path:
    return _aged(make_market_folder(tmp_path / "market", **TINY))


def _fp(path: Path, name: str = "market") -> DataFingerprint:
    return dataset_fingerprint(name, {name: str(path)})


def _first(folder: Path) -> Path:
    """First image that is a record (junk images, pid -1, are dropped by the parser)."""
    return next(p for p in sorted(folder.iterdir()) if not p.name.startswith("-1_"))


def test_same_folder_twice_reads_the_cache(market: Path, cache_dir: Path, parses: list[Path]):
    first = _fp(market)
    second = _fp(market)
    assert first == second and first.to_dict() == second.to_dict()
    assert len(parses) == 1  # the second call only checked the stamp
    assert first.kind == "folder" and first.train.startswith("dir:") and len(first.train) == 4 + 24
    assert first.train != first.test
    assert first.detail == {"root": str(market.resolve()), "format": "market",
                            "counts": {"train": 6, "query": 4, "gallery": 5}}
    entries = json.loads((cache_dir / "fingerprints.json").read_text())["entries"]
    assert list(entries) == [f"market:{market.resolve()}"]
    assert entries[f"market:{market.resolve()}"]["train"] == first.train


def test_copy_elsewhere_has_the_same_fingerprint(market: Path, tmp_path: Path, cache_dir: Path):
    copy = shutil.copytree(market, tmp_path / "elsewhere" / "market-copy")
    original, copied = _fp(market), _fp(copy)
    assert (copied.train, copied.test) == (original.train, original.test) and copied == original
    assert copied.detail["root"] != original.detail["root"]


def test_rename_or_remove_changes_only_the_affected_split(market: Path, cache_dir: Path, parses: list[Path]):
    before = _fp(market)
    train_image = _first(market / "bounding_box_train")
    train_image.rename(train_image.with_name(train_image.name.replace("_00.jpg", "_01.jpg")))
    renamed = _fp(market)  # the folder's mtime moved: the stamp no longer matches
    assert renamed.train != before.train and renamed.test == before.test
    _first(market / "query").unlink()
    removed = _fp(market)
    assert removed.train == renamed.train and removed.test != renamed.test
    assert removed.detail["counts"]["query"] == 3 and len(parses) == 3


def test_appended_byte_and_relabel_change_the_digest(market: Path, tmp_path: Path, cache_dir: Path):
    before = _fp(market)
    grown = shutil.copytree(market, tmp_path / "grown")
    with open(_first(grown / "bounding_box_test"), "ab") as handle:
        handle.write(b"\0")
    after = _fp(grown)
    assert after.test != before.test and after.train == before.train
    # the same edit in place keeps every folder's mtime: seen when the cache is bypassed
    with open(_first(market / "bounding_box_test"), "ab") as handle:
        handle.write(b"\0")
    assert folder_fingerprint("market", market, "market", use_cache=False).test == after.test
    relabelled = shutil.copytree(market, tmp_path / "relabelled")
    image = _first(relabelled / "bounding_box_train")
    assert image.name.startswith("0001_")
    image.rename(image.with_name("0003_" + image.name[len("0001_"):]))  # same file, another identity
    assert _fp(relabelled).train != before.train


def test_fresh_folder_is_not_cached(tmp_path: Path, cache_dir: Path, parses: list[Path]):
    # mtimes from a coarse clock: an edit right after fingerprinting could leave the stamp unchanged
    fresh = make_market_folder(tmp_path / "fresh", **TINY)
    assert _fp(fresh) == _fp(fresh) and len(parses) == 2
    assert not (cache_dir / "fingerprints.json").exists()


def test_corrupt_or_unwritable_cache_is_ignored(market: Path, tmp_path: Path, cache_dir: Path, monkeypatch):
    expected = folder_fingerprint("market", market, "market", use_cache=False)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache_file = cache_dir / "fingerprints.json"
    for garbage in ("{not json", '{"version": 1, "entries": {"x": 3}}', '["a"]',
                    json.dumps({"version": 1, "entries": {f"market:{market.resolve()}": {"stamp": {}}}})):
        cache_file.write_text(garbage)
        assert _fp(market) == expected
    assert json.loads(cache_file.read_text())["entries"][f"market:{market.resolve()}"]["test"] == expected.test
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("REIDBENCH_DATA", str(blocker / "cache"))  # cannot be created
    assert _fp(market) == expected


def test_synthetic_fingerprint_needs_no_generation(cache_dir: Path, monkeypatch):
    a = dataset_fingerprint("synth-a", {})
    assert not cache_dir.exists() or not any(cache_dir.iterdir())
    assert a.kind == "synthetic" and a.train.startswith("synth:") and len(a.test) == 6 + 24
    assert a.train != a.test and a != dataset_fingerprint("synth-b", {})
    assert a.detail == {"generator_version": generate_mod.GENERATOR_VERSION, "domain": "A", "num_ids": 360,
                        "seed": 0, "image_size": [128, 64]}
    assert dataset_fingerprint("synth-a", {}) == a
    monkeypatch.setattr(generate_mod, "GENERATOR_VERSION", generate_mod.GENERATOR_VERSION + 1)
    bumped = dataset_fingerprint("synth-a", {})
    assert bumped.train != a.train and bumped.test != a.test
    monkeypatch.undo()
    monkeypatch.setenv("REIDBENCH_DATA", str(cache_dir))
    for recipe in (cache_mod.DefaultDataset("A", num_ids=4), cache_mod.DefaultDataset("A", num_ids=360, seed=1),
                   cache_mod.DefaultDataset("B", num_ids=360), cache_mod.DefaultDataset("A", 360, image_size=(64, 32))):
        monkeypatch.setitem(cache_mod.DEFAULT_DATASETS, "synth-a", recipe)
        assert dataset_fingerprint("synth-a", {}).train != a.train
    assert not cache_dir.exists() or not any(cache_dir.iterdir())


def test_data_option_comes_before_the_synthetic_name(market: Path, cache_dir: Path):
    assert _fp(market, name="synth-a").kind == "folder"


def test_errors_are_one_line(tmp_path: Path, cache_dir: Path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError) as err:
        dataset_fingerprint("market", {"market": str(missing)})
    assert str(err.value) == f"--data market={missing}: no such folder"
    with pytest.raises(ValueError) as unknown:
        dataset_fingerprint("viper", {"market": str(missing)})
    with pytest.raises(ValueError) as from_named:
        dataset_root("viper", {"market": str(missing)})
    assert str(unknown.value) == str(from_named.value) and "\n" not in str(unknown.value)


def test_load_named_dataset_records_the_fingerprint(market: Path, cache_dir: Path, parses: list[Path]):
    dataset, prov = load_named_dataset("market", {"market": str(market)}, progress=False)
    assert len(parses) == 1  # the fingerprint reused the loader's parse
    assert prov.fingerprint == _fp(market).to_dict() and len(parses) == 1  # ... and cached it
    assert prov.to_dict()["fingerprint"]["train"].startswith("dir:")
    assert len(dataset.train) == prov.fingerprint["detail"]["counts"]["train"]


def test_load_named_synthetic_dataset_records_the_recipe(cache_dir: Path, monkeypatch):
    monkeypatch.setitem(cache_mod.DEFAULT_DATASETS, "synth-a", cache_mod.DefaultDataset("A", num_ids=4,
                                                                                        image_size=(32, 16)))
    expected = dataset_fingerprint("synth-a", {})
    _, prov = load_named_dataset("synth-a", {}, progress=False)
    assert prov.synthetic and prov.fingerprint == expected.to_dict()
