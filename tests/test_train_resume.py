"""End-to-end training on a tiny dataset: a crashed or killed run resumes to the same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reidbench.harness.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from reidbench.harness.train.runner import RESULT_NAME, RuntimeOptions, execute
from reidbench.harness.spec import load_spec_file
from reidbench.harness.store import Store


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / CHECKPOINT_NAME)["model"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tiny_market, tiny_spec_file, tmp_path_factory):
    spec_file = tiny_spec_file
    out = tmp_path_factory.mktemp("full")
    result = execute(load_spec_file(spec_file), RuntimeOptions(out_dir=out, device="cpu", num_workers=0,
                                                               data_paths={"tiny": str(tiny_market)}, progress=False,
                                                               log=lambda s: None))
    return spec_file, out, result


def test_run_records_metrics_history_and_provenance(uninterrupted):
    _, out, result = uninterrupted
    assert set(result.metrics) == {"tiny"}
    for key in ("R1", "R5", "R10", "mAP", "mINP"):
        assert 0.0 <= result.metrics["tiny"][key] <= 1.0
    assert result.metrics["tiny"]["R1"] <= result.metrics["tiny"]["R5"] <= result.metrics["tiny"]["R10"]
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.history[0]["lr"] == pytest.approx(3.5e-4) and result.history[1]["lr"] == pytest.approx(3.5e-5)
    assert result.provenance["tiny"]["synthetic"] is False
    assert result.model_info["pretrained_source"] is None
    saved = json.loads((out / RESULT_NAME).read_text())
    assert saved["run_hash"] == result.run_hash
    assert load_checkpoint(out / CHECKPOINT_NAME)["epoch"] == 3
    assert (out / "features-tiny-f_t.npz").exists()  # test set, feature output


def test_second_execute_returns_cached_result_without_training(uninterrupted, tiny_market):
    spec_file, out, result = uninterrupted
    logs: list[str] = []
    again = execute(load_spec_file(spec_file), RuntimeOptions(out_dir=out, device="cpu", num_workers=0,
                                                              data_paths={"tiny": str(tiny_market)}, log=logs.append))
    assert again.metrics == result.metrics
    assert any("already done" in line for line in logs)


def test_crash_after_an_epoch_then_resume_gives_identical_weights(uninterrupted, tiny_market, tmp_path, monkeypatch):
    spec_file, full_dir, full = uninterrupted
    import reidbench.harness.train.loop as loop

    real = loop.train_one_epoch

    def crash_on_epoch_3(c, epoch, max_epochs, hooks=()):
        if epoch == 3:
            raise RuntimeError("simulated crash")
        return real(c, epoch, max_epochs, hooks)

    monkeypatch.setattr(loop, "train_one_epoch", crash_on_epoch_3)
    opts = RuntimeOptions(out_dir=tmp_path / "run", device="cpu", num_workers=0,
                          data_paths={"tiny": str(tiny_market)}, progress=False, log=lambda s: None)
    with pytest.raises(RuntimeError, match="simulated crash"):
        execute(load_spec_file(spec_file), opts)
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["epoch"] == 2
    assert not (tmp_path / "run" / RESULT_NAME).exists()
    monkeypatch.setattr(loop, "train_one_epoch", real)
    logs: list[str] = []
    resumed = execute(load_spec_file(spec_file), RuntimeOptions(**{**opts.__dict__, "log": logs.append}))
    assert any("resuming after epoch 2/3" in line for line in logs)
    assert _same(_weights(tmp_path / "run"), _weights(full_dir))
    assert resumed.metrics == full.metrics
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]


def test_kill_9_mid_run_then_same_command_resumes_to_identical_weights(uninterrupted, tiny_market, tmp_path):
    spec_file, full_dir, full = uninterrupted
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "reidbench.harness.cli", "train", str(spec_file), "--data", f"tiny={tiny_market}",
           "--out", str(out), "--device", "cpu", "--workers", "0", "--db", f"sqlite:///{tmp_path / 'results.db'}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    deadline = time.time() + 120
    ckpt = out / CHECKPOINT_NAME
    while time.time() < deadline and not ckpt.exists() and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the run died before its first checkpoint"
    killed_at = load_checkpoint(ckpt)["epoch"]
    assert killed_at < 3, "the run finished before it could be killed; the test proves nothing"
    assert not (out / RESULT_NAME).exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"resuming after epoch {killed_at}/3" in done.stderr
    # the killed claim (its process gone) was taken over at once: one run, two attempts, done
    (run,) = Store(f"sqlite:///{tmp_path / 'results.db'}").list_runs()
    assert run.status == "done" and run.attempts == 2 and run.out_dir == str(out)
    assert _same(_weights(out), _weights(full_dir))
    assert json.loads((out / RESULT_NAME).read_text())["metrics"] == full.metrics


def test_a_run_folder_of_another_spec_is_refused(uninterrupted, tiny_market, tmp_path):
    spec_file, full_dir, _ = uninterrupted
    other = tmp_path / "other.yaml"
    other.write_text(spec_file.read_text().replace("seed: 0", "seed: 1"))
    with pytest.raises(ValueError, match="belongs to run"):
        execute(load_spec_file(other), RuntimeOptions(out_dir=full_dir, device="cpu",
                                                      data_paths={"tiny": str(tiny_market)}))
