"""Datasets and DataLoaders for training (P×K batches, augmentation) and testing.

Reproducibility contract of :func:`build_train_loader`
------------------------------------------------------
Call ``loader.batch_sampler.set_epoch(epoch)`` before iterating epoch ``epoch``. Then:

* the batches (which images) are a pure function of ``(records, P, K, seed, epoch)``
  (:class:`~.sampler.PKSampler`);
* the augmentation of every sample is a pure function of ``(seed, epoch, batch number,
  position in the batch)``: the batch sampler attaches a 63-bit seed to each index and
  :class:`ImageDataset` runs the transform under a CPU generator seeded with it, restoring the
  previous generator state afterwards.

So an epoch is identical with ``num_workers=0`` or any number of (persistent) workers, whatever
the worker each batch lands on, and the global torch RNG seen by the trainer is neither read nor
advanced by data loading (seeding torch at epoch start is harmless but not needed for the data).

Image cache
-----------
With ``cache=True`` every training image is decoded and resized once, up front (threads,
optional tqdm bar), into one uint8 tensor ``N×3×H×W`` (Market: 12,936 × 3×256×128 B ≈ 1.3 GB;
MSMT17 train+val ≈ 3.2 GB; part masks, when a run uses them, another ``N×5×H×W`` uint8 — 5/3 of
the images). Worker processes are forked so they share that tensor
copy-on-write without going through ``/dev/shm``; with a non-fork start method torch moves it to
shared memory once when the persistent workers start. Resize-then-augment is the reference
order, so cached and uncached loading give identical tensors.

Part masks
----------
With ``masks`` (a :class:`~.masks.MaskSource`, for architectures that pool with them) items are
``(image, pid, camid, index, masks)``: the image's five region maps resized like the image and
passed through the same transform call (see :mod:`.transforms`), float32 ``5×H×W`` in [0, 1].
Batches then have a fifth tensor; without masks everything is as before (4-tuples).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .formats import ImageRecord
from .samplers.pk import PKSampler
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_test_transform, build_train_transform, load_resized

# Third entropy word for the augmentation seeds so they never coincide with the PKSampler's
# ``default_rng([seed, epoch])`` stream.
_AUGMENTATION_STREAM = 0xA06


def decode_all(
    paths: Sequence[str],
    image_size: Sequence[int],
    num_threads: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Decode and resize every image into one uint8 tensor ``N×3×H×W`` (Pillow releases the GIL)."""
    height, width = image_size
    images = torch.empty((len(paths), 3, height, width), dtype=torch.uint8)

    pixels = images.numpy()  # same memory; NumPy copies keep torch's thread pool out of it

    def decode(index: int) -> None:
        pixels[index] = load_resized(paths[index], image_size).numpy()

    threads = num_threads or min(8, torch.get_num_threads())
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        done: Iterator[None] = pool.map(decode, range(len(paths)), chunksize=64)
        if progress:
            from tqdm import tqdm

            done = tqdm(done, total=len(paths), desc="decode images", unit="img")
        for _ in done:
            pass
    return images


@contextmanager
def _single_threaded() -> Iterator[None]:
    """Run per-image torch ops on one intra-op thread (toggling costs well under a microsecond).

    Ops on one 3×256×128 image are too small to gain from threads, and in a busy main process
    (``num_workers=0``) each parallel region can cost milliseconds; DataLoader workers already
    run single-threaded.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def _cpu_rng_seeded(seed: int) -> Iterator[None]:
    """Run the block under torch's CPU generator seeded with ``seed``, then restore its state.

    Only the CPU generator is touched (``torch.manual_seed`` would also reseed CUDA).
    """
    generator = torch.random.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield
    finally:
        generator.set_state(state)


class ImageDataset(Dataset):
    """Images of ``records`` through ``transform``; items are ``(image, pid, camid, index)``.

    ``transform`` receives the uint8 ``3×H×W`` tensor of :func:`load_resized` (None: returned
    as is). A key may be an index or ``(index, sample_seed)``; with a seed the transform runs
    under a CPU generator seeded with it (see the module docstring). With ``masks`` items gain a
    fifth element, the image's part masks (module doc), and ``transform(image, masks)`` is called.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        image_size: Sequence[int],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cache: bool = False,
        decode_threads: int | None = None,
        progress: bool = False,
        masks: Any = None,
    ) -> None:
        self.records = tuple(records)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.transform = transform
        self.masks = masks
        self.cache: torch.Tensor | None = None
        self.mask_cache: torch.Tensor | None = None
        if cache:
            self.cache = decode_all([r.path for r in self.records], self.image_size, decode_threads, progress)
            if masks is not None and self.records:  # up front too: a missing mask file stops the run early
                threads = decode_threads or min(8, torch.get_num_threads())
                with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # zlib and Pillow release the GIL
                    self.mask_cache = torch.stack(list(pool.map(self._read_masks, range(len(self.records)))))

    @property
    def pids(self) -> list[int]:
        return [r.pid for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[index]
        return load_resized(self.records[index].path, self.image_size)

    def _read_masks(self, index: int) -> torch.Tensor:
        return self.masks.load(self.records[index].path, self.image_size)

    def load_masks(self, index: int) -> torch.Tensor:
        """uint8 ``5×H×W`` part masks of image ``index`` at the image size."""
        if self.mask_cache is not None:
            return self.mask_cache[index]
        return self._read_masks(index)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, ...]:
        index, sample_seed = key if isinstance(key, tuple) else (key, None)
        index = int(index)
        if self.masks is not None:
            return self._item_with_masks(index, sample_seed)
        with _single_threaded():
            image = self.load(index)
            if self.transform is not None:
                if sample_seed is None:
                    image = self.transform(image)
                else:
                    with _cpu_rng_seeded(sample_seed):
                        image = self.transform(image)
        record = self.records[index]
        return image, record.pid, record.camid, index

    def _item_with_masks(self, index: int, sample_seed: int | None) -> tuple[Any, ...]:
        from .transforms import masks_to_float

        with _single_threaded():
            image, masks = self.load(index), self.load_masks(index)
            if self.transform is None:
                masks = masks_to_float(masks)
            elif sample_seed is None:
                image, masks = self.transform(image, masks)
            else:
                with _cpu_rng_seeded(sample_seed):
                    image, masks = self.transform(image, masks)
        record = self.records[index]
        return image, record.pid, record.camid, index, masks


