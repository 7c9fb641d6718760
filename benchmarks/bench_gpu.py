"""GPU check: the paper profile through reidbench's loop vs a bare PyTorch loop, data wait, peak memory, DDP.

The paper profile: ``experiments/bot.yaml`` (profile paper) with every trick — ResNet50 at 256×128,
P16×K4, bf16 autocast, channels_last — with ``pretrained: false`` (no download; the speed is the
same), on the synthetic default ``synth-a`` (generated on first use) or ``--data NAME=PATH``.

1. Throughput, in one process, on the SAME model, objective and optimisers (built once by
   ``build_training``) and the SAME pre-made batches (P×K labels, pinned CPU tensors that both
   loops copy to the GPU): ``bare`` = autocast forward, float32 losses, backward, every optimiser
   step, written out in plain PyTorch; ``reidbench`` = ``train_one_epoch``. Rounds alternate
   after a warm-up; each side's best round is reported and ratio = reidbench / bare (goal ≥ 95 %).
2. The real loader (sampler, cached decode, augmentations, ``--workers``): img/s and the fraction
   of step time spent waiting for data (goal < 5 %).
3. Peak GPU memory (``torch.cuda.max_memory_allocated``) of the reidbench steps.
4. Where 2 GPUs are visible: a DDP run of 2 ranks (``--gpus-per-run 2``'s code: global P16×K4
   split 8×4 per GPU, gathered objective, SyncBN on the BNNeck) on the real loader, started with
   torchrun; global img/s and the scaling over one GPU.

Without CUDA it prints why and exits 0. ``--smoke`` runs every part on CPU with a tiny backbone
(the DDP part with 2 gloo processes) to check the script itself. On one H100 it takes 2–4 minutes,
most of it generating synth-a the first time.

    python benchmarks/bench_gpu.py [--steps 40] [--warmup 10] [--rounds 2] [--workers 8] [--data NAME=PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from limited import Limited  # benchmarks/limited.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
MARK = "@@bench_gpu "


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paper_spec(args):
    """The bot base, paper profile, every trick; --smoke shrinks model, images and batch."""
    from reidbench.harness.spec import load_base_file, replace_section
    from reidbench.tricks import registered_tricks

    spec, _ = load_base_file(ROOT / "experiments" / "bot.yaml", "paper")
    for trick in registered_tricks():
        spec = trick.apply(spec)
    spec = replace_section(spec, "model", pretrained=False, weights_path=None)
    spec = replace_section(spec, "train", amp="bf16", channels_last=True)
    if args.smoke:
        spec = replace_section(spec, "model", backbone="timm:test_resnet")
        spec = replace_section(spec, "data", image_size=(64, 32), ids_per_batch=4, imgs_per_id=2)
    name = next(iter(args.data_paths)) if args.data_paths else spec.data.train
    return replace_section(spec, "data", train=name, test=(name,))


def premade(spec, num_classes: int, count: int, pin: bool):
    """``count`` batches shaped as the train loader yields them; ImageNet-normalised-like random pixels."""
    import torch

    g = torch.Generator().manual_seed(1234)
    p, k = spec.data.ids_per_batch, spec.data.imgs_per_id
    h, w = spec.data.image_size
    out = []
    for i in range(count):
        pids = torch.randperm(num_classes, generator=g)[:p].repeat_interleave(k)
        imgs = torch.randn(p * k, 3, h, w, generator=g)
        if pin:
            imgs, pids = imgs.pin_memory(), pids.pin_memory()
        out.append((imgs, pids, torch.zeros(p * k, dtype=torch.long), torch.arange(i * p * k, (i + 1) * p * k)))
    return out


def bare_epoch(c, batches) -> None:
    """The same step without reidbench: autocast forward, float32 losses, backward, every optimiser step."""
    import torch

    c.model.train()
    c.objective.train()
    for imgs, pids, _, _ in batches:
        imgs = imgs.to(c.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        pids = pids.to(c.device, non_blocking=True)
        with torch.autocast(device_type=c.device.type, dtype=torch.bfloat16, enabled=c.device.type == "cuda"):
            outputs = c.model(imgs)
        loss = sum(c.objective({k: v.float() for k, v in outputs.items()}, pids).values())
        c.optimizer.zero_grad(set_to_none=True)
        for own in c.own_optimizers:
            own.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        c.optimizer.step()
        for own in c.own_optimizers:
            if own.before_step is not None:
                own.before_step()
            own.optimizer.step()


def timed(device, fn) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def single(args, device, dataset) -> float:
    """Parts 1–3; returns the real-loader img/s (the one-GPU reference of part 4)."""
    import torch

    from reidbench.harness.train.build import build_training
    from reidbench.harness.train.loop import seed_epoch, train_one_epoch

    spec = paper_spec(args)
    t0 = time.perf_counter()
    c = build_training(spec, dataset, device, args.workers, show_progress=False).components
    print(f"built {spec.model.backbone} {spec.data.image_size[0]}x{spec.data.image_size[1]} "
          f"P{spec.data.ids_per_batch}xK{spec.data.imgs_per_id}, loss terms "
          f"{'+'.join(b.label for b in c.objective.bound)}, amp {c.amp_dtype}, channels_last {c.channels_last}, "
          f"{args.workers} loader workers ({time.perf_counter() - t0:.1f} s with the decode cache)", flush=True)
    loader = c.loader
    batches = premade(spec, dataset.num_train_pids, min(args.steps, 8), pin=device.type == "cuda")
    same = [batches[i % len(batches)] for i in range(args.steps)]
    batch = len(same[0][0])
    epoch = [0]

    def harness(steps_batches) -> None:
        epoch[0] += 1
        c.loader = steps_batches
        seed_epoch(spec.train.seed, epoch[0])
        train_one_epoch(c, epoch[0], 10_000)

    bare_epoch(c, same[:args.warmup])
    harness(same[:args.warmup])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rounds: dict[str, list[float]] = {"bare": [], "reidbench": []}
    for r in range(args.rounds):
        order = ("bare", "reidbench") if r % 2 == 0 else ("reidbench", "bare")
        for name in order:
            fn = (lambda: bare_epoch(c, same)) if name == "bare" else (lambda: harness(same))
            rounds[name].append(args.steps * batch / timed(device, fn))
    best = {k: max(v) for k, v in rounds.items()}
    print(f"1. same model and batches, {args.steps} steps of {batch}, best of {args.rounds} rounds:")
    for name, values in rounds.items():
        print(f"   {name:<10} {best[name]:8.1f} img/s   (rounds: {', '.join(f'{v:.1f}' for v in values)})")
    ratio = best["reidbench"] / best["bare"]
    print(f"   ratio reidbench/bare {100 * ratio:.1f} % (goal >= 95 %: {'met' if ratio >= 0.95 else 'NOT met'})")
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")

    # 2. the real loader: warm-up (worker start, decode cache already built), then the timed epoch
    loader.batch_sampler.set_epoch(1)
    c.loader = Limited(loader, args.warmup)
    train_one_epoch(c, 1, 10_000)
    loader.batch_sampler.set_epoch(2)
    c.loader = Limited(loader, args.steps)
    seed_epoch(spec.train.seed, 2)
    _sync(device)
    stats = train_one_epoch(c, 2, 10_000)
    wait = stats.data_wait_fraction
    print(f"2. real loader ({args.workers} workers): {stats.images_per_s:8.1f} img/s, data wait {100 * wait:.1f} % of "
          f"step time (goal < 5 %: {'met' if wait < 0.05 else 'NOT met'})")
    print(f"3. peak GPU memory of the reidbench steps: "
          + (f"{peak:.2f} GiB" if peak == peak else "n/a (CPU)"))
    return stats.images_per_s


# ----------------------------------------------------------------------------------------- part 4: DDP


def ddp_rank(args) -> None:
    """One rank under torchrun: what a --gpus-per-run 2 run builds, timed on the real loader."""
    import torch

    from reidbench.harness.data.named import load_named_dataset
    from reidbench.harness.train import distributed
    from reidbench.harness.train.build import build_training
    from reidbench.harness.train.loop import seed_epoch, train_one_epoch

    cuda = not args.smoke and torch.cuda.is_available()
    ctx = distributed.context_from_env("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{ctx.local_rank}" if cuda else "cpu")
    distributed.init_process_group(ctx, device)
    try:
        spec = paper_spec(args)
        dataset, _ = load_named_dataset(spec.data.train, args.data_paths, progress=False)
        c = build_training(spec, dataset, device, args.workers, show_progress=False, dist=ctx).components
        loader = c.loader
        loader.batch_sampler.set_epoch(1)
        c.loader = Limited(loader, args.warmup)
        train_one_epoch(c, 1, 10_000)
        loader.batch_sampler.set_epoch(2)
        c.loader = Limited(loader, args.steps)
        seed_epoch(spec.train.seed, 2)
        _sync(device)
        stats = train_one_epoch(c, 2, 10_000)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
        if ctx.is_main:
            print(MARK + json.dumps({"img_s": stats.images_per_s, "wait": stats.data_wait_fraction, "peak": peak,
                                     "per_rank": [spec.data.ids_per_batch // ctx.world_size, spec.data.imgs_per_id],
                                     "backend": ctx.backend}), flush=True)
    finally:
        distributed.destroy_process_group()


def ddp(args, one_gpu_img_s: float) -> None:
    import torch

    if not args.smoke and torch.cuda.device_count() < 2:
        print(f"4. 2-GPU DDP step: skipped ({torch.cuda.device_count()} GPU visible)")
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__,
           "--ddp-rank", "--steps", str(args.steps), "--warmup", str(args.warmup), "--workers", str(args.workers)]
    cmd += ["--smoke"] if args.smoke else []
    cmd += [f"--data={k}={v}" for k, v in args.data_paths.items()]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // 2)))}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.ddp_timeout_s)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        print(f"4. 2-process DDP: FAILED (exit {done.returncode})\n{tail}")
        return
    r = json.loads(lines[0][len(MARK):])
    peak = f", peak {r['peak']:.2f} GiB per GPU" if r["peak"] == r["peak"] else ""
    print(f"4. 2-process DDP ({r['backend']}, {r['per_rank'][0]}x{r['per_rank'][1]} per rank, global "
          f"{2 * r['per_rank'][0]}x{r['per_rank'][1]}): {r['img_s']:8.1f} img/s global, data wait "
          f"{100 * r['wait']:.1f} %{peak}; {r['img_s'] / one_gpu_img_s:.2f}x one process "
          f"({time.perf_counter() - t0:.0f} s with start-up)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None, help="loader workers [default: 8 on CUDA, 0 with --smoke]")
    ap.add_argument("--data", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny backbone, 64x32, P4xK2: checks the script only")
    ap.add_argument("--ddp-rank", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ddp-timeout-s", type=int, default=150)
    args = ap.parse_args()
    args.data_paths = dict(item.split("=", 1) for item in args.data)
    if args.workers is None:
        args.workers = 0 if args.smoke else min(8, os.cpu_count() or 1)
    if args.ddp_rank:
        ddp_rank(args)
        return
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device on this machine; nothing measured (run it where a GPU is, or --smoke to "
              "check the script on CPU)")
        return
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as a run does (train.deterministic false)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    from reidbench.harness.data.named import load_named_dataset

    t0 = time.perf_counter()
    spec = paper_spec(args)
    dataset, _ = load_named_dataset(spec.data.train, args.data_paths, progress=False)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke)"
    print(f"bench_gpu on {name}, torch {torch.__version__}; {spec.data.train}: {len(dataset.train)} train images, "
          f"{dataset.num_train_pids} ids (ready in {time.perf_counter() - t0:.0f} s)", flush=True)
    img_s = single(args, device, dataset)
    ddp(args, img_s)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
