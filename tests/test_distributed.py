"""One run on several processes (--gpus-per-run): tested with 2 gloo CPU processes on tiny data.

What is checked against an independent expectation:
- the ranks' batches of a step, concatenated, are the single-process batch (indices, labels, pixels);
- 2 ranks trained one epoch end with the same weights and centres on both ranks, and with the
  single-process weights (SGD, every BatchNorm synchronised: the same computation up to rounding);
- the CPU synchronised BatchNorm equals BatchNorm over the global batch, gradients included;
- `reidbench ablate --gpus-per-run 2` records one done run under the same hash as one process;
- killed after its first checkpoint, the 2-process run resumes from it to the uninterrupted weights;
- a per-epoch callback that raises (a study's pruner) stops the ranks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from reidbench.harness.cli import main
from reidbench.harness.spec import RunSpec, load_spec_file, replace_section
from reidbench.harness.spec.hashing import run_hash
from reidbench.harness.store import Store
from reidbench.harness.train.checkpoint import CHECKPOINT_NAME, load_checkpoint

# P=4 identities × K=2: splits into 2 ranks of 2 identities. timm's 0.5M-parameter test ResNet has
# BatchNorm in its backbone; bnneck adds the head's one.
DDP_SPEC = """
profile: cpu
model: {backbone: "timm:test_resnet", pretrained: false, last_stride: 2, neck: bnneck}
data: {train: tiny, test: [tiny], image_size: [32, 16], ids_per_batch: 4, imgs_per_id: 2, pad_px: 2}
schedule: {max_epochs: 3, milestones: [2], warmup_epochs: 0}
eval: {batch_size: 16}
train: {seed: 0, checkpoint_every_epochs: 1}
"""

# Rank script for the step-level checks: builds exactly what a rank builds, trains one epoch.
RANK_SCRIPT = r'''
import sys, torch
from pathlib import Path
from reidbench.harness.data.named import load_named_dataset
from reidbench.harness.spec import load_spec_file
from reidbench.harness.train import distributed
from reidbench.harness.train.build import build_training
from reidbench.harness.train.loop import run_training

spec_file, data, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
torch.set_num_threads(1)
ctx = distributed.context_from_env("gloo")
distributed.init_process_group(ctx, torch.device("cpu"))
spec = load_spec_file(spec_file)
train_set, _ = load_named_dataset("tiny", {"tiny": data}, progress=False)
built = build_training(spec, train_set, torch.device("cpu"), 0, False, dist=ctx)
c = built.components
c.loader.batch_sampler.set_epoch(1)
imgs, pids, _, idx = next(iter(c.loader))
# the CPU synchronised BatchNorm against plain BatchNorm of the global batch (checked by the test)
torch.manual_seed(1)
x = torch.randn(8, 3, 4, 2) * 3 + 1
local = x[4 * ctx.rank:4 * ctx.rank + 4].clone().requires_grad_(True)
bn = distributed.GlooSyncBatchNorm(3)
with torch.no_grad():
    bn.weight.copy_(torch.tensor([0.5, 1.5, 2.0]))
y = bn(local)
(y * torch.arange(y.numel()).reshape(y.shape).float().add(y.numel() * ctx.rank)).sum().backward()
class LRs:  # the LR every optimizer step trained with (step granularity: it changes within the epoch)
    seen = []
    def after_step(self, c, step, losses):
        self.seen.append(c.optimizer.param_groups[0]["lr"])
run_training(c, 0, 1, spec.train.seed, [LRs()])
torch.save({"first_idx": idx, "first_imgs": imgs, "first_pids": pids, "model": c.model.state_dict(),
            "lrs": LRs.seen, "scheduler": c.scheduler.state_dict()["last_epoch"],
            "objective": c.objective.state_dict(), "synced": built.model_info["sync_bn_layers"],
            "bn_out": y.detach(), "bn_grad": local.grad, "bn_running": (bn.running_mean, bn.running_var),
            "bn_weight_grad": bn.weight.grad}, out / f"rank{ctx.rank}.pt")
distributed.destroy_process_group()
'''


def _torchrun(script: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script), *args]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _close(a: dict, b: dict, atol: float) -> float:
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())
    assert worst <= atol, worst
    return worst


@pytest.fixture(scope="module")
def ddp_spec_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ddp-spec") / "ddp.yaml"
    path.write_text(DDP_SPEC)
    return path


# ---------------------------------------------------------------------------------------------- the global batch


def _loader(spec, train_set, rank: int, world: int):
    from reidbench.harness.data.loader import build_train_loader
    from reidbench.harness.data.samplers import build_sampler

    d = spec.data
    sampler = build_sampler(d.sampler, d.sampler_options, [r.pid for r in train_set.train], d.ids_per_batch,
                            d.imgs_per_id, spec.train.seed)
    return build_train_loader(train_set.train, image_size=d.image_size, ids_per_batch=d.ids_per_batch,
                              imgs_per_id=d.imgs_per_id, seed=spec.train.seed, pad_px=d.pad_px,
                              random_erasing_prob=0.5, batch_sampler=sampler, rank=rank, world_size=world)


def test_rank_batches_of_every_step_concatenate_to_the_single_process_batch(tiny_market, ddp_spec_file):
    from reidbench.harness.data.named import load_named_dataset

    spec = load_spec_file(ddp_spec_file)
    train_set, _ = load_named_dataset("tiny", {"tiny": str(tiny_market)}, progress=False)
    loaders = [_loader(spec, train_set, 0, 1), _loader(spec, train_set, 0, 2), _loader(spec, train_set, 1, 2)]
    for epoch in (1, 2):
        for loader in loaders:
            loader.batch_sampler.set_epoch(epoch)
        single, rank0, rank1 = (list(loader) for loader in loaders)
        assert len(single) == len(rank0) == len(rank1) >= 2
        for whole, a, b in zip(single, rank0, rank1):
            for part in range(4):  # images (augmented: flip, pad-crop, erasing), pids, camids, indices
                assert torch.equal(torch.cat([a[part], b[part]]), whole[part])
            # each rank holds P/2 whole identities × K images; no identity on both ranks
            for share in (a, b):
                pids = share[1].tolist()
                assert len(set(pids)) == 2 and all(pids.count(p) == 2 for p in set(pids))
            assert not set(a[1].tolist()) & set(b[1].tolist())


def test_identities_must_split_evenly_between_the_processes():
    from reidbench.harness.data.loader import RankShardBatchSampler
    from reidbench.harness.train.distributed import check_batch_split

    check_batch_split(16, 4)
    with pytest.raises(ValueError, match=r"--gpus-per-run 3: data.ids_per_batch=16 .* valid process counts: 1, 2, 4, 8, "
                                         r"16"):
        check_batch_split(16, 3)
    with pytest.raises(ValueError, match="does not split into 2"):
        list(RankShardBatchSampler([[1, 2, 3]], 0, 2))


def test_the_run_hash_does_not_depend_on_the_process_count_or_the_default_sync_bn():
    base = RunSpec()
    # sync_bn is a field: at its default ("head", what G > 1 uses) it is not in the hash ...
    assert run_hash(replace_section(base, "train", sync_bn="head"), train_fingerprint="dir:a") == \
        run_hash(base, train_fingerprint="dir:a")
    assert "sync_bn" not in base.to_json() or run_hash(base) == run_hash(RunSpec())
    # ... a deliberate other choice is another run
    assert run_hash(replace_section(base, "train", sync_bn="all"), train_fingerprint="dir:a") != \
        run_hash(base, train_fingerprint="dir:a")
    with pytest.raises(ValueError, match="train.sync_bn='some' is not valid: head or all or off"):
        replace_section(base, "train", sync_bn="some").validate()


def test_sync_bn_scope_head_is_the_bnneck_bn_and_all_is_every_batchnorm():
    from reidbench.harness.train.distributed import GlooSyncBatchNorm, sync_batchnorm
    from reidbench.models.architectures import build_architecture

    spec = load_spec_file_text(DDP_SPEC)
    model = build_architecture(spec.model, 6)
    params = {n: p for n, p in model.named_parameters()}
    assert sync_batchnorm(model, "head", torch.device("cpu")) == ["head.bottleneck"]
    assert isinstance(model.head.bottleneck, GlooSyncBatchNorm)
    # same parameter objects (the optimiser and the checkpoint keys are unchanged), frozen bias kept frozen
    assert all(p is params[n] for n, p in model.named_parameters())
    assert not model.head.bottleneck.bias.requires_grad
    every = build_architecture(spec.model, 6)
    count = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in every.modules())
    assert len(sync_batchnorm(every, "all", torch.device("cpu"))) == count > 1
    assert sync_batchnorm(build_architecture(spec.model, 6), "off", torch.device("cpu")) == []


def load_spec_file_text(text: str):
    from reidbench.harness.spec import spec_from_dict
    import yaml

    return spec_from_dict(yaml.safe_load(text))


# ---------------------------------------------------------------------------------------------- one epoch, 2 ranks


@pytest.fixture(scope="module")
def two_rank_epoch(tiny_market, tmp_path_factory):
    """One epoch trained by 2 gloo ranks (SGD, center loss, every BatchNorm synchronised) and by one process."""
    root = tmp_path_factory.mktemp("ddp-epoch")
    # step granularity with a warmup over the first half of the epoch: every rank must step the schedule alike
    text = DDP_SPEC.replace("checkpoint_every_epochs: 1}", "checkpoint_every_epochs: 1, sync_bn: all}").replace(
        "schedule: {max_epochs: 3, milestones: [2], warmup_epochs: 0}",
        "schedule: {granularity: step, max_epochs: 3, milestones: [2], warmup_epochs: 0.5}") + """
