"""Training speed of each step of an ablation: what a component costs in images per second.

A run's speed is the median of its per-epoch img/s over epochs 2 … N: epoch 1 also decodes and
caches every image (the loader's in-memory cache), so it measures the disk, not the model. A
step's speed is the mean over its seeds; its cost is the ratio to the first row (the base). Runs
served from the cache keep the speed measured when they trained — on another machine, or a
loaded one, the ratio says more about that than about the component — so the table lists which
hosts the runs trained on and the caption says when they differ.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

FIRST_TIMED_EPOCH = 2  # epoch 1 fills the image cache


def run_speed(epochs: list[Any]) -> float:
    """Median img/s of a run's epochs from FIRST_TIMED_EPOCH on (all epochs when it has only one)."""
    values = [float(e.values["images_per_s"]) for e in epochs
              if e.epoch >= FIRST_TIMED_EPOCH and e.values.get("images_per_s")]
    if not values:
        values = [float(e.values["images_per_s"]) for e in epochs if e.values.get("images_per_s")]
    return statistics.median(values) if values else math.nan


def speed_frame(store: Any, record: Any) -> "pd.DataFrame":
    """One row per step of ablation ``record`` (its order): img/s mean and std over seeds, ratio to row 1.

    Columns: step, seeds, images_per_s, images_per_s_std, ratio, hosts.
    """
    import pandas as pd

    by_step: dict[str, list[str]] = {}
    for member in sorted(record.members, key=lambda m: m["position"]):
        hashes = by_step.setdefault(member["step"], [])
        if member["run_hash"] not in hashes:
            hashes.append(member["run_hash"])
    rows = []
    for step, hashes in by_step.items():
        speeds, hosts = [], set()
        for run_hash in hashes:
            run = store.find_run(run_hash)
            if run is None or run.status != "done":
                continue
            value = run_speed(store.epochs(run_hash))
            if not math.isnan(value):
                speeds.append(value)
                hosts.add(run.host or "?")
        mean = statistics.fmean(speeds) if speeds else math.nan
        std = statistics.stdev(speeds) if len(speeds) > 1 else math.nan
        rows.append({"step": step, "seeds": len(speeds), "images_per_s": mean, "images_per_s_std": std,
                     "hosts": ",".join(sorted(hosts))})
    frame = pd.DataFrame(rows, columns=["step", "seeds", "images_per_s", "images_per_s_std", "hosts"])
    base = frame["images_per_s"].iloc[0] if len(frame) else math.nan
    frame["ratio"] = frame["images_per_s"] / base if base and not math.isnan(base) else math.nan
    return frame


def speed_lines(frame: "pd.DataFrame") -> list[str]:
    """The plain-text block ``reidbench ablate`` prints under its table."""
    if frame.empty or frame["images_per_s"].isna().all():
        return []
    width = max(len(s) for s in frame["step"])
    lines = [f"Training speed (img/s, median over epochs {FIRST_TIMED_EPOCH}..N, mean over seeds; × = vs the first row):"]
    for r in frame.itertuples():
        if math.isnan(r.images_per_s):
            lines.append(f"  {r.step:<{width}}  –")
            continue
        spread = f" ±{r.images_per_s_std:.0f}" if not math.isnan(r.images_per_s_std) else ""
        lines.append(f"  {r.step:<{width}}  {r.images_per_s:7.1f}{spread} img/s  ×{r.ratio:.2f}")
    if len(hosts_of(frame)) > 1:
        lines.append("  (runs trained on different hosts: the ratios mix machines)")
    return lines


def hosts_of(frame: "pd.DataFrame") -> set[str]:
    return {h for cell in frame["hosts"] for h in str(cell).split(",") if h}


def speed_table(frame: "pd.DataFrame") -> "pd.DataFrame":
    """The report's numeric table (the writers' (group, metric, stat) columns): img/s and % of the base's."""
    import pandas as pd

    group = "training speed"
    columns = pd.MultiIndex.from_tuples([(group, "img/s", "mean"), (group, "img/s", "std"), (group, "img/s", "n"),
                                         (group, "% of base", "mean")])
    rows = [[r.images_per_s, r.images_per_s_std, r.seeds, 100 * r.ratio] for r in frame.itertuples()]
    table = pd.DataFrame(rows, index=pd.Index(list(frame["step"]), name="step"), columns=columns)
    return table
