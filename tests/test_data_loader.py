"""Loaders: P×K batches, exact reproducibility per epoch (workers or not), cache equivalence."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reidbench.harness.data.formats import ImageRecord
from reidbench.harness.data.loader import ImageDataset, build_test_loader, build_train_loader
from reidbench.harness.data.transforms import build_test_transform, load_resized

SIZE = (16, 8)


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[ImageRecord]:
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    out = []
    for pid in range(6):
        for k in range(3 + pid % 3):  # 3..5 images per id
            path = Path(root) / f"{pid:04d}_c{k % 2 + 1}_{k}.png"
            Image.fromarray(rng.integers(0, 256, (20, 10, 3), dtype=np.uint8)).save(path)
            out.append(ImageRecord(str(path), pid, k % 2))
    return out


def _epoch(loader, epoch):
    loader.batch_sampler.set_epoch(epoch)
    return [tuple(t.clone() for t in batch) for batch in loader]


def _same(a, b):
    return len(a) == len(b) and all(all(torch.equal(x, y) for x, y in zip(p, q)) for p, q in zip(a, b))


def _loader(records, **kw):
    args = dict(image_size=SIZE, ids_per_batch=2, imgs_per_id=2, seed=7, pad_px=2, random_erasing_prob=0.5)
    args.update(kw)
    return build_train_loader(records, **args)


def test_train_batches_shapes_and_pk(records):
    loader = _loader(records)
    batches = _epoch(loader, 0)
    assert len(batches) == len(loader) > 0
    for images, pids, camids, indices in batches:
        assert images.shape == (4, 3, *SIZE) and images.dtype == torch.float32
        assert pids.tolist() == [records[i].pid for i in indices.tolist()]
        assert camids.tolist() == [records[i].camid for i in indices.tolist()]
        assert len(set(pids.tolist())) == 2 and pids[0] == pids[1] and pids[2] == pids[3]


def test_epoch_reproducible_and_independent_of_global_rng(records):
    a, b = _loader(records), _loader(records)
    state = torch.get_rng_state()
    first = _epoch(a, 3)
    assert torch.equal(torch.get_rng_state(), state)  # loading neither reads nor advances it
    torch.manual_seed(1234)
    assert _same(first, _epoch(b, 3))
    assert not _same(first, _epoch(a, 4))
    assert _same(first, _epoch(a, 3))


def test_cache_and_workers_give_identical_epochs(records):
    reference = _loader(records, cache=False)
    cached = _loader(records, cache=True)
    workers = _loader(records, cache=True, num_workers=2)
    assert workers.persistent_workers
    for epoch in (0, 1):
        expected = _epoch(reference, epoch)
        assert _same(expected, _epoch(cached, epoch))
        assert _same(expected, _epoch(workers, epoch))


def test_augmentation_varies_between_epochs_for_same_image(records):
    loader = _loader(records, random_erasing_prob=0.0, pad_px=4)
    seen: dict[int, set[bytes]] = {}
    for epoch in range(6):
        for images, _, _, indices in _epoch(loader, epoch):
            for image, index in zip(images, indices.tolist()):
                seen.setdefault(index, set()).add(image.numpy().tobytes())
    assert max(len(v) for v in seen.values()) > 1


def test_test_loader_keeps_order_and_last_batch(records):
    loader = build_test_loader(records, SIZE, batch_size=4)
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [4] * (len(records) // 4) + ([len(records) % 4] if len(records) % 4 else [])
    indices = torch.cat([b[3] for b in batches]).tolist()
    assert indices == list(range(len(records)))
    tf = build_test_transform(SIZE)
    images = torch.cat([b[0] for b in batches])
    for i, record in enumerate(records):
        assert torch.equal(images[i], tf(load_resized(record.path, SIZE)))


def test_image_dataset_cache_matches_disk(records):
    plain = ImageDataset(records, SIZE)
    cached = ImageDataset(records, SIZE, cache=True)
    assert cached.cache.shape == (len(records), 3, *SIZE) and cached.cache.dtype == torch.uint8
    for i in range(len(records)):
        assert torch.equal(plain[i][0], cached[i][0])
        assert plain[i][1:] == (records[i].pid, records[i].camid, i)
