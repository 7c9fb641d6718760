"""Store: a schema-1 results.db (tests/fixtures/db-v1, written by the old code) upgraded in place.

The spec side of the upgrade (new hash, new spec, evaluations from the old metric names) is a fake
here, patched in through ``migrations._upgrade_run``: what is tested is the store's part — backup,
one transaction, aliases, merges, bit-identical numbers, run folders, concurrency.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, inspect

from reidbench.harness.store import Store, StoreError
from reidbench.harness.store.tables import SCHEMA_VERSION
from reidbench.harness.store import migrations

FIXTURE = Path(__file__).parent / "fixtures" / "db-v1"
TABLES = ("rb_meta", "rb_runs", "rb_metrics", "rb_epochs", "rb_ablations", "rb_ablation_members")
NEW_SPEC_MARK = {"upgraded": True}


def fake_upgrade(run_hash, spec, provenance, metrics):
    """New hash = "new-" + old; the default evaluation from plain names, "rerank" from rerank_*."""
    evaluations = []
    for test_set, per_metric in metrics.items():
        plain = {k: v for k, v in per_metric.items() if not k.startswith("rerank_")}
        rerank = {k[len("rerank_"):]: v for k, v in per_metric.items() if k.startswith("rerank_")}
        for variant, values in (("", plain), ("rerank", rerank)):
            if values:
                evaluations.append(SimpleNamespace(
                    key=f"{variant or 'default'}:{test_set}", test_set=test_set, test_fingerprint=f"fp-{test_set}",
                    variant=variant, settings={"rerank": variant == "rerank"}, metrics=values))
    return SimpleNamespace(run_hash="new-" + run_hash, spec={**spec, **NEW_SPEC_MARK},
                           train_fingerprint="tfp-" + run_hash[:8], evaluations=evaluations)


def fake_ablation_name(name, base, mode, meta, member_hashes):
    return f"{name}@{'/'.join(h[:10] for h in member_hashes)}"


@pytest.fixture
def v1(tmp_path, monkeypatch):
    """The fixture copied to a temporary folder (the current folder), plus a pristine copy to compare."""
    work = tmp_path / "work"
    shutil.copytree(FIXTURE, work)
    shutil.copy(work / "results.db", tmp_path / "original.db")
    monkeypatch.chdir(work)
    monkeypatch.setattr(migrations, "_upgrade_run", fake_upgrade)
    monkeypatch.setattr(migrations, "_upgrade_ablation_name", fake_ablation_name)
    return work


def _dump(db: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(db) as con:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in TABLES}


def _version(db: Path) -> str:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT value FROM rb_meta WHERE key = 'schema_version'").fetchone()[0]


def _backups(folder: Path) -> list[Path]:
    return sorted(folder.glob("results.db.schema1-backup-*"))


def _old_runs(original: Path) -> dict[int, tuple[str, str]]:
    with sqlite3.connect(original) as con:
        return {i: (h, label) for i, h, label in con.execute("SELECT id, run_hash, label FROM rb_runs")}


def _old_metrics(original: Path) -> dict[str, list[tuple[str, str, float]]]:
    out: dict[str, list[tuple[str, str, float]]] = {}
    with sqlite3.connect(original) as con:
        for h, t, m, v in con.execute("SELECT r.run_hash, m.test_set, m.metric, m.value FROM rb_metrics m "
                                      "JOIN rb_runs r ON r.id = m.run_id WHERE m.step IS NULL ORDER BY m.id"):
            out.setdefault(h, []).append((t, m, v))
    return out


def test_upgrade_keeps_every_run_and_number(v1, tmp_path, capfd):
    original = tmp_path / "original.db"
    before = _dump(original)
    assert before["rb_meta"] == [("schema_version", "1")] and len(before["rb_runs"]) == 3

    store = Store("sqlite:///results.db")
    err = capfd.readouterr().err.strip().splitlines()
    (backup,) = _backups(v1)
    assert err == [f"reidbench: upgraded results.db from schema 1 to 3 (backup: {backup}); 3 run(s) re-hashed; "
                   "1 ablation(s) renamed; 3 run folder(s) rewritten, 0 missing; 12 evaluation(s) without per-query "
                   "results (filled in from saved features on demand)"]
    # The backup is a complete schema-1 database with the original rows.
    assert _dump(backup) == before
    assert _version(v1 / "results.db") == str(SCHEMA_VERSION)

    old_runs = _old_runs(original)
    old_metrics = _old_metrics(original)
    for old_hash, label in old_runs.values():
        new_hash = "new-" + old_hash
        for ref in (old_hash, old_hash[:12], new_hash, new_hash[:16]):
            assert store.get_run(ref).run_hash == new_hash
        record = store.find_run(old_hash)
        assert record == store.find_run(new_hash)
        assert (record.label, record.status, record.aliases) == (label, "done", (old_hash,))
        assert record.train_fingerprint == "tfp-" + old_hash[:8]
        assert record.spec["upgraded"] is True and record.spec["tricks"] is not None
        assert store.statuses([old_hash, new_hash]) == {old_hash: "done", new_hash: "done"}
        assert store.epochs(old_hash) == store.epochs(new_hash) and len(store.epochs(new_hash)) == 2
        # every number, bit for bit, under its evaluation's variant and new name
        got = [(m.test_set, m.variant, m.metric, m.value.hex()) for m in store.metrics([new_hash], variant=None)]
        expected = [(t, "rerank" if m.startswith("rerank_") else "", m.removeprefix("rerank_"), v.hex())
                    for t, m, v in old_metrics[old_hash]]
        assert sorted(got) == sorted(expected) and len(got) == 20
        default = store.metrics([new_hash])
        assert {m.variant for m in default} == {""} and {m.evaluation_key for m in default} == {
            "default:tiny", "default:tiny2"}
        evaluations = store.evaluations([new_hash])
        assert [(e.test_set, e.variant, e.test_fingerprint) for e in evaluations] == [
            ("tiny", "", "fp-tiny"), ("tiny", "rerank", "fp-tiny"), ("tiny2", "", "fp-tiny2"),
            ("tiny2", "rerank", "fp-tiny2")]
        assert store.find_evaluation(old_hash, "rerank:tiny2").metrics["mAP"] == dict(
            (m, v) for t, m, v in old_metrics[old_hash] if t == "tiny2")["rerank_mAP"]

    ablation = store.get_ablation()
    with sqlite3.connect(original) as con:
        members = con.execute("SELECT m.position, r.run_hash, m.label, m.step, m.seed FROM rb_ablation_members m "
                              "JOIN rb_runs r ON r.id = m.run_id ORDER BY m.position").fetchall()
        (old_name,) = con.execute("SELECT name FROM rb_ablations").fetchone()
    assert ablation.members == tuple({"position": p, "run_hash": "new-" + h, "label": label, "step": step,
                                      "seed": seed} for p, h, label, step, seed in members)
    assert ablation.name == old_name + "@" + "/".join(("new-" + h)[:10] for _, h, *_ in members)
    assert store.get_ablation(old_name + "@" + "/".join(("new-" + h)[:10] for _, h, *_ in members)).id == ablation.id

    for old_hash, _ in old_runs.values():
        folder = v1 / "runs" / old_hash[:12]
        assert json.loads((folder / "spec.json").read_text()) == {
            "run_hash": "new-" + old_hash, "legacy_run_hashes": [old_hash],
            "spec": store.get_run(old_hash).spec}
        for name in ("result.json", "train.log", "features-tiny.npz", "features-tiny2.npz"):
            assert (folder / name).read_bytes() == (FIXTURE / "runs" / old_hash[:12] / name).read_bytes()

    # A second open does nothing: no line, no second backup.
    store.close()
    again = Store("sqlite:///results.db")
    assert capfd.readouterr().err == "" and _backups(v1) == [backup]
    assert len(again.list_runs()) == 3 and _version(v1 / "results.db") == str(SCHEMA_VERSION)


def test_upgraded_database_takes_new_results_and_deletes_cleanly(v1):
    store = Store("sqlite:///results.db")
    old_hash = _old_runs(v1.parent / "original.db")[1][0]
    # Several evaluations of one test set: the old one-row-per-(run, test set, metric) index is gone.
    store.record_evaluation(old_hash, {"key": "flip:tiny", "test_set": "tiny", "variant": "flip",
                                       "settings": {"flip": True}, "metrics": {"R1": 0.5, "mAP": 0.25}})
    assert [(m.metric, m.value) for m in store.metrics(["new-" + old_hash], variant="flip")] == [
        ("R1", 0.5), ("mAP", 0.25)]
    store.delete_run(old_hash)
    assert store.find_run(old_hash) is None and store.find_run("new-" + old_hash) is None
    with sqlite3.connect(v1 / "results.db") as con:
        counts = [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("rb_runs", "rb_run_aliases", "rb_evaluations", "rb_metrics")]
    assert counts == [2, 2, 8, 40]


def _schema(url: str) -> dict:
    found = inspect(create_engine(url))
    out = {}
    for table in found.get_table_names():
        out[table] = (
            [(c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(table)],
            sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in found.get_indexes(table)),
            sorted((u["name"], tuple(u["column_names"])) for u in found.get_unique_constraints(table)),
        )
    return out


def test_upgraded_schema_matches_a_new_database(v1, tmp_path):
    Store("sqlite:///results.db")
    Store(f"sqlite:///{tmp_path / 'new.db'}")
    upgraded, new = _schema("sqlite:///results.db"), _schema(f"sqlite:///{tmp_path / 'new.db'}")
    assert set(upgraded) == set(new)
    for table in new:
        columns, indexes, uniques = upgraded[table]
        assert sorted(columns) == sorted(new[table][0]), table
        assert indexes == new[table][1], table
        # the one leftover: SQLite cannot drop a table-level UNIQUE, and it never fires for step NULL rows
        assert [u for u in uniques if u[0] != "uq_rb_metrics"] == new[table][2], table
    with sqlite3.connect(v1 / "results.db") as con:
        fks = con.execute("SELECT \"table\", on_delete FROM pragma_foreign_key_list('rb_metrics')").fetchall()
    assert sorted(fks) == [("rb_evaluations", "CASCADE"), ("rb_runs", "CASCADE")]


def test_runs_that_map_to_one_training_are_merged(v1, tmp_path, monkeypatch, capfd):
    original = tmp_path / "original.db"
    runs = _old_runs(original)
    base_hash, bnneck_hash, center_hash = runs[1][0], runs[2][0], runs[3][0]
    with sqlite3.connect(v1 / "results.db") as con:  # the first one failed: the done one is kept
        con.execute("UPDATE rb_runs SET status = 'failed' WHERE id = 1")

    def merging(run_hash, spec, provenance, metrics):
        upgraded = fake_upgrade(run_hash, spec, provenance, metrics)
        if run_hash in (base_hash, bnneck_hash):
            upgraded.run_hash = "merged"
            for e in upgraded.evaluations:
                if e.variant == "rerank":  # distinct keys move over; equal keys stay the kept run's
                    e.key = f"rerank:{e.test_set}:{run_hash[:4]}"
        return upgraded

    monkeypatch.setattr(migrations, "_upgrade_run", merging)
    store = Store("sqlite:///results.db")
    assert "1 run(s) merged into a run with the same training" in capfd.readouterr().err
    merged = store.get_run("merged")
    assert merged.label == "+BNNeck" and merged.status == "done"
    assert set(merged.aliases) == {base_hash, bnneck_hash}
    assert store.get_run(base_hash[:12]).run_hash == "merged" and store.statuses([base_hash]) == {base_hash: "done"}
    assert sorted(r.run_hash for r in store.list_runs()) == ["merged", "new-" + center_hash]

    old = _old_metrics(original)
    evaluations = {e.key: e for e in store.evaluations(["merged"])}
    assert sorted(evaluations) == sorted(["default:tiny", "default:tiny2"] + [
        f"rerank:{t}:{h[:4]}" for h in (base_hash, bnneck_hash) for t in ("tiny", "tiny2")])
    # the default evaluations are the kept (done) run's own numbers
    assert evaluations["default:tiny"].metrics == {m: v for t, m, v in old[bnneck_hash] if t == "tiny" and "_" not in m}
    assert evaluations[f"rerank:tiny:{base_hash[:4]}"].metrics == {
        m[len("rerank_"):]: v for t, m, v in old[base_hash] if t == "tiny" and m.startswith("rerank_")}
    assert len(store.epochs("merged")) == 2

    ablation = store.get_ablation()
    assert [m["run_hash"] for m in ablation.members] == ["merged", "merged", "new-" + center_hash]
    assert [m["label"] for m in ablation.members] == ["Baseline (seed 0)", "+BNNeck (seed 0)", "+center loss (seed 0)"]
    for old_hash in (base_hash, bnneck_hash):
        written = json.loads((v1 / "runs" / old_hash[:12] / "spec.json").read_text())
        assert written["run_hash"] == "merged" and written["legacy_run_hashes"] == [old_hash]


def test_runs_that_cannot_be_upgraded_are_kept_as_they_were(v1, tmp_path, monkeypatch, capfd):
    original = tmp_path / "original.db"
    runs = _old_runs(original)
    base_hash, bnneck_hash, center_hash = runs[1][0], runs[2][0], runs[3][0]

    def partial(run_hash, spec, provenance, metrics):
        if run_hash == base_hash:
            raise ValueError("unknown trick 'x'\nsecond line")
        upgraded = fake_upgrade(run_hash, spec, provenance, metrics)
        if run_hash == bnneck_hash:
            upgraded.evaluations[0].metrics.pop("mAP")  # an upgrade that would lose a number is refused
        return upgraded

    monkeypatch.setattr(migrations, "_upgrade_run", partial)
    shutil.rmtree(v1 / "runs" / center_hash[:12])
    before_spec = (v1 / "runs" / base_hash[:12] / "spec.json").read_bytes()
    store = Store("sqlite:///results.db")
    err = capfd.readouterr().err
    assert err.count("\n") == 1
    assert "1 run(s) re-hashed" in err and "0 run folder(s) rewritten, 1 missing" in err
    assert (f"; 2 run(s) kept as they were: {base_hash[:12]} (unknown trick 'x'), {bnneck_hash[:12]} "
            "(the upgrade would lose metric tiny/mAP = 0.9896354166666667);") in err

    old = _old_metrics(original)
    for kept in (base_hash, bnneck_hash):
        record = store.get_run(kept)
        assert record.run_hash == kept and record.aliases == () and "upgraded" not in record.spec
        # all its numbers, under their old names, in the default evaluation of each test set
        assert [(m.test_set, m.metric, m.value.hex()) for m in store.metrics([kept])] == [
            (t, m, v.hex()) for t, m, v in old[kept]]
        assert [e.key for e in store.evaluations([kept])] == ["default:tiny", "default:tiny2"]
    assert (v1 / "runs" / base_hash[:12] / "spec.json").read_bytes() == before_spec
    assert store.get_run(center_hash).run_hash == "new-" + center_hash


@pytest.mark.parametrize("where", ["run", "ablation"])
def test_a_crash_inside_the_upgrade_leaves_schema_1_and_a_later_open_retries(v1, tmp_path, monkeypatch, where):
    before = _dump(tmp_path / "original.db")
    calls = []

    def crashing_run(**kwargs):
        calls.append(kwargs["run_hash"])
        if len(calls) == 3:
            raise RuntimeError("power cut")
        return fake_upgrade(**kwargs)

    def crashing_name(**kwargs):  # after every run row was rewritten inside the transaction
        raise RuntimeError("power cut")

    monkeypatch.setattr(migrations, "_upgrade_run" if where == "run" else "_upgrade_ablation_name",
                        crashing_run if where == "run" else crashing_name)
    with pytest.raises(RuntimeError, match="power cut"):
        Store("sqlite:///results.db")
    assert _dump(v1 / "results.db") == before  # schema 1, every row as it was
    with sqlite3.connect(v1 / "results.db") as con:
        assert con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'rb_evaluations'").fetchone()[0] == 0
        assert "train_fingerprint" not in {r[1] for r in con.execute("PRAGMA table_info(rb_runs)")}
    assert len(_backups(v1)) == 1 and not list(v1.glob("*.partial"))
    for folder in (v1 / "runs").iterdir():
        assert (folder / "spec.json").read_bytes() == (FIXTURE / "runs" / folder.name / "spec.json").read_bytes()

    monkeypatch.setattr(migrations, "_upgrade_run", fake_upgrade)
    monkeypatch.setattr(migrations, "_upgrade_ablation_name", fake_ablation_name)
    store = Store("sqlite:///results.db")
    assert _version(v1 / "results.db") == str(SCHEMA_VERSION) and len(store.list_runs()) == 3
    assert all(r.run_hash.startswith("new-") for r in store.list_runs())


def _open_concurrently(folder: str, barrier, calls_file: str) -> None:
    def counting(**kwargs):
        with open(calls_file, "a") as handle:
            handle.write(kwargs["run_hash"] + "\n")
        return fake_upgrade(**kwargs)

    migrations._upgrade_run = counting
    migrations._upgrade_ablation_name = fake_ablation_name
    import os

    os.chdir(folder)
    barrier.wait(timeout=20)
    store = Store("sqlite:///results.db")
    assert len(store.list_runs()) == 3 and all(r.run_hash.startswith("new-") for r in store.list_runs())


def test_concurrent_first_open_upgrades_once(v1, tmp_path):
    ctx = multiprocessing.get_context("fork")  # fast, and the children inherit the imported store
    barrier = ctx.Barrier(3)
    calls = tmp_path / "calls.txt"
    workers = [ctx.Process(target=_open_concurrently, args=(str(v1), barrier, str(calls))) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert len(calls.read_text().splitlines()) == 3  # one upgrade call per run, from one process
    assert len(_backups(v1)) == 1 and _version(v1 / "results.db") == str(SCHEMA_VERSION)
    assert len(Store("sqlite:///results.db").evaluations()) == 12


def test_json_backup_for_other_dialects(v1, tmp_path):
    """PostgreSQL & co. get a JSON dump of every rb_ table in the current folder (run here on SQLite)."""
    engine = create_engine("sqlite:///results.db")
    with engine.connect() as conn:
        path = Path(migrations._json_backup(conn, 1, v1))
    engine.dispose()
    assert path.parent == v1 and path.name.startswith("reidbench-backup-schema1-") and path.suffix == ".json"
    dumped = json.loads(path.read_text())
    assert dumped["schema_version"] == 1
    before = _dump(tmp_path / "original.db")
    for table in TABLES:
        assert len(dumped["tables"][table]) == len(before[table])
    values = sorted(float(row["value"]).hex() for row in dumped["tables"]["rb_metrics"])
    assert values == sorted(row[4].hex() for row in before["rb_metrics"])


def test_newer_database_is_still_refused_before_any_upgrade(v1):
    with sqlite3.connect(v1 / "results.db") as con:
        con.execute(f"UPDATE rb_meta SET value = '{SCHEMA_VERSION + 1}' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1} is newer than this reidbench supports"):
        Store("sqlite:///results.db")
    assert _backups(v1) == []


def test_runs_show_prints_aliases_fingerprint_and_evaluations(v1):
    from click.testing import CliRunner

    from reidbench.harness.cli import main

    old_hash = _old_runs(v1.parent / "original.db")[2][0]
    Store("sqlite:///results.db")
    result = CliRunner().invoke(main, ["runs", "show", old_hash[:10], "--db", "sqlite:///results.db"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["run_hash"] == "new-" + old_hash and shown["aliases"] == [old_hash]
    assert shown["train_fingerprint"] == "tfp-" + old_hash[:8]
    assert [(e["test_set"], e["test_fingerprint"], e["variant"], e["settings"]) for e in shown["evaluations"]] == [
        ("tiny", "fp-tiny", "", {"rerank": False}), ("tiny", "fp-tiny", "rerank", {"rerank": True}),
        ("tiny2", "fp-tiny2", "", {"rerank": False}), ("tiny2", "fp-tiny2", "rerank", {"rerank": True})]
    assert shown["metrics"]["tiny"] == shown["evaluations"][0]["metrics"]
    listed = CliRunner().invoke(main, ["runs", "list", "--db", "sqlite:///results.db"])
    assert listed.exit_code == 0 and "tiny: R1 100.0" in listed.output


def test_new_hashes_may_swap_with_old_ones(v1, tmp_path, monkeypatch):
    """A new hash equal to another run's old hash (UNIQUE column): rows are parked first, then named."""
    runs = _old_runs(tmp_path / "original.db")
    first, second = runs[1][0], runs[2][0]
    swap = {first: second, second: first}

    def swapping(run_hash, spec, provenance, metrics):
        upgraded = fake_upgrade(run_hash, spec, provenance, metrics)
        upgraded.run_hash = swap.get(run_hash, upgraded.run_hash)
        return upgraded

    def refusing(**kwargs):
        raise ValueError("no such base")

    monkeypatch.setattr(migrations, "_upgrade_run", swapping)
    monkeypatch.setattr(migrations, "_upgrade_ablation_name", refusing)
    store = Store("sqlite:///results.db")
    labels = {r.run_hash: r.label for r in store.list_runs()}
    assert labels[second] == runs[1][1] and labels[first] == runs[2][1]
    with sqlite3.connect(tmp_path / "original.db") as con:
        (old_name,) = con.execute("SELECT name FROM rb_ablations").fetchone()
    assert store.get_ablation().name == old_name  # a name the upgrade refuses stays as it was
