"""Training throughput and data-loading stalls.

Prints images/s and the fraction of step time spent waiting for the next batch for
(1) resnet50 at 256x128, batch 16x4 (the paper profile) and (2) the cpu profile (MobileNetV2,
128x64, 16x4), on the embedded synthetic dataset (or --data NAME=PATH) with the real loader
(cached decode, reference augmentations incl. random erasing).

    .venv/bin/python benchmarks/bench_train.py [--steps 20] [--workers 0] [--device cpu]
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from reidbench.harness.data.loader import build_train_loader
from reidbench.harness.data.named import load_named_dataset
from reidbench.harness.train.loop import TrainComponents, seed_epoch, train_one_epoch
from reidbench.models.objective import BotObjective
from reidbench.harness.train.optim import build_epoch_scheduler, build_optimizer
from reidbench.models.build import build_model


class _Limited:
    """The first ``steps`` batches of a loader, with a length (what train_one_epoch expects)."""

    def __init__(self, loader, steps: int) -> None:
        self.loader, self.steps = loader, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.steps)


def bench(name: str, backbone: str, image_size: tuple[int, int], records, num_ids: int, steps: int, workers: int,
          device: torch.device, pretrained: bool) -> None:
    model = build_model(backbone, num_classes=num_ids, neck="bnneck", last_stride=1, pretrained=pretrained).to(device)
    objective = BotObjective(num_ids, model.feat_dim, label_smoothing=0.1).to(device)
    opt = build_optimizer(model.parameters(), "adam", 3.5e-4, 5e-4, (0.9, 0.999))
    sched = build_epoch_scheduler(opt, (40, 70), 0.1, 10, 0.01)
    t0 = time.perf_counter()
    loader = build_train_loader(records, image_size, 16, 4, seed=0, random_erasing_prob=0.5, num_workers=workers,
                                pin_memory=device.type == "cuda")
    t_cache = time.perf_counter() - t0
    amp = torch.bfloat16 if device.type == "cuda" else None
    comps = TrainComponents(model, objective, opt, sched, _Limited(loader, 3), device, amp_dtype=amp,
                            channels_last=device.type == "cuda")
    loader.batch_sampler.set_epoch(1)
    train_one_epoch(comps, 1, 1)  # warm-up: allocator, cudnn autotune, worker start
    comps.loader = _Limited(loader, steps)
    seed_epoch(0, 2)
    loader.batch_sampler.set_epoch(2)
    stats = train_one_epoch(comps, 2, 2)
    print(f"{name:<34} {stats.images_per_s:8.1f} img/s   data wait {100 * stats.data_wait_fraction:5.1f}% of step time"
          f"   ({steps} steps of 64, {workers} workers, cache build {t_cache:.1f} s, {device})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data", default=None, help="NAME=PATH of a Market-layout dataset [default: synth-a]")
    ap.add_argument("--skip-resnet50", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    paths = dict([args.data.split("=", 1)]) if args.data else {}
    name = next(iter(paths)) if paths else "synth-a"
    dataset, _ = load_named_dataset(name, paths)
    print(f"dataset {name}: {len(dataset.train)} train images, {dataset.num_train_pids} ids; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.skip_resnet50:
        bench("resnet50 256x128 16x4 (paper)", "resnet50", (256, 128), dataset.train, dataset.num_train_pids,
              args.steps, args.workers, device, pretrained=False)
    bench("mobilenetv2 128x64 16x4 (cpu)", "mobilenetv2", (128, 64), dataset.train, dataset.num_train_pids,
          args.steps * 3, args.workers, device, pretrained=False)


if __name__ == "__main__":
    main()
