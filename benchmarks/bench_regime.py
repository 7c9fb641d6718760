"""Candidate cpu profiles for the embedded benchmark: cost, convergence and accuracy (issue: the paper's regime).

Each candidate is an overlay of experiments/bot.yaml (MobileNetV2 from ImageNet, step-granular
phases in the paper's proportions: the LR drops after 39/120 and 69/120 of the optimizer steps).
For each, the Baseline and (``--tricks``) the base plus each trick alone are trained with
``reidbench ablate`` into one results database, so every run gets the runner's own convergence
record (harness/train/convergence.py); the script then prints one row per run: wall time of the
run (training + evaluation, from the record), the final epoch's loss terms, converged or not
(with the loss change relative to the first epoch and the same-domain mAP change over the window
before the first LR decay), and mAP on synth-a (same domain) and synth-b (cross domain).

Re-running it trains nothing already in the database (``--db``), so the table can be printed
again at no cost. Choose a profile by convergence and cost, never by agreement with a paper.

    .venv/bin/python benchmarks/bench_regime.py [--db sqlite:///regime.db] [--only NAME,...] [--tricks rea]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PAPER_EPOCHS = 120
PAPER_MILESTONES = (40, 70)


def milestones(epochs: int) -> list[float]:
    """The paper's milestones for a step-granular run of ``epochs``: the same share of the steps before each."""
    return [round(1 + (m - 1) * epochs / PAPER_EPOCHS, 4) for m in PAPER_MILESTONES]


def candidate(size: tuple[int, int], pad_px: int, epochs: int, base_lr: float | None = None,
              ids_per_batch: int | None = None) -> dict:
    overlay = {"model": {"backbone": "mobilenetv2"}, "data": {"image_size": list(size), "pad_px": pad_px},
               "schedule": {"granularity": "step", "max_epochs": epochs, "milestones": milestones(epochs)},
               "eval": {"batch_size": 256}, "train": {"checkpoint_every_epochs": 1}}
    if base_lr is not None:
        overlay["optim"] = {"base_lr": base_lr}
    if ids_per_batch is not None:
        overlay["data"]["ids_per_batch"] = ids_per_batch
    return overlay


# name → overlay. The first two are the shipped cpu profiles before and after phases were made
# proportional; the others vary image size, epochs, base LR and P (fewer identities per batch).
CANDIDATES: dict[str, dict] = {
    "6ep-128x64": candidate((128, 64), 5, 6),
    "8ep-96x48-lr1e-3": candidate((96, 48), 4, 8, base_lr=1e-3),
    "12ep-64x32-lr1e-3": candidate((64, 32), 3, 12, base_lr=1e-3),
    "18ep-128x64": candidate((128, 64), 5, 18),
    "24ep-96x48-lr1e-3-P8": candidate((96, 48), 4, 24, base_lr=1e-3, ids_per_batch=8),
    "30ep-96x48-lr1e-3": candidate((96, 48), 4, 30, base_lr=1e-3),
}


def write_base(folder: Path) -> Path:
    base = yaml.safe_load((ROOT / "experiments" / "bot.yaml").read_text())
    for key in ("profiles", "ablations", "evaluations", "default_ablation"):
        base.pop(key, None)
    base["name"] = "bot-regime-candidates"
    base["profiles"] = {"paper": {}, **CANDIDATES}
    path = folder / "bot-regime.yaml"
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    return path


def run_candidates(names: list[str], tricks: str, db: str, runs_dir: Path, base: Path) -> None:
    for name in names:
        command = [sys.executable, "-m", "reidbench.harness.cli", "ablate", "--base", str(base), "--profile", name,
                   "--add", tricks, "--mode", "single", "--db", db, "--runs-dir", str(runs_dir), "--device", "cpu"]
        print(f"# {name}: {' '.join(command[3:])}", file=sys.stderr, flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def table(names: list[str], db: str) -> list[str]:
    from reidbench.harness.store import Store

    store = Store(db)
    lines = ["| candidate | row | s/run | final losses | converged (loss Δ, mAP Δ, window) | mAP A→A | mAP A→B |",
             "|---|---|---:|---|---|---:|---:|"]
    for ablation in store.list_ablations():
        profile = (ablation.meta or {}).get("profile")
        if profile not in names:
            continue
        hashes = [m["run_hash"] for m in ablation.members]
        records = store.convergence(hashes)
        for member in ablation.members:
            run = store.get_run(member["run_hash"])
            epochs = store.epochs(run.run_hash)
            last = epochs[-1].values if epochs else {}
            losses = " ".join(f"{k[5:]} {v:.3f}" for k, v in sorted(last.items()) if k.startswith("loss/"))
            c = records.get(run.run_hash)
            verdict = "—" if c is None else (
                f"{c.status} ({'' if c.loss_change is None else f'{100 * c.loss_change:+.2f} %'}, "
                f"{'' if c.map_change is None else f'{c.map_change:+.1f} pt'}, epochs {c.epochs})")
            maps = {e.test_set: e.metrics.get("mAP") for e in store.evaluations([run.run_hash]) if not e.variant}
            seconds = (run.seconds_train or 0) + (run.seconds_eval or 0)
            lines.append(f"| {profile} | {member['label']} | {seconds:.0f} | {losses} | {verdict} | "
                         f"{100 * maps.get('synth-a', float('nan')):.1f} | {100 * maps.get('synth-b', float('nan')):.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="sqlite:///regime.db")
    parser.add_argument("--runs-dir", default="runs-regime")
    parser.add_argument("--only", default=",".join(CANDIDATES), help="comma-separated candidate names")
    parser.add_argument("--tricks", default="", help="tricks trained alone on each candidate besides its Baseline")
    parser.add_argument("--table-only", action="store_true", help="print the table of what is in --db")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        parser.error(f"--only {unknown[0]!r} is not a candidate; valid: {', '.join(CANDIDATES)}")
    if not args.table_only:
        with tempfile.TemporaryDirectory() as folder:
            run_candidates(names, args.tricks, args.db, Path(args.runs_dir), write_base(Path(folder)))
    print("\n".join(table(names, args.db)))


if __name__ == "__main__":
    main()
