"""Convergence (harness/train/convergence.py): the window read off hand-written LR sequences and the
schedules reidbench builds, the verdict on hand-made histories, the hook that scores the window's
epochs, one real tiny run end to end, and the store's record (given, computed, deleted, by alias)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from reidbench.harness.store import Store, StoreError
from reidbench.harness.train.convergence import (
    BEFORE_DECAY,
    NO,
    NO_WINDOW,
    RUN_END,
    UNKNOWN,
    YES,
    Convergence,
    Counts,
    assess,
    assess_run,
    convergence_window,
    footer,
)
from reidbench.harness.train.hooks import ConvergenceHook
from reidbench.harness.train.schedules import build_scheduler

# ---------------------------------------------------------------------- the window


@pytest.mark.parametrize("lrs, kind, epochs, where, decay", [
    ([1, 1, 1, .1, .1, .01], "multistep", (2, 3), BEFORE_DECAY, 4),            # bot's cpu profile
    ([.505, 1, 1, .1, .1, .01], "multistep", (2, 3), BEFORE_DECAY, 4),         # + warmup: epoch 1 is not at the peak
    ([1] * 39 + [.1] * 30 + [.01] * 51, "multistep", (38, 39), BEFORE_DECAY, 40),  # the paper's 120 epochs
    ([.505, 1, .1, .1], "multistep", None, NO_WINDOW, 3),                     # warmup ends at the milestone
    ([1, .1], "multistep", None, NO_WINDOW, 2),                               # db-v3's runs: milestone at 2
    ([1, 1, 1, 1, 1], "multistep", (4, 5), RUN_END, None),                    # constant (mancs: milestones [])
    ([1, 1, 1, 2], "multistep", (3, 4), RUN_END, None),                       # a rise is no decay
    ([1, .93, .75, .5, .25, .067], "cosine", (5, 6), RUN_END, 2),              # anneals from the start
    ([.505, 1, .93, .5], "poly", (3, 4), RUN_END, 3),                          # warmup then annealing
    ([1, 1, 1, .75, .25], "cosine", (2, 3), BEFORE_DECAY, 4),                  # a held cosine (the cosine trick)
    ([1], "multistep", None, NO_WINDOW, None),                                 # one epoch
])
def test_window_from_the_lr_of_each_epoch(lrs, kind, epochs, where, decay):
    window = convergence_window(lrs, kind)
    assert (window.epochs, window.where, window.decay_epoch) == (epochs, where, decay)
    assert window.reason


def test_planned_lrs_of_the_schedules_reidbench_builds():
    from reidbench.harness.spec import spec_from_dict
    from reidbench.harness.train.build import planned_epoch_lrs, stage_plan

    def planned(schedule: dict) -> list[float]:
        spec = spec_from_dict({"model": {"backbone": "timm:test_resnet", "pretrained": False}, "schedule": schedule})
        model = torch.nn.Linear(2, 2)
        model.module_groups = {"backbone": (), "new": ()}
        return planned_epoch_lrs(spec, stage_plan(spec, model))

    assert planned({"max_epochs": 6, "milestones": [4, 6]}) == pytest.approx([1, 1, 1, .1, .1, .01])
    warm = planned({"max_epochs": 6, "milestones": [4, 6], "warmup_epochs": 2})
    assert warm == pytest.approx([0.505, 1, 1, .1, .1, .01])
    assert convergence_window(warm).epochs == (2, 3)
    # step granularity: the LR each epoch ends at. Milestone 2.95 decays at x = 1.95 (inside epoch 2,
    # which ends decayed); 4.45 at x = 3.45 (inside epoch 4); the warmup (0.5 epochs) is over by epoch 1's end.
    step = planned({"max_epochs": 6, "milestones": [2.95, 4.45], "warmup_epochs": 0.5, "granularity": "step"})
    assert step == pytest.approx([1, .1, .1, .01, .01, .01])
    assert convergence_window(step).epochs is None  # no two whole epochs at the peak before the decay
    longer = planned({"max_epochs": 16, "milestones": [6.2, 10.2], "granularity": "step"})
    assert convergence_window(longer).epochs == (4, 5)  # decay at x = 5.2, inside epoch 6


# ---------------------------------------------------------------------- the verdict


def _history(losses_2_3, maps_2_3=None, key="convergence/synth-a/mAP", epochs=6, decay=4):
    history = []
    for e in range(1, epochs + 1):
        lr = 1e-3 if e < decay else 1e-4
        entry = {"epoch": e, "losses": {"id": 2.0, "triplet": 0.5}, "lr": lr, "extra": {}}
        if e in (2, 3):
            entry["losses"] = dict(losses_2_3[e - 2])
            if maps_2_3 is not None:
                entry["extra"] = {key: maps_2_3[e - 2]}
        history.append(entry)
    return history


def test_flat_loss_and_map_converge():
    # total 1.20 → 1.19: -0.01 of the first epoch's 2.5 = -0.4 % (< 1 %); mAP 70.0 → 70.3: +0.3 points (< 0.5)
    history = _history([{"id": 1.0, "triplet": 0.2}, {"id": 0.995, "triplet": 0.195}], [0.700, 0.703])
    record = assess(history, max_epochs=6, test_set="synth-a")
    assert record.status == YES and record.epochs == (2, 3) and record.decay_epoch == 4
    assert record.loss == pytest.approx((1.2, 1.19)) and record.loss_change == pytest.approx(-0.01 / 2.5)
    assert record.map_change == pytest.approx(0.3) and record.where == BEFORE_DECAY


def test_a_loss_near_zero_is_compared_with_where_training_started():
    # 0.068 → 0.059 is -13 % of itself (sampling noise of a cross-entropy near 0, measured on synth-a)
    # but -0.36 % of the first epoch's 2.5: flat; with a flat mAP the run converged
    history = _history([{"id": 0.058, "triplet": 0.010}, {"id": 0.058, "triplet": 0.001}], [0.898, 0.900])
    record = assess(history, max_epochs=6, test_set="synth-a")
    assert record.status == YES and record.loss_change == pytest.approx(-0.009 / 2.5)


@pytest.mark.parametrize("losses, maps, status, phrase", [
    ([{"id": 1.2}, {"id": 1.1}], [0.70, 0.70], NO, "loss changed -4.0 %"),        # still falling (-0.1 / 2.5)
    ([{"id": 1.2}, {"id": 1.2}], [0.70, 0.71], NO, "mAP changed +1.0 points"),     # mAP still rising
    ([{"id": 1.2}, {"id": 1.25}], [0.70, 0.70], NO, "loss changed +2.0 %"),        # rising: not a plateau either
    ([{"id": 1.2}, {"id": 1.1}], None, NO, "mAP: not scored at epoch 2 and 3 (the loss alone decides)"),
    ([{"id": 1.2}, {"id": 1.2}], None, UNKNOWN, "mAP: not scored"),                # a pass alone is not enough
    ([{"id": 1.2}, {"id": 1.0, "triplet": 0.2}], [0.70, 0.70], UNKNOWN, "stage boundary"),
])
def test_verdicts(losses, maps, status, phrase):
    record = assess(_history(losses, maps), max_epochs=6, test_set="synth-a")
    assert record.status == status and phrase in record.reason


def test_a_periodic_evaluation_counts_and_the_store_form_reads_the_same():
    history = _history([{"id": 1.0}, {"id": 1.0}], [0.700, 0.702], key="synth-a/mAP")
    assert assess(history, max_epochs=6, test_set="synth-a").status == YES
    flat = [{"epoch": h["epoch"], "lr": h["lr"], **{f"loss/{k}": v for k, v in h["losses"].items()}, **h["extra"]}
            for h in history]  # how rb_epochs keeps them (store/results.flatten_epoch)
    assert assess(flat, max_epochs=6, test_set="synth-a") == assess(history, max_epochs=6, test_set="synth-a")


def test_the_last_epoch_of_the_window_is_the_final_evaluation():
    # constant LR over 4 epochs: window (3, 4); epoch 4's mAP is the final evaluation's
    history = [{"epoch": e, "losses": {"id": 1.0}, "lr": 1e-3,
                "extra": {"convergence/a/mAP": 0.50} if e == 3 else {}} for e in range(1, 5)]
    record = assess_run({"schedule": {"max_epochs": 4}, "data": {"test": ["a", "b"]}}, history,
                        {"a": {"mAP": 0.52}, "b": {"mAP": 0.10}})
    assert (record.status, record.epochs, record.where, record.test_set) == (NO, (3, 4), RUN_END, "a")
    assert record.map == (0.50, 0.52) and record.map_change == pytest.approx(2.0)


def test_a_run_without_lrs_or_window_is_unknown():
    record = assess([{"epoch": 1, "losses": {"id": 1.0}}, {"epoch": 2, "losses": {"id": 1.0}}], max_epochs=2)
    assert record.status == UNKNOWN and "no recorded LR" in record.reason
    spec = {"schedule": {"max_epochs": 2}, "data": {"test": ["a"]}}
    history = [{"epoch": 1, "losses": {"id": 1.0}, "lr": 1.0}, {"epoch": 2, "losses": {"id": 1.0}, "lr": 0.1}]
    assert assess_run(spec, history, {}).reason.startswith("no window: fewer than two epochs at the peak LR")


def test_record_round_trip_and_malformed_records():
    record = assess(_history([{"id": 1.0}, {"id": 0.999}], [0.7, 0.7]), max_epochs=6, test_set="synth-a")
    assert Convergence.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    for bad in ({"status": "maybe"}, {"status": "yes", "epochs": [1]}, {"status": "no", "loss_change": "x"},
                {"status": "no", "map_change": float("nan")}, "yes"):
        with pytest.raises(ValueError):
            Convergence.from_dict(bad)


def test_footer_text():
    assert footer(Counts(5, 1, 1)) == (
        "converged: 5 of 7 runs (training loss Δ < 1 % of its first epoch's and same-domain mAP Δ < 0.5 points over the last epoch "
        "before the first LR decay (the run's last epoch if the LR never steps down); 1 not, 1 unknown)")
    assert footer(Counts(2, 0, 0)) == (
        "converged: 2 of 2 runs (training loss Δ < 1 % of its first epoch's and same-domain mAP Δ < 0.5 points over the last epoch "
        "before the first LR decay (the run's last epoch if the LR never steps down))")
    assert footer(Counts()) == "converged: no finished run yet"
    assert Counts.of(["yes", "no", "unknown", "yes", "other"]) == Counts(2, 1, 2)


# ---------------------------------------------------------------------- the hook


class _Scorer:
    """An ``EvaluationHook`` stand-in: the "mAP" of a model is its weight w (a 1-element tensor)."""

    test_set, max_epochs = "synth-a", 6

    def __init__(self) -> None:
        self.scored: list[float] = []

    def evaluate(self, model):
        self.scored.append(model.w.item())
        return {"mAP": model.w.item(), "R1": 0.0}


def _run(hook, losses: dict[int, float], periodic: dict[int, float] = (), last: int = 6):
    """Epochs 1..last: the model's weight is 0.1 × epoch; returns (model, history)."""
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.zeros(()))  # a parameter an optimiser would hold on to
    model.register_buffer("b", torch.zeros(()))  # and a buffer, as BatchNorm's running statistics
    held = model.w
    for epoch in range(1, last + 1):
        with torch.no_grad():
            model.w.fill_(0.1 * epoch)
            model.b.fill_(-epoch)
        stats = SimpleNamespace(epoch=epoch, losses={"id": losses[epoch]}, lr=1.0,
                                extra={"synth-a/mAP": periodic[epoch]} if epoch in dict(periodic) else {})
        hook.on_epoch_end(SimpleNamespace(model=model), stats)
        hook.history.append({"epoch": epoch, "losses": dict(stats.losses), "extra": dict(stats.extra)})
        assert model.w is held and model.w.item() == pytest.approx(0.1 * epoch) and float(model.b) == -epoch
    return model, hook.history


