"""Per-query results for evaluations recorded without them, recomputed from their saved features.

Evaluations recorded before schema 3 (or upgraded from schema 1) have final metrics but no
per-query results. Their run folders usually still hold the query/gallery features they were
scored with; scoring those again with the evaluation's settings gives the per-query arrays. They
are attached only when the recomputed R1, mAP and mINP equal the stored ones (to 1e-6): the stored
numbers are never changed, and an evaluation whose features are gone, or do not reproduce its
numbers, is reported as lacking per-query results instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from reidbench.harness.evaluation.per_query import pack

CHECKED = ("R1", "mAP", "mINP")
TOLERANCE = 1e-6


def candidate_files(evaluation: Any, run: Any) -> list[Path]:
    """Where this evaluation's features may be: its recorded path, today's name, the schema-1 name."""
    from reidbench.harness.evaluation.run import features_file

    out: list[Path] = []
    if evaluation.features_path:
        out.append(Path(evaluation.features_path))
    folder = Path(run.out_dir) if run is not None and run.out_dir else None
    settings = evaluation.settings or {}
    if folder is not None:
        if settings.get("feature"):
            out.append(features_file(folder, evaluation.test_set, str(settings["feature"]), bool(settings.get("flip"))))
        out.append(folder / f"features-{evaluation.test_set}.npz")  # schema-1 runs: one file per test set
    return list(dict.fromkeys(out))


def ranking_settings(evaluation: Any, run: Any) -> dict[str, Any]:
    """The evaluation's ranking settings; schema-1 evaluations stored none: the run's eval section."""
    if evaluation.settings:
        return dict(evaluation.settings)
    from reidbench.harness.spec import EvalSpec, spec_from_stored

    ev = spec_from_stored(run.spec).eval if run is not None else EvalSpec()
    return {"metric": ev.metric, "normalize": ev.normalize, "rerank": evaluation.variant == "rerank" or ev.rerank}


def recompute(evaluation: Any, run: Any) -> tuple[bytes | None, str]:
    """(per-query payload, "") when the saved features reproduce the stored metrics; (None, why) otherwise."""
    from reidbench.harness.evaluation.protocol import score

    settings = ranking_settings(evaluation, run)
    if settings.get("rescore"):
        return None, (f"re-scored with {settings['rescore']}: its per-query results are recorded when it is "
                      "scored, not recomputed from features")
    reasons = []
    for path in candidate_files(evaluation, run):
        if not path.is_file():
            continue
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in ("q_feats", "g_feats", "q_pids", "g_pids", "q_camids", "g_camids")}
        except (OSError, KeyError, ValueError) as err:
            reasons.append(f"{path.name}: unreadable ({err})")
            continue
        out = score(arrays["q_feats"], arrays["g_feats"], arrays["q_pids"], arrays["g_pids"], arrays["q_camids"],
                    arrays["g_camids"], metric=str(settings.get("metric", "cosine")),
                    normalize=bool(settings.get("normalize", False)), rerank=bool(settings.get("rerank", False)),
                    per_query=True)
        stored = evaluation.metrics
        off = [m for m in CHECKED if m in stored and abs(float(out[m]) - float(stored[m])) > TOLERANCE]
        if off:
            reasons.append(f"{path.name}: reproduces {off[0]} {100 * out[off[0]]:.2f}, not the stored "
                           f"{100 * stored[off[0]]:.2f}")
            continue
        return pack(out["per_query"], arrays["q_pids"]), ""
    return None, "; ".join(reasons) or "no saved features (run folder moved or deleted)"


def fill_missing(store: Any, evaluations: Iterable[Any], log: Callable[[str], None] | None = None
                 ) -> Mapping[tuple[str, str], str]:
    """Attach per-query results to those of ``evaluations`` lacking them; returns {(run, key): why} of the
    ones that still lack them."""
    lacking: dict[tuple[str, str], str] = {}
    runs: dict[str, Any] = {}
    for e in evaluations:
        if e.has_per_query or e.status != "done":
            continue
        if e.run_hash not in runs:
            runs[e.run_hash] = store.find_run(e.run_hash)
        payload, why = recompute(e, runs[e.run_hash])
        if payload is None:
            lacking[(e.run_hash, e.key)] = why
            continue
        store.record_query_scores(e.run_hash, e.key, payload)
        if log is not None:
            log(f"run {e.run_hash[:12]}: per-query results of {e.test_set} {e.variant or '(default)'} "
                "recomputed from its saved features")
    return lacking
