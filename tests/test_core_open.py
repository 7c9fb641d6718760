"""The core is open: an architecture, a loss term and a sampler registered from this file alone
(no edit of a core module) train and evaluate end to end through ``execute``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from reidbench.harness.data.samplers import SAMPLERS, SamplerEntry, register_sampler
from reidbench.harness.evaluation.run import features_file
from reidbench.harness.spec import spec_from_dict, spec_from_json
from reidbench.harness.train.runner import RuntimeOptions, execute
from reidbench.models.architectures import ARCHITECTURES, Architecture, register_architecture
from reidbench.models.terms import LOSS_TERMS, LossTermEntry, register_loss_term

WIDTH_A, WIDTH_B = 8, 6


# --------------------------------------------------------------------------- toy architecture


@dataclass(frozen=True)
class ToyParams:
    width_a: int = 4
    width_b: int = 4


class TwoBranch(nn.Module):
    """conv trunk → two conv branches, each average-pooled to a feature with its own classifier."""

    def __init__(self, width_a: int, width_b: int, num_classes: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.branch_a = nn.Conv2d(4, width_a, 3, padding=1)
        self.branch_b = nn.Conv2d(4, width_b, 1)
        self.cls_a = nn.Linear(width_a, num_classes)
        self.cls_b = nn.Linear(width_b, num_classes)
        self.feature_dims = {"f_a": width_a, "f_b": width_b}
        self.test_feature = ("f_a", "f_b")
        self.module_groups = {"pretrained": ("trunk",), "new": ("branch_a", "branch_b", "cls_a", "cls_b")}
        self.reid_info = {"toy": True}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.trunk(images)
        f_a = self.branch_a(x).mean(dim=(2, 3))
        f_b = self.branch_b(x).mean(dim=(2, 3))
        out = {"f_a": f_a, "f_b": f_b}
        if self.training:
            out["logits_a"], out["logits_b"] = self.cls_a(f_a), self.cls_b(f_b)
        return out


def _build_toy(model, num_classes: int) -> nn.Module:
    params = ARCHITECTURES.get("toy2").params(**dict(model.options))
    return TwoBranch(params.width_a, params.width_b, num_classes)


# --------------------------------------------------------------------------- toy loss term


@dataclass(frozen=True)
class ToyL2Params:
    scale: float = 1.0


class ToyL2(nn.Module):
    """scale · mean over the batch of ‖x_b‖²."""

    def __init__(self, scale: float, input_dim: int | None) -> None:
        super().__init__()
        self.scale, self.input_dim = scale, input_dim

    def forward(self, x, labels):
        assert x.shape[1] == self.input_dim  # the objective sized it from feature_dims (concat: the sum)
        return self.scale * x.pow(2).sum(dim=1).mean()


SEEN_INPUT_DIMS: list[int | None] = []


def _build_l2(context) -> nn.Module:
    SEEN_INPUT_DIMS.append(context.input_dim)
    return ToyL2(context.params.scale, context.input_dim)


# --------------------------------------------------------------------------- toy sampler


class RoundRobinSampler:
    """Identities in sorted order, rotated by the epoch; each batch is the next P identities with
    their first K images (cycled when an identity has fewer). Deterministic, exact len."""

    def __init__(self, pids, p: int, k: int) -> None:
        self.by_id: dict[int, list[int]] = {}
        for index, pid in enumerate(pids):
            self.by_id.setdefault(int(pid), []).append(index)
        self.ids = sorted(self.by_id)
        self.p, self.k, self.epoch = p, k, 0
        self.epochs_seen: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs_seen.append(epoch)

    def __len__(self) -> int:
        return len(self.ids) // self.p

    def __iter__(self):
        shift = self.epoch % len(self.ids)
        ids = self.ids[shift:] + self.ids[:shift]
        for b in range(len(self)):
            batch = []
            for pid in ids[b * self.p:(b + 1) * self.p]:
                own = self.by_id[pid]
                batch.extend(own[(self.epoch + j) % len(own)] for j in range(self.k))
            yield batch


BUILT_SAMPLERS: list[RoundRobinSampler] = []


def _build_sampler(context) -> RoundRobinSampler:
    sampler = RoundRobinSampler(context.pids, context.ids_per_batch, context.imgs_per_id)
    BUILT_SAMPLERS.append(sampler)
    return sampler


@pytest.fixture(scope="module")
def toys():
    register_architecture(Architecture(name="toy2", summary="two-branch toy", build=_build_toy, params=ToyParams))
    register_loss_term(LossTermEntry(name="toy_l2", summary="mean squared norm", build=_build_l2, params=ToyL2Params))
    register_sampler(SamplerEntry(name="toy", summary="round robin P x K", build=_build_sampler))
    yield
    ARCHITECTURES.unregister("toy2")
    LOSS_TERMS.unregister("toy_l2")
    SAMPLERS.unregister("toy")
    assert "toy2" not in ARCHITECTURES and "toy_l2" not in LOSS_TERMS and "toy" not in SAMPLERS


def toy_spec():
    return spec_from_dict({
        "profile": "cpu",
        "model": {"arch": "toy2", "pretrained": False, "width_a": WIDTH_A, "width_b": WIDTH_B},
        "data": {"train": "tiny", "test": ["tiny"], "image_size": [32, 16], "ids_per_batch": 3, "imgs_per_id": 2,
                 "pad_px": 2, "sampler": "toy"},
        "loss": {"terms": [{"kind": "ce", "reads": "logits_*", "combine": "mean"},
                           {"kind": "toy_l2", "reads": ["f_a", "f_b"], "combine": "concat", "scale": 0.01}]},
        "schedule": {"max_epochs": 1, "milestones": [2]},
        "eval": {"batch_size": 16},
        "train": {"seed": 0},
    })


def test_a_spec_validates_the_toys_options_against_their_registries(toys):
    spec = toy_spec()
    assert dict(spec.model.options) == {"width_a": WIDTH_A, "width_b": WIDTH_B}
    assert dict(spec.loss.terms[1].options) == {"scale": 0.01}
    assert spec.loss.terms[1].reads == ("f_a", "f_b")  # a list of outputs is accepted as written
    assert spec_from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="width_c"):
        spec_from_dict({**spec.to_dict(), "model": {"arch": "toy2", "width_c": 3}})


def test_toy_architecture_loss_and_sampler_train_and_evaluate(toys, tiny_market, tmp_path):
    SEEN_INPUT_DIMS.clear()
    BUILT_SAMPLERS.clear()
    logs: list[str] = []
    result = execute(toy_spec(), RuntimeOptions(out_dir=tmp_path, device="cpu", num_workers=0,
                                                data_paths={"tiny": str(tiny_market)}, progress=False,
                                                log=logs.append))
    # Training ran with both terms, the toy one under its kind's name.
    assert [h["epoch"] for h in result.history] == [1]
    losses = result.history[0]["losses"]
    assert set(losses) == {"id", "toy_l2"}
    assert all(np.isfinite(v) and v > 0 for v in losses.values())
    assert SEEN_INPUT_DIMS == [WIDTH_A + WIDTH_B]  # concat: the term was sized with the summed width
    # The toy sampler drove the loader: built once, set to epoch 1, all 6 training ids -> 2 batches of 3x2.
    assert len(BUILT_SAMPLERS) == 1 and BUILT_SAMPLERS[0].epochs_seen == [1]
    assert result.history[0]["images"] == (6 // 3) * 3 * 2
    assert result.model_info["test_feature"] == ["f_a", "f_b"]
    assert result.model_info["loss_terms"] == ["id", "toy_l2"]
    # Evaluation used the concatenated feature f_a+f_b.
    path = features_file(tmp_path, "tiny", "f_a+f_b", False)
    assert path.is_file()
    with np.load(path, allow_pickle=False) as npz:
        assert npz["q_feats"].shape[1] == WIDTH_A + WIDTH_B
        assert npz["g_feats"].shape[1] == WIDTH_A + WIDTH_B
        assert len(npz["q_feats"]) == 4 * 2 and len(npz["g_feats"]) == 4 * 3 * 2 + 1  # + the pid-0 distractor (junk -1 dropped)
    metrics = result.metrics["tiny"]
    assert set(metrics) >= {"R1", "mAP"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())

