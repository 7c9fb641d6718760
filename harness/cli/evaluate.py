"""``reidbench evaluate``: score features or a stored run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from reidbench.harness.cli.common import DataOptions, StoreOptions, UserError, command_options, db_option

METRIC_KEYS = ("R1", "R5", "R10", "mAP", "mINP")
# what the command can change, in name order
_SETTINGS = ("feature", "normalize", "metric", "flip", "rerank", "rescore", "rescore_options")


@dataclass(frozen=True)
class EvaluateOptions:
    run_ref: str | None
    features_file: Path | None
    test_on: str | None
    feature: str | None
    metric: str | None
    normalize: bool | None
    flip: bool | None
    rerank: bool
    rescore: str | None
    rescore_items: tuple[str, ...]
    device: str
    as_json: bool
    data: DataOptions
    store: StoreOptions


@click.command()
@click.option("--run", "run_ref", default=None, metavar="HASH",
              help="Score this stored, done run from its checkpoint (a hash prefix or an old hash).")
@click.option("--features", "features_file", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Instead: score an npz with q_feats, g_feats, q_pids, g_pids, q_camids, g_camids.")
@click.option("--test-on", "test_on", default=None, metavar="NAME[,NAME]",
              help="Test sets of --run [default: the run's data.test].")
@click.option("--feature", default=None, metavar="f_t|f_i|a+b|auto",
              help="Feature output of --run [default: the run's eval.feature].")
@click.option("--metric", type=click.Choice(["cosine", "euclidean", "sqeuclidean"]), default=None,
              help="Distance [default: the run's eval.metric; euclidean with --features].")
@click.option("--normalize/--no-normalize", default=None,
              help="L2-normalise features before computing distances [default: the run's eval.normalize; "
                   "no with --features].")
@click.option("--flip/--no-flip", default=None,
              help="Average the features of each image and its mirror (--run) [default: the run's eval.flip].")
@click.option("--rerank", is_flag=True, help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3).")
@click.option("--rescore", default=None, metavar="NAME",
              help="Re-score each query's ranking with a learned re-scorer (--run): sggnn trains a graph network on "
                   "the run's training set (once; its weights are saved in the run folder and reused).")
@click.option("--rescore-option", "rescore_items", multiple=True, metavar="KEY=VALUE",
              help="A parameter of --rescore, e.g. k=50 or alpha=0.5 (repeatable; docs/sggnn.md lists them).")
@click.option("--data", "data_items", multiple=True, metavar="NAME=PATH",
              help="Dataset folders for --run [default: where the run found them].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@command_options(EvaluateOptions)
def evaluate(opts: EvaluateOptions) -> None:
    """Score a stored run from its checkpoint without training (--run), or externally computed
    features (--features), with the Market protocol (R1/R5/R10/mAP/mINP).

    With --run the evaluation is recorded in the results database: the run's default evaluation
    when the settings are its own, else a variant named after the settings that differ. Features
    already saved in the run folder with the same feature settings are reused. A re-scored evaluation
    (--rescore) is recorded beside the plain and re-ranked ones.
    """
    if (opts.run_ref is None) == (opts.features_file is None):
        raise UserError("give either --run HASH (score a stored run) or --features F.npz, not "
                        + ("both" if opts.run_ref is not None else "neither"))
    if opts.rescore_items and opts.rescore is None:
        raise UserError("--rescore-option needs --rescore NAME")
    if opts.features_file is not None:
        run_only = [name for name, value in (("--test-on", opts.test_on), ("--feature", opts.feature),
                                             ("--flip", opts.flip), ("--data", opts.data.data_items),
                                             ("--db", opts.store.db_url), ("--rescore", opts.rescore))
                    if value not in (None, ())]
        if opts.device != "auto":
            run_only.append("--device")
        if run_only:
            raise UserError(f"{run_only[0]} needs --run: --features scores features already computed")
        _evaluate_features(opts.features_file, opts.rerank, opts.metric or "euclidean", bool(opts.normalize),
                           opts.as_json)
        return
    changes = {k: v for k, v in (("feature", opts.feature), ("metric", opts.metric), ("normalize", opts.normalize),
                                 ("flip", opts.flip), ("rerank", opts.rerank or None), ("rescore", opts.rescore))
               if v is not None}
    if opts.rescore_items:
        changes["rescore_options"] = parse_rescore_options(opts.rescore_items)
    _evaluate_run(str(opts.run_ref), opts.test_on, changes, opts.data.paths, opts.device, opts.store, opts.as_json)


def parse_rescore_options(items: tuple[str, ...]) -> tuple[tuple[str, object], ...]:
    """``("k=50", "self_loops=true")`` → sorted (key, value) pairs, values read as YAML scalars."""
    import yaml

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--rescore-option {item!r} is not valid: KEY=VALUE, e.g. k=50")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            out[key.strip()] = raw
    return tuple(sorted(out.items()))


def _evaluate_features(features_file: Path, rerank: bool, metric: str, normalize: bool, as_json: bool) -> None:
    from reidbench.harness.evaluation.protocol import load_features_npz, score

    arrays = load_features_npz(features_file)
    result = score(**arrays, metric=metric, normalize=normalize, rerank=rerank)
    if as_json:
        click.echo(json.dumps({k: float(result[k]) for k in METRIC_KEYS}
                              | {"num_valid_queries": int(result["num_valid_queries"])}))
    else:
        click.echo("  ".join(f"{k} {100 * float(result[k]):5.1f}" for k in METRIC_KEYS)
                   + f"  ({int(result['num_valid_queries'])} valid queries)")


def variant_name(base: Any, wanted: Any) -> tuple[str, str]:
    """(name, label) of the settings ``wanted`` relative to the run's default ``base``:
    ("", "") when equal, ("rerank", "re-ranking") when only re-ranking differs, else e.g.
    ("f_t-euclidean", "f_t euclidean") from the settings that differ. Normalisation is named only
    when the metric does not already say it (Euclidean rows are unnormalised, cosine ignores it)."""
    differ = [k for k in _SETTINGS if getattr(base, k) != getattr(wanted, k)]
    if not differ:
        return "", ""
    if differ == ["rerank"]:
        return "rerank", "re-ranking"
    if wanted.rescore is not None and differ in (["rescore"], ["rescore", "rescore_options"]):
        name = "-".join([wanted.rescore, *(f"{k}={v}" for k, v in wanted.rescore_options)])
        return name, name
    parts: list[str] = []
    if "feature" in differ:
        parts.append(wanted.feature)
    if "metric" in differ:
        parts.append(wanted.metric)
    if "normalize" in differ:
        implied = wanted.metric == "cosine" or ("metric" in differ and not wanted.normalize
                                                and wanted.metric in ("euclidean", "sqeuclidean"))
        if not implied:
            parts.append("normalized" if wanted.normalize else "unnormalized")
    if "flip" in differ:
        parts.append("flip" if wanted.flip else "no-flip")
    if "rerank" in differ:
        parts.append("rerank")
    if "rescore" in differ or "rescore_options" in differ:
        parts.append("-".join([str(wanted.rescore), *(f"{k}={v}" for k, v in wanted.rescore_options)]))
    if not parts:  # only normalisation under cosine differs
        parts.append("normalized" if wanted.normalize else "unnormalized")
    return "-".join(parts), " ".join(parts)


def _evaluate_run(run_ref: str, test_on: str | None, changes: dict[str, Any], data_paths: dict[str, str],
                  device: str, store_options: StoreOptions, as_json: bool) -> None:
    import dataclasses

    from reidbench.harness.evaluation.settings import EvaluationSettings, Variant
    from reidbench.harness.spec.loading import spec_from_stored

    store = store_options.open()
    record = store.get_run(run_ref)
    short = record.run_hash[:12]
    if record.status != "done":
        raise UserError(f"run {short} is {record.status}; only a done run can be evaluated (train it first)")
    if not record.out_dir:
        raise UserError(f"run {short} has no run folder recorded, so it has no checkpoint to score")
    spec = spec_from_stored(record.spec)
    tests = ([t.strip() for t in test_on.split(",") if t.strip()] if test_on is not None
             else list(spec.data.test))
    if not tests:
        raise UserError(f"--test-on {test_on!r} names no test set" if test_on is not None
                        else f"run {short} has no test sets; name some with --test-on")
    base = EvaluationSettings.from_eval(spec.eval)
    wanted = dataclasses.replace(base, **changes).validate("--feature/--metric/--rescore")
    stored = store.evaluations([record.run_hash])
    # "auto" resolves to the architecture's test feature: naming it explicitly is still the default
    resolved_auto = next((e.settings.get("feature") for e in stored if e.variant == "" and e.settings), None)
    if base.feature == "auto" and wanted.feature == resolved_auto:
        wanted = dataclasses.replace(wanted, feature="auto")
    name, label = variant_name(base, wanted)
    if name:  # the same settings recorded before (an ablation's variant): keep its name, as the key is the same
        resolved = wanted.resolved(resolved_auto) if resolved_auto else wanted
        same = next((e for e in stored if e.variant and e.settings == resolved.to_dict()), None)
        if same is not None:
            name, label = same.variant, same.variant
    for test in tests:  # datasets found where the run found them unless --data says otherwise
        prov = (record.provenance or {}).get(test) or {}
        root = prov.get("root") if isinstance(prov, dict) and not prov.get("synthetic") else None
        if test not in data_paths and root and Path(root).is_dir():
            data_paths[test] = str(root)

    from reidbench.harness.train.runner import evaluate_stored

    differ = tuple((k, getattr(wanted, k)) for k in _SETTINGS if getattr(wanted, k) != getattr(base, k))
    variants = [Variant(name=name, changes=differ, label=label)] if name else []
    evaluations = evaluate_stored(record, tests, variants, data_paths, device=device, include_default=not name,
                                  log=lambda line: click.echo(line, err=True))
    for evaluation in evaluations:
        store.record_evaluation(record.run_hash, evaluation)
    if as_json:
        click.echo(json.dumps([{k: e.get(k) for k in ("test_set", "test_fingerprint", "variant", "key", "settings",
                                                       "metrics")} for e in evaluations], indent=2))
        return
    header = f"{'test':<14} {'variant':<20}" + "".join(f" {k:>6}" for k in METRIC_KEYS)
    click.echo(f"run {short} ({record.label or 'no label'})")
    click.echo(header)
    for e in evaluations:
        click.echo(f"{e['test_set']:<14} {e['variant'] or '(default)':<20}"
                   + "".join(f" {100 * float(e['metrics'][k]):6.1f}" for k in METRIC_KEYS))
