"""The library API: ``reidbench.load_spec`` and ``reidbench.build`` give what ``reidbench train`` builds.

``build`` needs no dataset; here its parts are compared with the components ``build_training``
makes for a real (tiny) training set of the same number of identities: same initial weights,
same optimiser groups and hyper-parameters, same LR at every epoch, same stage plan.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

import reidbench
from reidbench.harness.spec import SpecError, load_base_file, spec_from_dict
from reidbench.tricks import get_trick


def _groups(optimizer: torch.optim.Optimizer) -> list[dict]:
    return [{k: (len(v) if k == "params" else v) for k, v in g.items()} for g in optimizer.param_groups]


def _lrs(parts_or_components, epochs: int) -> list[list[float]]:
    scheduler = parts_or_components.scheduler
    return [[scheduler.lr_lambdas[i](e) for i in range(len(scheduler.lr_lambdas))] for e in range(epochs)]


@pytest.mark.parametrize("tricks", ["", "warmup,ls,bnneck,center", "two-step"])
def test_build_equals_what_train_builds(tricks, tiny_bot_yaml, tiny_market):
    from reidbench.harness.data.named import load_named_dataset
    from reidbench.harness.train.build import build_training

    spec = spec_from_dict(yaml.safe_load(tiny_bot_yaml))
    for name in filter(None, tricks.split(",")):
        spec = get_trick(name).apply(spec)
    train_set, _ = load_named_dataset("tiny", {"tiny": str(tiny_market)}, progress=False)
    built = build_training(spec, train_set, torch.device("cpu"), workers=0, show_progress=False)
    trained = built.components
    parts = reidbench.build(spec, num_classes=train_set.num_train_pids)

    ours, theirs = parts.model.state_dict(), trained.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert all(torch.equal(a, b) for a, b in zip(parts.objective.state_dict().values(),
                                                   trained.objective.state_dict().values()))
    assert type(parts.optimizer) is type(trained.optimizer) and _groups(parts.optimizer) == _groups(trained.optimizer)
    epochs = spec.schedule.max_epochs + 1
    assert _lrs(parts, epochs) == _lrs(trained, epochs)
    assert parts.stages == trained.stages
    assert [type(o.optimizer) for o in parts.objective.own_optimizers()] == \
        [type(o.optimizer) for o in trained.own_optimizers]


def test_load_spec_reads_a_base_like_the_command_line(tmp_path):
    spec = reidbench.load_spec("bot", profile="cpu", tricks="warmup,bnneck", epochs=12, seed=3)
    from reidbench.api import EXPERIMENTS

    by_hand, _ = load_base_file(EXPERIMENTS / "bot.yaml", "cpu")
    from reidbench.harness.spec import replace_section, with_epochs

    by_hand = replace_section(with_epochs(by_hand, 12), "train", seed=3)
    by_hand = get_trick("bnneck").apply(get_trick("warmup").apply(by_hand))
    assert spec == by_hand
    mgn = reidbench.load_spec("mgn", profile="cpu", preset="fastreid")
    assert mgn.model.neck == "bnneck"
    with pytest.raises(ValueError, match="preset 'nope' is not a preset of mgn.yaml; valid: fastreid"):
        reidbench.load_spec("mgn", preset="nope")
    with pytest.raises(ValueError, match="base 'nope' is not known; valid: agw, bot"):
        reidbench.load_spec("nope")
    with pytest.raises(SpecError, match="optim.momentum"):
        path = tmp_path / "x.yaml"
        path.write_text("optim: {name: adam, momentum: 0.95}\n")
        reidbench.load_spec(path)


def test_build_takes_a_base_name_and_needs_no_dataset():
    parts = reidbench.build("bot", num_classes=5, profile="cpu")
    logits = parts.model.train()(torch.randn(4, 3, 128, 64))["logits"]
    assert logits.shape == (4, 5)
    assert parts.optimizer.param_groups[0]["lr"] == reidbench.load_spec("bot", profile="cpu").optim.base_lr


def test_importing_reidbench_does_not_import_torch():
    code = "import sys, reidbench; assert callable(reidbench.build); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
