"""TensorBoard logs: every epoch scalar, periodic and final metric of a run, read back from the event
files and compared with what the results database stored; a resumed run logs each epoch once."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install 'reidbench[tensorboard]')")

import yaml  # noqa: E402

from reidbench.harness.evaluation.settings import Variant  # noqa: E402
from reidbench.harness.spec import spec_from_dict  # noqa: E402
from reidbench.harness.store import Store  # noqa: E402
from reidbench.harness.train.runner import RuntimeOptions, execute  # noqa: E402

# 4 epochs, a checkpoint every 2, the periodic evaluation every 2 (epoch 2; the last epoch's is the final one).
SPEC = """
profile: cpu
model: {backbone: "timm:test_resnet", pretrained: false, last_stride: 2, neck: plain}
data: {train: tiny, test: [tiny], image_size: [32, 16], ids_per_batch: 3, imgs_per_id: 2, pad_px: 2}
schedule: {max_epochs: 4, milestones: [3], warmup_epochs: 0}
eval: {batch_size: 16, every_epochs: 2}
train: {seed: 0, checkpoint_every_epochs: 2}
"""
COSINE = Variant(name="cos", changes=(("metric", "cosine"),), label="cosine")


def _events(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})  # 0 = keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _record(tmp_path: Path, result) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    store.ensure_run(result.run_hash, result.spec.to_dict(), "tb")
    assert store.claim(result.run_hash, "test")
    store.record_result(result.run_hash, "test", result.to_dict())
    return store


def _check_against_store(store: Store, run_hash: str, events: dict[str, list[tuple[int, float]]]) -> None:
    epochs = store.epochs(run_hash)
    assert [e.epoch for e in epochs] == [1, 2, 3, 4]
    by_epoch = {e.epoch: e.values for e in epochs}
    terms = sorted(k for k in by_epoch[1] if k.startswith("loss/"))
    assert terms, "the store has no loss terms"
    expected: dict[str, list[tuple[int, float]]] = {
        "lr": [(n, v["lr"]) for n, v in by_epoch.items()],
        "images_per_s": [(n, v["images_per_s"]) for n, v in by_epoch.items()],
        "seconds": [(n, v["seconds"]) for n, v in by_epoch.items()],
        "data_wait_fraction": [(n, v["data_wait_seconds"] / v["seconds"]) for n, v in by_epoch.items()],
        "loss/total": [(n, sum(v[t] for t in terms)) for n, v in by_epoch.items()],
    }
    for term in terms:
        expected[term] = [(n, v[term]) for n, v in by_epoch.items()]
    # the periodic mAP/R1 of epoch 2, then the final default evaluation at the last epoch, under one tag
    final = {(e.test_set, e.variant): e.metrics for e in store.evaluations([run_hash])}
    assert set(final) == {("tiny", ""), ("tiny", "cos")}
    for metric in ("mAP", "R1"):
        expected[f"tiny/{metric}"] = [(2, by_epoch[2][f"tiny/{metric}"]), (4, final["tiny", ""][metric])]
    for metric in ("R5", "R10", "mINP"):
        expected[f"tiny/{metric}"] = [(4, final["tiny", ""][metric])]
    for metric, value in final["tiny", "cos"].items():
        expected[f"tiny/cos/{metric}"] = [(4, value)]
    assert set(events) == set(expected)
    for tag, points in expected.items():
        assert [s for s, _ in events[tag]] == [s for s, _ in points], tag
        # event files store float32
        assert [v for _, v in events[tag]] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-7), tag


def _options(tmp_path: Path, tiny_market: Path, **extra) -> RuntimeOptions:
    options = {"variants": (COSINE,), **extra}
    return RuntimeOptions(out_dir=tmp_path / "run", device="cpu", num_workers=0, data_paths={"tiny": str(tiny_market)},
                          progress=False, log=lambda s: None, **options)


def test_event_files_hold_every_epoch_and_final_metric_of_the_store(tiny_market, tmp_path):
    result = execute(spec_from_dict(yaml.safe_load(SPEC)), _options(tmp_path, tiny_market))
    store = _record(tmp_path, result)
    _check_against_store(store, result.run_hash, _events(tmp_path / "run"))


def test_a_resumed_run_logs_each_epoch_once(tiny_market, tmp_path, monkeypatch):
    import reidbench.harness.train.loop as loop

    real = loop.train_one_epoch

    def crash_on_epoch_4(c, epoch, max_epochs, hooks=()):
        if epoch == 4:
            raise RuntimeError("simulated crash")
        return real(c, epoch, max_epochs, hooks)

    spec = spec_from_dict(yaml.safe_load(SPEC))
    monkeypatch.setattr(loop, "train_one_epoch", crash_on_epoch_4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        execute(spec, _options(tmp_path, tiny_market))
    # epoch 3 was logged but not checkpointed (checkpoint every 2): the resume trains it again
    assert [s for s, _ in _events(tmp_path / "run")["lr"]] == [1, 2, 3]
    monkeypatch.setattr(loop, "train_one_epoch", real)
    result = execute(spec, _options(tmp_path, tiny_market))
    assert len(list((tmp_path / "run").glob("events.out.tfevents.*"))) == 2
    store = _record(tmp_path, result)
    _check_against_store(store, result.run_hash, _events(tmp_path / "run"))


def test_an_evaluation_added_later_reaches_the_runs_event_files_and_only_when_it_has_some(tiny_market, tmp_path):
    from reidbench.harness.train.runner import evaluate_stored

    spec = spec_from_dict(yaml.safe_load(SPEC))
    result = execute(spec, _options(tmp_path, tiny_market, variants=()))
    store = _record(tmp_path, result)
    before = _events(tmp_path / "run")
    assert not any("/cos/" in tag for tag in before)
    added = evaluate_stored(store.get_run(result.run_hash), ["tiny"], [COSINE], {"tiny": str(tiny_market)},
                            device="cpu", num_workers=0, include_default=False, log=lambda s: None)
    after = _events(tmp_path / "run")
    assert [e["variant"] for e in added] == ["cos"]
    for metric, value in added[0]["metrics"].items():
        assert after[f"tiny/cos/{metric}"] == [(4, pytest.approx(value, rel=1e-6, abs=1e-7))]
    assert {t: v for t, v in after.items() if "/cos/" not in t} == before  # the training's curves untouched
    # a run folder without event files (trained with TensorBoard off) gets none afterwards
    for events in (tmp_path / "run").glob("events.out.tfevents.*"):
        events.unlink()
    evaluate_stored(store.get_run(result.run_hash), ["tiny"], [COSINE], {"tiny": str(tiny_market)},
                    device="cpu", num_workers=0, include_default=False, log=lambda s: None)
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))


def test_switched_off_or_missing_package_writes_no_event_file(tiny_market, tmp_path, monkeypatch):
    import reidbench.harness.train.runner as runner
    import reidbench.harness.tracking.tensorboard as board

    spec = spec_from_dict(yaml.safe_load(SPEC.replace("max_epochs: 4", "max_epochs: 1").replace("[3]", "[1]")))
    execute(spec, _options(tmp_path / "off", tiny_market, tensorboard=False))
    assert not list((tmp_path / "off" / "run").glob("events.out.tfevents.*"))

    monkeypatch.setattr(board, "tensorboard_available", lambda: False)
    monkeypatch.setattr(runner, "_NOTED", set())
    lines: list[str] = []
    options = RuntimeOptions(out_dir=tmp_path / "missing", device="cpu", num_workers=0,
                             data_paths={"tiny": str(tiny_market)}, progress=False, log=lines.append)
    execute(spec, options)
    assert not list((tmp_path / "missing").glob("events.out.tfevents.*"))
    notes = [line for line in lines if "TensorBoard" in line]
    assert notes == ["TensorBoard logs off: the tensorboard package is not installed "
                     "(pip install 'reidbench[tensorboard]')"]


# ---------------------------------------------------------------------------------------------- lr_step

# SPEC with a step-granular schedule: a warmup over half an epoch, the LR ×0.1 from x = 2.5 (milestone 3.5).
STEP_SPEC = SPEC.replace("schedule: {max_epochs: 4, milestones: [3], warmup_epochs: 0}",
                         "schedule: {granularity: step, max_epochs: 4, milestones: [3.5], warmup_epochs: 0.5}")


def _lr_at(x: float) -> float:
    """The LR of the step starting at x epochs elapsed, from the schedule's formulas by hand."""
    warm = 0.01 + 0.99 * x / 0.5 if x < 0.5 else 1.0
    return 3.5e-4 * warm * (0.1 if x >= 2.5 else 1.0)