class SeededBatchSampler(Sampler[list[tuple[int, int]]]):
    """Wraps a batch sampler (any from the sampler registry), attaching to each index a seed for its augmentation.

    Seeds come from ``default_rng([seed, epoch, 0xA06])``, one per sample in batch order.
    """

    def __init__(self, batch_sampler: Any, seed: int) -> None:
        self.batch_sampler = batch_sampler
        self.seed = seed
        self.epoch = getattr(batch_sampler, "epoch", 0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch, _AUGMENTATION_STREAM])
        for batch in self.batch_sampler:
            seeds = rng.integers(0, 2**63 - 1, size=len(batch), dtype=np.int64).tolist()
            yield list(zip(batch, seeds))


class RankShardBatchSampler(Sampler[list[Any]]):
    """One rank's share of every global batch: the ``rank``-th of ``world_size`` equal, contiguous slices.

    Wraps the :class:`SeededBatchSampler` of the *global* batches, so every sample keeps the
    augmentation seed it has in the single-process run: the ranks' batches of a step, concatenated
    in rank order, are exactly the single-process batch. A P×K batch is grouped by identity in draw
    order, so with P divisible by ``world_size`` each rank gets P/world_size whole identities × K
    images and no image is on two ranks. A batch whose length does not split evenly is an error.
    """

    def __init__(self, batch_sampler: Any, rank: int, world_size: int) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} of world size {world_size} is not valid")
        self.batch_sampler, self.rank, self.world_size = batch_sampler, rank, world_size

    @property
    def epoch(self) -> int:
        return getattr(self.batch_sampler, "epoch", 0)

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[Any]]:
        for batch in self.batch_sampler:
            if len(batch) % self.world_size:
                raise ValueError(f"a batch of {len(batch)} samples does not split into {self.world_size} equal "
                                 "per-rank shares")
            share = len(batch) // self.world_size
            yield batch[self.rank * share:(self.rank + 1) * share]


def _worker_context(num_workers: int, cached: bool, requested: str | None) -> str | None:
    if requested is not None or num_workers == 0 or not cached:
        return requested
    # Fork shares the decoded-image cache copy-on-write; other start methods pickle it.
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else None


def build_train_loader(
    records: Sequence[ImageRecord],
    image_size: Sequence[int],
    ids_per_batch: int,
    imgs_per_id: int,
    seed: int,
    flip_prob: float = 0.5,
    pad_px: int = 10,
    random_erasing_prob: float = 0.0,
    num_workers: int = 0,
    cache: bool = True,
    pin_memory: bool = False,
    progress: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    multiprocessing_context: str | None = None,
    batch_sampler: Any = None,
    crop_scale: Sequence[float] | None = None,
    crop_aspect: Sequence[float] = (2.0, 3.0),
    rank: int = 0,
    world_size: int = 1,
    autoaug_prob: float = 0.0,
    masks: Any = None,
) -> DataLoader:
    """P×K training loader (or ``batch_sampler``'s batches, from the sampler registry); call ``loader.batch_sampler.set_epoch(epoch)`` before each epoch.

    Batches are ``(images float32 B×3×H×W, pids int64, camids int64, indices int64)`` with
    ``B = ids_per_batch·imgs_per_id``; ``len(loader)`` is the exact batch count of the current
    epoch. Workers are persistent; the reproducibility contract is in the module docstring.
    With ``world_size`` > 1 the batches are the *global* ones and this loader yields rank
    ``rank``'s share of each (:class:`RankShardBatchSampler`): B/world_size samples per batch.
    ``masks`` (a ``MaskSource``) adds each image's part masks as a fifth batch element.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    sampler = batch_sampler or PKSampler([r.pid for r in records], ids_per_batch, imgs_per_id, seed)
    transform = build_train_transform(image_size, flip_prob, pad_px, random_erasing_prob, mean, std,
                                      crop_scale=crop_scale, crop_aspect=crop_aspect, autoaug_prob=autoaug_prob)
    dataset = ImageDataset(records, image_size, transform, cache=cache, progress=progress, masks=masks)
    seeded: Any = SeededBatchSampler(sampler, seed)
    if world_size > 1:
        seeded = RankShardBatchSampler(seeded, rank, world_size)
    return DataLoader(
        dataset,
        batch_sampler=seeded,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
        multiprocessing_context=_worker_context(num_workers, cache, multiprocessing_context),
    )


def build_test_loader(
    records: Sequence[ImageRecord],
    image_size: Sequence[int],
    batch_size: int,
    num_workers: int = 0,
    cache: bool = False,
    pin_memory: bool = False,
    progress: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    masks: Any = None,
) -> DataLoader:
    """Deterministic loader in record order (resize → normalise), last batch kept; ``masks`` as for training."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    dataset = ImageDataset(records, image_size, build_test_transform(image_size, mean, std),
                           cache=cache, progress=progress, masks=masks)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        multiprocessing_context=_worker_context(num_workers, cache, None),
    )
