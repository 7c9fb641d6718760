"""MGN vs the bot base: training throughput, harness overhead and peak memory on this machine.

1. Throughput of ``experiments/mgn.yaml`` and ``experiments/bot.yaml`` at the SAME input size
   (default: the cpu profile, MobileNetV2, 192x64 = MGN's cpu size, each spec's P16 x K4), through
   the harness's real training path: ``build_training`` (real sampler, cached-decode loader, each
   spec's own augmentations, 0 workers) and ``train_one_epoch`` on ``--steps`` batches.
2. Harness overhead on MGN: a bare-PyTorch step (``build_architecture`` + ``build_objective`` +
   the spec's optimiser as a plain ``torch.optim`` one (SGD with its lr / momentum / weight decay
   for the paper recipe; Adam for the cpu profile, which uses Adam 3.5e-4); forward, sum of the objective's
   values, backward, step) against ``train_one_epoch`` fed the SAME pre-made batches (random images,
   P x K labels, the loader's (images, pids, camids, indices) tuples; no loader on either side).
   overhead % = (harness - bare) / bare. The bare loop uses the spec's memory format
   (``train.channels_last``, NHWC) as the harness does, so the difference is bookkeeping, not layout.
3. Peak RSS (``ru_maxrss``) of each configuration, each in a fresh subprocess (``--one rss:NAME``:
   build, ``--warmup`` + 3 steps) so peaks do not mix; the RSS right after ``import torch``; and
   parameter counts (model + loss-term parameters).

Timings 1 and 2 come from one subprocess (``--one timing``) holding the bot and MGN components and
the bare MGN, measured in ``--rounds`` rounds whose order alternates (forward, reversed, ...) after
``--warmup`` untimed steps of each. Contention only ever adds time, so the tables report each
configuration's best round (``min``); the median of the rounds and every round are printed too.
``cpu`` is process CPU seconds / wall seconds in the timed steps; the script lists other reidbench
processes, whose load makes every figure here slower and noisier.

    .venv/bin/python benchmarks/bench_mgn.py [--steps 10] [--warmup 2] [--rounds 3] [--image-size 192 64]
                                             [--backbone mobilenetv2] [--profile cpu] [--no-pretrained]
                                             [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from limited import Limited  # benchmarks/limited.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
SPECS = {"bot": ROOT / "experiments" / "bot.yaml", "mgn": ROOT / "experiments" / "mgn.yaml"}
MARK = "@@bench_mgn "
RSS_STEPS = 3


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _spec(arch: str, args):
    from reidbench.harness.spec import load_base_file, replace_section

    spec, _ = load_base_file(SPECS[arch], args.profile)
    model = {"pretrained": not args.no_pretrained}
    if args.backbone:
        model["backbone"] = args.backbone
    spec = replace_section(spec, "model", **model)
    return replace_section(spec, "data", image_size=tuple(args.image_size))


def _params(model, objective) -> int:
    return sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in objective.parameters())


class _Harness:
    """One base built as a run builds it; ``epoch`` trains on its real loader or on given batches."""

    def __init__(self, arch: str, args, dataset, device) -> None:
        from reidbench.harness.train.build import build_training

        self.spec = _spec(arch, args)
        self.comps = build_training(self.spec, dataset, device, 0, show_progress=False).components
        self.real_loader = self.comps.loader
        self.device = device
        self.epoch_no = 0

    def epoch(self, steps: int, batches=None) -> tuple[float, float]:
        """(wall seconds, data-wait seconds) of one train_one_epoch over ``steps`` batches."""
        from reidbench.harness.train.loop import seed_epoch, train_one_epoch

        self.epoch_no += 1
        if batches is None:
            self.real_loader.batch_sampler.set_epoch(self.epoch_no)
            self.comps.loader = Limited(self.real_loader, steps)
        else:
            self.comps.loader = batches  # a list: a length, and the loader's 4-tuples
        seed_epoch(self.spec.train.seed, self.epoch_no)
        t0 = time.perf_counter()
        stats = train_one_epoch(self.comps, self.epoch_no, 1000)
        _sync(self.device)
        return time.perf_counter() - t0, stats.data_wait_seconds


class _Bare:
    """MGN trained with nothing but PyTorch: model, objective, SGD, and the four lines of a step."""

    def __init__(self, spec, num_classes: int, device) -> None:
        import torch

        from reidbench.models.architectures import build_architecture
        from reidbench.models.objective import build_objective

        torch.manual_seed(spec.train.seed)
        self.net = build_architecture(spec.model, num_classes).to(device)
        self.objective = build_objective(spec.loss.terms, num_classes, self.net.feature_dims).to(device)
        self.channels_last = spec.train.channels_last
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        o = spec.optim
        if o.name not in ("sgd", "adam", "adamw") or o.groups or spec.stages or o.grad_clip_norm:
            raise SystemExit(f"the bare loop is one plain torch.optim group; the spec has optim {o.name!r}, "
                             f"{len(o.groups)} parameter groups, {len(spec.stages)} stages, clip {o.grad_clip_norm}")
        params = list(self.net.parameters()) + list(self.objective.parameters())
        if o.name == "sgd":  # the paper recipe
            self.opt = torch.optim.SGD(params, lr=o.base_lr, momentum=o.momentum, weight_decay=o.weight_decay,
                                       nesterov=o.nesterov)
        else:  # the cpu profile's Adam 3.5e-4 (coupled L2, as the harness's "adam"); adamw: decoupled
            cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
            self.opt = cls(params, lr=o.base_lr, weight_decay=o.weight_decay, betas=tuple(o.betas))
        self.opt_desc = (f"{type(self.opt).__name__}(lr={o.base_lr:g}, weight_decay={o.weight_decay:g}"
                         + (f", momentum={o.momentum:g})" if o.name == "sgd" else f", betas={tuple(o.betas)})"))
        self.device = device

    def epoch(self, batches) -> tuple[float, float]:
        import torch

        self.net.train()
        self.objective.train()
        _sync(self.device)
        t0 = time.perf_counter()
        for imgs, pids, _, _ in batches:
            imgs, pids = imgs.to(self.device), pids.to(self.device)
            if self.channels_last:
                imgs = imgs.contiguous(memory_format=torch.channels_last)
            loss = sum(self.objective(self.net(imgs), pids).values())
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        _sync(self.device)
        return time.perf_counter() - t0, 0.0


def _premade(spec, num_classes: int, count: int):
    """``count`` batches shaped as the train loader yields them: (images, pids, camids, indices), P x K pids."""
    import torch

    g = torch.Generator().manual_seed(1234)
    p, k = spec.data.ids_per_batch, spec.data.imgs_per_id
    h, w = spec.data.image_size
    batches = []
    for i in range(count):
        pids = torch.randperm(num_classes, generator=g)[:p].repeat_interleave(k)
        imgs = torch.randn(p * k, 3, h, w, generator=g)
        batches.append((imgs, pids, torch.zeros(p * k, dtype=torch.long), torch.arange(i * p * k, (i + 1) * p * k)))
    return batches


def _dataset(spec):
    from reidbench.harness.data.named import load_named_dataset

    return load_named_dataset(spec.data.train, {}, progress=False)[0]


def one_timing(args) -> dict:
    """Figures 1 and 2, interleaved in one process: bot / MGN on the real loader, MGN harness / bare on batches."""
    import torch

    device = torch.device(args.device)
    dataset = _dataset(_spec("mgn", args))
    t0 = time.perf_counter()
    bot, mgn = _Harness("bot", args, dataset, device), _Harness("mgn", args, dataset, device)
    bare = _Bare(mgn.spec, dataset.num_train_pids, device)
    build_s = time.perf_counter() - t0
    distinct = _premade(mgn.spec, dataset.num_train_pids, min(args.steps, 4))
    timed = [distinct[i % len(distinct)] for i in range(args.steps)]
    batch = len(timed[0][0])
    runs = {
        "bot harness (loader)": lambda n: bot.epoch(n),
        "mgn harness (loader)": lambda n: mgn.epoch(n),
        "mgn harness (same batches)": lambda n: mgn.epoch(n, timed[:n]),
        "mgn bare (same batches)": lambda n: bare.epoch(timed[:n]),
    }
    for name in ("bot harness (loader)", "mgn harness (loader)", "mgn bare (same batches)"):
        runs[name](args.warmup)  # allocator, oneDNN primitives; the MGN harness warms up on its loader
    rounds: dict[str, list[float]] = {n: [] for n in runs}
    waits: dict[str, float] = {n: 0.0 for n in runs}
    cpu: dict[str, float] = {n: 0.0 for n in runs}
    order = list(runs)
    for r in range(args.rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            c0 = _cpu_s()
            seconds, wait = runs[name](args.steps)
            cpu[name] += _cpu_s() - c0
            waits[name] += wait
            rounds[name].append(seconds)
    out = {}
    for name, secs in rounds.items():
        out[name] = {"ms_min": 1000 * min(secs) / args.steps, "ms_median": 1000 * statistics.median(secs) / args.steps,
                     "rounds_ms": [1000 * s / args.steps for s in secs], "img_s": batch * args.steps / min(secs),
                     "data_wait": waits[name] / sum(secs), "cpu": cpu[name] / sum(secs)}
    return {"configs": out, "batch": batch, "build_s": build_s, "timing_peak_rss_mb": _rss_mb(),
            "info": {"backbone": mgn.spec.model.backbone, "image_size": list(mgn.spec.data.image_size),
                     "bot_backbone": bot.spec.model.backbone, "bot_image_size": list(bot.spec.data.image_size),
                     "pk": [mgn.spec.data.ids_per_batch, mgn.spec.data.imgs_per_id],
                     "channels_last": mgn.spec.train.channels_last, "pretrained": mgn.spec.model.pretrained,
                     "threads": torch.get_num_threads(), "bare_optimizer": bare.opt_desc}}


def one_rss(name: str, args) -> dict:
    """Figure 3 for one configuration, alone in this process: build, then warm-up + a few steps."""
    import torch

    rss_import = _rss_mb()
    device = torch.device(args.device)
    steps = args.warmup + RSS_STEPS
    if name in SPECS:
        run = _Harness(name, args, _dataset(_spec(name, args)), device)
        run.epoch(steps)
        params = _params(run.comps.model, run.comps.objective)
    elif name == "mgn-bare":  # no dataset, no loader: only the class count is read from it, for the same heads
        spec = _spec("mgn", args)
        num_classes = _dataset(spec).num_train_pids
        bare = _Bare(spec, num_classes, device)
        bare.epoch(_premade(spec, num_classes, 1) * steps)
        params = _params(bare.net, bare.objective)
    else:
        raise SystemExit(f"--one rss:{name}: unknown configuration")
    return {"peak_rss_mb": _rss_mb(), "rss_import_mb": rss_import, "params": params}


def _others() -> list[str]:
    """Other reidbench processes (a background run slows every timing here)."""
    try:
        found = subprocess.run(["pgrep", "-af", "reidbench"], capture_output=True, text=True).stdout.splitlines()
    except OSError:
        return []
    return [line for line in found if line.split(" ", 1)[0] != str(os.getpid()) and "bench_mgn.py" not in line]


def _child(config: str, argv: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--one", config]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        sys.stdout.write(proc.stdout)
        raise SystemExit(f"--one {config} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len(MARK):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per configuration and round [10]")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of each configuration first [2]")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds [3]")
    ap.add_argument("--image-size", type=int, nargs=2, default=[192, 64], metavar=("H", "W"),
                    help="input size of BOTH bases [192 64, MGN's cpu size]")
    ap.add_argument("--backbone", default=None, help="backbone of both bases [the profile's]")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--no-pretrained", action="store_true", help="random init (no ImageNet weights)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:
        import torch  # noqa: F401  (before the baseline of rss_import_mb)

        if args.one == "timing":
            result = one_timing(args)
        elif args.one.startswith("rss:"):
            result = one_rss(args.one[4:], args)
        else:
            raise SystemExit(f"--one {args.one}: unknown")
        print(MARK + json.dumps(result), flush=True)
        return

    t_start = time.perf_counter()
    argv = sys.argv[1:]
    others = _others()
    print(f"bench_mgn: {os.cpu_count()} cpus, load avg {os.getloadavg()[0]:.2f}; "
          f"{args.warmup} warm-up + {args.rounds} alternating rounds x {args.steps} timed steps per configuration")
    if others:
        print("WARNING: other reidbench processes are running; every timing below is contended:")
        for line in others:
            print("    " + line[:150])
    timing = _child("timing", argv)
    rss = {name: _child(f"rss:{name}", argv) for name in ("bot", "mgn", "mgn-bare")}

    info, cfg = timing["info"], timing["configs"]
    print(f"\n{info['backbone']} (bot: {info['bot_backbone']}), input {info['image_size'][0]}x{info['image_size'][1]} "
          f"(bot: {info['bot_image_size'][0]}x{info['bot_image_size'][1]}), batch {info['pk'][0]}x{info['pk'][1]}, "
          f"pretrained {info['pretrained']}, channels_last {info['channels_last']}, {args.device}, "
          f"{info['threads']} torch threads; RSS after import torch {rss['mgn']['rss_import_mb']:.0f} MB; "
          f"bare MGN optimiser {info['bare_optimizer']}")
    head = (f"{'config':<28} {'img/s':>6} {'ms/step':>8} {'(median)':>8} {'peak RSS MB':>12} {'params':>11} "
            f"{'cpu':>5}  ms/step per round")
    print(head)
    print("-" * len(head))
    rss_of = {"bot harness (loader)": "bot", "mgn harness (loader)": "mgn", "mgn bare (same batches)": "mgn-bare"}
    params_of = {"mgn harness (same batches)": "mgn", **rss_of}
    for name, r in cfg.items():
        peak = f"{rss[rss_of[name]]['peak_rss_mb']:.0f}" if name in rss_of else "(as above)"
        print(f"{name:<28} {r['img_s']:6.1f} {r['ms_min']:8.0f} {r['ms_median']:8.0f} {peak:>12} "
              f"{rss[params_of[name]]['params']:11,d} {r['cpu']:5.2f}  {' '.join(f'{x:.0f}' for x in r['rounds_ms'])}")

    bot, mgn = cfg["bot harness (loader)"], cfg["mgn harness (loader)"]
    h, b = cfg["mgn harness (same batches)"], cfg["mgn bare (same batches)"]
    print(f"\nMGN / bot (harness, real loader, same input): {mgn['ms_min'] / bot['ms_min']:.2f}x step time "
          f"(median {mgn['ms_median'] / bot['ms_median']:.2f}x), "
          f"{rss['mgn']['params'] / rss['bot']['params']:.2f}x params, "
          f"peak RSS {rss['mgn']['peak_rss_mb'] - rss['bot']['peak_rss_mb']:+.0f} MB; "
          f"data wait {100 * bot['data_wait']:.1f}% (bot), {100 * mgn['data_wait']:.1f}% (mgn) of step time")
    over_min = (h["ms_min"] - b["ms_min"]) / b["ms_min"]
    over_med = (h["ms_median"] - b["ms_median"]) / b["ms_median"]
    # Noise: how far a configuration's rounds lie apart (max / min - 1). A verdict only where the 5 % line
    # lies outside overhead +- noise; a contended machine spreads rounds by tens of per cent.
    noise = max(max(r["rounds_ms"]) / min(r["rounds_ms"]) - 1 for r in (h, b))
    if over_min + noise <= 0.05:
        verdict = "<= 5 %: OK"
    elif over_min - noise > 0.05:
        verdict = "> 5 %: NOT OK"
    else:
        verdict = f"INCONCLUSIVE (rounds spread up to {100 * noise:.0f}%, too noisy to tell against 5 %)"
    print(f"harness overhead on MGN, same pre-made batches: {100 * over_min:+.1f}% best round vs best round, "
          f"{100 * over_med:+.1f}% median vs median -> {verdict}")
    spread = max(max(r["rounds_ms"]) / min(r["rounds_ms"]) - 1 for r in cfg.values())
    print(f"timing noise: the rounds of one configuration differ by up to {100 * spread:.0f}%")
    print(f"(the timing process holds all three models: peak RSS {timing['timing_peak_rss_mb']:.0f} MB, "
          f"build {timing['build_s']:.0f} s; the mgn bare RSS row has no dataset or loader)")
    others_end = _others()
    if others or others_end:
        print(f"NOTE: other reidbench processes ran during this benchmark ({len(others)} at start, "
              f"{len(others_end)} at end, load avg now {os.getloadavg()[0]:.2f}): timings are contended.")
    print(f"wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
