"""Training throughput and data-loading stalls.

Prints images/s and the fraction of step time spent waiting for the next batch for
(1) resnet50 at 256x128, batch 16x4 (the paper profile) and (2) the cpu profile (MobileNetV2,
128x64, 16x4), on the embedded synthetic dataset (or --data NAME=PATH) with the real loader
(cached decode, reference augmentations incl. random erasing).

    .venv/bin/python benchmarks/bench_train.py [--steps 20] [--workers 0] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from limited import Limited  # benchmarks/limited.py (the script's folder is on sys.path)

from reidbench.harness.data.named import load_named_dataset
from reidbench.harness.spec import replace_section, spec_from_dict
from reidbench.harness.train.build import build_training
from reidbench.harness.train.loop import seed_epoch, train_one_epoch
from reidbench.tricks import PAPER_ORDER, parse_trick_list

BOT_TRICKS = parse_trick_list(PAPER_ORDER)  # BoT's six; later tricks (two-step freezes the backbone) would change what is timed


def bench(name: str, backbone: str, image_size: tuple[int, int], dataset, steps: int, workers: int,
          device: torch.device, pretrained: bool) -> None:
    # The bot base with BoT's six tricks, built exactly as a run builds it (registries, objective, sampler).
    spec = spec_from_dict({"model": {"backbone": backbone, "pretrained": pretrained},
                           "data": {"train": "bench", "test": ["bench"], "image_size": list(image_size)}})
    for trick in BOT_TRICKS:
        spec = trick.apply(spec)
    spec = replace_section(spec, "train", channels_last=device.type == "cuda")
    t0 = time.perf_counter()
    comps = build_training(spec, dataset, device, workers, show_progress=False).components
    t_cache = time.perf_counter() - t0
    loader = comps.loader
    comps.loader = Limited(loader, 3)
    loader.batch_sampler.set_epoch(1)
    train_one_epoch(comps, 1, 1)  # warm-up: allocator, cudnn autotune, worker start
    comps.loader = Limited(loader, steps)
    seed_epoch(0, 2)
    loader.batch_sampler.set_epoch(2)
    stats = train_one_epoch(comps, 2, 2)
    print(f"{name:<34} {stats.images_per_s:8.1f} img/s   data wait {100 * stats.data_wait_fraction:5.1f}% of step time"
          f"   ({steps} steps of 64, {workers} workers, build + cache {t_cache:.1f} s, {device})")


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
        bench("resnet50 256x128 16x4 (paper)", "resnet50", (256, 128), dataset, args.steps, args.workers, device,
              pretrained=False)
    bench("mobilenetv2 128x64 16x4 (cpu)", "mobilenetv2", (128, 64), dataset, args.steps * 3, args.workers, device,
          pretrained=False)


if __name__ == "__main__":
    main()