FLAT = {1: 2.0, 2: 1.0, 3: 0.999, 4: 0.9, 5: 0.9, 6: 0.9}  # 2 → 3: -0.1 %


def test_hook_scores_epoch_a_from_its_kept_weights_once_the_loss_passes():
    scorer = _Scorer()
    model, history = _run(ConvergenceHook(scorer, (2, 3), []), FLAT)
    assert scorer.scored == pytest.approx([0.2, 0.3])  # epoch 2's weights, scored at epoch 3's end; then epoch 3's
    assert model.w.item() == pytest.approx(0.6)  # epoch 3's weights were restored in place (checked each epoch)
    assert history[1]["extra"] == {"convergence/synth-a/mAP": pytest.approx(0.2)}
    assert history[2]["extra"] == {"convergence/synth-a/mAP": pytest.approx(0.3)}
    record = assess([{**h, "lr": 1.0 if h["epoch"] < 4 else 0.1} for h in history], max_epochs=6,
                    test_set="synth-a")
    assert record.epochs == (2, 3) and record.map_change == pytest.approx(10.0) and record.status == NO


def test_hook_scores_nothing_when_the_loss_already_fails_or_a_periodic_evaluation_did():
    scorer = _Scorer()
    _, history = _run(ConvergenceHook(scorer, (2, 3), []), {**FLAT, 3: 0.9})  # 2 → 3: -10 %
    assert scorer.scored == [] and all(not h["extra"] for h in history)
    scorer = _Scorer()
    _, history = _run(ConvergenceHook(scorer, (2, 3), []), FLAT, periodic={2: 0.5, 3: 0.5})
    assert scorer.scored == [] and "convergence/synth-a/mAP" not in str(history)
    scorer = _Scorer()  # the window ends at the last epoch: the final evaluation scores it, the hook epoch a only
    _run(ConvergenceHook(scorer, (5, 6), []), {**FLAT, 6: 0.9001})
    assert scorer.scored == pytest.approx([0.5])


