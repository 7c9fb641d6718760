"""A study's results, read back: trials ↔ runs both ways, a tidy frame for reports, a text table.

The numbers come from the results store (the run's final metrics), the configuration from the
trial's user attributes (P, K, batch, image_size, run_hash, seed) written by ``worker``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from reidbench.harness.study.space import StudySpace, parse_pair
from reidbench.harness.study.storage import open_storage

if TYPE_CHECKING:
    import pandas as pd

FRAME_COLUMNS = ["study", "trial", "state", "P", "K", "batch", "image_size", "image_h", "image_w", "run_hash", "seed",
                 "test_set", "metric", "value"]


def _load(storage: Any, name: str) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    store_obj = open_storage(storage, heartbeat=False) if isinstance(storage, str) else storage
    try:
        return optuna.load_study(study_name=name, storage=store_obj)
    except KeyError:
        names = optuna.get_all_study_names(storage=store_obj)
        raise ValueError(f"no study {name!r} in this storage; studies there: {', '.join(sorted(names)) or 'none'}") \
            from None


def study_attrs(storage: Any, name: str) -> dict[str, Any]:
    """The study's user attributes: base, profile, tricks, train/test, epochs, space, notes, ..."""
    return dict(_load(storage, name).user_attrs)


def study_runs(storage: Any, name: str) -> list[tuple[int, dict[str, Any], str, float | None]]:
    """(trial number, params, run hash, objective value or None) of every trial that got a run.

    ``storage`` is a storage URL (``journal:PATH`` for journal files) or an Optuna storage object.
    Failed, pruned and running trials are listed too (value None); surplus trials (no run) are not.
    """
    study = _load(storage, name)
    out = []
    for t in study.get_trials(deepcopy=False):
        rhash = t.user_attrs.get("run_hash")
        if rhash:
            out.append((t.number, dict(t.params), str(rhash), t.value if t.state.name == "COMPLETE" else None))
    return out


def study_run_hashes(storage: Any, name: str, complete_only: bool = True) -> list[str]:
    """Distinct run hashes of the study's (complete) trials, in trial order: feed them to
    ``report.points.points_from_runs`` for the sweep tables and plots."""
    study = _load(storage, name)
    hashes = [t.user_attrs.get("run_hash") for t in study.get_trials(deepcopy=False)
              if t.user_attrs.get("run_hash") and (not complete_only or t.state.name == "COMPLETE")]
    return list(dict.fromkeys(hashes))


def run_studies(storage: Any, run_hash: str) -> list[tuple[str, int]]:
    """(study name, trial number) of every trial in ``storage`` whose run is ``run_hash`` (or a prefix)."""
    import optuna

    store_obj = open_storage(storage, heartbeat=False) if isinstance(storage, str) else storage
    found = []
    for name in sorted(optuna.get_all_study_names(storage=store_obj)):
        study = optuna.load_study(study_name=name, storage=store_obj)
        for t in study.get_trials(deepcopy=False):
            if str(t.user_attrs.get("run_hash", "")).startswith(run_hash):
                found.append((name, t.number))
    return found


def trial_metrics(store: Any, hashes: Sequence[str]) -> dict[str, list[tuple[str, str, float]]]:
    """Final metrics per trial run hash: (test set, metric, value), re-ranked ones as ``rerank_<metric>``.

    A trial recorded before a database upgrade names its run by its old hash: it is followed to the
    run it belongs to now (the store keeps old hashes as aliases).
    """
    current = {}
    for h in dict.fromkeys(hashes):
        record = store.find_run(h)
        current[h] = record.run_hash if record is not None else h
    by_current: dict[str, list[tuple[str, str, float]]] = {}
    for m in store.metrics(list(dict.fromkeys(current.values())), variant=None):
        if m.step is None and m.variant in ("", "rerank"):
            name = m.metric if m.variant == "" else "rerank_" + m.metric
            by_current.setdefault(m.run_hash, []).append((m.test_set, name, m.value))
    return {h: by_current.get(c, []) for h, c in current.items()}


