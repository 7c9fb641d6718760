"""The data loader: how many worker processes a run gets here, and how fast one process prepares images.

Two rates, measured on a handful of images in this process (one thread, as a loader worker runs):
``decode`` (read the JPEG and resize: what filling a run's image cache costs, once per run) and
``augment`` (the training transform on the cached uint8 image: what every step costs, spread over
the workers). Images: the first training images of each ``--data`` dataset, else of the embedded
``synth-a`` when it is generated, else a few freshly rendered synthetic images (nothing is written to
the cache folder).
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from reidbench.harness.doctor.record import FAIL, OK, Check

BUDGET_S = 1.0  # per dataset, decode and augment together
MAX_IMAGES = 64
SEED = 0


@dataclass(frozen=True)
class Rates:
    images: int
    decode_per_s: float
    augment_per_s: float


def measure_rates(paths: Sequence[str], image_size: Sequence[int], data_spec: Any = None,
                  budget_s: float = BUDGET_S) -> Rates:
    """Decode and augment rates (images/s) on ``paths`` at ``image_size``, within about ``budget_s``.

    ``data_spec`` (a DataSpec): its augmentation settings; None: flip and 10 px padding only.
    """
    from reidbench.harness.data.loader import _cpu_rng_seeded, _single_threaded
    from reidbench.harness.data.transforms import build_train_transform, load_resized

    if not paths:
        raise ValueError("no images to measure")
    size = (int(image_size[0]), int(image_size[1]))
    kw: dict[str, Any] = {}
    if data_spec is not None:
        kw = dict(flip_prob=data_spec.flip_prob, pad_px=data_spec.pad_px,
                  random_erasing_prob=data_spec.random_erasing_prob, crop_scale=data_spec.crop_scale,
                  crop_aspect=data_spec.crop_aspect, autoaug_prob=data_spec.autoaug_prob)
    transform = build_train_transform(size, **kw)
    paths = list(paths)[:MAX_IMAGES]
    with _single_threaded():  # as in a loader worker (ImageDataset.__getitem__)
        first = load_resized(paths[0], size)  # warm-up: imports, Pillow's decoder set-up
        with _cpu_rng_seeded(SEED):
            transform(first)
        decoded, start = [], time.perf_counter()
        for path in paths:
            decoded.append(load_resized(path, size))
            if time.perf_counter() - start > budget_s / 2:
                break
        decode_s = time.perf_counter() - start
        augmented, start = 0, time.perf_counter()
        while augmented < 4 * MAX_IMAGES:  # each decoded image at least once, then up to a quarter budget
            with _cpu_rng_seeded(SEED + augmented):
                transform(decoded[augmented % len(decoded)])
            augmented += 1
            elapsed = time.perf_counter() - start
            if elapsed > budget_s / 2 or (augmented >= len(decoded) and elapsed > budget_s / 4):
                break
        augment_s = time.perf_counter() - start
    return Rates(len(decoded), len(decoded) / decode_s, augmented / augment_s)


@contextmanager
def sample_images(data_paths: Mapping[str, str]) -> Iterator[list[tuple[str, list[str]]]]:
    """[(label, image paths)]: the ``--data`` datasets' first training images, else synth-a's (module doc).

    Raises ValueError / FileNotFoundError with one line for a ``--data`` folder that cannot be read.
    """
    from reidbench.harness.data.formats import load_dataset
    from reidbench.harness.data.named import dataset_root, provenance

    if data_paths:
        out = []
        for name in data_paths:
            root = dataset_root(name, data_paths, progress=False)
            dataset = load_dataset(root, provenance(name, data_paths, root).format, name=name)
            if not dataset.train:
                raise ValueError(f"--data {name}={data_paths[name]}: no training images")
            out.append((name, [r.path for r in dataset.train[:MAX_IMAGES]]))
        yield out
        return
    from reidbench.harness.data.synth import list_datasets

    synth_a = next(item for item in list_datasets() if item["name"] == "synth-a")
    if synth_a["generated"]:
        folder = Path(synth_a["path"]) / "bounding_box_train"
        yield [("synth-a", [str(p) for p in sorted(folder.glob("*.jpg"))[:MAX_IMAGES]])]
        return
    from reidbench.harness.data.synth import generate_domain

    # A 2-identity domain A (a few dozen images, ~0.1 s) in a temporary folder.
    with tempfile.TemporaryDirectory(prefix="reidbench-doctor-") as tmp:
        root = generate_domain(Path(tmp) / "synth", domain="A", num_ids=2, progress=False)
        yield [("synth-a (rendered now)", [str(p) for p in sorted((root / "bounding_box_train").glob("*.jpg"))])]


def loader_checks(data_paths: Mapping[str, str], device_type: str, image_size: Sequence[int],
                  data_spec: Any = None, budget_s: float = BUDGET_S) -> list[Check]:
    """One line per measured dataset: workers per run (runner.default_workers) and the two rates."""
    from reidbench.harness.train.runner import default_workers

    workers = default_workers(device_type)
    cores = os.cpu_count() or 1
    # 0 on a small CPU machine: the training step uses every core and the batches are built in its process.
    where = f"{workers} workers per run ({cores} CPU cores, {device_type})"
    size = f"{int(image_size[0])}×{int(image_size[1])}"
    try:
        with sample_images(data_paths) as samples:
            measured = [(label, measure_rates(paths, image_size, data_spec, budget_s)) for label, paths in samples]
    except (ValueError, FileNotFoundError, OSError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        return [Check("loader", FAIL, f"{where}; cannot read the data: {msg}", {"workers": workers})]
    checks = []
    for label, rates in measured:
        parallel = max(1, workers)
        text = (f"{where}; {label} {size}: decode {rates.decode_per_s:,.0f} img/s, augment "
                f"{rates.augment_per_s:,.0f} img/s per process" + (f" (≈ {parallel * rates.augment_per_s:,.0f} "
                                                                   f"with {parallel})" if parallel > 1 else ""))
        checks.append(Check("loader", OK, text, {
            "workers": workers, "cpu_cores": cores, "dataset": label, "image_size": [int(v) for v in image_size],
            "images": rates.images, "decode_per_s": round(rates.decode_per_s, 1),
            "augment_per_s": round(rates.augment_per_s, 1)}))
    return checks


def synthetic_cache_check() -> Check:
    """Whether the embedded datasets are generated, or can be (their cache folder must be writable)."""
    from reidbench.harness.data.synth import cache_root, list_datasets

    items = list_datasets()
    missing = [i["name"] for i in items if not i["generated"]]
    root = cache_root()
    data = {"cache": str(root), "generated": [i["name"] for i in items if i["generated"]], "missing": missing}
    if not missing:
        return Check("synthetic", OK, f"{', '.join(i['name'] for i in items)} generated in {root}", data)
    existing = next((p for p in (root, *root.parents) if p.exists()), None)
    if existing is None or not os.access(existing, os.W_OK | os.X_OK):
        return Check("synthetic", FAIL, f"{', '.join(missing)} not generated and {root} is not writable: set "
                                        "REIDBENCH_DATA to a writable folder", data)
    return Check("synthetic", OK, f"{', '.join(missing)} generated on first use into {root} (≈ 10 s each)", data)
