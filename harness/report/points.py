"""Which runs a sweep plot shows, and their results as one tidy frame.

``points_from_runs(store, hashes)`` is the entry point other sweeps (e.g. Optuna study trials) feed:
one row per (run, test set, metric) with the sweep variables P, K and image size pulled from the spec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from reidbench.harness.report.naming import group_label

if TYPE_CHECKING:
    import pandas as pd

BATCH_FIELDS = frozenset({"data.ids_per_batch", "data.imgs_per_id"})
IMAGE_FIELDS = frozenset({"data.image_size"})
ALWAYS_ALLOWED = frozenset({"train.seed"})  # repeats of one configuration
POINT_COLUMNS = ["run_hash", "seed", "ids_per_batch", "imgs_per_id", "batch", "image_h", "image_w", "image_size",
                 "train", "test_set", "group", "metric", "value"]


def flatten_spec(spec: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested spec dict → ``{"data.ids_per_batch": 16, ...}`` (lists become tuples, so comparable)."""
    out: dict[str, Any] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_spec(value, name + "."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def parse_filters(items: Iterable[str]) -> list[tuple[str, str]]:
    """``["data.train=synth-a", "profile=cpu"]`` → pairs; a malformed item fails naming it."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--where {item!r} is not valid: use FIELD=VALUE with a spec field, e.g. data.train=synth-a")
        pairs.append((key.strip(), value.strip()))
    return pairs


def _matches(flat: Mapping[str, Any], key: str, value: str) -> bool:
    have = flat[key]
    if isinstance(have, (tuple, list)):  # specs from the store hold JSON lists
        return ",".join(str(v) for v in have) == value.replace("x", ",").replace("×", ",")
    if isinstance(have, bool):
        return str(have).lower() == value.lower()
    return str(have) == value


def select_runs(store: Any, *, ablation: str | int | None = None, run_refs: Sequence[str] = (),
                filters: Sequence[tuple[str, str]] = ()) -> list[Any]:
    """Done runs chosen by an ablation's members, hash prefixes, and/or spec filters (all must hold)."""
    if ablation is not None:
        record = store.get_ablation(ablation)
        runs = [store.find_run(h) for h in dict.fromkeys(m["run_hash"] for m in record.members)]
        runs = [r for r in runs if r is not None]
    elif run_refs:
        runs = [store.get_run(ref) for ref in run_refs]
    else:
        runs = store.list_runs(status="done")
    if run_refs and ablation is not None:
        wanted = {store.get_run(ref).run_hash for ref in run_refs}
        runs = [r for r in runs if r.run_hash in wanted]
    chosen = []
    for run in runs:
        flat = flatten_spec(run.spec)
        for key, _ in filters:
            if key not in flat:
                valid = ", ".join(sorted(k for k in flat if k.startswith(key.split(".")[0]))[:12])
                raise ValueError(f"--where {key}: not a spec field; e.g. {valid or ', '.join(sorted(flat)[:12])}")
        if all(_matches(flat, k, v) for k, v in filters):
            chosen.append(run)
    done = [r for r in chosen if r.status == "done"]
    if not done:
        raise ValueError("no finished run matches the selection; check --ablation/--runs/--where "
                         "(`reidbench runs list` shows what is recorded)")
    return done


def varying_fields(specs: Sequence[Mapping[str, Any]]) -> set[str]:
    """Flattened spec fields whose value is not the same in every spec."""
    flats = [flatten_spec(s) for s in specs]
    keys = set().union(*flats) if flats else set()
    return {k for k in keys if len({repr(f.get(k)) for f in flats}) > 1}


def check_sweep(specs: Sequence[Mapping[str, Any]], allowed: Iterable[str], what: str) -> None:
    """Fail (naming the fields) unless the specs differ only in ``allowed`` fields and the seed."""
    extra = varying_fields(specs) - set(allowed) - ALWAYS_ALLOWED
    if extra:
        shown = ", ".join(sorted(extra)[:6]) + (", ..." if len(extra) > 6 else "")
        raise ValueError(f"the selected runs differ in more than {what}: also {shown}; "
                         f"narrow the selection, e.g. --where {sorted(extra)[0]}=VALUE")


def points_from_runs(store: Any, hashes: Sequence[str], metrics: Sequence[str] = ("R1", "mAP")) -> "pd.DataFrame":
    """Tidy frame of final results: one row per (run, test set, metric), value in percent.

    Columns: run_hash, seed, ids_per_batch (P), imgs_per_id (K), batch ("16×4"), image_h, image_w,
    image_size ("256×128"), train, test_set, group (column-group title), metric, value.
    """
    import pandas as pd

    hashes = list(dict.fromkeys(hashes))
    runs = {h: store.find_run(h) for h in hashes}
    rows = []
    for m in store.metrics(hashes):
        if m.step is not None or m.metric not in metrics or runs.get(m.run_hash) is None:
            continue
        spec = runs[m.run_hash].spec
        data = spec.get("data") or {}
        p, k = int(data.get("ids_per_batch", 0)), int(data.get("imgs_per_id", 0))
        h, w = (int(x) for x in data.get("image_size", (0, 0)))
        train = str(data.get("train", ""))
        rows.append((m.run_hash, (spec.get("train") or {}).get("seed"), p, k, f"{p}×{k}", h, w, f"{h}×{w}", train,
                     m.test_set, group_label(train, m.test_set), m.metric, 100.0 * m.value))
    frame = pd.DataFrame(rows, columns=POINT_COLUMNS)
    # Same-domain test set first, as in the tables.
    frame["_cross"] = frame["train"] != frame["test_set"]
    frame = frame.sort_values(["_cross"], kind="stable").drop(columns="_cross").reset_index(drop=True)
    return frame


def describe_runs(runs: Sequence[Any]) -> str:
    """A short "where" for figure titles: training set, data kind, profile, epochs, seeds."""
    if not runs:
        return ""
    spec = runs[0].spec
    trains = sorted({str((r.spec.get("data") or {}).get("train")) for r in runs})
    kinds = {r.synthetic for r in runs}
    kind = "synthetic" if kinds == {True} else "real" if kinds == {False} else "synthetic+real"
    epochs = (spec.get("schedule") or {}).get("max_epochs")
    seeds = sorted({(r.spec.get("train") or {}).get("seed") for r in runs}, key=str)
    parts = [f"trained on {', '.join(trains)} ({kind})", f"profile {spec.get('profile')}"]
    if epochs is not None:
        full = spec.get("full_epochs")
        parts.append(f"{epochs} epochs" + (f" of {full}" if full and full > epochs else ""))
    parts.append(f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}")
    return ", ".join(parts)


def sweep_table(points: "pd.DataFrame", by: str = "batch", metrics: Sequence[str] = ("R1", "mAP")) -> "pd.DataFrame":
    """Points (``points_from_runs``) → the numeric summary table the writers render.

    Rows = ``by`` ("batch" → "16×4", ordered by P then K; "image_size" → "256×128", ordered by pixel
    count), column groups = test sets, mean±std over seeds. Render with ``writers.render`` — the
    same path as ablation tables (e.g. for ``reidbench report --study``).
    """
    from reidbench.harness.report.tables import summarize

    if by == "batch":
        order = points.sort_values(["ids_per_batch", "imgs_per_id"], kind="stable")
    elif by == "image_size":
        order = points.assign(_area=points["image_h"] * points["image_w"]).sort_values(["_area", "image_h"],
                                                                                       kind="stable")
    else:
        raise ValueError(f"sweep rows {by!r} are not valid: batch or image_size")
    table = summarize(order, metrics, row=by, scale=1.0)  # points are percent already
    table.index.name = "P×K" if by == "batch" else "image size"
    return table
