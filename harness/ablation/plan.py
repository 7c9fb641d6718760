"""``reidbench ablate``: expand → hash → skip cached → execute → record → print the table."""

from __future__ import annotations

import hashlib
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from reidbench.harness.ablation.expand import AblationStep, expand, spec_diff
from reidbench.harness.execution.jobs import Job, wait_for_others
from reidbench.harness.spec import RunSpec
from reidbench.tricks import Trick, trick_versions


@dataclass(frozen=True)
class AblationPlan:
    base: RunSpec
    base_name: str
    mode: str
    tricks: tuple[Trick, ...]
    seeds: tuple[int, ...]
    steps: tuple[AblationStep, ...]

    @property
    def name(self) -> str:
        """Stable name: the same command on the same database maps to the same ablation record."""
        digest = hashlib.sha256("|".join([self.mode, *(s.run_hash for s in self.steps)]).encode()).hexdigest()
        return f"{self.base_name}-{self.mode}-{digest[:10]}"

    def unique_hashes(self) -> list[str]:
        return list(dict.fromkeys(s.run_hash for s in self.steps))


def plan_ablation(base: RunSpec, base_name: str, tricks: Sequence[Trick], mode: str,
                  seeds: Sequence[int]) -> AblationPlan:
    steps = expand(base, tricks, mode, seeds)
    return AblationPlan(base, base_name, mode, tuple(tricks), tuple(seeds), tuple(steps))


def dry_run_lines(plan: AblationPlan, statuses: Mapping[str, str]) -> list[str]:
    lines = [f"ablation {plan.name}: {len(plan.steps)} run(s), {len(plan.unique_hashes())} distinct, "
             f"profile {plan.base.profile}, mode {plan.mode}, train {plan.base.data.train}, "
             f"test {', '.join(plan.base.data.test)}"]
    for s in plan.steps:
        status = statuses.get(s.run_hash, "new")
        cached = "cached" if status == "done" else status
        lines.append(f"  {s.label:<28} {s.run_hash[:12]}  [{cached}]")
        for d in spec_diff(plan.base, s.spec):
            lines.append(f"      {d}")
    return lines


def run_plan(plan: AblationPlan, store, executor, runs_dir: Path, *, device: str, num_workers: int | None,
             data_paths: Mapping[str, str], meta: Mapping[str, object], progress: bool | None,
             log: Callable[[str], None]) -> int:
    """Execute what is not done yet; returns the ablation id in the store."""
    for s in plan.steps:
        store.ensure_run(s.run_hash, s.spec.to_dict(), s.step if len(plan.seeds) == 1 else s.label)
    existing = None
    try:
        existing = store.get_ablation(plan.name)
    except ValueError:
        existing = None
    ablation_id = existing.id if existing is not None else store.record_ablation(
        plan.name, plan.base_name, plan.mode, dict(meta),
        [{"position": s.position, "run_hash": s.run_hash, "label": s.label, "step": s.step, "seed": s.seed}
         for s in plan.steps],
    )
    hashes = plan.unique_hashes()
    statuses = store.statuses(hashes)
    todo = [h for h in hashes if statuses.get(h) != "done"]
    done = len(hashes) - len(todo)
    log(f"ablation {plan.name} (id {ablation_id}): {len(hashes)} run(s), {done} cached, {len(todo)} to run")
    by_hash = {s.run_hash: s for s in plan.steps}

    def job(h: str) -> Job:
        s = by_hash[h]
        return Job(run_hash=h, label=s.label, spec_json=s.spec.to_json(), trick_versions=dict(trick_versions(s.spec.tricks)),
                   db_url=store.url, out_dir=str(runs_dir / h[:12]), device=device, num_workers=num_workers,
                   data_paths=dict(data_paths), progress=progress)

    if todo:
        outcomes = executor.run([job(h) for h in todo])
        finished = {o.run_hash for o in outcomes if o.status in ("done", "failed")}
        # Runs another process was training when we looked: wait for them, take over dead ones.
        # Each run is attempted at most once per invocation, so a run that keeps failing cannot loop.
        while True:
            takeover = [h for h in wait_for_others(store, todo, log=log) if h not in finished]
            if not takeover:
                break
            outcomes = executor.run([job(h) for h in takeover])
            finished |= {o.run_hash for o in outcomes if o.status in ("done", "failed")}
            finished |= set(takeover)
    return ablation_id


def _fmt(values: list[float]) -> str:
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f}±{100 * statistics.stdev(values):.1f}"


def ablation_table(plan: AblationPlan, store, metrics: Sequence[str] = ("R1", "mAP")) -> str:
    """Rows = steps (mean±std over seeds), columns = test set × metric; failed/missing cells show '–'."""
    recs = store.metrics(plan.unique_hashes())
    value = {(m.run_hash, m.test_set, m.metric): m.value for m in recs if m.step is None}
    statuses = store.statuses(plan.unique_hashes())
    train = plan.base.data.train
    tests = list(plan.base.data.test)
    heads = [(t, m) for t in tests for m in metrics]
    titles = [f"{t if t == train else train + '→' + t} {m}" for t, m in heads]
    rows: dict[str, list[AblationStep]] = {}
    for s in plan.steps:
        rows.setdefault(s.step, []).append(s)
    width = max(12, *(len(r) for r in rows))
    out = [f"{'step':<{width}}" + "".join(f"{t:>{max(14, len(t) + 2)}}" for t in titles)]
    for step, members in rows.items():
        cells = []
        for (t, m), title in zip(heads, titles):
            vals = [value[(s.run_hash, t, m)] for s in members if (s.run_hash, t, m) in value]
            cells.append(f"{_fmt(vals):>{max(14, len(title) + 2)}}")
        bad = [statuses.get(s.run_hash) for s in members if statuses.get(s.run_hash) != "done"]
        note = f"  ({', '.join(sorted(set(b or 'missing' for b in bad)))})" if bad else ""
        out.append(f"{step:<{width}}" + "".join(cells) + note)
    notes = []
    if plan.base.profile == "cpu":
        notes.append("cpu profile")
    if any(s.spec.shortened for s in plan.steps):
        notes.append(f"shortened to {plan.base.schedule.max_epochs} epochs")
    if not plan.base.model.pretrained:
        notes.append("no pretrained weights")
    runs = [store.find_run(h) for h in plan.unique_hashes()]
    if any(r is not None and r.synthetic for r in runs):
        notes.append("synthetic data")
    out.append(f"R1/mAP in %, {len(plan.seeds)} seed(s)" + (f"; {', '.join(notes)}" if notes else ""))
    return "\n".join(out)
