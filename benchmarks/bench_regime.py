"""Candidate cpu profiles for a base: cost, convergence and accuracy (issue: the paper's regime).

Each candidate is an overlay of the base file (``--base``, experiments/bot.yaml by default) with
MobileNetV2 from ImageNet and step-granular phases in the paper's proportions: every LR milestone
of the base's own paper schedule keeps its share of the optimizer steps (BoT: the LR drops after
39/120 and 69/120 of them; Geng: after 39/170, 79/170, ...).
For each, the Baseline and (``--tricks``) the base plus each trick alone are trained with
``reidbench ablate`` into one results database, so every run gets the runner's own convergence
record (harness/train/convergence.py); the script then prints one row per run: wall time of the
run (training + evaluation, from the record), the final epoch's loss terms, converged or not
(with the loss change relative to the first epoch and the same-domain mAP change over the window
before the first LR decay), and mAP on synth-a (same domain) and synth-b (cross domain).

Re-running it trains nothing already in the database (``--db``), so the table can be printed
again at no cost. Choose a profile by convergence and cost, never by agreement with a paper.

    .venv/bin/python benchmarks/bench_regime.py [--base bot|geng] [--db sqlite:///regime.db] [--only NAME,...] [--tricks rea]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def paper_schedule(base: str) -> tuple[int, list[float]]:
    """The base's paper schedule: its epochs and LR milestones (1-based epochs, as the base file writes them)."""
    schedule = yaml.safe_load((ROOT / "experiments" / f"{base}.yaml").read_text())["schedule"]
    return int(schedule["max_epochs"]), list(schedule.get("milestones") or [])


def milestones(base: str, epochs: int) -> list[float]:
    """The base's milestones for a step-granular run of ``epochs``: the same share of the steps before each."""
    paper_epochs, paper_milestones = paper_schedule(base)
    # bot's candidates were first recorded with 4 decimals (a milestone is part of a run's identity)
    return [round(1 + (m - 1) * epochs / paper_epochs, 6 if base != "bot" else 4) for m in paper_milestones]


def candidate(base: str, size: tuple[int, int], pad_px: int, epochs: int, base_lr: float | None = None,
              ids_per_batch: int | None = None, optimizer: str | None = None) -> dict:
    overlay = {"model": {"backbone": "mobilenetv2"}, "data": {"image_size": list(size), "pad_px": pad_px},
               "schedule": {"granularity": "step", "max_epochs": epochs, "milestones": milestones(base, epochs)},
               "eval": {"batch_size": 256}, "train": {"checkpoint_every_epochs": 1}}
    optim = {key: value for key, value in (("name", optimizer), ("base_lr", base_lr)) if value is not None}
    if optim:
        overlay["optim"] = optim
    if ids_per_batch is not None:
        overlay["data"]["ids_per_batch"] = ids_per_batch
    return overlay


# base → candidate name → overlay.
# bot: the first two are the shipped cpu profiles before and after phases were made proportional;
# the others vary image size, epochs, base LR and P (fewer identities per batch).
# geng: its paper optimiser (SGD 1e-3) leaves the net at chance in minutes (docs/geng.md), so every
# candidate uses Adam; the first is the cpu profile measured in the issue that made phases
# proportional (its LR drops after 23 % of the steps), the others raise the LR to BoT's cpu
# profile's and/or train longer so that the part before the first decay is long enough to learn.
CANDIDATES: dict[str, dict[str, dict]] = {
    "bot": {
        "6ep-128x64": candidate("bot", (128, 64), 5, 6),
        "8ep-96x48-lr1e-3": candidate("bot", (96, 48), 4, 8, base_lr=1e-3),
        "12ep-64x32-lr1e-3": candidate("bot", (64, 32), 3, 12, base_lr=1e-3),
        "18ep-128x64": candidate("bot", (128, 64), 5, 18),
        "24ep-96x48-lr1e-3-P8": candidate("bot", (96, 48), 4, 24, base_lr=1e-3, ids_per_batch=8),
        "30ep-96x48-lr1e-3": candidate("bot", (96, 48), 4, 30, base_lr=1e-3),
    },
    "geng": {
        "6ep-128x64-adam3.5e-4": candidate("geng", (128, 64), 5, 6, base_lr=3.5e-4, optimizer="adam"),
        "6ep-128x64-adam1e-3": candidate("geng", (128, 64), 5, 6, base_lr=1e-3, optimizer="adam"),
        "8ep-96x48-adam1e-3": candidate("geng", (96, 48), 4, 8, base_lr=1e-3, optimizer="adam"),
        "16ep-96x48-adam1e-3": candidate("geng", (96, 48), 4, 16, base_lr=1e-3, optimizer="adam"),
    },
}


