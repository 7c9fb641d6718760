"""``reidbench ablate``: expand → hash → skip cached → execute → record → print the table."""

from __future__ import annotations

import hashlib
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from reidbench.harness.ablation.expand import (
    DESIGN_MODES,
    AblationStep,
    expand,
    expand_steps,
    make_design,
    spec_diff,
)
from reidbench.harness.evaluation.settings import Variant, default_variants
from reidbench.harness.execution.jobs import Job, wait_for_others
from reidbench.harness.spec import RunSpec
from reidbench.tricks import Trick, trick_versions

if TYPE_CHECKING:
    from reidbench.harness.spec.patches import Patch, StepList
    from reidbench.harness.stats.factorial import Design


def ablation_name(base_name: str, mode: str, run_hashes: Sequence[str], variants: Sequence[str] = ()) -> str:
    """Stable name: the same command on the same database maps to the same ablation record.

    Evaluation variants make it another table of the same runs (and so another record).
    """
    parts = [mode, *run_hashes] + ([f"variants:{','.join(variants)}"] if variants else [])
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()
    return f"{base_name}-{mode}-{digest[:10]}"


@dataclass(frozen=True)
class AblationPlan:
    base: RunSpec
    base_name: str
    mode: str
    tricks: tuple[Trick, ...]
    seeds: tuple[int, ...]
    steps: tuple[AblationStep, ...]
    variants: tuple[Variant, ...] = ()  # evaluation variants besides each run's default evaluation
    train_fingerprint: str | None = None
    test_fingerprints: Mapping[str, str | None] = field(default_factory=dict)
    # Backbone → why its weights' digest is not known yet (a --dry-run does not download them).
    pending_weights: Mapping[str, str] = field(default_factory=dict)
    design: "Design | None" = None  # modes factorial / fractional: the two-level design over ``tricks``

    def weights_pending(self, step: AblationStep) -> bool:
        return step.spec.model.pretrained and step.spec.model.backbone in self.pending_weights

    @property
    def name(self) -> str:
        return ablation_name(self.base_name, self.mode, [s.run_hash for s in self.steps],
                             [v.name for v in self.variants])

    def unique_hashes(self) -> list[str]:
        return list(dict.fromkeys(s.run_hash for s in self.steps))

    def variants_for(self, step: AblationStep) -> tuple[Variant, ...]:
        """The variants this step's model is scored with (``eval.rerank`` adds re-ranking to every step)."""
        last_step = self.steps[-1].step
        last_trick = step.added[-1] if step.added else None
        chosen = [v for v in self.variants if v.applies_to(step.step, last_trick, step.step == last_step)]
        names = {v.name for v in chosen}
        return tuple(v for v in default_variants(step.spec.eval) if v.name not in names) + tuple(chosen)


def plan_ablation(base: RunSpec, base_name: str, tricks: Sequence[Trick], mode: str, seeds: Sequence[int],
                  data_paths: Mapping[str, str] | None = None, variants: Sequence[Variant] = (), *,
                  step_list: "StepList | None" = None, presets: Mapping[str, "Patch"] | None = None,
                  load_base: Callable[[str], RunSpec] | None = None,
                  download_weights: bool = True, resolution: str | None = None) -> AblationPlan:
    """Expand the ablation; with ``data_paths`` (the --data folders) runs are keyed by their data's
    fingerprints and by the digest of the pretrained weights they start from (resolved, and
    downloaded if needed, here: ``download_weights=False`` for a dry run leaves them pending).

    With ``step_list`` (mode ``steps``) the rows are its labelled patches of ``base`` instead of tricks.
    Modes ``factorial`` and ``fractional`` (with ``resolution`` IV or V) plan the points of a two-level
    design over ``tricks`` (``expand.make_design``).
    """
    design = make_design(tricks, mode, resolution) if mode in DESIGN_MODES and step_list is None else None
    if design is None and resolution is not None:
        raise ValueError(f"--resolution {resolution} applies to --mode fractional only")
    train_fp, test_fps, weights_of = None, {}, None
    if data_paths is not None:
        from reidbench.harness.data.fingerprint import dataset_fingerprint
        from reidbench.models.weights import WeightsResolver

        train_fp = dataset_fingerprint(base.data.train, data_paths).train
        test_fps = {t: dataset_fingerprint(t, data_paths).test for t in base.data.test}
        weights_of = WeightsResolver(download=download_weights)
    if step_list is not None:
        steps = expand_steps(base, step_list, seeds, train_fp, presets=presets, load_base=load_base,
                             weights_of=weights_of)
    else:
        steps = expand(base, tricks, mode, seeds, train_fp, weights_of, design=design)
    return AblationPlan(base, base_name, mode, tuple(tricks), tuple(seeds), tuple(steps), tuple(variants), train_fp,
                        test_fps, dict(weights_of.pending) if weights_of is not None else {}, design=design)


