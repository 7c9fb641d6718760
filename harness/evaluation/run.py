"""Score a trained model: features per (test set, feature output, flip) once, then every requested evaluation.

Features are saved in the run folder as ``features-<test>-<feature>[-flip].npz`` (float32, with
the run hash, the checkpoint epoch and the test set's fingerprint inside) and reused by a later
evaluation with the same feature settings — so Table 2's four variants or a re-ranked row cost
one forward pass per feature, and ``reidbench evaluate --run`` can re-score a stored run without
touching the model when its features are already there.

An evaluation with a re-scorer (``rescore``, harness/evaluation/rescorers) also needs the run's
training set: its features are cached the same way (``features-train-<name>-<feature>.npz``) and
only extracted when the re-scorer has to be trained; the trained re-scorer is saved in the run
folder too and reused by a later evaluation with the same settings.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from reidbench.harness.evaluation.per_query import pack, to_text
from reidbench.harness.evaluation.settings import EvaluationSettings

METRIC_KEYS = ("R1", "R5", "R10", "mAP", "mINP")


@dataclass(frozen=True)
class EvaluationRequest:
    test_set: str
    variant: str  # "" = the run's default evaluation
    label: str
    settings: EvaluationSettings  # resolved (no "auto")


def features_file(out_dir: Path, test_set: str, feature: str, flip: bool) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{test_set}-{feature}")
    return Path(out_dir) / f"features-{safe}{'-flip' if flip else ''}.npz"


def _load_cached(path: Path, run_hash: str, epoch: int, test_fingerprint: str | None) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta_ok = (str(npz["run_hash"]) == run_hash and int(npz["epoch"]) == epoch
                       and str(npz["test_fingerprint"]) == str(test_fingerprint))
            return {k: npz[k] for k in npz.files} if meta_ok else None
    except (OSError, KeyError, ValueError):
        return None  # damaged or from another version: recomputed, never trusted


class ModelScorer:
    """Extracts (and caches) features of one model and scores evaluation requests with them."""

    def __init__(self, model: Any, *, run_hash: str, epoch: int, out_dir: Path, device: Any, image_size: Sequence[int],
                 batch_size: int, workers: int, amp_dtype: Any = None, log: Callable[[str], None] | None = None,
                 load_model: Callable[[], Any] | None = None, masks: str = "",
                 train_source: Callable[[], tuple[str, Any, str | None]] | None = None,
                 train_fingerprint: str | None = None) -> None:
        # ``masks``: the run's data.masks; its provider gives each test image's part masks (spreid).
        # ``model`` None + ``load_model``: the model is built only if some features are not cached yet.
        self.model, self.run_hash, self.epoch, self.out_dir = model, run_hash, epoch, Path(out_dir)
        self._load_model = load_model
        # The run's training set, for re-scorers that learn from it: () -> (name, dataset, fingerprint),
        # called only when one has to train; ``train_fingerprint`` keys their stored weights without loading it.
        self._train_source, self.train_fingerprint = train_source, train_fingerprint
        self.device, self.image_size, self.batch_size, self.workers = device, tuple(image_size), batch_size, workers
        self.amp_dtype, self.log = amp_dtype, log
        self.masks = masks
        self._memory: dict[tuple[str, str, bool], dict[str, np.ndarray]] = {}

    def features(self, test_set: str, dataset: Any, fingerprint: str | None, feature: str, flip: bool,
                 save: bool = True) -> tuple[dict[str, np.ndarray], Path | None]:
        key = (test_set, feature, flip)
        path = features_file(self.out_dir, test_set, feature, flip)
        if key in self._memory:
            return self._memory[key], path if path.is_file() else None
        arrays = _load_cached(path, self.run_hash, self.epoch, fingerprint) if save else None
        if arrays is None:
            arrays = self._extract(dataset, feature, flip)
            if save:
                tmp = path.with_name(path.name + ".tmp.npz")
                np.savez_compressed(tmp, **arrays, run_hash=np.array(self.run_hash), epoch=np.array(self.epoch),
                                    test_fingerprint=np.array(str(fingerprint)))
                tmp.replace(path)
        self._memory[key] = arrays
        return arrays, path if save else None

    def train_features(self, name: str, dataset: Any, fingerprint: str | None, feature: str, flip: bool
                       ) -> dict[str, np.ndarray]:
        """Features of the training split (``feats``, ``pids``, ``camids``), cached in the run folder as
        ``features-train-<name>-<feature>[-flip].npz`` with the training set's fingerprint inside."""
        path = features_file(self.out_dir, f"train-{name}", feature, flip)
        key = (f"train:{name}", feature, flip)
        if key not in self._memory:
            arrays = _load_cached(path, self.run_hash, self.epoch, fingerprint)
            if arrays is None:
                feats, pids, camids = self._extract_records(tuple(dataset.train), feature, flip, dataset)
                arrays = {"feats": feats, "pids": pids, "camids": camids}
                tmp = path.with_name(path.name + ".tmp.npz")
                np.savez_compressed(tmp, **arrays, run_hash=np.array(self.run_hash), epoch=np.array(self.epoch),
                                    test_fingerprint=np.array(str(fingerprint)))
                tmp.replace(path)
            self._memory[key] = arrays
        return self._memory[key]

    def _extract_records(self, records: Sequence[Any], feature: str, flip: bool, dataset: Any
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features of ``records`` (images of ``dataset``, whose part masks a spreid model reads)."""
        from reidbench.harness.data.loader import build_test_loader
        from reidbench.harness.data.masks import mask_source
        from reidbench.harness.evaluation.features import extract_features

        loader = build_test_loader(records, image_size=self.image_size, batch_size=self.batch_size,
                                   num_workers=self.workers, masks=mask_source(self.masks, dataset))
        names = tuple(feature.split("+"))
        if self.model is None:
            self.model = self._load_model()
        feats, pids, camids = extract_features(self.model, loader, self.device, flip=flip,
                                               feature_key=names[0] if len(names) == 1 else names,
                                               normalize=False, amp_dtype=self.amp_dtype)
        feats = feats.numpy() if hasattr(feats, "numpy") else np.asarray(feats)
        return feats.astype(np.float32, copy=False), np.asarray(pids), np.asarray(camids)

    def _extract(self, dataset: Any, feature: str, flip: bool) -> dict[str, np.ndarray]:
        feats, pids, camids = self._extract_records(tuple(dataset.query) + tuple(dataset.gallery), feature, flip,
                                                     dataset)
        nq = len(dataset.query)
        return {"q_feats": feats[:nq], "g_feats": feats[nq:], "q_pids": pids[:nq], "g_pids": pids[nq:],
                "q_camids": camids[:nq], "g_camids": camids[nq:],
                "q_paths": np.array([r.path for r in dataset.query]),
                "g_paths": np.array([r.path for r in dataset.gallery])}

    def score(self, request: EvaluationRequest, dataset: Any, fingerprint: str | None, save: bool = True
              ) -> dict[str, Any]:
        """One evaluation record (the store's ``record_evaluation`` shape)."""
        from reidbench.harness.evaluation.protocol import score

        t0 = time.perf_counter()
        s = request.settings
        arrays, path = self.features(request.test_set, dataset, fingerprint, s.feature, s.flip, save=save)
        extra: dict[str, Any] = {}
        if s.rescore is not None:
            out, extra["rescorer"] = self._rescored(s, arrays)
        else:
            out = score(arrays["q_feats"], arrays["g_feats"], arrays["q_pids"], arrays["g_pids"], arrays["q_camids"],
                        arrays["g_camids"], metric=s.metric, normalize=s.normalize, rerank=s.rerank, per_query=True)
        return {"key": s.key(fingerprint), "test_set": request.test_set, "test_fingerprint": fingerprint,
                "variant": request.variant, "label": request.label, "settings": s.to_dict(),
                "metrics": {k: float(out[k]) for k in METRIC_KEYS},
                "per_query": to_text(pack(out["per_query"], arrays["q_pids"])),
                "features_path": str(path) if path is not None else None,
                "seconds": time.perf_counter() - t0, **extra}

    def _rescored(self, s: EvaluationSettings, arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, Any], dict]:
        """Protocol scores of the re-scorer ``s.rescore``'s distances, and what it did (weights, training).

        The re-scorer sees the features as the evaluation ranks them: L2-normalised when ``normalize``
        is set or the metric is cosine. Its stored weights are keyed by the run, the checkpoint epoch,
        the training set's fingerprint, these feature settings and its parameters.
        """
        from reidbench.harness.evaluation.protocol import score_blocks
        from reidbench.harness.evaluation.rescorers import RESCORERS, RescoreContext, rescorer_params

        entry = RESCORERS.get(s.rescore)
        params = rescorer_params(s.rescore, s.rescore_options)
        unit = s.normalize or s.metric == "cosine"
        prepare = _unit_rows if unit else (lambda x: np.asarray(x, dtype=np.float32))
        log = self.log or (lambda line: None)

        def train() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            if self._train_source is None:
                raise ValueError(f"rescore {s.rescore}: the run's training set is not available to train it")
            name, dataset, fingerprint = self._train_source()
            if self.train_fingerprint is not None and fingerprint is not None and fingerprint != self.train_fingerprint:
                raise ValueError(f"rescore {s.rescore}: the training set {name} changed since run "
                                 f"{self.run_hash[:12]} was trained; its re-scorer cannot be trained on it")
            tr = self.train_features(name, dataset, fingerprint, s.feature, s.flip)
            return prepare(tr["feats"]), tr["pids"], tr["camids"]

        train_fp = self.train_fingerprint
        if train_fp is None and self._train_source is not None:  # an old run: the data it trains on identifies it
            train_fp = self._train_source()[2]
        identity = {"run_hash": self.run_hash, "epoch": self.epoch, "train_fingerprint": train_fp,
                    "feature": s.feature, "flip": s.flip, "normalize": unit, "metric": s.metric}
        context = RescoreContext(q_feats=prepare(arrays["q_feats"]), g_feats=prepare(arrays["g_feats"]),
                                 metric=s.metric, params=params, out_dir=self.out_dir, identity=identity, train=train,
                                 device=self.device, log=log)
        blocks, info = entry.distances(context)
        out = score_blocks(blocks, arrays["q_pids"], arrays["g_pids"], arrays["q_camids"], arrays["g_camids"],
                           per_query=True)
        return out, info


def _unit_rows(x: Any) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def requests_for(tests: Sequence[str], ev: Any, variants: Sequence[Any], test_feature: str | Sequence[str]
                 ) -> list[EvaluationRequest]:
    """The default evaluation (the spec's ``eval`` section) on every test set, then each variant on each."""
    default = EvaluationSettings.from_eval(ev).resolved(test_feature)
    out = [EvaluationRequest(t, "", "", default) for t in tests]
    for variant in variants:
        settings = variant.settings(ev).resolved(test_feature)
        out.extend(EvaluationRequest(t, variant.name, variant.label, settings) for t in tests)
    return out


def test_feature_of(record: Any) -> str | tuple[str, ...]:
    """The architecture's declared test feature, as recorded at training (older runs: the BoT rule)."""
    recorded = (record.model_info or {}).get("test_feature")
    if recorded:
        return tuple(recorded) if len(recorded) > 1 else recorded[0]
    model = (record.spec or {}).get("model", {})
    return "f_i" if model.get("neck") == "bnneck" else "f_t"


def metrics_by_test(evaluations: Sequence[Mapping[str, Any]], variant: str = "") -> dict[str, dict[str, float]]:
    return {e["test_set"]: dict(e["metrics"]) for e in evaluations if e["variant"] == variant}
