"""The training-loop hooks used on their own, with hand-made components (no spec, no runner):
a checkpoint round trip, the periodic evaluation, the history and its log line."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from reidbench.harness.data.formats import ImageRecord, ReidDataset
from reidbench.harness.evaluation.settings import EvaluationSettings
from reidbench.harness.train.checkpoint import load_checkpoint, save_checkpoint
from reidbench.harness.train.hooks import CallbackHook, CheckpointHook, EvaluationHook, HistoryHook, epoch_line
from reidbench.harness.train.loop import EpochStats, TrainComponents, run_training
from reidbench.models.terms import OwnOptimizer

NUM_CLASSES, DIM, SEED, EPOCHS = 3, 5, 7, 3


class TinyNet(nn.Module):
    test_feature = "f"

    def __init__(self) -> None:
        super().__init__()
        # dropout: each epoch draws random numbers, so a resume must replay the RNG too; any image size
        self.body = nn.Sequential(nn.AdaptiveAvgPool2d((8, 4)), nn.Flatten(), nn.Linear(3 * 8 * 4, DIM),
                                  nn.Dropout(0.3))
        self.classifier = nn.Linear(DIM, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.body(x)
        return {"f": f, "logits": self.classifier(f)}


class CenteredCE(nn.Module):
    """Cross-entropy plus a center-loss-like term whose centres have their own optimiser."""

    def __init__(self) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(NUM_CLASSES, DIM))

    def forward(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        pull = ((outputs["f"] - self.centers[labels]) ** 2).sum(1).mean()
        return {"id": nn.functional.cross_entropy(outputs["logits"], labels), "center": 0.01 * pull}


def _batches() -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(0)
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    return [(torch.randn(6, 3, 8, 4, generator=g) + pids.view(-1, 1, 1, 1), pids, torch.zeros(6), torch.arange(6))
            for _ in range(4)]


def _components(init_seed: int) -> TrainComponents:
    torch.manual_seed(init_seed)
    model, objective = TinyNet(), CenteredCE()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # momentum: optimiser state matters
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)  # so does the schedule's
    own = OwnOptimizer(torch.optim.SGD(objective.parameters(), lr=0.5, momentum=0.9))
    return TrainComponents(model, objective, optimizer, scheduler, _batches(), torch.device("cpu"),
                           own_optimizers=[own])


def _state(c: TrainComponents) -> dict[str, torch.Tensor]:
    return {**{f"model.{k}": v for k, v in c.model.state_dict().items()}, "centers": c.objective.centers.detach()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class StopBefore:
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def before_epoch(self, c: TrainComponents, epoch: int) -> None:
        if epoch == self.epoch:
            raise RuntimeError("simulated crash")


def _without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in ("seconds", "data_wait_seconds", "images_per_s")} for h in history]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict[str, torch.Tensor], list[dict]]:
    c, history = _components(0), []
    path = tmp_path_factory.mktemp("full") / "checkpoint.pt"
    run_training(c, 0, EPOCHS, SEED, [HistoryHook(EPOCHS, history), CheckpointHook(path, 1, EPOCHS, history)])
    return _state(c), history


@pytest.mark.parametrize("own_key", ["own_optimizer_0", "center_optimizer"])
def test_checkpoint_hook_resume_continues_to_the_uninterrupted_weights(uninterrupted, tmp_path, own_key):
    full_state, full_history = uninterrupted
    path = tmp_path / "checkpoint.pt"
    history: list[dict] = []
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(_components(0), 0, EPOCHS, SEED,
                     [StopBefore(3), HistoryHook(EPOCHS, history), CheckpointHook(path, 1, EPOCHS, history)])
    if own_key == "center_optimizer":  # the key checkpoints written before loss terms existed use
        state = load_checkpoint(path)
        state["center_optimizer"] = state.pop("own_optimizer_0")
        save_checkpoint(path, state)

    c = _components(1)  # other initial weights: everything must come from the checkpoint
    hook = CheckpointHook(path, 1, EPOCHS)
    point = hook.resume(c)
    assert (point.epoch, point.stage) == (2, "")
    assert [h["epoch"] for h in hook.history] == [1, 2]
    run_training(c, point.epoch, EPOCHS, SEED, [HistoryHook(EPOCHS, hook.history), hook])
    assert _same(_state(c), full_state)
    assert _without_timings(hook.history) == _without_timings(full_history)
    assert load_checkpoint(path)["epoch"] == 3


def test_without_resume_the_same_epochs_give_other_weights(uninterrupted):
    """The round trip above is not trivially true: fresh components trained from epoch 3 end elsewhere."""
    c = _components(1)
    run_training(c, 2, EPOCHS, SEED)
    assert not _same(_state(c), uninterrupted[0])


def test_checkpoint_hook_saves_every_n_epochs_and_the_last_with_the_documented_keys(tmp_path):
    path = tmp_path / "ck.pt"
    seen: list[int | None] = []

    class Spy:
        def on_epoch_end(self, c, stats) -> None:
            seen.append(load_checkpoint(path)["epoch"] if path.exists() else None)

    history: list[dict] = []
    hooks = [HistoryHook(5, history), CheckpointHook(path, 2, 5, history, run_hash="abc", spec_json="{}",
                                                     num_classes=NUM_CLASSES), Spy()]
    run_training(_components(0), 0, 5, SEED, hooks)
    assert seen == [None, 2, 2, 4, 5]
    state = load_checkpoint(path)
    assert set(state) == {"run_hash", "spec_json", "epoch", "stage", "num_classes", "model", "objective", "optimizer",
                          "scheduler", "rng", "history_json", "optimizer_steps", "own_optimizer_0"}
    assert (state["run_hash"], state["spec_json"], state["num_classes"]) == ("abc", "{}", NUM_CLASSES)
    assert state["optimizer_steps"] == 5 * len(_components(0).loader)  # the run's optimizer steps so far


def test_resume_refuses_a_checkpoint_of_another_run_and_returns_none_without_one(tmp_path):
    path = tmp_path / "ck.pt"
    c = _components(0)
    assert CheckpointHook(path, 1, 1).resume(c) is None
    run_training(c, 0, 1, SEED, [CheckpointHook(path, 1, 1, run_hash="aaaa")])
    with pytest.raises(ValueError, match=r"ck\.pt: checkpoint of another run \(aaaa\)"):
        CheckpointHook(path, 1, 1).resume(_components(0), run_hashes={"bbbb"})
    assert CheckpointHook(path, 1, 1).resume(_components(0), run_hashes={"bbbb", "aaaa"}).epoch == 1


def test_callback_hook_runs_after_the_checkpoint_and_its_error_stops_training(tmp_path):
    path = tmp_path / "ck.pt"
    calls: list[tuple[int, float]] = []

    def callback(epoch: int, stats: dict) -> None:
        calls.append((epoch, stats["lr"]))
        if epoch == 2:
            raise RuntimeError("pruned")

    with pytest.raises(RuntimeError, match="pruned"):
        run_training(_components(0), 0, EPOCHS, SEED, [CheckpointHook(path, 1, EPOCHS), CallbackHook(callback)])
    assert calls == [(1, pytest.approx(0.1)), (2, pytest.approx(0.05))]  # StepLR halves the LR each epoch
    assert load_checkpoint(path)["epoch"] == 2


def test_history_hook_records_the_epoch_and_logs_its_line():
    stats = EpochStats(epoch=2, losses={"id": 1.23456, "triplet": 0.5}, lr=3.5e-4, images=120, seconds=2.0,
                       data_wait_seconds=0.5, extra={"tiny/mAP": 0.4567}, stage="all")
    expected = ("epoch   2/10  [all]  id=1.2346 triplet=0.5000  lr=0.00035  60 img/s  data-wait 25%  "
                "tiny/mAP=45.7")
    assert epoch_line(stats, 10) == expected
    lines: list[str] = []
    hook = HistoryHook(10, [{"epoch": 1}], log=lines.append)
    hook.on_epoch_end(None, stats)
    assert lines == [expected]
    assert hook.history == [{"epoch": 1}, stats.to_dict()]
    plain = EpochStats(epoch=12, losses={"id": 2.0}, lr=0.01, images=0, seconds=0.0, data_wait_seconds=0.0)
    assert epoch_line(plain, 120) == "epoch  12/120  id=2.0000  lr=0.01  0 img/s  data-wait 0%"
    HistoryHook(10).on_epoch_end(None, plain)  # no log: nothing to call


# ---------------------------------------------------------------------------------------- evaluation

RED, RED_ISH, BLUE = (200, 0, 0), (190, 0, 0), (0, 0, 200)


def _solid_dataset(root: Path) -> ReidDataset:
    """Query 1 (red) has its true match (red-ish) behind an impostor of the same red: AP 1/2, R1 0.
    Query 2 (blue) finds its match first: AP 1, R1 1. So mAP = 0.75, R1 = 0.5."""

    def image(name: str, colour: tuple[int, int, int]) -> str:
        path = root / f"{name}.png"
        Image.fromarray(np.full((8, 4, 3), colour, dtype=np.uint8)).save(path)
        return str(path)

    query = (ImageRecord(image("q1", RED), 1, 0), ImageRecord(image("q2", BLUE), 2, 0))
    gallery = (ImageRecord(image("g1", RED_ISH), 1, 1), ImageRecord(image("g2", BLUE), 2, 1),
               ImageRecord(image("g3", RED), 3, 1))
    return ReidDataset("toy", str(root), "market", (), query, gallery)


class MeanColour(nn.Module):
    test_feature = "f"

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"f": x.mean(dim=(2, 3))}


def test_evaluation_hook_adds_the_test_sets_metrics_on_due_epochs_only(tmp_path):
    dataset = _solid_dataset(tmp_path)
    hook = EvaluationHook("toy", dataset, every_epochs=2, max_epochs=5, device=torch.device("cpu"),
                          image_size=(8, 4), batch_size=2, settings=EvaluationSettings(normalize=False))
    assert [e for e in range(1, 6) if hook.due(e)] == [2, 4]  # never the last: the final evaluation scores it

    class Holder:
        model = MeanColour()

    extras = []
    for epoch in (1, 2):
        stats = EpochStats(epoch, {"id": 1.0}, 0.1, 6, 1.0, 0.0)
        hook.on_epoch_end(Holder, stats)
        extras.append(stats.extra)
    assert extras[0] == {}
    assert list(extras[1]) == ["toy/mAP", "toy/R1"]
    assert extras[1] == {"toy/mAP": pytest.approx(0.75), "toy/R1": pytest.approx(0.5)}
    assert not list(tmp_path.glob("features-*")) and not list(Path(".").glob("features-toy*"))  # nothing saved


def test_the_reuse_example_in_design_md_trains_checkpoints_and_resumes(tmp_path, monkeypatch, capsys):
    """docs/design.md section 6 runs as written (with this file's toy components) and, run again, resumes."""
    pytest.importorskip("tensorboard", reason="the example logs to TensorBoard")
    doc = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()
    section = doc.split("## 6. Reusing the training loop and its hooks", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    dataset = _solid_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    c = _components(0)

    def run() -> dict:
        scope = {"model": c.model, "objective": c.objective, "optimizer": c.optimizer, "scheduler": c.scheduler,
                 "loader": c.loader, "device": torch.device("cpu"), "test_set": dataset}
        exec(compile(code, "docs/design.md", "exec"), scope)
        return scope

    first = run()
    assert first["point"] is None and load_checkpoint(tmp_path / "out" / "checkpoint.pt")["epoch"] == 60
    history = first["checkpoint"].history
    assert [h["epoch"] for h in history] == list(range(1, 61))
    assert [h["epoch"] for h in history if "market/mAP" in h["extra"]] == [10, 20, 30, 40, 50]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("/")[0] for line in lines] == [f"epoch {e:>3}" for e in range(1, 61)]  # one line each
    assert list((tmp_path / "out").glob("events.out.tfevents.*"))
    again = run()
    assert again["point"].epoch == 60 and again["start"] == 60 and len(again["checkpoint"].history) == 60
    assert capsys.readouterr().out == ""  # nothing left to train
