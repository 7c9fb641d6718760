"""Run one spec end to end: data → model → resumable training → its evaluations on every test set.

The run folder holds ``spec.json``, ``checkpoint.pt`` (every N epochs and at the end, with the
stage it was in), ``train.log``, ``features-<test>-<feature>.npz``, TensorBoard event files
(``harness/tracking/tensorboard.py``, when the package is installed) and, once everything
succeeded, ``result.json``. A run killed at any moment and started again with the same spec
resumes from its last checkpoint; one whose ``result.json`` exists returns it without training.
``evaluate_stored`` scores a finished run's checkpoint with new evaluation settings, never
retraining.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from reidbench.harness.evaluation.run import METRIC_KEYS, ModelScorer, metrics_by_test, requests_for, test_feature_of
from reidbench.harness.spec import RunSpec, canonical_json, spec_from_json
from reidbench.harness.spec.hashing import run_hash

RESULT_NAME = "result.json"
SPEC_NAME = "spec.json"


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run, not what: never part of the run hash."""

    out_dir: Path
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int | None = None  # None = pick for the machine
    data_paths: Mapping[str, str] = field(default_factory=dict)
    progress: bool | None = None  # None = only when stderr is a terminal
    log: Callable[[str], None] | None = None  # defaults to stderr
    # Called after every epoch, once it is checkpointed, with (epoch, EpochStats.to_dict()). It may
    # raise to stop the run (a study's pruner does): the run is then recorded as failed with that
    # error and, run again, resumes from the checkpoint.
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None
    # Evaluation variants scored besides the run's default evaluation (harness.evaluation.settings.Variant).
    variants: Sequence[Any] = ()
    # Earlier hashes of this run (a database upgrade re-keyed it): its folder and checkpoint may carry them.
    legacy_hashes: Sequence[str] = ()
    # This process's rank in a distributed run (train.distributed.DistContext, set by the torchrun
    # launcher, harness/execution/torchrun.py); None = the whole run in this process.
    distributed: Any = None
    # TensorBoard event files in the run folder (harness/tracking/tensorboard.py): None = when the
    # tensorboard package is installed (a log line says so, once per process, when it is not), False = never.
    tensorboard: bool | None = None