def study_frame(storage_url: Any, name: str, store: Any, states: Sequence[str] = ("COMPLETE",)) -> "pd.DataFrame":
    """Tidy results of a study: one row per (trial, test set, metric).

    Columns: study, trial, state, P, K, batch ("16x4"), image_size ("256x128"), image_h, image_w,
    run_hash, seed, test_set, metric, value. Values are the run's final metrics from ``store``
    as fractions (0..1), exactly as stored; every metric the runner recorded is there (R1, R5,
    R10, mAP, mINP and rerank_* when re-ranking was on). Only trials in ``states`` are included;
    two trials of one configuration (a TPE repeat) give two row sets with the same run_hash.
    """
    import pandas as pd

    study = _load(storage_url, name)
    trials = [t for t in study.get_trials(deepcopy=False)
              if t.state.name in states and t.user_attrs.get("run_hash")]
    hashes = list(dict.fromkeys(t.user_attrs["run_hash"] for t in trials))
    by_run = trial_metrics(store, hashes)
    rows = []
    for t in trials:
        a = t.user_attrs
        h, w = parse_pair(a["image_size"], "image_size")
        for test_set, metric, value in by_run.get(a["run_hash"], []):
            rows.append((name, t.number, t.state.name, int(a["P"]), int(a["K"]), a["batch"], a["image_size"], h, w,
                         a["run_hash"], a.get("seed"), test_set, metric, value))
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)


def study_table_lines(storage_url: Any, name: str, store: Any, metrics: Sequence[str] = ("R1", "mAP")) -> list[str]:
    """The study as text: one line per trial (grid: table order; tpe: best first), R1/mAP in %."""
    study = _load(storage_url, name)
    attrs = study.user_attrs
    space = StudySpace.from_attrs(attrs)
    tests = list(attrs.get("test") or [])
    train = attrs.get("train", "")
    trials = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("run_hash")]
    # A re-queued trial supersedes the failed one it repeats: show the latest trial per point.
    latest: dict[tuple[str, str], Any] = {}
    for t in sorted(trials, key=lambda t: t.number):
        latest[(t.user_attrs.get("batch"), t.user_attrs.get("image_size"))] = t
    rows = list(latest.values())
    if space.sampler == "grid":
        order = {(p.get("batch", attrs["base_batch"]), p.get("image_size", attrs["base_image_size"])): i
                 for i, p in enumerate(space.grid_points())}
        rows.sort(key=lambda t: order.get((t.user_attrs.get("batch"), t.user_attrs.get("image_size")), 1 << 30))
    else:
        rows.sort(key=lambda t: -(t.value if t.value is not None else float("-inf")))
    values: dict[tuple[str, str, str], float] = {}
    for h, found in trial_metrics(store, [t.user_attrs["run_hash"] for t in rows]).items():
        for test_set, metric, value in found:
            values[(h, test_set, metric)] = value
    heads = [(test, metric) for test in tests for metric in metrics]
    titles = [f"{test if test == train else f'{train}→{test}'} {metric}" for test, metric in heads]
    widths = [max(9, len(title) + 2) for title in titles]
    lines = [f"{'trial':>5}  {'P×K':<6} {'size':<8} {'run':<12} {'state':<9}"
             + "".join(f"{title:>{w}}" for title, w in zip(titles, widths))]
    best = study.best_trial.number if any(t.state.name == "COMPLETE" for t in rows) else None
    for t in rows:
        a = t.user_attrs
        cells = []
        for (test, metric), w in zip(heads, widths):
            v = values.get((a["run_hash"], test, metric))
            cells.append(f"{'–' if v is None else f'{100 * v:.1f}':>{w}}")
        mark = "  ← best" if t.number == best else ""
        lines.append(f"{t.number:>5}  {a.get('batch', ''):<6} {a.get('image_size', ''):<8} {a['run_hash'][:12]:<12} "
                     f"{t.state.name.lower():<9}" + "".join(cells) + mark)
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        if not t.user_attrs.get("surplus"):
            counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    notes = [f"objective: {attrs.get('objective', '?')}", f"profile {attrs.get('profile')}",
             f"{attrs.get('epochs')} epochs" + (f" of {attrs['full_epochs']}" if attrs.get("full_epochs") else ""),
             "trials " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    lines.append("R1/mAP in %; " + "; ".join(notes))
    lines.extend(f"note: {n}" for n in attrs.get("notes", ()))
    return lines
