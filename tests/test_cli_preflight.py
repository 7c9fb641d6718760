"""Preflight: problems certain before training are one line each, exit code 2, and nothing is recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from reidbench.harness.cli import main

TINY = """
profile: cpu
model: {backbone: "timm:test_resnet", pretrained: false}
data: {train: tiny, test: [tiny], image_size: [32, 16], ids_per_batch: 3, imgs_per_id: 2, pad_px: 2}
schedule: {max_epochs: 1, milestones: [1], warmup_epochs: 0}
eval: {batch_size: 16}
train: {seed: 0, checkpoint_every_epochs: 1}
"""


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _errors(output: str) -> list[str]:
    lines = [line for line in output.splitlines() if line.strip()]
    assert "Traceback" not in output
    return [line.removeprefix("reidbench: error: ") for line in lines if line.startswith("reidbench: error: ")]


def _spec(tmp_path: Path, text: str = TINY, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A fresh working folder (runs/ and the default results.db land here) and its database URL."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("REIDBENCH_DATA", str(tmp_path / "cache"))
    return work, work / "results.db"


def test_an_empty_data_folder_is_three_lines_and_records_nothing(project):
    work, db = project
    (work / "empty").mkdir()
    result = _invoke("ablate", "--data", "x=empty", "--db", f"sqlite:///{db}")
    assert result.exit_code == 2, result.output
    errors = _errors(result.output)
    # one line per missing split of Market's layout, naming the --data item; not once per planned run
    assert sorted(errors) == sorted(f"--data x=empty: {split}: missing split folder {Path('empty') / folder}"
                                    for split, folder in (("train", "bounding_box_train"), ("query", "query"),
                                                          ("gallery", "bounding_box_test")))
    assert not db.exists() and not (work / "runs").exists()


def test_fewer_identities_than_p_is_one_line_for_every_command(project, market_folder_factory):
    work, db = project
    data = market_folder_factory(work / "two", num_train_ids=2, num_test_ids=3)
    spec = _spec(work)
    want = ("data.ids_per_batch=3: the training set --data tiny={} has only 2 identities and a P×K batch needs P "
            "distinct ones; lower data.ids_per_batch to at most 2 [{}]")
    ablate = _invoke("ablate", "--base", str(spec), "--add", "ls,bnneck", "--data", f"tiny={data}",
                     "--db", f"sqlite:///{db}")
    assert ablate.exit_code == 2, ablate.output
    assert _errors(ablate.output) == [want.format(data, "all 3 planned runs")]
    train = _invoke("train", str(spec), "--data", f"tiny={data}", "--db", f"sqlite:///{db}")
    assert train.exit_code == 2, train.output
    assert _errors(train.output) == [want.format(data, "tiny.yaml")]
    assert not db.exists() and not (work / "runs").exists()


def test_a_broken_data_folder_creates_no_study(project):
    work, db = project
    (work / "empty").mkdir()
    result = _invoke("study", "--base", str(_spec(work)), "--data", "tiny=empty", "--db", f"sqlite:///{db}",
                     "--runs-dir", str(work / "runs"))
    assert result.exit_code == 2, result.output
    assert len(_errors(result.output)) == 3 and all("missing split folder" in e for e in _errors(result.output))
    assert not db.exists() and not (work / "runs").exists()


def test_missing_imagenet_weights_are_found_before_training(project, tiny_market, monkeypatch):
    work, db = project
    monkeypatch.setenv("TORCH_HOME", str(work / "no-torch-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(work / "no-hf-cache"))
    monkeypatch.setenv("REIDBENCH_OFFLINE", "1")  # where weights can be downloaded: not here
    spec = _spec(work, TINY.replace('backbone: "timm:test_resnet", pretrained: false', "backbone: resnet18"))
    result = _invoke("train", str(spec), "--data", f"tiny={tiny_market}", "--db", f"sqlite:///{db}")
    assert result.exit_code == 2, result.output
    (error,) = _errors(result.output)
    assert error.startswith("resnet18 ImageNet weights not found") and "model.pretrained=false" in error
    assert error.endswith("[tiny.yaml]")
    missing_file = _spec(work, TINY.replace("pretrained: false", f"weights_path: {work / 'nope.pth'}"), "file.yaml")
    result = _invoke("ablate", "--base", str(missing_file), "--add", "ls", "--data", f"tiny={tiny_market}",
                     "--db", f"sqlite:///{db}")
    assert result.exit_code == 2
    (error,) = _errors(result.output)
    assert error.startswith(f"model.weights_path={str(work / 'nope.pth')!r}: no such file")
    assert not db.exists()


def test_tricks_that_do_not_apply_are_one_line_each(project):
    work, db = project
    result = _invoke("ablate", "--base", "spreid", "--add", "bnneck,warmup,center", "--profile", "cpu",
                     "--db", f"sqlite:///{db}")
    assert result.exit_code == 2, result.output
    errors = _errors(result.output)
    assert [e.split(":")[0] for e in errors] == ["--add bnneck", "--add center"]
    assert "model.arch='spreid'" in errors[0] and "no triplet term" in errors[1]
    assert not db.exists()


def test_a_field_the_run_would_not_read_fails_at_load_for_train_and_ablate(project, tiny_market):
    work, db = project
    spec = _spec(work, TINY.replace("pad_px: 2}", "pad_px: 2, crop_aspect: [1.5, 2.5]}"))
    for args in (["train", str(spec)], ["ablate", "--base", str(spec), "--add", "ls"]):
        result = _invoke(*args, "--data", f"tiny={tiny_market}", "--db", f"sqlite:///{db}")
        assert result.exit_code == 2, result.output
        (error,) = _errors(result.output)
        assert "data.crop_aspect" in error and "crop_scale" in error
    assert not db.exists()


# --------------------------------------------------------------------------- the preflight function


def _toy_sampler(context):
    if context.imgs_per_id > 1:
        raise ValueError("toy draws one image per identity: set data.imgs_per_id=1")
    return _NoBatches()


class _NoBatches:
    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return 0


def test_preflight_deduplicates_and_asks_the_registered_sampler(tiny_market):
    from reidbench.harness.data.samplers import SAMPLERS, SamplerEntry, register_sampler
    from reidbench.harness.execution.preflight import PlannedRun, preflight
    from reidbench.harness.spec import replace_section, spec_from_dict

    import yaml

    base = spec_from_dict(yaml.safe_load(TINY))
    runs = [PlannedRun(f"r{i}", replace_section(base, "train", seed=i)) for i in range(6)]
    paths = {"tiny": str(tiny_market)}
    assert preflight(runs, paths) == []
    register_sampler(SamplerEntry(name="toy-pf", summary="one image per identity", build=_toy_sampler))
    try:
        toy = [PlannedRun(r.label, replace_section(r.spec, "data", sampler="toy-pf")) for r in runs]
        one = [PlannedRun("k1", replace_section(toy[0].spec, "data", imgs_per_id=1))]
        lines = preflight(toy[:5] + one, paths)
    finally:
        SAMPLERS.unregister("toy-pf")
    where = f"training set --data tiny={tiny_market}"
    assert lines == [
        f"data.sampler=toy-pf: toy draws one image per identity: set data.imgs_per_id=1 ({where}) [r0, r1, r2, r3 "
        "and 1 more]",
        f"data.sampler=toy-pf draws no 3×1 batch from the {where} (6 identities, 36 images) [k1]",
    ]
    # a dataset trained and tested on is looked at once; its problems are not repeated per run
    lines = preflight(runs, {"tiny": str(tiny_market / "nope")})
    assert lines == [f"--data tiny={tiny_market / 'nope'}: no such folder"]


def test_preflight_splits_p_between_processes(tiny_market):
    from reidbench.harness.execution.preflight import PlannedRun, preflight
    from reidbench.harness.spec import spec_from_dict

    import yaml

    spec = spec_from_dict(yaml.safe_load(TINY))
    (line,) = preflight([PlannedRun("one", spec)], {"tiny": str(tiny_market)}, gpus_per_run=2)
    assert line.startswith("--gpus-per-run 2: data.ids_per_batch=3") and line.endswith("[one]")


def test_synthetic_sets_are_not_generated_and_their_identities_come_from_the_recipe(tmp_path, monkeypatch):
    import math

    from reidbench.harness.data.synth.cache import DEFAULT_DATASETS
    from reidbench.harness.execution.preflight import DataInventory

    monkeypatch.setenv("REIDBENCH_DATA", str(tmp_path / "cache"))
    facts = DataInventory({}).training_facts("synth-a")
    assert facts.num_train_ids == math.ceil(DEFAULT_DATASETS["synth-a"].num_ids / 2) and not facts.problems
    assert not (tmp_path / "cache").exists()