@dataclass(frozen=True)
class RunResult:
    run_hash: str
    spec: RunSpec
    metrics: dict[str, dict[str, float]]  # default evaluation: test set → metric → value (fractions)
    history: list[dict[str, Any]]
    provenance: dict[str, dict[str, Any]]  # dataset name → provenance (with its fingerprint)
    model_info: dict[str, Any]
    environment: dict[str, Any]
    seconds_train: float
    seconds_eval: float
    out_dir: str
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # every evaluation, variants included
    train_fingerprint: str | None = None
    convergence: dict[str, Any] | None = None  # train/convergence.Convergence.to_dict(); None: not measured

    def to_dict(self) -> dict[str, Any]:
        out = {
            "run_hash": self.run_hash, "spec": self.spec.to_dict(), "metrics": self.metrics, "history": self.history,
            "provenance": self.provenance, "model_info": self.model_info, "environment": self.environment,
            "seconds_train": self.seconds_train, "seconds_eval": self.seconds_eval, "out_dir": self.out_dir,
            "evaluations": self.evaluations, "train_fingerprint": self.train_fingerprint,
        }
        if self.convergence is not None:
            out["convergence"] = self.convergence
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "RunResult":
        return cls(
            run_hash=raw["run_hash"], spec=spec_from_json(json.dumps(raw["spec"])),
            metrics={k: dict(v) for k, v in raw["metrics"].items()}, history=list(raw["history"]),
            provenance=dict(raw["provenance"]), model_info=dict(raw["model_info"]),
            environment=dict(raw["environment"]), seconds_train=float(raw["seconds_train"]),
            seconds_eval=float(raw["seconds_eval"]), out_dir=str(raw["out_dir"]),
            evaluations=list(raw.get("evaluations") or []), train_fingerprint=raw.get("train_fingerprint"),
            convergence=raw.get("convergence"),
        )

    def summary_table(self) -> str:
        notes = []
        if any(p.get("synthetic") for p in self.provenance.values()):
            notes.append("synthetic data")
        if not self.model_info.get("pretrained_source"):
            notes.append("no pretrained weights")
        if (self.model_info.get("masks") or {}).get("label"):
            notes.append(f"masks: {self.model_info['masks']['label']}")
        if self.spec.shortened:
            notes.append(f"shortened to {self.spec.schedule.max_epochs}/{self.spec.full_epochs} epochs")
        lines = [f"run {self.run_hash[:12]}  profile={self.spec.profile}  train={self.spec.data.train}"
                 + (f"  ({', '.join(notes)})" if notes else "")]
        tags = {test: test if test == self.spec.data.train else f"{self.spec.data.train}→{test}"
                for test in self.metrics}
        # The first column is as wide as its longest tag (a cross-domain tag is "train→test").
        width = max([14, *(len(t) + 1 for t in tags.values())])
        lines.append(f"{'test set':<{width}}" + "".join(f"{k:>8}" for k in METRIC_KEYS))
        for test, values in self.metrics.items():
            lines.append(f"{tags[test]:<{width}}" + "".join(f"{100 * values[k]:8.1f}" for k in METRIC_KEYS))
            for e in self.evaluations:
                if e["variant"] and e["test_set"] == test:
                    tag = f"  +{e.get('label') or e['variant']}"
                    lines.append(f"{tag[:width]:<{width}}" + "".join(f"{100 * e['metrics'][k]:8.1f}" for k in METRIC_KEYS))
        return "\n".join(lines)


_NOTED: set[str] = set()  # notes said once per process (a missing optional package)


def _stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def select_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return torch.device(name)


def default_workers(device_type: str, processes: int = 1) -> int:
    """Loader workers for one training process; ``processes`` training processes share the machine's cores."""
    cores = max(1, (os.cpu_count() or 1) // max(1, processes))
    # On a small CPU machine the training step already uses every core; worker processes would
    # only compete with it. The loader's in-memory cache keeps per-batch work small.
    if device_type == "cpu" and cores <= 4:
        return 0
    return min(8, max(1, cores // 2))


def amp_dtype_for(spec: RunSpec, device: Any) -> Any:
    if device.type != "cuda" or spec.train.amp == "off":
        return None
    import torch

    return torch.bfloat16 if spec.train.amp == "bf16" else torch.float16


def _check_run_folder(out_dir: Path, spec: RunSpec, rhash: str, legacy: Sequence[str]) -> None:
    spec_file = out_dir / SPEC_NAME
    if spec_file.exists():
        try:
            stored = json.loads(spec_file.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{spec_file}: not valid JSON; remove the folder or choose another --out") from None
        if stored.get("run_hash") != rhash and stored.get("run_hash") not in legacy:
            raise ValueError(
                f"{out_dir}: this run folder belongs to run {str(stored.get('run_hash'))[:12]}, not {rhash[:12]}; "
                "choose another --out"
            )
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = spec_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"run_hash": rhash, "spec": spec.to_dict()}, indent=2, sort_keys=True))
        os.replace(tmp, spec_file)


def load_cached_result(out_dir: Path, rhash: str) -> RunResult | None:
    path = Path(out_dir) / RESULT_NAME
    if not path.exists():
        return None
    try:
        result = RunResult.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, ValueError):
        return None  # a damaged (or older-format) result is recomputed from the checkpoint, never trusted
    return result if result.run_hash == rhash else None


def training_fingerprint(spec: RunSpec, data_paths: Mapping[str, str]) -> str:
    from reidbench.harness.data.fingerprint import dataset_fingerprint

    return dataset_fingerprint(spec.data.train, data_paths).train