def dry_run_lines(plan: AblationPlan, statuses: Mapping[str, str]) -> list[str]:
    """Per step: label, hash, cached or not, what differs from the base, and its phases with their
    share of the run (``harness/train/phases.py``; the granularity in brackets when it is not the base's)."""
    from reidbench.harness.train.phases import phases_text

    granularity = plan.base.schedule.granularity
    name = f"{plan.base_name}-{plan.mode}-(pending)" if plan.pending_weights else plan.name  # a hash of the run hashes
    lines = [f"ablation {name}: {len(plan.steps)} run(s), {len(plan.unique_hashes())} distinct, "
             f"profile {plan.base.profile}, mode {plan.mode}, train {plan.base.data.train}, "
             f"test {', '.join(plan.base.data.test)}, {plan.base.schedule.max_epochs} epochs, "
             f"granularity {granularity}"]
    for s in plan.steps:
        if plan.weights_pending(s):  # its hash holds the weights' digest, not known before the download
            lines.append(f"  {s.label:<28} {'pending':<12}  [weights not downloaded yet]")
        else:
            status = statuses.get(s.run_hash, "new")
            cached = "cached" if status == "done" else status
            lines.append(f"  {s.label:<28} {s.run_hash[:12]}  [{cached}]")
        for d in spec_diff(plan.base, s.spec):
            lines.append(f"      {d}")
        phases = phases_text(s.spec)
        other = s.spec.schedule.granularity
        lines.append(f"      phases{f' [{other}]' if other != granularity else ''}: {phases or 'none (one LR throughout)'}")
    for message in plan.pending_weights.values():
        lines.append(f"  note: {message}; the runs marked pending get their hashes once it is there")
    return lines


def run_plan(plan: AblationPlan, store, executor, runs_dir: Path, *, device: str, num_workers: int | None,
             data_paths: Mapping[str, str], meta: Mapping[str, object], progress: bool | None,
             log: Callable[[str], None]) -> int:
    """Execute what is not done yet; returns the ablation id in the store."""
    if plan.design is not None:  # what the effects and Shapley reports read back (report/factorial.py)
        from reidbench.harness.ablation.designs import design_meta

        meta = {**meta, "design": design_meta(plan)}
    for s in plan.steps:
        store.ensure_run(s.run_hash, s.spec.to_dict(), s.step if len(plan.seeds) == 1 else s.label,
                         train_fingerprint=plan.train_fingerprint)
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
    variants = variants_by_run(plan)

    def job(h: str) -> Job:
        s = by_hash[h]
        record = store.find_run(h)
        # A run known before (e.g. re-keyed by a database upgrade) keeps its folder and checkpoint.
        out_dir = record.out_dir if record is not None and record.out_dir else str(runs_dir / h[:12])
        return Job(run_hash=h, label=s.label, spec_json=s.spec.to_json(), trick_versions=dict(trick_versions(s.spec.tricks)),
                   db_url=store.url, out_dir=out_dir, device=device, num_workers=num_workers,
                   data_paths=dict(data_paths), progress=progress, variants=variants[h],
                   legacy_hashes=tuple(getattr(record, "aliases", ()) or ()) if record is not None else ())

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
    complete_evaluations(plan, store, data_paths, device=device, num_workers=num_workers, log=log)
    return ablation_id


def variants_by_run(plan: AblationPlan) -> dict[str, tuple[Variant, ...]]:
    """Each run's variants (a run shared by several steps gets the union, in first-seen order)."""
    out: dict[str, dict[str, Variant]] = {}
    for s in plan.steps:
        bucket = out.setdefault(s.run_hash, {})
        for v in plan.variants_for(s):
            bucket.setdefault(v.name, v)
    return {h: tuple(b.values()) for h, b in out.items()}


