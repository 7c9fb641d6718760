"""Run one spec end to end: data → model → resumable training → evaluation on every test set.

The run folder holds ``spec.json``, ``checkpoint.pt`` (every N epochs and at the end),
``train.log``, ``features-<test>.npz`` and, once everything succeeded, ``result.json``. A run
killed at any moment and started again with the same spec resumes from its last checkpoint; one
whose ``result.json`` exists returns it without training.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from reidbench.harness.spec.hashing import run_hash
from reidbench.harness.spec import RunSpec, canonical_json, spec_from_json

RESULT_NAME = "result.json"
SPEC_NAME = "spec.json"
METRIC_KEYS = ("R1", "R5", "R10", "mAP", "mINP")


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


@dataclass(frozen=True)
class RunResult:
    run_hash: str
    spec: RunSpec
    metrics: dict[str, dict[str, float]]  # test set → metric → value (fractions)
    history: list[dict[str, Any]]
    provenance: dict[str, dict[str, Any]]  # dataset name → provenance
    model_info: dict[str, Any]
    environment: dict[str, Any]
    seconds_train: float
    seconds_eval: float
    out_dir: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_hash": self.run_hash,
            "spec": self.spec.to_dict(),
            "metrics": self.metrics,
            "history": self.history,
            "provenance": self.provenance,
            "model_info": self.model_info,
            "environment": self.environment,
            "seconds_train": self.seconds_train,
            "seconds_eval": self.seconds_eval,
            "out_dir": self.out_dir,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "RunResult":
        return cls(
            run_hash=raw["run_hash"],
            spec=spec_from_json(json.dumps(raw["spec"])),
            metrics={k: dict(v) for k, v in raw["metrics"].items()},
            history=list(raw["history"]),
            provenance=dict(raw["provenance"]),
            model_info=dict(raw["model_info"]),
            environment=dict(raw["environment"]),
            seconds_train=float(raw["seconds_train"]),
            seconds_eval=float(raw["seconds_eval"]),
            out_dir=str(raw["out_dir"]),
        )

    def summary_table(self) -> str:
        notes = []
        if any(p.get("synthetic") for p in self.provenance.values()):
            notes.append("synthetic data")
        if not self.model_info.get("pretrained_source"):
            notes.append("no pretrained weights")
        if self.spec.shortened:
            notes.append(f"shortened to {self.spec.schedule.max_epochs}/{self.spec.full_epochs} epochs")
        lines = [f"run {self.run_hash[:12]}  profile={self.spec.profile}  train={self.spec.data.train}"
                 + (f"  ({', '.join(notes)})" if notes else "")]
        lines.append(f"{'test set':<14}" + "".join(f"{k:>8}" for k in METRIC_KEYS))
        for test, values in self.metrics.items():
            tag = test if test == self.spec.data.train else f"{self.spec.data.train}→{test}"
            lines.append(f"{tag:<14}" + "".join(f"{100 * values[k]:8.1f}" for k in METRIC_KEYS))
            if f"rerank_{METRIC_KEYS[0]}" in values:
                lines.append(f"{'  +re-rank':<14}" + "".join(f"{100 * values['rerank_' + k]:8.1f}" for k in METRIC_KEYS))
        return "\n".join(lines)


def _stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def select_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return torch.device(name)


def default_workers(device_type: str) -> int:
    cores = os.cpu_count() or 1
    # On a small CPU machine the training step already uses every core; worker processes would
    # only compete with it. The loader's in-memory cache keeps per-batch work small.
    if device_type == "cpu" and cores <= 4:
        return 0
    return min(8, max(1, cores // 2))


def _check_run_folder(out_dir: Path, spec: RunSpec, rhash: str) -> None:
    spec_file = out_dir / SPEC_NAME
    if spec_file.exists():
        try:
            stored = json.loads(spec_file.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{spec_file}: not valid JSON; remove the folder or choose another --out") from None
        if stored.get("run_hash") != rhash:
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
        return None  # a damaged result is recomputed from the checkpoint, never trusted
    return result if result.run_hash == rhash else None


def execute(spec: RunSpec, runtime: RuntimeOptions, trick_versions: Mapping[str, int] | None = None) -> RunResult:
    """Train (or resume) and evaluate ``spec``; returns its metrics on every test set."""
    rhash = run_hash(spec, trick_versions)
    out_dir = Path(runtime.out_dir)
    log = runtime.log or _stderr_log
    cached = load_cached_result(out_dir, rhash)
    if cached is not None:
        log(f"run {rhash[:12]}: already done, results from {out_dir / RESULT_NAME}")
        return cached
    _check_run_folder(out_dir, spec, rhash)
    progress = sys.stderr.isatty() if runtime.progress is None else runtime.progress
    return _Run(spec, rhash, out_dir, runtime, log, progress).execute()


class _Run:
    """One execution of a spec; holds the built components while it trains and evaluates."""

    def __init__(self, spec: RunSpec, rhash: str, out_dir: Path, runtime: RuntimeOptions,
                 log: Callable[[str], None], progress: bool) -> None:
        self.spec, self.rhash, self.out_dir, self.runtime = spec, rhash, out_dir, runtime
        self.progress = progress
        self._log_file = out_dir / "train.log"
        self._log_sink = log

    def log(self, line: str) -> None:
        self._log_sink(line)
        with open(self._log_file, "a") as fh:
            fh.write(line + "\n")

    def execute(self) -> RunResult:
        from reidbench.harness.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, restore_rng_state
        from reidbench.harness.data.named import load_named_dataset
        from reidbench.harness.execution.environment import environment
        from reidbench.harness.train.loop import run_training

        spec = self.spec
        device = select_device(self.runtime.device)
        self._configure_torch(device)
        datasets: dict[str, Any] = {}
        provenance: dict[str, dict[str, Any]] = {}
        for name in dict.fromkeys((spec.data.train, *spec.data.test)):
            ds, prov = load_named_dataset(name, self.runtime.data_paths, progress=self.progress)
            datasets[name], provenance[name] = ds, prov.to_dict()
        train_set = datasets[spec.data.train]
        workers = self.runtime.num_workers if self.runtime.num_workers is not None else default_workers(device.type)
        self.workers = workers

        components, model_info = self._build(train_set, device, workers)
        ckpt_path = self.out_dir / CHECKPOINT_NAME
        start_epoch, history = 0, []
        if ckpt_path.exists():
            state = load_checkpoint(ckpt_path)
            if state.get("run_hash") != self.rhash:
                raise ValueError(f"{ckpt_path}: checkpoint of another run ({str(state.get('run_hash'))[:12]})")
            self._load_state(components, state)
            restore_rng_state(state.get("rng", {}))
            start_epoch = int(state["epoch"])
            history = json.loads(state.get("history_json", "[]"))
            self.log(f"run {self.rhash[:12]}: resuming after epoch {start_epoch}/{spec.schedule.max_epochs}")
        else:
            self.log(f"run {self.rhash[:12]}: training {spec.model.backbone} on {spec.data.train} "
                     f"({len(train_set.train)} images, {train_set.num_train_pids} ids) on {device}, "
                     f"{spec.schedule.max_epochs} epochs, {workers} loader workers")

        hooks = [_HistoryHook(self, history, datasets), _CheckpointHook(self, history)]
        if self.runtime.on_epoch is not None:
            hooks.append(_CallbackHook(self.runtime.on_epoch))
        run_training(components, start_epoch, spec.schedule.max_epochs, spec.train.seed, hooks)
        seconds_train = sum(float(h.get("seconds", 0.0)) for h in history)  # across resumes

        t1 = time.perf_counter()
        metrics = {}
        for name in spec.data.test:
            metrics[name] = self.evaluate_on(components.model, datasets[name], device, name, save=True)
            line = "  ".join(f"{k} {100 * metrics[name][k]:.1f}" for k in METRIC_KEYS)
            self.log(f"run {self.rhash[:12]}: {spec.data.train}→{name}: {line}")
        seconds_eval = time.perf_counter() - t1

        result = RunResult(
            run_hash=self.rhash, spec=spec, metrics=metrics, history=history, provenance=provenance,
            model_info=model_info, environment=environment(device), seconds_train=seconds_train,
            seconds_eval=seconds_eval, out_dir=str(self.out_dir),
        )
        tmp = self.out_dir / (RESULT_NAME + ".tmp")
        tmp.write_text(json.dumps(result.to_dict(), indent=1, sort_keys=True))
        os.replace(tmp, self.out_dir / RESULT_NAME)
        return result

    # ------------------------------------------------------------------ building

    def _configure_torch(self, device) -> None:
        import torch

        if device.type == "cuda":
            torch.backends.cudnn.benchmark = not self.spec.train.deterministic
            torch.backends.cuda.matmul.allow_tf32 = not self.spec.train.deterministic
            torch.backends.cudnn.allow_tf32 = not self.spec.train.deterministic
        if self.spec.train.deterministic:
            torch.backends.cudnn.deterministic = True
            torch.use_deterministic_algorithms(True, warn_only=True)

    def _build(self, train_set, device, workers: int):
        import torch

        from reidbench.harness.data.loader import build_train_loader
        from reidbench.harness.train.loop import TrainComponents
        from reidbench.models.objective import BotObjective
        from reidbench.harness.train.optim import build_epoch_scheduler, build_optimizer
        from reidbench.models.build import build_model
        from reidbench.models.losses import build_center_optimizer

        spec = self.spec
        torch.manual_seed(spec.train.seed)  # weight init (classifier, BNNeck, centers) depends only on the seed
        model = build_model(
            spec.model.backbone, num_classes=train_set.num_train_pids, neck=spec.model.neck,
            last_stride=spec.model.last_stride, pretrained=spec.model.pretrained,
            weights_path=spec.model.weights_path,
        )
        objective = BotObjective(
            train_set.num_train_pids, model.feat_dim, id_weight=spec.loss.id_weight,
            label_smoothing=spec.loss.label_smoothing, triplet_weight=spec.loss.triplet_weight,
            triplet_margin=spec.loss.triplet_margin, center_weight=spec.loss.center_weight,
        )
        # channels_last helps on CPU too (oneDNN convolutions: ~20% for MobileNetV2 on 2 cores).
        channels_last = spec.train.channels_last
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        objective.to(device)
        optimizer = build_optimizer(model.parameters(), spec.optim.name, spec.optim.base_lr,
                                    spec.optim.weight_decay, tuple(spec.optim.betas))
        sched = spec.schedule
        scheduler = build_epoch_scheduler(optimizer, sched.milestones, sched.gamma, sched.warmup_epochs,
                                          sched.warmup_factor)
        center_optimizer = (build_center_optimizer(objective.center_loss, lr=spec.loss.center_lr)
                            if objective.center_loss is not None else None)
        amp_dtype = None
        scaler = None
        if device.type == "cuda" and spec.train.amp != "off":
            amp_dtype = torch.bfloat16 if spec.train.amp == "bf16" else torch.float16
            if amp_dtype is torch.float16:
                scaler = torch.amp.GradScaler("cuda")
        loader = build_train_loader(
            train_set.train, image_size=tuple(spec.data.image_size), ids_per_batch=spec.data.ids_per_batch,
            imgs_per_id=spec.data.imgs_per_id, seed=spec.train.seed, flip_prob=spec.data.flip_prob,
            pad_px=spec.data.pad_px, random_erasing_prob=spec.data.random_erasing_prob, num_workers=workers,
            cache=True, pin_memory=device.type == "cuda",
        )
        components = TrainComponents(
            model=model, objective=objective, optimizer=optimizer, scheduler=scheduler, loader=loader,
            device=device, center_optimizer=center_optimizer, center_weight=spec.loss.center_weight,
            amp_dtype=amp_dtype, scaler=scaler, channels_last=channels_last, progress=self.progress,
        )
        info = dict(getattr(model, "reid_info", {}) or {})
        info.setdefault("pretrained_source", None)
        return components, info

    def _load_state(self, c, state: dict[str, Any]) -> None:
        c.model.load_state_dict(state["model"])
        c.objective.load_state_dict(state["objective"])
        c.optimizer.load_state_dict(state["optimizer"])
        c.scheduler.load_state_dict(state["scheduler"])
        if c.center_optimizer is not None:
            c.center_optimizer.load_state_dict(state["center_optimizer"])
        if c.scaler is not None and "scaler" in state:
            c.scaler.load_state_dict(state["scaler"])

    def checkpoint_state(self, c, epoch: int, history: list[dict[str, Any]]) -> dict[str, Any]:
        from reidbench.harness.train.checkpoint import rng_state

        state = {
            "run_hash": self.rhash,
            "spec_json": canonical_json(self.spec.to_dict()),
            "epoch": epoch,
            "model": c.model.state_dict(),
            "objective": c.objective.state_dict(),
            "optimizer": c.optimizer.state_dict(),
            "scheduler": c.scheduler.state_dict(),
            "rng": rng_state(),
            "history_json": json.dumps(history),
        }
        if c.center_optimizer is not None:
            state["center_optimizer"] = c.center_optimizer.state_dict()
        if c.scaler is not None:
            state["scaler"] = c.scaler.state_dict()
        return state

    # ------------------------------------------------------------------ evaluation

    def evaluate_on(self, model, dataset, device, name: str, save: bool) -> dict[str, float]:
        import numpy as np

        from reidbench.harness.data.loader import build_test_loader
        from reidbench.harness.evaluation.protocol import extract_features, score

        spec = self.spec
        records = tuple(dataset.query) + tuple(dataset.gallery)
        loader = build_test_loader(records, image_size=tuple(spec.data.image_size), batch_size=spec.eval.batch_size,
                                   num_workers=self.workers)
        amp = None
        if device.type == "cuda" and spec.train.amp != "off":
            import torch

            amp = torch.bfloat16 if spec.train.amp == "bf16" else torch.float16
        feats, pids, camids = extract_features(model, loader, device, flip=spec.eval.flip,
                                               feature_key=spec.feature_key, normalize=False, amp_dtype=amp)
        feats = feats.numpy() if hasattr(feats, "numpy") else np.asarray(feats)
        nq = len(dataset.query)
        q, g = feats[:nq], feats[nq:]
        args = dict(q_pids=np.asarray(pids[:nq]), g_pids=np.asarray(pids[nq:]),
                    q_camids=np.asarray(camids[:nq]), g_camids=np.asarray(camids[nq:]))
        out = score(q, g, **args, metric=spec.eval.metric, normalize=spec.eval.normalize, rerank=False)
        metrics = {k: float(out[k]) for k in METRIC_KEYS}
        if spec.eval.rerank:
            rr = score(q, g, **args, metric=spec.eval.metric, normalize=spec.eval.normalize, rerank=True)
            metrics.update({f"rerank_{k}": float(rr[k]) for k in METRIC_KEYS})
        if save:
            np.savez_compressed(
                self.out_dir / f"features-{name}.npz", q_feats=q.astype(np.float16), g_feats=g.astype(np.float16),
                **args, q_paths=np.array([r.path for r in dataset.query]),
                g_paths=np.array([r.path for r in dataset.gallery]),
            )
        return metrics


class _HistoryHook:
    """Per-epoch log line, history record, and the optional periodic mAP for training curves."""

    def __init__(self, run: _Run, history: list[dict[str, Any]], datasets: Mapping[str, Any]) -> None:
        self.run, self.history, self.datasets = run, history, datasets

    def on_epoch_end(self, c, stats) -> None:
        spec = self.run.spec
        every = spec.eval.every_epochs
        if every and (stats.epoch % every == 0) and stats.epoch < spec.schedule.max_epochs:
            first = spec.data.test[0]
            m = self.run.evaluate_on(c.model, self.datasets[first], c.device, first, save=False)
            stats.extra[f"{first}/mAP"] = m["mAP"]
            stats.extra[f"{first}/R1"] = m["R1"]
        self.history.append(stats.to_dict())
        losses = " ".join(f"{k}={v:.4f}" for k, v in stats.losses.items())
        extra = " ".join(f"{k}={100 * v:.1f}" for k, v in stats.extra.items())
        self.run.log(
            f"epoch {stats.epoch:>3}/{spec.schedule.max_epochs}  {losses}  lr={stats.lr:.3g}  "
            f"{stats.images_per_s:.0f} img/s  data-wait {100 * stats.data_wait_fraction:.0f}%"
            + (f"  {extra}" if extra else "")
        )


class _CheckpointHook:
    def __init__(self, run: _Run, history: list[dict[str, Any]]) -> None:
        self.run, self.history = run, history

    def on_epoch_end(self, c, stats) -> None:
        from reidbench.harness.train.checkpoint import CHECKPOINT_NAME, save_checkpoint

        every = self.run.spec.train.checkpoint_every_epochs
        if stats.epoch % every == 0 or stats.epoch == self.run.spec.schedule.max_epochs:
            save_checkpoint(self.run.out_dir / CHECKPOINT_NAME, self.run.checkpoint_state(c, stats.epoch, self.history))


class _CallbackHook:
    """The caller's per-epoch callback (``RuntimeOptions.on_epoch``), after the epoch's checkpoint."""

    def __init__(self, callback: Callable[[int, dict[str, Any]], None]) -> None:
        self.callback = callback

    def on_epoch_end(self, c, stats) -> None:
        self.callback(stats.epoch, stats.to_dict())
