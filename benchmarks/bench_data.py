"""Throughput of the real-data input pipeline on Market-like JPEGs written to a temp folder.

    python benchmarks/bench_data.py --num-images 2000 --workers 0 2

Prints images/s for: decoding + resizing (the cacheable stage), the train transform alone on a
cached uint8 tensor, and whole epochs of the P×K train loader with and without the cache.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from reidbench.harness.data.formats import ImageRecord
from reidbench.harness.data.loader import build_train_loader, decode_all
from reidbench.harness.data.transforms import build_train_transform


def make_images(folder: Path, num_images: int, num_ids: int) -> list[ImageRecord]:
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, 128 * 64 * 3).reshape(128, 64, 3)
    records = []
    for i in range(num_images):
        pid = i % num_ids
        pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{pid:04d}_c{i % 6 + 1}s1_{i:06d}_01.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        records.append(ImageRecord(str(path), pid, i % 6))
    return records


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:8.0f} img/s ({seconds:.2f} s for {count})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--num-ids", type=int, default=250)
    parser.add_argument("--image-size", type=int, nargs=2, default=(256, 128))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    image_size = tuple(args.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        records = make_images(Path(tmp), args.num_images, args.num_ids)
        paths = [r.path for r in records]

        start = time.perf_counter()
        cache = decode_all(paths, image_size, num_threads=1)
        print("decode+resize, 1 thread     ", rate(len(paths), time.perf_counter() - start))
        start = time.perf_counter()
        decode_all(paths, image_size)
        print(f"decode+resize, {torch.get_num_threads()} thread(s)  ", rate(len(paths), time.perf_counter() - start))

        transform = build_train_transform(image_size, random_erasing_prob=0.5)
        start = time.perf_counter()
        for i in range(len(paths)):
            transform(cache[i])
        print("train transform on cache    ", rate(len(paths), time.perf_counter() - start))

        for cached in (True, False):
            for workers in args.workers:
                loader = build_train_loader(records, image_size, 16, 4, seed=0, random_erasing_prob=0.5,
                                            num_workers=workers, cache=cached)
                count = 0
                start = time.perf_counter()
                for epoch in range(args.epochs):
                    loader.batch_sampler.set_epoch(epoch)
                    for images, *_ in loader:
                        count += len(images)
                label = f"loader cache={cached!s:5} workers={workers}"
                print(f"{label:28}", rate(count, time.perf_counter() - start), "(incl. cache build + worker start)")
                del loader


if __name__ == "__main__":
    main()