def missing_evaluations(plan: AblationPlan, store) -> dict[str, tuple[list[str], list[Variant], bool]]:
    """For each done run: the test sets and variants whose evaluation is not in the store yet."""
    from reidbench.harness.evaluation.run import requests_for, test_feature_of
    from reidbench.harness.spec import spec_from_stored

    have: dict[str, set[str]] = {}
    for e in store.evaluations(plan.unique_hashes()):
        have.setdefault(e.run_hash, set()).add(e.key)
    out = {}
    variants = variants_by_run(plan)
    for h in plan.unique_hashes():
        record = store.find_run(h)
        if record is None or record.status != "done":
            continue
        spec = spec_from_stored(record.spec)
        requests = requests_for(plan.base.data.test, spec.eval, variants[h], test_feature_of(record))
        todo = [r for r in requests if r.settings.key(plan.test_fingerprints.get(r.test_set)) not in have.get(h, set())]
        if todo:
            tests = list(dict.fromkeys(r.test_set for r in todo))
            names = {r.variant for r in todo}
            out[h] = (tests, [v for v in variants[h] if v.name in names], "" in names)
    return out


def complete_evaluations(plan: AblationPlan, store, data_paths: Mapping[str, str], *, device: str,
                         num_workers: int | None, log: Callable[[str], None]) -> None:
    """Score cached runs with the evaluations this ablation needs and they lack (new test sets or variants)."""
    from reidbench.harness.train.runner import evaluate_stored

    todo = missing_evaluations(plan, store)
    if todo:
        log(f"ablation {plan.name}: {len(todo)} cached run(s) need new evaluations (no retraining)")
    for h, (tests, variants, default) in todo.items():
        record = store.find_run(h)
        try:
            records = evaluate_stored(record, tests, variants, data_paths, device=device, num_workers=num_workers,
                                      include_default=default, log=log)
        except (FileNotFoundError, ValueError) as exc:
            log(f"run {h[:12]}: cannot add evaluations: {str(exc).splitlines()[0]}")
            continue
        for evaluation in records:
            store.record_evaluation(h, evaluation)


def _fmt(values: list[float]) -> str:
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f}±{100 * statistics.stdev(values):.1f}"


def plan_values(plan: AblationPlan, store) -> dict[tuple[str, str, str, str], float]:
    """(run hash, variant, test set, metric) → value, from the evaluations on this plan's test data."""
    values = {}
    for e in store.evaluations(plan.unique_hashes()):
        wanted = plan.test_fingerprints.get(e.test_set)
        if wanted is not None and e.test_fingerprint is not None and e.test_fingerprint != wanted:
            continue  # an evaluation of another version of this test set
        for metric, value in e.metrics.items():
            values[(e.run_hash, e.variant, e.test_set, metric)] = value
    return values


def profile_notes(steps: Sequence[AblationStep]) -> list[str]:
    """The profile as the steps' runs have it ("profile cpu, 6 epochs": a profile name can change its
    recipe); when rows differ (a cross-base step runs on its own base's profile), which rows are which."""
    from reidbench.harness.report.tables import profile_label

    by_profile: dict[str, list[str]] = {}
    for s in steps:
        labels = by_profile.setdefault(profile_label(s.spec.to_dict()), [])
        if s.step not in labels:
            labels.append(s.step)
    if len(by_profile) == 1:
        return [f"profile {label}" for label in by_profile]
    return [f"profile {label} ({', '.join(labels)})" for label, labels in by_profile.items()]


