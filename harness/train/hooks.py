"""Training-loop hooks: checkpointing, periodic evaluation, history and log lines, a per-epoch callback.

A hook is any object with some of ``before_epoch(components, epoch)``, ``after_step(components,
step, losses)`` and ``on_epoch_end(components, stats)`` (``loop.run_training`` calls the methods a
hook has, in list order). ``step`` counts from 1 within the epoch; ``components.train_progress``
has the epoch, ``steps_per_epoch`` and ``optimizer_steps`` (the run's optimizer steps so far, this
one included: a global step that a resumed run continues; epochs may differ in length). ``losses`` are the step's named weighted
loss tensors, ``stats`` the epoch's ``loop.EpochStats``.

Each hook takes plain arguments, so the same hooks serve reidbench's runner and a loop of your own
(``docs/design.md``, "Reusing the training loop"). The runner's order, which the output depends
on: ``EvaluationHook`` (adds its metrics to ``stats.extra``) → ``ConvergenceHook`` (the convergence
window's mAP, when it can decide) → ``HistoryHook`` (records and logs the epoch, with those metrics)
→ TensorBoard (``harness/tracking/tensorboard.py``) → ``CheckpointHook`` (saves the history so far)
→ ``CallbackHook``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from reidbench.harness.train.checkpoint import ResumePoint, resume, save_checkpoint, training_state


def epoch_line(stats: Any, max_epochs: int) -> str:
    """The per-epoch line of ``train.log``: losses, LR, throughput, data-wait share, extra metrics in %."""
    losses = " ".join(f"{k}={v:.4f}" for k, v in stats.losses.items())
    extra = " ".join(f"{k}={100 * v:.1f}" for k, v in stats.extra.items())
    stage = f"  [{stats.stage}]" if stats.stage else ""
    return (f"epoch {stats.epoch:>3}/{max_epochs}{stage}  {losses}  lr={stats.lr:.3g}  "
            f"{stats.images_per_s:.0f} img/s  data-wait {100 * stats.data_wait_fraction:.0f}%"
            + (f"  {extra}" if extra else ""))


class HistoryHook:
    """Appends each epoch's ``stats.to_dict()`` to ``history`` and sends its ``epoch_line`` to ``log``.

    ``history``: the list to extend (a resumed run passes the records it resumed with); ``log``:
    None = no log line.
    """

    def __init__(self, max_epochs: int, history: list[dict[str, Any]] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.max_epochs = max_epochs
        self.history = history if history is not None else []
        self.log = log

    def on_epoch_end(self, c: Any, stats: Any) -> None:
        self.history.append(stats.to_dict())
        if self.log is not None:
            self.log(epoch_line(stats, self.max_epochs))


class EvaluationHook:
    """Every ``every_epochs`` epochs, before the last (the final evaluation scores that one), score
    the model on one test set and add the metrics to the epoch's ``stats.extra`` as
    ``<test_set>/<metric>`` (fractions): the training curves' periodic evaluation. Nothing is saved.

    ``dataset``: the test set (``query`` and ``gallery`` records); ``settings``: an
    ``evaluation.settings.EvaluationSettings`` (its ``auto`` feature resolved against the model's
    ``test_feature``); the rest as ``evaluation.run.ModelScorer`` takes them.
    """

    def __init__(self, test_set: str, dataset: Any, every_epochs: int, max_epochs: int, *, device: Any,
                 image_size: Sequence[int], batch_size: int, settings: Any = None, workers: int = 0,
                 amp_dtype: Any = None, masks: str = "", metrics: Sequence[str] = ("mAP", "R1")) -> None:
        from reidbench.harness.evaluation.settings import EvaluationSettings

        self.test_set, self.dataset = test_set, dataset
        self.every_epochs, self.max_epochs = every_epochs, max_epochs
        self.settings = settings if settings is not None else EvaluationSettings()
        self.device, self.image_size, self.batch_size = device, tuple(image_size), batch_size
        self.workers, self.amp_dtype, self.masks, self.metrics = workers, amp_dtype, masks, tuple(metrics)

    def due(self, epoch: int) -> bool:
        return bool(self.every_epochs) and epoch % self.every_epochs == 0 and epoch < self.max_epochs

    def evaluate(self, model: Any) -> dict[str, float]:
        """Every metric (``evaluation.run.METRIC_KEYS``) of ``model`` on the test set, as fractions."""
        from reidbench.harness.evaluation.run import EvaluationRequest, ModelScorer

        request = EvaluationRequest(self.test_set, "", "", self.settings.resolved(model.test_feature))
        # A new scorer each time: a scorer keeps the features it extracted, and the model has changed.
        scorer = ModelScorer(model, run_hash="", epoch=-1, out_dir=Path("."), device=self.device,
                             image_size=self.image_size, batch_size=self.batch_size, workers=self.workers,
                             amp_dtype=self.amp_dtype, masks=self.masks)
        return scorer.score(request, self.dataset, None, save=False)["metrics"]

    def on_epoch_end(self, c: Any, stats: Any) -> None:
        if not self.due(stats.epoch):
            return
        values = self.evaluate(c.model)
        for name in self.metrics:
            stats.extra[f"{self.test_set}/{name}"] = values[name]


class ConvergenceHook:
    """Measures the mAP half of the convergence check (``train/convergence.py``) on the first test set
    over the window's epochs (a, b), only when it can change the verdict.

    At epoch a it keeps a copy of the model's weights in memory (unless the periodic evaluation
    already scored a: ``<test_set>/mAP`` in ``stats.extra``; put this hook after ``EvaluationHook``
    and before ``HistoryHook``). At epoch b it reads both epochs' losses: when the loss criterion
    already fails, nothing is scored; otherwise epoch a's weights are scored (swapped in and the
    current ones restored exactly; the value goes into epoch a's record of ``history``) and so is
    epoch b (``stats.extra``), both as ``convergence/<test_set>/mAP`` — except epoch b = the last
    one, which the final evaluation scores. A run resumed between a and b has lost a's weights: its
    mAP half stays unknown. ``evaluation``: an ``EvaluationHook`` for the test set (its
    ``evaluate`` scores; its own schedule is not used); ``history``: ``HistoryHook.history``.
    """

    def __init__(self, evaluation: EvaluationHook, window: Sequence[int], history: list[dict[str, Any]]) -> None:
        self.evaluation, self.history = evaluation, history
        self.first, self.last = (int(e) for e in window)
        self._weights: dict[str, Any] | None = None

    def _record(self, epoch: int) -> dict[str, Any] | None:
        return next((h for h in self.history if h.get("epoch") == epoch), None)

    def on_epoch_end(self, c: Any, stats: Any) -> None:
        from reidbench.harness.train.convergence import KEY_PREFIX, LOSS_REL_TOL, loss_check

        test = self.evaluation.test_set
        periodic, key = f"{test}/mAP", f"{KEY_PREFIX}{test}/mAP"
        if stats.epoch == self.first:
            if periodic not in stats.extra:
                self._weights = _copy_state(c.model)
            return
        if stats.epoch != self.last:
            return
        weights, self._weights = self._weights, None
        before = self._record(self.first)
        if before is None:
            return
        first = self._record(1)
        _, change, _ = loss_check(before.get("losses") or {}, stats.losses, (self.first, self.last),
                                  (first or {}).get("losses"))
        if change is not None and not abs(change) < LOSS_REL_TOL:
            return  # the loss criterion fails: "not converged" whatever the mAP says
        extra = before.setdefault("extra", {})
        if periodic not in extra and key not in extra and weights is not None:
            current = _copy_state(c.model)
            c.model.load_state_dict(weights)
            try:
                extra[key] = self.evaluation.evaluate(c.model)["mAP"]
            finally:
                c.model.load_state_dict(current)
        if stats.epoch < self.evaluation.max_epochs and periodic not in stats.extra:
            stats.extra[key] = self.evaluation.evaluate(c.model)["mAP"]


def _copy_state(model: Any) -> dict[str, Any]:
    """A detached copy of every parameter and buffer (``load_state_dict`` puts it back bit for bit)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class CheckpointHook:
    """Saves a resumable checkpoint (``checkpoint.training_state``) to ``path`` every ``every_epochs``
    epochs and after the last one; ``resume`` is the other half.

    ``history``: the per-epoch records saved with it (share ``HistoryHook.history`` and put this
    hook after that one). ``run_hash``, ``spec_json``, ``num_classes`` go into the checkpoint as
    they are (reidbench's runner identifies the run with them).
    """

    def __init__(self, path: str | Path, every_epochs: int, max_epochs: int,
                 history: list[dict[str, Any]] | None = None, *, run_hash: str = "", spec_json: str = "",
                 num_classes: int = 0) -> None:
        self.path, self.every_epochs, self.max_epochs = Path(path), every_epochs, max_epochs
        self.history = history if history is not None else []
        self.identity: Mapping[str, Any] = {"run_hash": run_hash, "spec_json": spec_json, "num_classes": num_classes}

    def due(self, epoch: int) -> bool:
        return epoch % self.every_epochs == 0 or epoch == self.max_epochs

    def on_epoch_end(self, c: Any, stats: Any) -> None:
        if self.due(stats.epoch):
            save_checkpoint(self.path, training_state(c, stats.epoch, self.history, **self.identity))

    def resume(self, c: Any, run_hashes: Sequence[str] | None = None) -> ResumePoint | None:
        """Restore ``c`` from ``path`` (None when there is no checkpoint yet) and put the saved
        records into ``history``; continue with ``run_training(c, point.epoch, ...)``."""
        point = resume(self.path, c, run_hashes)
        if point is not None:
            self.history[:] = point.history
        return point


class CallbackHook:
    """Calls ``callback(epoch, stats.to_dict())`` after each epoch (``RuntimeOptions.on_epoch``: after
    the epoch's checkpoint). It may raise to stop training."""

    def __init__(self, callback: Callable[[int, dict[str, Any]], None]) -> None:
        self.callback = callback

    def on_epoch_end(self, c: Any, stats: Any) -> None:
        self.callback(stats.epoch, stats.to_dict())
