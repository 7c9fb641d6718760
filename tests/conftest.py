"""Shared fixtures: a tiny Market-layout dataset made with PIL, and a tiny run spec."""

from __future__ import annotations

import os
from pathlib import Path

# One intra-op thread per process: tests start several processes (kill/resume, concurrent
# ablations, submitit jobs) on a 2-core machine, and OpenMP threads spinning against each other
# made tiny models 5-20x slower. Set before torch is imported so subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def make_market_folder(root: Path, num_train_ids: int = 6, num_test_ids: int = 4, cams: int = 3,
                       per_cam: int = 2, size_hw: tuple[int, int] = (32, 16), seed: int = 0) -> Path:
    """Write a tiny Market-1501-style dataset whose identities differ by colour pattern, so a
    model can learn something in a few steps. Returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size_hw
    for split in ("bounding_box_train", "bounding_box_test", "query"):
        (root / split).mkdir(parents=True, exist_ok=True)

    def person(pid: int, cam: int, k: int) -> Image.Image:
        base = np.random.default_rng(pid).integers(0, 255, size=(3, 3), dtype=np.uint8)
        img = np.zeros((h, w, 3), dtype=np.uint8)
        third = h // 3
        for band in range(3):
            img[band * third:(band + 1) * third] = base[band]
        noise = rng.integers(-20, 20, size=img.shape)
        return Image.fromarray(np.clip(img.astype(int) + noise + 10 * cam, 0, 255).astype(np.uint8))

    frame = 0
    for pid in range(1, num_train_ids + 1):
        for cam in range(1, cams + 1):
            for k in range(per_cam):
                frame += 1
                person(pid, cam, k).save(root / "bounding_box_train" / f"{pid:04d}_c{cam}s1_{frame:06d}_00.jpg")
    for pid in range(100, 100 + num_test_ids):
        for cam in range(1, cams + 1):
            for k in range(per_cam):
                frame += 1
                person(pid, cam, k).save(root / "bounding_box_test" / f"{pid:04d}_c{cam}s1_{frame:06d}_00.jpg")
            if cam <= 2:
                frame += 1
                person(pid, cam, 9).save(root / "query" / f"{pid:04d}_c{cam}s1_{frame:06d}_00.jpg")
    # a distractor (pid 0) and a junk image (pid -1) in the gallery, as Market has them
    person(0, 1, 0).save(root / "bounding_box_test" / f"0000_c1s1_{frame + 1:06d}_00.jpg")
    person(999, 2, 0).save(root / "bounding_box_test" / f"-1_c2s1_{frame + 2:06d}_00.jpg")
    return root


TINY_SPEC = """
profile: cpu
model: {backbone: resnet18, pretrained: false, last_stride: 2, neck: plain}
data: {train: tiny, test: [tiny], image_size: [32, 16], ids_per_batch: 3, imgs_per_id: 2, pad_px: 2}
schedule: {max_epochs: 3, milestones: [2], warmup_epochs: 0}
eval: {batch_size: 16}
train: {seed: 0, checkpoint_every_epochs: 1}
"""


# TINY_SPEC with timm's 0.5M-parameter test ResNet instead of resnet18: a study trains several
# runs, so each must take seconds on a shared 2-core machine.
STUDY_SPEC = TINY_SPEC.replace("backbone: resnet18", 'backbone: "timm:test_resnet"')


@pytest.fixture(scope="session")
def study_spec_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "tiny-study.yaml"
    path.write_text(STUDY_SPEC)
    return path


@pytest.fixture(scope="session")
def tiny_market(tmp_path_factory) -> Path:
    return make_market_folder(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def tiny_spec_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "tiny.yaml"
    path.write_text(TINY_SPEC)
    return path


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def market_folder_factory():
    """``make_market_folder`` for tests (``--import-mode=importlib`` keeps conftest off sys.path)."""
    return make_market_folder


def _same_numbers(csv_text: str, old_file: Path) -> bool:
    """True when every column of ``old_file`` is in ``csv_text`` with the same cells (new columns may follow)."""
    import io

    import pandas as pd

    new = pd.read_csv(io.StringIO(csv_text), dtype=str, keep_default_na=False)
    old = pd.read_csv(old_file, dtype=str, keep_default_na=False)
    missing = [c for c in old.columns if c not in new.columns]
    assert not missing, f"columns gone from the report: {missing}"
    assert new[list(old.columns)].equals(old), new[list(old.columns)].compare(old)
    return True


@pytest.fixture
def same_numbers():
    """Compare a report CSV with one written by older code: every old column kept, cell for cell."""
    return _same_numbers


@pytest.fixture
def old_project(tmp_path, monkeypatch, market_folder_factory):
    """``old_project(name)``: tests/fixtures/<name> (a database + runs written by older code) copied to a
    temporary project folder made the current one, with the two data folders its runs trained on
    regenerated byte for byte (see the fixtures' README.md)."""
    import shutil

    def make(name: str) -> Path:
        work = tmp_path / "project"
        shutil.copytree(Path(__file__).resolve().parent / "fixtures" / name, work)
        market_folder_factory(work / "data" / "tiny", num_train_ids=6, num_test_ids=40, cams=3, per_cam=2)
        market_folder_factory(work / "data" / "tiny2", num_train_ids=6, num_test_ids=40, cams=3, per_cam=2, seed=1)
        monkeypatch.chdir(work)
        monkeypatch.setenv("REIDBENCH_DATA", str(tmp_path / "cache"))
        return work

    return make