def test_hook_after_a_resume_between_a_and_b_cannot_score_a():
    scorer = _Scorer()
    hook = ConvergenceHook(scorer, (2, 3), [{"epoch": 1, "losses": {"id": 2.0}, "extra": {}},
                                            {"epoch": 2, "losses": {"id": 1.0}, "extra": {}}])
    model = torch.nn.Module()
    model.register_buffer("w", torch.full((), 0.3))
    hook.on_epoch_end(SimpleNamespace(model=model), SimpleNamespace(epoch=3, losses={"id": 0.999}, extra={}))
    assert scorer.scored == pytest.approx([0.3])  # epoch 3 only: epoch 2's weights were not kept across the resume


# ---------------------------------------------------------------------- end to end


def test_a_tiny_run_measures_and_stores_its_convergence(tmp_path, market_folder_factory, monkeypatch):
    from reidbench.harness.spec import spec_from_dict
    from reidbench.harness.train import convergence
    from reidbench.harness.train.runner import RuntimeOptions, execute

    data = market_folder_factory(tmp_path / "tiny")
    spec = spec_from_dict({
        "profile": "cpu", "model": {"backbone": "timm:test_resnet", "pretrained": False},
        "data": {"train": "tiny", "test": ["tiny"], "image_size": [32, 16], "ids_per_batch": 3, "imgs_per_id": 2,
                 "pad_px": 2},
        "schedule": {"max_epochs": 5, "milestones": [4]}, "eval": {"batch_size": 16},
        "train": {"seed": 0, "checkpoint_every_epochs": 1}})

    def run(name: str):
        lines: list[str] = []
        result = execute(spec, RuntimeOptions(out_dir=tmp_path / name, device="cpu", num_workers=0,
                                              data_paths={"tiny": str(data)}, log=lines.append, tensorboard=False))
        return result, lines

    plain, lines = run("plain")
    record = Convergence.from_dict(plain.convergence)
    losses = {h["epoch"]: sum(h["losses"].values()) for h in plain.history}
    assert record.epochs == (2, 3) and record.decay_epoch == 4 and record.test_set == "tiny"
    assert record.loss_change == pytest.approx((losses[3] - losses[2]) / losses[1])  # of the first epoch
    assert abs(record.loss_change) >= 0.01  # a tiny run is still learning: the loss decides, nothing scored
    assert record.status == NO and record.map is None and all(not h["extra"] for h in plain.history)
    assert any(line.startswith(f"run {plain.run_hash[:12]}: converged no (epochs 2→3") for line in lines)
    assert json.loads((tmp_path / "plain" / "result.json").read_text())["convergence"] == plain.convergence

    # With a loss limit no run can fail, the mAP half is measured: epoch 2 from its kept weights
    # (swapped in and out at epoch 3), epoch 3 as it is; training itself is the same, number for number.
    monkeypatch.setattr(convergence, "LOSS_REL_TOL", 10.0)
    scored_run, _ = run("scored")
    scored = {h["epoch"]: h["extra"] for h in scored_run.history if h["extra"]}
    assert set(scored) == {2, 3} and all(set(e) == {"convergence/tiny/mAP"} for e in scored.values())
    record = Convergence.from_dict(scored_run.convergence)
    assert record.map == (scored[2]["convergence/tiny/mAP"], scored[3]["convergence/tiny/mAP"])
    assert [h["losses"] for h in scored_run.history] == [h["losses"] for h in plain.history]
    assert scored_run.metrics == plain.metrics

    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    store.ensure_run(plain.run_hash, spec.to_dict(), "tiny")
    store.record_result(plain.run_hash, None, scored_run.to_dict())
    assert store.convergence([plain.run_hash]) == {plain.run_hash: record}