optim: {name: sgd, base_lr: 0.01}
loss:
  terms:
    - {kind: ce, reads: logits}
    - {kind: triplet, reads: f_t}
    - {kind: center, reads: f_t, weight: 0.0005}
"""
    spec_file = root / "sgd.yaml"
    spec_file.write_text(text)
    script = root / "rank.py"
    script.write_text(RANK_SCRIPT)
    t0 = time.perf_counter()
    done = subprocess.run(_torchrun(script, str(spec_file), str(tiny_market), str(root)), capture_output=True,
                          text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    seconds = time.perf_counter() - t0
    ranks = [torch.load(root / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    from reidbench.harness.data.named import load_named_dataset
    from reidbench.harness.train.build import build_training
    from reidbench.harness.train.loop import run_training

    spec = load_spec_file(spec_file)
    train_set, _ = load_named_dataset("tiny", {"tiny": str(tiny_market)}, progress=False)
    single = build_training(spec, train_set, torch.device("cpu"), 0, False).components
    single.loader.batch_sampler.set_epoch(1)
    first = next(iter(single.loader))

    class LRs:
        seen: list[float] = []

        def after_step(self, c, step, losses):
            self.seen.append(c.optimizer.param_groups[0]["lr"])

    run_training(single, 0, 1, spec.train.seed, [LRs()])
    single.lrs = LRs.seen
    return ranks, single, first, seconds


def test_ranks_share_one_global_batch_and_end_with_equal_weights_and_centres(two_rank_epoch):
    ranks, single, first, _ = two_rank_epoch
    r0, r1 = ranks
    assert torch.equal(torch.cat([r0["first_idx"], r1["first_idx"]]), first[3])
    assert torch.equal(torch.cat([r0["first_imgs"], r1["first_imgs"]]), first[0])
    assert torch.equal(torch.cat([r0["first_pids"], r1["first_pids"]]), first[1])
    assert r0["synced"] == r1["synced"] > 1
    # DDP on model + objective: every parameter, the centres included, is equal on both ranks
    assert _same(r0["model"], r1["model"]) or _close(r0["model"], r1["model"], 0.0) == 0.0
    assert _same(r0["objective"], r1["objective"])
    assert any("center" in k for k in r0["objective"])


def test_every_rank_steps_the_schedule_at_every_step_as_one_process_does(two_rank_epoch):
    ranks, single, _, _ = two_rank_epoch
    r0, r1 = ranks
    n = len(single.lrs)
    assert n >= 2 and r0["lrs"] == r1["lrs"] == single.lrs  # the same LR at every step, bit for bit
    assert r0["scheduler"] == r1["scheduler"] == n  # stepped once per optimizer step
    # warmup over half an epoch: 0.01 × base at the first step, the full base LR from x = 0.5 on
    assert single.lrs[0] == pytest.approx(0.01 * 0.01) and single.lrs[-1] == pytest.approx(0.01)
    assert single.lrs == pytest.approx([0.01 * (0.01 + 0.99 * (s / n) / 0.5 if s / n < 0.5 else 1.0) for s in range(n)])


def test_two_ranks_train_the_single_process_weights(two_rank_epoch, ddp_spec_file):
    from reidbench.models.architectures import build_architecture

    ranks, single, _, _ = two_rank_epoch
    # Same computation up to float reduction order: gathered objective (triplet mining over the
    # global batch), global BatchNorm statistics, gradients averaged over the ranks.
    _close(ranks[0]["model"], single.model.state_dict(), atol=2e-5)
    _close(ranks[0]["objective"], single.objective.state_dict(), atol=2e-5)
    # ... and training moved the weights far more than that tolerance
    spec = load_spec_file(ddp_spec_file)  # the same model section and seed
    torch.manual_seed(spec.train.seed)
    initial = build_architecture(spec.model, 6).state_dict()
    moved = max((initial[k].double() - single.model.state_dict()[k].double()).abs().max().item()
                for k in initial if initial[k].is_floating_point())
    assert moved > 100 * 2e-5


def test_cpu_sync_batchnorm_equals_batchnorm_over_the_global_batch(two_rank_epoch):
    ranks, _, _, _ = two_rank_epoch
    torch.manual_seed(1)
    x = (torch.randn(8, 3, 4, 2) * 3 + 1).requires_grad_(True)
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.5, 2.0]))
    y = bn(x)
    (y * torch.arange(y.numel()).reshape(y.shape).float()).sum().backward()
    assert torch.allclose(torch.cat([ranks[0]["bn_out"], ranks[1]["bn_out"]]), y.detach(), atol=1e-5)
    assert torch.allclose(torch.cat([ranks[0]["bn_grad"], ranks[1]["bn_grad"]]), x.grad, atol=1e-4)
    for r in ranks:
        assert torch.allclose(r["bn_running"][0], bn.running_mean, atol=1e-6)
        assert torch.allclose(r["bn_running"][1], bn.running_var, atol=1e-5)
        # each rank's weight gradient is its share; DDP's average over 2 ranks x 2 = the whole
    total = ranks[0]["bn_weight_grad"] + ranks[1]["bn_weight_grad"]
    assert torch.allclose(total, bn.weight.grad, atol=1e-3)


# ---------------------------------------------------------------------------------------------- through the CLI


def _ablate_args(spec: Path, data: Path, root: Path, *extra: str) -> list[str]:
    return ["ablate", "--base", str(spec), "--add", "", "--data", f"tiny={data}", "--profile", "cpu",
            "--db", f"sqlite:///{root / 'results.db'}", "--runs-dir", str(root / "runs"), "--workers", "0",
            "--device", "cpu", *extra]


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "reidbench.harness.cli", *args]


@pytest.fixture(scope="module")
def two_process_ablation(tiny_market, ddp_spec_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp-ablate")
    t0 = time.perf_counter()
    done = subprocess.run(_cli(_ablate_args(ddp_spec_file, tiny_market, root, "--gpus-per-run", "2")),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done, time.perf_counter() - t0


def test_a_two_process_ablation_records_one_result_under_the_one_process_hash(two_process_ablation, tiny_market,
                                                                               ddp_spec_file):
    root, done, _ = two_process_ablation
    runs = Store(f"sqlite:///{root / 'results.db'}").list_runs()
    assert len(runs) == 1 and runs[0].status == "done" and runs[0].attempts == 1
    run = runs[0]
    assert run.model_info["distributed"] == {"world_size": 2, "backend": "gloo", "per_rank_batch": [2, 2],
                                             "sync_bn": "head", "sync_bn_layers": 1}
    assert run.device.endswith("×2 (gloo)")
    assert [h["images"] for h in json.loads((Path(run.out_dir) / "result.json").read_text())["history"]] == [24] * 3
    # the same command with one process plans the very same run: already done, nothing to train
    again = CliRunner().invoke(main, _ablate_args(ddp_spec_file, tiny_market, root))
    assert again.exit_code == 0, again.output
    assert "1 cached, 0 to run" in again.output
    assert Store(f"sqlite:///{root / 'results.db'}").list_runs()[0].attempts == 1
    # rank 0 alone wrote the run folder's log
    log = (Path(run.out_dir) / "train.log").read_text()
    assert log.count(": training bot/") == 1 and "2 gloo processes" in log and log.count("epoch   1/3") == 1


def test_a_killed_two_process_run_resumes_from_its_checkpoint(two_process_ablation, tiny_market, ddp_spec_file,
                                                              tmp_path):
    full_root, _, _ = two_process_ablation
    full = Store(f"sqlite:///{full_root / 'results.db'}").list_runs()[0]
    args = _cli(_ablate_args(ddp_spec_file, tiny_market, tmp_path, "--gpus-per-run", "2"))
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = tmp_path / "runs" / full.run_hash[:12] / CHECKPOINT_NAME
    deadline = time.time() + 180
    while time.time() < deadline and not ckpt.exists() and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher, torchrun and both ranks
    proc.wait()
    assert ckpt.exists(), "the run died before its first checkpoint"
    killed_at = load_checkpoint(ckpt)["epoch"]
    assert killed_at < 3, "the run finished before it could be killed; the test proves nothing"
    time.sleep(0.5)
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming after epoch {killed_at}/3" in done.stderr
    runs = Store(f"sqlite:///{tmp_path / 'results.db'}").list_runs()
    assert len(runs) == 1 and runs[0].status == "done" and runs[0].run_hash == full.run_hash
    assert runs[0].attempts == 2
    # resumed on (seed, epoch)-determined batches: the uninterrupted run's weights
    assert _same(load_checkpoint(ckpt)["model"], load_checkpoint(Path(full.out_dir) / CHECKPOINT_NAME)["model"])


def test_ids_per_batch_that_does_not_split_is_refused_before_anything_runs(tiny_market, ddp_spec_file, tmp_path):
    result = CliRunner().invoke(main, _ablate_args(ddp_spec_file, tiny_market, tmp_path, "--gpus-per-run", "3",
                                                   "--dry-run"))
    assert result.exit_code == 2
    assert "--gpus-per-run 3: data.ids_per_batch=4" in result.output and "valid process counts: 1, 2, 4" in result.output
    study = CliRunner().invoke(main, ["study", "--base", str(ddp_spec_file), "--tricks", "none", "--data",
                                      f"tiny={tiny_market}", "--batches", "4x2,3x2", "--gpus-per-run", "2",
                                      "--dry-run", "--db", f"sqlite:///{tmp_path / 's.db'}", "--runs-dir",
                                      str(tmp_path / "runs"), "--device", "cpu"])
    assert study.exit_code == 2 and "data.ids_per_batch=3 identities" in study.output


def test_a_raising_epoch_callback_stops_the_ranks(tiny_market, ddp_spec_file, tmp_path):
    from reidbench.harness.execution.torchrun import execute_distributed
    from reidbench.harness.train.runner import RESULT_NAME, RuntimeOptions

    class Pruned(Exception):
        pass

    seen = []

    def prune(epoch: int, stats: dict) -> None:
        seen.append((epoch, stats["images"]))
        raise Pruned(f"pruned after epoch {epoch}")

    runtime = RuntimeOptions(out_dir=tmp_path / "run", device="cpu", num_workers=0,
                             data_paths={"tiny": str(tiny_market)}, progress=False, log=lambda s: None,
                             on_epoch=prune)
    # 12 epochs: the ranks run ahead of the owner's reading of their stats by an epoch or two on a
    # loaded machine, so a short run could finish before it is stopped.
    spec = load_spec_file(ddp_spec_file)
    spec = replace_section(spec, "schedule", max_epochs=12, milestones=(10,))
    t0 = time.perf_counter()
    with pytest.raises(Pruned, match="after epoch 1"):
        execute_distributed(spec, runtime, 2)
    assert seen == [(1, 24)]
    assert time.perf_counter() - t0 < 120
    assert not (tmp_path / "run" / RESULT_NAME).exists()
    assert 1 <= load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["epoch"] < 12


# ---------------------------------------------------------------------------------------------- executors


def test_executors_hand_each_run_its_group_of_gpus(monkeypatch, tmp_path):
    from reidbench.harness.execution import executors
    from reidbench.harness.execution.jobs import Job, JobOutcome

    assert executors.gpu_groups(["0", "1", "2", "3"], 2) == [("0", "1"), ("2", "3")]
    with pytest.raises(ValueError, match="3 GPU\\(s\\) do not split into runs of --gpus-per-run 2"):
        executors.gpu_groups(["0", "1", "2"], 2)
    seen = []
    monkeypatch.setattr(executors, "run_job", lambda job, log=None: seen.append(job) or JobOutcome(job.run_hash, "done"))
    job = Job(run_hash="ab" * 32, label="x", spec_json="{}", trick_versions={}, db_url="sqlite://", out_dir="o")
    executors.LocalExecutor(gpus=["2", "3"], gpus_per_run=2).run([job])
    executors.LocalExecutor(gpus_per_run=2).run([job])
    executors.LocalExecutor(gpus=["5"]).run([job])
    assert [(j.gpus_per_run, j.visible_gpus, j.device) for j in seen] == [
        (2, ("2", "3"), "cuda"), (2, (), "auto"), (1, (), "cuda:5")]
    with pytest.raises(ValueError, match="1 GPU\\(s\\) for --gpus-per-run 2"):
        executors.LocalExecutor(gpus=["0"], gpus_per_run=2)
    pytest.importorskip("submitit")
    pool = executors.SubmititExecutor("submitit", tmp_path, gpus=["0", "1", "2", "3"], gpus_per_run=2)
    assert pool.slots == [(0, 1), (2, 3)]
