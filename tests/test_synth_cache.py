"""Synthetic benchmark: embedded datasets are generated once, reused, and regenerated on a version bump."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from reidbench.harness.data.synth import cache as cache_mod
from reidbench.harness.data.synth import generate as generate_mod
from reidbench.harness.data.synth import ensure_default_dataset, list_datasets

TINY = dict(num_ids=4, image_size=(32, 16))


@pytest.fixture
def calls(monkeypatch) -> list[Path]:
    """Record every real generation (the folder it wrote to)."""
    seen: list[Path] = []
    real = generate_mod.generate_domain

    def counting(out_dir, *args, **kwargs):
        seen.append(Path(out_dir))
        return real(out_dir, *args, **kwargs)

    monkeypatch.setattr(generate_mod, "generate_domain", counting)
    return seen


def test_second_call_reuses_the_folder(tmp_path: Path, calls: list[Path]):
    first = ensure_default_dataset("synth-a", cache_dir=tmp_path, progress=False, **TINY)
    meta_mtime = (first / "meta.json").stat().st_mtime_ns
    second = ensure_default_dataset("synth-a", cache_dir=tmp_path, progress=False, **TINY)
    assert first == second and len(calls) == 1
    assert (second / "meta.json").stat().st_mtime_ns == meta_mtime
    assert (first / "bounding_box_train").is_dir() and (first / "query").is_dir()
    # generated in a hidden temporary folder, then renamed into place; nothing left behind
    assert calls[0].parent == tmp_path and calls[0].name.startswith(".") and not calls[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [first.name]
    # as readable as any folder made here (mkdtemp would have made it private to this user)
    (tmp_path / "plain").mkdir()
    assert first.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777


def test_version_bump_regenerates(tmp_path: Path, calls: list[Path], monkeypatch):
    old = ensure_default_dataset("synth-b", cache_dir=tmp_path, progress=False, **TINY)
    monkeypatch.setattr(generate_mod, "GENERATOR_VERSION", generate_mod.GENERATOR_VERSION + 1)
    new = ensure_default_dataset("synth-b", cache_dir=tmp_path, progress=False, **TINY)
    assert new != old and len(calls) == 2
    assert generate_mod.read_meta(new)["generator_version"] == generate_mod.GENERATOR_VERSION
    again = ensure_default_dataset("synth-b", cache_dir=tmp_path, progress=False, **TINY)
    assert again == new and len(calls) == 2


def test_environment_variable_chooses_the_cache(tmp_path: Path, monkeypatch, calls: list[Path]):
    monkeypatch.setenv("REIDBENCH_DATA", str(tmp_path / "env-cache"))
    path = ensure_default_dataset("synth-a", progress=False, **TINY)
    assert path.parent == tmp_path / "env-cache"


def test_killed_generation_leaves_nothing_that_looks_complete(tmp_path: Path, monkeypatch):
    real = generate_mod.generate_domain

    def crash(out_dir, *args, **kwargs):
        real(out_dir, *args, **kwargs)
        (Path(out_dir) / "meta.json").unlink()  # as if killed just before the end
        raise KeyboardInterrupt

    monkeypatch.setattr(generate_mod, "generate_domain", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_default_dataset("synth-a", cache_dir=tmp_path, progress=False, **TINY)
    assert [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.setattr(generate_mod, "generate_domain", real)
    path = ensure_default_dataset("synth-a", cache_dir=tmp_path, progress=False, **TINY)
    assert generate_mod.read_meta(path) is not None


def test_incomplete_folder_under_the_final_name_is_replaced(tmp_path: Path, calls: list[Path]):
    target = cache_mod.default_dataset_path("synth-a", tmp_path, **TINY)
    (target / "bounding_box_train").mkdir(parents=True)
    (target / "bounding_box_train" / "0001_c1s1_000001_01.jpg").write_bytes(b"half written")
    path = ensure_default_dataset("synth-a", cache_dir=tmp_path, progress=False, **TINY)
    assert path == target and len(calls) == 1
    meta = generate_mod.read_meta(path)
    files = list((path / "bounding_box_train").iterdir())
    assert meta is not None and len(files) == meta["counts"]["train"]["images"]
    assert all(f.read_bytes() != b"half written" for f in files)


def test_two_concurrent_callers_generate_once(tmp_path: Path, calls: list[Path]):
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(
        ensure_default_dataset("synth-a", cache_dir=tmp_path, progress=False, **TINY))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1] and len(calls) == 1


def test_unknown_name_lists_valid_ones(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown synthetic dataset 'synth-z'; valid: synth-a, synth-b"):
        ensure_default_dataset("synth-z", cache_dir=tmp_path)


def test_list_datasets_reports_status_path_and_counts(tmp_path: Path, monkeypatch):
    before = {d["name"]: d for d in list_datasets(tmp_path)}
    assert set(before) >= {"synth-a", "synth-b"}
    assert before["synth-a"]["domain"] == "A" and before["synth-b"]["domain"] == "B"
    assert not before["synth-a"]["generated"] and before["synth-a"]["counts"] is None
    assert Path(before["synth-a"]["path"]).parent == tmp_path
    # make the default recipe tiny so that generating "the default" is quick
    tiny_recipe = cache_mod.DefaultDataset("A", num_ids=4, image_size=(32, 16))
    monkeypatch.setitem(cache_mod.DEFAULT_DATASETS, "synth-a", tiny_recipe)
    path = ensure_default_dataset("synth-a", cache_dir=tmp_path, progress=False)
    after = {d["name"]: d for d in list_datasets(tmp_path)}
    assert after["synth-a"]["generated"] and Path(after["synth-a"]["path"]) == path
    counts = after["synth-a"]["counts"]
    assert counts["train"]["images"] == len(list((path / "bounding_box_train").iterdir()))
    assert counts["query"]["images"] == len(list((path / "query").iterdir()))
    assert not after["synth-b"]["generated"]