def identify(spec: RunSpec, data_paths: Mapping[str, str], trick_versions: Mapping[str, int] | None = None
             ) -> tuple[str, str]:
    """(run hash, training-data fingerprint) of ``spec`` with the data it would train on.

    A pretrained run's weights are resolved here (downloaded if needed, unless offline), and
    their digest enters the hash (``models.weights.weights_identity``).
    """
    from reidbench.models.weights import weights_identity

    fingerprint = training_fingerprint(spec, data_paths)
    weights = weights_identity(spec.model.backbone, spec.model.pretrained, spec.model.weights_path)
    return run_hash(spec, trick_versions, fingerprint, weights), fingerprint


def execute(spec: RunSpec, runtime: RuntimeOptions, trick_versions: Mapping[str, int] | None = None,
            expected_hash: str | None = None) -> RunResult | None:
    """Train (or resume) and evaluate ``spec``; returns its evaluations on every test set.

    ``expected_hash`` (what a planner computed earlier) must still match: data that changed
    between planning and training is an error, never a silently different run.

    In a distributed run (``runtime.distributed``, one call per rank) every rank trains; rank 0
    alone writes the run folder (log, checkpoints, features, result) and evaluates; the other
    ranks return None once training ends.
    """
    rhash, fingerprint = identify(spec, runtime.data_paths, trick_versions)
    if expected_hash is not None and expected_hash != rhash:
        raise ValueError(f"run {expected_hash[:12]}: its training data or pretrained weights changed since it was "
                         f"planned (now {rhash[:12]}); run the command again")
    out_dir = Path(runtime.out_dir)
    log = runtime.log or _stderr_log
    cached = load_cached_result(out_dir, rhash)
    if cached is not None:
        log(f"run {rhash[:12]}: already done, results from {out_dir / RESULT_NAME}")
        return cached
    main = runtime.distributed is None or runtime.distributed.is_main
    if main:
        _check_run_folder(out_dir, spec, rhash, runtime.legacy_hashes)
    progress = main and (sys.stderr.isatty() if runtime.progress is None else runtime.progress)
    return _train_and_evaluate(spec, rhash, fingerprint, out_dir, runtime, log, progress)