def _epoch_lengths(tiny_market: Path, epochs: int = 4) -> list[int]:
    """Optimizer steps of each epoch (a P×K epoch's length depends on its draw), from the sampler itself."""
    from reidbench.harness.data.named import load_named_dataset
    from reidbench.harness.data.samplers import build_sampler

    train_set, _ = load_named_dataset("tiny", {"tiny": str(tiny_market)}, progress=False)
    sampler = build_sampler("pk", (), [r.pid for r in train_set.train], 3, 2, 0)
    lengths = []
    for epoch in range(1, epochs + 1):
        sampler.set_epoch(epoch)
        lengths.append(len(sampler))
    return lengths


def _step_xs(lengths: list[int]) -> list[float]:
    """x = (epoch - 1) + step / steps_per_epoch of every optimizer step of the run, in order."""
    return [(e - 1) + s / n for e, n in enumerate(lengths, start=1) for s in range(n)]


def test_every_optimizer_steps_lr_is_logged_at_its_global_step(tiny_market, tmp_path):
    result = execute(spec_from_dict(yaml.safe_load(STEP_SPEC)), _options(tmp_path, tiny_market, variants=()))
    xs = _step_xs(_epoch_lengths(tiny_market))
    steps = _events(tmp_path / "run" / "steps")
    assert set(steps) == {"lr_step"}
    assert [s for s, _ in steps["lr_step"]] == list(range(1, len(xs) + 1))  # global step = optimizer step, 1-based
    assert [v for _, v in steps["lr_step"]] == pytest.approx([_lr_at(x) for x in xs], rel=1e-6)
    # the per-epoch lr beside it is the LR of each epoch's first step
    epochs = _events(tmp_path / "run")["lr"]
    assert epochs == [(e, pytest.approx(_lr_at(e - 1), rel=1e-6)) for e in (1, 2, 3, 4)]
    assert [h["lr"] for h in result.history] == pytest.approx([_lr_at(e - 1) for e in (1, 2, 3, 4)])