def write_base(folder: Path, name: str) -> Path:
    base = yaml.safe_load((ROOT / "experiments" / f"{name}.yaml").read_text())
    for key in ("profiles", "ablations", "evaluations", "default_ablation"):
        base.pop(key, None)
    base["name"] = f"{name}-regime-candidates"
    base["profiles"] = {"paper": {}, **CANDIDATES[name]}
    path = folder / f"{name}-regime.yaml"
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    return path


def run_candidates(names: list[str], tricks: str, db: str, runs_dir: Path, base: Path) -> None:
    for name in names:
        command = [sys.executable, "-m", "reidbench.harness.cli", "ablate", "--base", str(base), "--profile", name,
                   "--add", tricks, "--mode", "single", "--db", db, "--runs-dir", str(runs_dir), "--device", "cpu"]
        print(f"# {name}: {' '.join(command[3:])}", file=sys.stderr, flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def table(names: list[str], db: str, base_name: str) -> list[str]:
    """One row per run of the candidates ``names`` recorded in ``db`` by ablations named after the candidates file ``base_name`` (its stem)."""
    from reidbench.harness.store import Store

    store = Store(db)
    lines = ["| candidate | row | s/run | final losses | converged (loss Δ, mAP Δ, window) | mAP A→A | mAP A→B |",
             "|---|---|---:|---|---|---:|---:|"]
    for ablation in store.list_ablations():
        profile = (ablation.meta or {}).get("profile")
        if profile not in names or not ablation.name.startswith(f"{base_name}-"):
            continue
        hashes = [m["run_hash"] for m in ablation.members]
        records = store.convergence(hashes)
        for member in ablation.members:
            run = store.get_run(member["run_hash"])
            epochs = store.epochs(run.run_hash)
            last = epochs[-1].values if epochs else {}
            losses = " ".join(f"{k[5:]} {v:.3f}" for k, v in sorted(last.items()) if k.startswith("loss/"))
            c = records.get(run.run_hash)
            if c is None:
                verdict = "—"
            elif c.epochs is None:  # no window to judge: say why (e.g. the first decay falls inside epoch 2)
                verdict = f"{c.status} ({c.reason})"
            else:
                verdict = (f"{c.status} ({'' if c.loss_change is None else f'{100 * c.loss_change:+.2f} %'}, "
                           f"{'' if c.map_change is None else f'{c.map_change:+.1f} pt'}, epochs {c.epochs})")
            maps = {e.test_set: e.metrics.get("mAP") for e in store.evaluations([run.run_hash]) if not e.variant}
            seconds = (run.seconds_train or 0) + (run.seconds_eval or 0)
            lines.append(f"| {profile} | {member['label']} | {seconds:.0f} | {losses} | {verdict} | "
                         f"{100 * maps.get('synth-a', float('nan')):.1f} | {100 * maps.get('synth-b', float('nan')):.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="bot", choices=sorted(CANDIDATES), help="the base whose candidates run")
    parser.add_argument("--db", default="sqlite:///regime.db")
    parser.add_argument("--runs-dir", default="runs-regime")
    parser.add_argument("--only", default="", help="comma-separated candidate names (default: all of the base's)")
    parser.add_argument("--tricks", default="", help="tricks trained alone on each candidate besides its Baseline")
    parser.add_argument("--table-only", action="store_true", help="print the table of what is in --db")
    args = parser.parse_args()
    candidates = CANDIDATES[args.base]
    names = [n for n in args.only.split(",") if n] or list(candidates)
    unknown = [n for n in names if n not in candidates]
    if unknown:
        parser.error(f"--only {unknown[0]!r} is not a {args.base} candidate; valid: {', '.join(candidates)}")
    if not args.table_only:
        with tempfile.TemporaryDirectory() as folder:
            run_candidates(names, args.tricks, args.db, Path(args.runs_dir), write_base(Path(folder), args.base))
    print("\n".join(table(names, args.db, f"{args.base}-regime")))


if __name__ == "__main__":
    main()