# ---------------------------------------------------------------------- the store


def _result(run_hash: str, history, convergence=None, final_map=0.5):
    out = {"run_hash": run_hash, "spec": {"profile": "cpu", "schedule": {"max_epochs": 6}, "data": {"test": ["a"]}},
           "evaluations": [{"key": "k", "test_set": "a", "variant": "", "metrics": {"mAP": final_map}, "settings": {}}],
           "history": history, "provenance": {}, "model_info": {}, "environment": {}, "seconds_train": 1.0,
           "seconds_eval": 1.0, "out_dir": "/nonexistent"}
    if convergence is not None:
        out["convergence"] = convergence
    return out


def test_store_keeps_the_given_record_or_computes_one_from_the_history(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    spec = {"profile": "cpu", "schedule": {"max_epochs": 6}, "data": {"test": ["a"]}}
    history = _history([{"id": 1.0}, {"id": 0.999}], [0.7, 0.7], key="convergence/a/mAP")
    given = assess(history, max_epochs=6, test_set="a").to_dict() | {"reason": "measured by the runner"}
    store.ensure_run("h1", spec, "one")
    store.record_result("h1", None, _result("h1", history, given))
    assert store.convergence(["h1"])["h1"].reason == "measured by the runner"
    store.ensure_run("h2", spec, "two")  # a result.json written before convergence existed
    store.record_result("h2", None, _result("h2", history))
    assert store.convergence(["h2"])["h2"] == assess(history, max_epochs=6, test_set="a")
    assert store.convergence(["h2"])["h2"].status == YES
    store.record_result("h2", None, _result("h2", _history([{"id": 1.0}, {"id": 0.9}], [0.7, 0.7],
                                                           key="convergence/a/mAP")))
    assert store.convergence(["h2"])["h2"].status == NO  # a new result replaces the record
    with pytest.raises(StoreError, match="result field 'convergence' is not valid"):
        store.record_result("h1", None, _result("h1", history, {"status": "perhaps"}))
    assert store.convergence(["h1"])["h1"].reason == "measured by the runner"  # rolled back whole
    store.ensure_run("h3", spec, "pending")
    assert set(store.convergence(["h1", "h2", "h3", "nope"])) == {"h1", "h2"}  # pending: no record
    store.delete_run("h1")
    assert set(store.convergence(["h1", "h2"])) == {"h2"}
