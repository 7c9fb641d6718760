"""What each seed-system component costs in training speed: img/s against its base, same process.

Every configuration is built as a run builds it (``build_training``: real sampler, cached-decode
loader, the spec's own augmentations, 0 workers) on the embedded synthetic training set, and
trained for ``--steps`` batches with the harness's ``train_one_epoch``. All configurations live in
one process and are timed in ``--rounds`` rounds whose order alternates (forward, reversed, ...),
after ``--warmup`` untimed steps each, so a slow drift of the machine's load hits them alike.
Contention only ever adds time: the table reports each configuration's best round, and its ratio to
the row it is compared with (its base: BoT baseline for the tricks, the base itself for a whole
system). Configurations (cpu profile, MobileNetV2 at 128×64 unless the base says otherwise):

- BoT baseline, and BoT + each of the tricks fab, curriculum, focal, gem, nonlocal, wrt,
  soft-margin, circle, autoaug (one at a time);
- the bases mancs, geng, agw (each against the BoT baseline) and spreid (oracle masks).

    .venv/bin/python benchmarks/bench_components.py [--steps 8] [--warmup 2] [--rounds 3] [--only NAME,...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from limited import Limited  # benchmarks/limited.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
TRICKS = ("fab", "curriculum", "focal", "gem", "nonlocal", "wrt", "soft-margin", "circle", "autoaug")
BASES = ("mancs", "geng", "agw", "spreid")


def configurations(names: set[str] | None):
    """(label, spec, compared-with label) in table order."""
    from reidbench.harness.spec import load_base_file
    from reidbench.tricks import get_trick

    bot, _ = load_base_file(ROOT / "experiments" / "bot.yaml", "cpu")
    out = [("BoT baseline", bot, "BoT baseline")]
    for trick in TRICKS:
        if names is None or trick in names:
            out.append((f"BoT +{trick}", get_trick(trick).apply(bot), "BoT baseline"))
    for base in BASES:
        if names is None or base in names:
            spec, _ = load_base_file(ROOT / "experiments" / f"{base}.yaml", "cpu")
            out.append((base, spec, "BoT baseline"))
    return out


class Harness:
    """One configuration built as a run builds it; ``epoch(n)`` trains n batches of its real loader."""

    def __init__(self, spec, datasets: dict, device) -> None:
        from reidbench.harness.train.build import build_training

        self.spec = spec
        self.comps = build_training(spec, datasets[spec.data.train], device, 0, show_progress=False).components
        self.loader = self.comps.loader
        self.epoch_no = 0

    def epoch(self, steps: int) -> tuple[float, int]:
        from reidbench.harness.train.loop import seed_epoch, train_one_epoch

        self.epoch_no += 1
        self.loader.batch_sampler.set_epoch(self.epoch_no)
        self.comps.loader = Limited(self.loader, steps)
        seed_epoch(self.spec.train.seed, self.epoch_no)
        t0 = time.perf_counter()
        stats = train_one_epoch(self.comps, self.epoch_no, 1000)
        return time.perf_counter() - t0, stats.images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=None, help="comma-separated tricks/bases (the BoT baseline is always in)")
    args = parser.parse_args()

    import torch

    from reidbench.harness.data.named import load_named_dataset

    names = set(args.only.split(",")) if args.only else None
    configs = configurations(names)
    device = torch.device("cpu")
    datasets: dict = {}
    harnesses = {}
    for label, spec, _ in configs:
        if spec.data.train not in datasets:
            datasets[spec.data.train] = load_named_dataset(spec.data.train, {}, progress=False)[0]
        harnesses[label] = Harness(spec, datasets, device)
        harnesses[label].epoch(args.warmup)  # allocator, oneDNN primitives, the image cache
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.steps} steps × {args.rounds} rounds, "
          f"best round reported", flush=True)
    seconds: dict[str, list[float]] = {label: [] for label in harnesses}
    images: dict[str, int] = {}
    order = list(harnesses)
    for r in range(args.rounds):
        for label in (order if r % 2 == 0 else order[::-1]):
            wall, count = harnesses[label].epoch(args.steps)
            seconds[label].append(wall)
            images[label] = count
    best = {label: images[label] / min(s) for label, s in seconds.items()}
    median = {label: images[label] / statistics.median(s) for label, s in seconds.items()}
    width = max(len(label) for label in harnesses)
    print(f"{'configuration':<{width}}  {'batch':>5}  {'img/s best':>10}  {'median':>7}  {'× base':>6}")
    for label, spec, versus in configs:
        batch = spec.data.ids_per_batch * spec.data.imgs_per_id
        h, w = spec.data.image_size
        print(f"{label:<{width}}  {batch:>5}  {best[label]:>10.1f}  {median[label]:>7.1f}  "
              f"{best[label] / best[versus]:>6.2f}   ({spec.model.arch}/{spec.model.backbone} {h}x{w})")


if __name__ == "__main__":
    sys.exit(main())