def test_an_epoch_granular_run_logs_one_lr_per_epoch_at_every_step(tiny_market, tmp_path):
    execute(spec_from_dict(yaml.safe_load(SPEC)), _options(tmp_path, tiny_market, variants=()))
    lengths = _epoch_lengths(tiny_market)
    lrs = [v for _, v in _events(tmp_path / "run" / "steps")["lr_step"]]
    # milestone 3: epochs 3 and 4 at a tenth
    assert lrs == pytest.approx([3.5e-4] * sum(lengths[:2]) + [3.5e-5] * sum(lengths[2:]), rel=1e-6)


def test_a_resumed_step_granular_run_logs_each_step_once_with_the_uninterrupted_lrs(tiny_market, tmp_path,
                                                                                     monkeypatch):
    import reidbench.harness.train.loop as loop

    real = loop.train_one_epoch

    def crash_on_epoch_4(c, epoch, max_epochs, hooks=()):
        if epoch == 4:
            raise RuntimeError("simulated crash")
        return real(c, epoch, max_epochs, hooks)

    spec = spec_from_dict(yaml.safe_load(STEP_SPEC))
    lengths = _epoch_lengths(tiny_market)
    monkeypatch.setattr(loop, "train_one_epoch", crash_on_epoch_4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        execute(spec, _options(tmp_path, tiny_market, variants=()))
    # epoch 3's steps were logged but not checkpointed (checkpoint every 2): the resume trains them again
    assert [s for s, _ in _events(tmp_path / "run" / "steps")["lr_step"]] == list(range(1, sum(lengths[:3]) + 1))
    monkeypatch.setattr(loop, "train_one_epoch", real)
    execute(spec, _options(tmp_path, tiny_market, variants=()))
    points = _events(tmp_path / "run" / "steps")["lr_step"]
    xs = _step_xs(lengths)
    assert [s for s, _ in points] == list(range(1, len(xs) + 1))
    assert [v for _, v in points] == pytest.approx([_lr_at(x) for x in xs], rel=1e-6)