def ablation_table(plan: AblationPlan, store, metrics: Sequence[str] = ("R1", "mAP"), intervals=None) -> str:
    """Rows = steps (mean±std over seeds), then each variant's steps; columns = test set × metric.

    Failed or missing cells show '–'. With ``intervals`` (``report/significance.ablation_intervals``)
    a † marks each cell whose difference from the reference row has a 95 % interval excluding 0,
    and a block under the table says, for every step, its effect on mAP and whether it exceeds the noise.
    """
    marked = set()
    if intervals is not None and len(intervals):
        marked = {(r.step, r.test_set, r.metric) for r in intervals.itertuples() if r.significant}
    value = plan_values(plan, store)
    statuses = store.statuses(plan.unique_hashes())
    train = plan.base.data.train
    tests = list(plan.base.data.test)
    heads = [(t, m) for t in tests for m in metrics]
    titles = [f"{t if t == train else train + '→' + t} {m}" for t, m in heads]
    rows: dict[tuple[str, str], list[AblationStep]] = {}
    for s in plan.steps:
        rows.setdefault((s.step, ""), []).append(s)
    for s in plan.steps:
        for v in plan.variants_for(s):
            rows.setdefault((f"{s.step} [{v.label}]", v.name), []).append(s)
    width = max(12, *(len(r) for r, _ in rows))
    out = [f"{'step':<{width}}" + "".join(f"{t:>{max(14, len(t) + 2)}}" for t in titles)]
    for (label, variant), members in rows.items():
        cells = []
        for (t, m), title in zip(heads, titles):
            vals = [value[(s.run_hash, variant, t, m)] for s in members if (s.run_hash, variant, t, m) in value]
            dagger = "†" if (label, t, m) in marked else ""  # a variant row: against its default evaluation
            cells.append(f"{_fmt(vals) + dagger:>{max(14, len(title) + 2)}}")
        bad = [statuses.get(s.run_hash) for s in members if statuses.get(s.run_hash) != "done"]
        note = f"  ({', '.join(sorted(set(b or 'missing' for b in bad)))})" if bad else ""
        out.append(f"{label:<{width}}" + "".join(cells) + note)
    from reidbench.harness.train.convergence import Counts, footer

    notes = profile_notes(plan.steps)
    if not plan.base.model.pretrained:
        notes.append("no pretrained weights")
    masks = [s.spec.data.masks for s in plan.steps if s.spec.data.masks]
    if masks:
        from reidbench.harness.data.masks import masks_label

        notes.append("part masks: " + " / ".join(dict.fromkeys(masks_label(m) for m in masks)))
    runs = [store.find_run(h) for h in plan.unique_hashes()]
    if any(r is not None and r.synthetic for r in runs):
        notes.append("synthetic data")
    out.append(f"R1/mAP in %, {len(plan.seeds)} seed(s)" + (f"; {', '.join(notes)}" if notes else ""))
    done = [h for h in plan.unique_hashes() if statuses.get(h) == "done"]
    found = store.convergence(done)
    out.append(footer(Counts.of([found[h].status if h in found else "unknown" for h in done])))
    if intervals is not None and len(intervals):
        out.extend(_effect_lines(plan, intervals, train))
    return "\n".join(out)


def _effect_lines(plan: AblationPlan, intervals, train: str, metric: str = "mAP") -> list[str]:
    """Per step: its effect on ``metric`` on each test set, the 95 % interval, and whether it exceeds the noise."""
    from reidbench.harness.report.significance import REFERENCE_WORDS, has_evaluation_rows

    rows = intervals[intervals["metric"] == metric]
    if rows.empty:
        return []
    methods = [m for m in dict.fromkeys(rows["method"]) if not str(m).startswith("no interval")]
    lines = [f"† differs from {REFERENCE_WORDS.get(plan.mode, 'the reference row')} beyond the noise: the 95% "
             f"interval of the difference excludes 0 ({' / '.join(methods) or 'no interval computed'}).",
             f"Effect of each step on {metric} (points, 95% interval):"]
    if has_evaluation_rows(rows):
        lines[0] += " A row \"step [evaluation]\" is compared with the same models' default evaluation."
    if any("bootstrap" in str(m) for m in methods):  # say what this interval does not cover
        lines.insert(1, "  (the bootstrap covers the choice of test queries, not training noise: --seeds 3 adds "
                        "a t interval over seeds)")
    width = max(len(s) for s in rows["step"])
    for step in dict.fromkeys(rows["step"]):
        parts = []
        for r in rows[rows["step"] == step].itertuples():
            where = r.test_set if r.test_set == train else f"{train}→{r.test_set}"
            if r.ci_low != r.ci_low:  # NaN: no interval
                parts.append(f"{where} {r.delta:+.1f} (no interval: {str(r.method).removeprefix('no interval: ')})")
            else:
                verdict = "exceeds the noise" if r.significant else "within the noise"
                parts.append(f"{where} {r.delta:+.1f} [{r.ci_low:+.1f}, {r.ci_high:+.1f}] {verdict}")
        lines.append(f"  {step:<{width}}  " + "; ".join(parts))
    return lines