def load_datasets(names: Sequence[str], data_paths: Mapping[str, str], progress: bool
                  ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    from reidbench.harness.data.named import load_named_dataset

    datasets: dict[str, Any] = {}
    provenance: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(names):
        ds, prov = load_named_dataset(name, data_paths, progress=progress)
        datasets[name], provenance[name] = ds, prov.to_dict()
    return datasets, provenance


def _test_fingerprint(provenance: Mapping[str, Any], name: str) -> str | None:
    return ((provenance.get(name) or {}).get("fingerprint") or {}).get("test")


class _RunLog:
    """A run's log: each line to the caller's sink and appended to the run folder's ``train.log``.
    In a distributed run only rank 0 logs (``enabled``): one log per run."""

    def __init__(self, path: Path, sink: Callable[[str], None], enabled: bool = True) -> None:
        self.path, self.sink, self.enabled = path, sink, enabled

    def __call__(self, line: str) -> None:
        if not self.enabled:
            return
        self.sink(line)
        with open(self.path, "a") as fh:
            fh.write(line + "\n")


def _train_and_evaluate(spec: RunSpec, rhash: str, fingerprint: str, out_dir: Path, runtime: RuntimeOptions,
                        sink: Callable[[str], None], progress: bool) -> RunResult | None:
    """Load data → build → resume → train with hooks → evaluate → write result (rank 0 alone writes)."""
    from reidbench.harness.train.build import build_training, planned_epoch_lrs
    from reidbench.harness.train.checkpoint import CHECKPOINT_NAME, resume
    from reidbench.harness.train.hooks import CallbackHook, CheckpointHook, HistoryHook
    from reidbench.harness.train.loop import run_training

    dist = runtime.distributed
    main = dist is None or dist.is_main
    log = _RunLog(out_dir / "train.log", sink, enabled=main)
    device = select_device(runtime.device)
    _configure_torch(spec, device)
    datasets, provenance = load_datasets((spec.data.train, *spec.data.test), runtime.data_paths, progress)
    train_set = datasets[spec.data.train]
    ranks = dist.world_size if dist is not None else 1
    workers = runtime.num_workers if runtime.num_workers is not None else default_workers(device.type, ranks)

    built = build_training(spec, train_set, device, workers, progress, dist=dist)
    components, model_info = built.components, built.model_info
    synced_bn_layers = model_info.pop("sync_bn_layers", 0)
    model_info["num_classes"] = train_set.num_train_pids

    max_epochs = spec.schedule.max_epochs
    checkpoint = out_dir / CHECKPOINT_NAME
    resumed = resume(checkpoint, components, {rhash, *runtime.legacy_hashes})  # every rank: same weights
    if resumed is not None:
        log(f"run {rhash[:12]}: resuming after epoch {resumed.epoch}/{max_epochs}"
            + (f" (stage {resumed.stage})" if resumed.stage else ""))
    else:
        log(_start_line(spec, rhash, train_set, device, dist, workers))
    start_epoch, history = (resumed.epoch, resumed.history) if resumed is not None else (0, [])

    board = _tensorboard(runtime, out_dir, start_epoch + 1, rhash, spec, provenance, model_info, log) if main else None
    try:
        hooks: list[Any] = []
        planned = planned_epoch_lrs(spec, components.stages)
        if main:  # rank 0 alone evaluates periodically, keeps the history, writes TensorBoard, checkpoints
            hooks += _periodic_evaluation(spec, datasets, device, workers)
            hooks += _convergence_evaluation(spec, datasets, device, workers, planned, history)
            hooks.append(HistoryHook(max_epochs, history, log))
            # TensorBoard before the checkpoint: an epoch logged but not checkpointed is purged on resume,
            # whereas one checkpointed but not logged would stay missing from the curves.
            hooks += [board] if board is not None else []
            hooks.append(CheckpointHook(checkpoint, spec.train.checkpoint_every_epochs, max_epochs, history,
                                        run_hash=rhash, spec_json=canonical_json(spec.to_dict()),
                                        num_classes=int(model_info.get("num_classes", 0))))
            if runtime.on_epoch is not None:  # after the epoch's checkpoint: it may raise to stop the run
                hooks.append(CallbackHook(runtime.on_epoch))
        run_training(components, start_epoch, max_epochs, spec.train.seed, hooks)
        if not main:
            return None
        seconds_train = sum(float(h.get("seconds", 0.0)) for h in history)  # across resumes

        t1 = time.perf_counter()
        scorer = _final_scorer(spec, rhash, fingerprint, components.model, out_dir, device, workers, datasets, log)
        evaluations = _evaluate(spec, rhash, scorer, datasets, provenance, runtime.variants, log)
        seconds_eval = time.perf_counter() - t1
        if board is not None:
            board.log_final(max_epochs, evaluations)
    finally:
        if board is not None:  # also when training failed: what it logged stays readable
            board.close()

    env = _environment(device, spec, dist, model_info, synced_bn_layers)  # a distributed run: into model_info too
    metrics = metrics_by_test(evaluations)
    convergence = _convergence(spec, history, metrics, planned, log, rhash)
    result = RunResult(
        run_hash=rhash, spec=spec, metrics=metrics, history=history,
        provenance=provenance, model_info=model_info, environment=env,
        seconds_train=seconds_train, seconds_eval=seconds_eval, out_dir=str(out_dir),
        evaluations=evaluations, train_fingerprint=fingerprint, convergence=convergence,
    )
    tmp = out_dir / (RESULT_NAME + ".tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=1, sort_keys=True))
    os.replace(tmp, out_dir / RESULT_NAME)
    return result


def _configure_torch(spec: RunSpec, device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not spec.train.deterministic
        torch.backends.cuda.matmul.allow_tf32 = not spec.train.deterministic
        torch.backends.cudnn.allow_tf32 = not spec.train.deterministic
    if spec.train.deterministic:
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


def _start_line(spec: RunSpec, rhash: str, train_set: Any, device: Any, dist: Any, workers: int) -> str:
    where = (f"{dist.world_size} {dist.backend} processes ({device.type}), "
             f"{spec.data.ids_per_batch // dist.world_size}×{spec.data.imgs_per_id} images each per step"
             if dist is not None else str(device))
    return (f"run {rhash[:12]}: training {spec.model.arch}/{spec.model.backbone} on {spec.data.train} "
            f"({len(train_set.train)} images, {train_set.num_train_pids} ids) on {where}, "
            f"{spec.schedule.max_epochs} epochs, {workers} loader workers")


def _tensorboard(runtime: RuntimeOptions, out_dir: Path, first_epoch: int, rhash: str, spec: RunSpec,
                 provenance: Mapping[str, Any], model_info: Mapping[str, Any], log: Callable[[str], None]) -> Any:
    """This run's TensorBoard hook, or None: switched off, or the package missing (said once per process)."""
    from reidbench.harness.tracking.tensorboard import (INSTALL_HINT, TensorBoardHook, run_text,
                                                        tensorboard_available)

    if runtime.tensorboard is False:
        return None
    if not tensorboard_available():
        if "tensorboard" not in _NOTED:
            _NOTED.add("tensorboard")
            log(f"TensorBoard logs off: the tensorboard package is not installed ({INSTALL_HINT})")
        return None
    return TensorBoardHook(out_dir, first_epoch, run_text(rhash, spec.to_dict(), provenance, model_info))


def _periodic_evaluation(spec: RunSpec, datasets: Mapping[str, Any], device: Any, workers: int) -> list[Any]:
    """The training curves' evaluation (``eval.every_epochs``): the default evaluation on the first test set."""
    from reidbench.harness.evaluation.settings import EvaluationSettings
    from reidbench.harness.train.hooks import EvaluationHook

    if not spec.eval.every_epochs:
        return []
    first = spec.data.test[0]
    return [EvaluationHook(first, datasets[first], spec.eval.every_epochs, spec.schedule.max_epochs, device=device,
                           image_size=spec.data.image_size, batch_size=spec.eval.batch_size,
                           settings=EvaluationSettings.from_eval(spec.eval), workers=workers,
                           amp_dtype=amp_dtype_for(spec, device), masks=spec.data.masks)]


def _convergence_evaluation(spec: RunSpec, datasets: Mapping[str, Any], device: Any, workers: int,
                            planned: Sequence[float] | None, history: list[dict[str, Any]]) -> list[Any]:
    """Scores of the first test set at the convergence window's epochs (``train/convergence.py``): the
    run's mAP change before its first LR decay. Two evaluations at most, and none when the loss has
    already failed the check, when the window's epochs are periodic ones or the last one (the final
    evaluation)."""
    from reidbench.harness.evaluation.settings import EvaluationSettings
    from reidbench.harness.train.convergence import convergence_window
    from reidbench.harness.train.hooks import ConvergenceHook, EvaluationHook

    if planned is None or not spec.data.test:
        return []
    window = convergence_window(planned, spec.schedule.kind)
    if window.epochs is None:
        return []
    first = spec.data.test[0]
    scorer = EvaluationHook(first, datasets[first], 0, spec.schedule.max_epochs, device=device,
                            image_size=spec.data.image_size, batch_size=spec.eval.batch_size,
                            settings=EvaluationSettings.from_eval(spec.eval), workers=workers,
                            amp_dtype=amp_dtype_for(spec, device), masks=spec.data.masks)
    return [ConvergenceHook(scorer, window.epochs, history)]


def _convergence(spec: RunSpec, history: Sequence[Mapping[str, Any]], metrics: Mapping[str, Mapping[str, float]],
                 planned: Sequence[float] | None, log: Callable[[str], None], rhash: str) -> dict[str, Any]:
    """The run's convergence record (stored with it) and one log line saying it."""
    from reidbench.harness.train.convergence import assess_run

    record = assess_run(spec.to_dict(), history, metrics, lrs=planned)
    window = f"epochs {record.epochs[0]}→{record.epochs[1]}: " if record.epochs else ""
    log(f"run {rhash[:12]}: converged {record.status} ({window}{record.reason})")
    return record.to_dict()


def _final_scorer(spec: RunSpec, rhash: str, fingerprint: str, model: Any, out_dir: Path, device: Any, workers: int,
                  datasets: Mapping[str, Any], log: Callable[[str], None]) -> ModelScorer:
    train = spec.data.train
    return ModelScorer(model, run_hash=rhash, epoch=spec.schedule.max_epochs, out_dir=out_dir, device=device,
                       image_size=spec.data.image_size, batch_size=spec.eval.batch_size, workers=workers,
                       amp_dtype=amp_dtype_for(spec, device), masks=spec.data.masks, log=log,
                       train_source=lambda: (train, datasets[train], fingerprint), train_fingerprint=fingerprint)


def _evaluate(spec: RunSpec, rhash: str, scorer: ModelScorer, datasets: Mapping[str, Any],
              provenance: Mapping[str, Any], variants: Sequence[Any], log: Callable[[str], None]
              ) -> list[dict[str, Any]]:
    """The default evaluation on every test set, then each variant (the spec's ``evaluations:``
    defaults, replaced by a runtime variant of the same name); one log line each."""
    from reidbench.harness.evaluation.settings import default_variants

    names = {v.name for v in variants}
    variants = [v for v in default_variants(spec.eval) if v.name not in names] + list(variants)
    evaluations = []
    for request in requests_for(spec.data.test, spec.eval, variants, scorer.model.test_feature):
        record = scorer.score(request, datasets[request.test_set], _test_fingerprint(provenance, request.test_set))
        evaluations.append(record)
        line = "  ".join(f"{k} {100 * record['metrics'][k]:.1f}" for k in METRIC_KEYS)
        tag = f" [{request.label or request.variant}]" if request.variant else ""
        log(f"run {rhash[:12]}: {spec.data.train}→{request.test_set}{tag}: {line}")
    return evaluations


def _environment(device: Any, spec: RunSpec, dist: Any, model_info: dict[str, Any], synced_bn_layers: int
                 ) -> dict[str, Any]:
    from reidbench.harness.execution.environment import environment

    env = environment(device)
    if dist is not None:
        # Recorded, never hashed: the run is the same whatever the process count. The store keeps
        # model_info and the device line (not the whole environment), so it goes into both.
        info = {"world_size": dist.world_size, "backend": dist.backend,
                "per_rank_batch": [spec.data.ids_per_batch // dist.world_size, spec.data.imgs_per_id],
                "sync_bn": spec.train.sync_bn, "sync_bn_layers": synced_bn_layers}
        env["distributed"] = model_info["distributed"] = info
        env["device"] = f"{env['device']} ×{dist.world_size} ({dist.backend})"
    return env


# ---------------------------------------------------------------------- evaluating a stored run


def evaluate_stored(record: Any, tests: Sequence[str], variants: Sequence[Any], data_paths: Mapping[str, str], *,
                    device: str = "auto", num_workers: int | None = None, include_default: bool = True,
                    log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Score a finished run (a store ``RunRecord``) from its final checkpoint; nothing is trained.

    Returns evaluation records (``Store.record_evaluation`` shape) for the default evaluation
    (unless ``include_default`` is False) and each variant on each of ``tests``. Features already
    saved with the same feature settings are reused; the checkpoint is read and the model built
    only when some are missing.
    """
    import torch

    from reidbench.harness.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from reidbench.models.architectures import build_architecture

    log = log or _stderr_log
    spec = spec_from_json(json.dumps(record.spec))
    out_dir = Path(record.out_dir or "")
    ckpt = out_dir / CHECKPOINT_NAME
    dev = select_device(device)
    datasets, provenance = load_datasets(tests, data_paths, progress=False)

    def load_model() -> Any:
        if not ckpt.is_file():
            raise FileNotFoundError(f"run {record.run_hash[:12]}: no checkpoint at {ckpt} and no cached features for "
                                    "these settings; the run folder was moved or deleted, so its model cannot be "
                                    "re-scored (its stored metrics are kept)")
        state = load_checkpoint(ckpt)
        known = {record.run_hash, *getattr(record, "aliases", ())}
        if state.get("run_hash") not in known:
            raise ValueError(f"{ckpt}: checkpoint of another run ({str(state.get('run_hash'))[:12]})")
        num_classes = int(state.get("num_classes") or record.model_info.get("num_classes") or 0)
        if num_classes < 1:  # checkpoints written before the count was recorded: read it off the classifier
            num_classes = next(int(v.shape[0]) for k, v in state["model"].items() if k.endswith("classifier.weight"))
        model_spec = dataclasses.replace(spec.model, pretrained=False, weights_path=None)  # weights: the checkpoint
        torch.manual_seed(0)
        model = build_architecture(model_spec, num_classes)
        model.load_state_dict(state["model"])
        return model.to(dev).eval()

    loaded_train: list[tuple[str, Any, str | None]] = []

    def load_train_set() -> tuple[str, Any, str | None]:
        """The run's training set, for re-scorers that train on it: where the run found it unless
        ``data_paths`` says otherwise (loaded once)."""
        if loaded_train:
            return loaded_train[0]
        name = spec.data.train
        paths = dict(data_paths)
        prov = (record.provenance or {}).get(name) or {}
        root = prov.get("root") if isinstance(prov, dict) and not prov.get("synthetic") else None
        if name not in paths and root and Path(root).is_dir():
            paths[name] = str(root)
        loaded, train_prov = load_datasets((name,), paths, progress=False)
        fingerprint = ((train_prov.get(name) or {}).get("fingerprint") or {}).get("train")
        loaded_train.append((name, loaded[name], fingerprint))
        return loaded_train[0]

    workers = num_workers if num_workers is not None else default_workers(dev.type)
    # A done run's checkpoint is its last epoch's: cached features of that checkpoint are reused as they are.
    scorer = ModelScorer(None, run_hash=record.run_hash, epoch=spec.schedule.max_epochs, out_dir=out_dir,
                         device=dev, image_size=spec.data.image_size, batch_size=spec.eval.batch_size,
                         workers=workers, amp_dtype=amp_dtype_for(spec, dev), load_model=load_model, log=log,
                         masks=spec.data.masks, train_source=load_train_set,
                         train_fingerprint=getattr(record, "train_fingerprint", None))
    if record.model_info.get("test_feature"):
        test_feature = test_feature_of(record)
    else:  # recorded before architectures declared it: ask the model
        scorer.model = load_model()
        test_feature = scorer.model.test_feature
    requests = requests_for(tests, spec.eval, variants, test_feature)
    if not include_default:
        requests = [r for r in requests if r.variant]
    out = []
    for request in requests:
        record_ = scorer.score(request, datasets[request.test_set], _test_fingerprint(provenance, request.test_set))
        line = "  ".join(f"{k} {100 * record_['metrics'][k]:.1f}" for k in METRIC_KEYS)
        log(f"run {record.run_hash[:12]}: {spec.data.train}→{request.test_set}"
            + (f" [{request.label or request.variant}]" if request.variant else "") + f": {line}")
        out.append(record_)
    from reidbench.harness.tracking.tensorboard import log_later_evaluations

    # the run's TensorBoard logs (when it has some) show the new evaluations beside the training's
    log_later_evaluations(out_dir, spec.schedule.max_epochs, out)
    return out
