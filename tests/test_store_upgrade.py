"""Store: a schema-1 results.db (tests/fixtures/db-v1, written by the old code) upgraded in place.

The spec side of the upgrade (new hash, new spec, evaluations from the old metric names) is a fake
here, patched in through ``migrations._upgrade_run``: what is tested is the store's part — backup,
one transaction, aliases, merges, bit-identical numbers, run folders, concurrency.

Tests that take ``v1_url`` run twice: on the SQLite file itself, and on a real PostgreSQL database
that holds the same schema-1 tables and rows (``copy_sqlite_database`` in conftest.py), where the
backup is a JSON dump and concurrent openers queue on an advisory lock.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import sqlite3
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, inspect, text

from reidbench.harness.store import Store, StoreError
from reidbench.harness.store.engine import describe, driver_url, parse_url
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


def fake_rekey(*, run_hash, spec, **_):
    """Schema 4's re-key (tested on its own in test_upgrade_weights_end_to_end.py): identities unchanged."""
    return SimpleNamespace(run_hash=run_hash, spec=spec)


REKEY_NOTE = "0 run(s) re-keyed with the digest of their pretrained weights and today's spec"


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
    monkeypatch.setattr(migrations, "_rekey_run", fake_rekey)
    return work


@pytest.fixture
def v1_url(v1, db_url, copy_sqlite_database) -> str:
    """The schema-1 database to open: the fixture's SQLite file, or the same tables and rows on PostgreSQL."""
    if db_url.startswith("sqlite"):
        return "sqlite:///results.db"
    copy_sqlite_database(v1 / "results.db", db_url)
    return db_url


def _query(db: Path | str, sql: str) -> list[dict]:
    """Rows (column → value) of ``sql`` on an SQLite file or at a database URL, outside the store's code."""
    engine = create_engine(f"sqlite:///{db}" if isinstance(db, Path) else driver_url(db))
    try:
        with engine.connect() as conn:
            return [dict(row) for row in conn.execute(text(sql)).mappings()]
    finally:
        engine.dispose()


def _dump(db: Path | str) -> dict[str, list[dict]]:
    return {t: _query(db, f"SELECT * FROM {t} ORDER BY 1") for t in TABLES}


def _version(db: Path | str) -> str:
    return _query(db, "SELECT value FROM rb_meta WHERE key = 'schema_version'")[0]["value"]


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _backups(folder: Path, url: str = "sqlite:///results.db") -> list[Path]:
    """SQLite: copies of the file beside it; other dialects: JSON dumps in the current folder."""
    return sorted(folder.glob("results.db.schema1-backup-*" if _is_sqlite(url) else "reidbench-backup-schema1-*.json"))


def _backup_rows(backup: Path, url: str) -> dict[str, list[dict]]:
    """The backup's rows as ``_dump`` gives them (a JSON dump holds times as ISO strings)."""
    if _is_sqlite(url):
        return _dump(backup)
    dumped = json.loads(backup.read_text())
    assert dumped["schema_version"] == 1
    return {t: sorted(dumped["tables"][t], key=lambda row: next(iter(row.values())) if t == "rb_meta" else row["id"])
            for t in TABLES}


def _jsonable(rows: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Times as datetimes whatever held them: SQLite's text, PostgreSQL's timestamps, JSON's ISO strings."""
    def value(v):
        if isinstance(v, str) and re.fullmatch(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?", v):
            return datetime.fromisoformat(v)
        return v

    return {t: [{k: value(v) for k, v in row.items()} for row in found] for t, found in rows.items()}


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


def test_upgrade_keeps_every_run_and_number(v1, v1_url, tmp_path, capfd):
    original = tmp_path / "original.db"
    before = _dump(v1_url)
    assert before["rb_meta"] == [{"key": "schema_version", "value": "1"}] and len(before["rb_runs"]) == 3
    assert _jsonable(before) == _jsonable(_dump(original))  # PostgreSQL: the fixture's rows, as they were

    store = Store(v1_url)
    err = capfd.readouterr().err.strip().splitlines()
    (backup,) = _backups(v1, v1_url)
    assert err == [f"reidbench: upgraded {describe(parse_url(v1_url))} from schema 1 to {SCHEMA_VERSION} (backup: "
                   f"{backup}); 3 run(s) re-hashed; 1 ablation(s) renamed; 3 run folder(s) rewritten, 0 missing; 12 "
                   "evaluation(s) without per-query results (filled in from saved features on demand); "
                   f"{REKEY_NOTE}; convergence of 3 finished run(s) read from their stored history (0 converged, "
                   "0 not, 3 unknown)"]
    # The backup holds the original rows: a complete schema-1 database (SQLite) or a JSON dump of it.
    assert _jsonable(_backup_rows(backup, v1_url)) == _jsonable(before)
    assert _version(v1_url) == str(SCHEMA_VERSION)

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
    again = Store(v1_url)
    assert capfd.readouterr().err == "" and _backups(v1, v1_url) == [backup]
    assert len(again.list_runs()) == 3 and _version(v1_url) == str(SCHEMA_VERSION)


def test_upgraded_database_takes_new_results_and_deletes_cleanly(v1, v1_url):
    store = Store(v1_url)
    old_hash = _old_runs(v1.parent / "original.db")[1][0]
    # Several evaluations of one test set: the old one-row-per-(run, test set, metric) index is gone.
    store.record_evaluation(old_hash, {"key": "flip:tiny", "test_set": "tiny", "variant": "flip",
                                       "settings": {"flip": True}, "metrics": {"R1": 0.5, "mAP": 0.25}})
    assert [(m.metric, m.value) for m in store.metrics(["new-" + old_hash], variant="flip")] == [
        ("R1", 0.5), ("mAP", 0.25)]
    store.delete_run(old_hash)
    assert store.find_run(old_hash) is None and store.find_run("new-" + old_hash) is None
    counts = [_query(v1_url, f"SELECT count(*) AS n FROM {t}")[0]["n"]
              for t in ("rb_runs", "rb_run_aliases", "rb_evaluations", "rb_metrics")]
    assert counts == [2, 2, 8, 40]
    # New rows get new ids after the old ones (PostgreSQL: the id sequences were carried along).
    added = store.record_result("f" * 64, None, {"run_hash": "f" * 64, "spec": {}, "history": [],
                                                 "metrics": {"tiny": {"R1": 1.0}}})
    assert added.status == "done" and len(store.list_runs()) == 3


def _schema(url: str) -> dict:
    found = inspect(create_engine(driver_url(url)))
    out = {}
    for table in found.get_table_names():
        out[table] = (
            [(c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(table)],
            sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in found.get_indexes(table)),
            sorted((u["name"], tuple(u["column_names"])) for u in found.get_unique_constraints(table)),
        )
    return out


def test_upgraded_schema_matches_a_new_database(v1, v1_url, tmp_path, request):
    new_url = f"sqlite:///{tmp_path / 'new.db'}"
    if not _is_sqlite(v1_url):
        server = request.getfixturevalue("postgres_server")
        new_url = server.create_database()
        request.addfinalizer(lambda: server.drop_database(new_url))
    Store(v1_url)
    Store(new_url)
    upgraded, new = _schema(v1_url), _schema(new_url)
    assert set(upgraded) == set(new)
    for table in new:
        columns, indexes, uniques = upgraded[table]
        assert sorted(columns) == sorted(new[table][0]), table
        # the one leftover: schema 1's table-level UNIQUE (SQLite cannot drop it; it never fires for
        # step NULL rows); PostgreSQL lists it among the indexes too
        assert [i for i in indexes if i[0] != "uq_rb_metrics"] == new[table][1], table
        assert [u for u in uniques if u[0] != "uq_rb_metrics"] == new[table][2], table
    if _is_sqlite(v1_url):  # SQLAlchemy does not read ON DELETE of a column added by ALTER TABLE there
        with sqlite3.connect(v1 / "results.db") as con:
            fks = con.execute("SELECT \"table\", on_delete FROM pragma_foreign_key_list('rb_metrics')").fetchall()
    else:
        fks = [(fk["referred_table"], fk["options"].get("ondelete"))
               for fk in inspect(create_engine(driver_url(v1_url))).get_foreign_keys("rb_metrics")]
    assert sorted(fks) == [("rb_evaluations", "CASCADE"), ("rb_runs", "CASCADE")]


def _execute(url: str, sql: str) -> None:
    engine = create_engine(driver_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


def test_runs_that_map_to_one_training_are_merged(v1, v1_url, tmp_path, monkeypatch, capfd):
    original = tmp_path / "original.db"
    runs = _old_runs(original)
    base_hash, bnneck_hash, center_hash = runs[1][0], runs[2][0], runs[3][0]
    _execute(v1_url, "UPDATE rb_runs SET status = 'failed' WHERE id = 1")  # the first one failed: the done one is kept

    def merging(run_hash, spec, provenance, metrics):
        upgraded = fake_upgrade(run_hash, spec, provenance, metrics)
        if run_hash in (base_hash, bnneck_hash):
            upgraded.run_hash = "merged"
            for e in upgraded.evaluations:
                if e.variant == "rerank":  # distinct keys move over; equal keys stay the kept run's
                    e.key = f"rerank:{e.test_set}:{run_hash[:4]}"
        return upgraded

    monkeypatch.setattr(migrations, "_upgrade_run", merging)
    store = Store(v1_url)
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


def test_runs_that_cannot_be_upgraded_are_kept_as_they_were(v1, v1_url, tmp_path, monkeypatch, capfd):
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
    store = Store(v1_url)
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
def test_a_crash_inside_the_upgrade_leaves_schema_1_and_a_later_open_retries(v1, v1_url, monkeypatch, where):
    before = _dump(v1_url)
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
        Store(v1_url)
    assert _dump(v1_url) == before  # schema 1, every row as it was
    found = inspect(create_engine(driver_url(v1_url)))  # and its tables: the DDL was rolled back too
    assert not found.has_table("rb_evaluations")
    assert "train_fingerprint" not in {c["name"] for c in found.get_columns("rb_runs")}
    assert len(_backups(v1, v1_url)) == 1 and not list(v1.glob("*.partial"))
    for folder in (v1 / "runs").iterdir():
        assert (folder / "spec.json").read_bytes() == (FIXTURE / "runs" / folder.name / "spec.json").read_bytes()

    monkeypatch.setattr(migrations, "_upgrade_run", fake_upgrade)
    monkeypatch.setattr(migrations, "_upgrade_ablation_name", fake_ablation_name)
    store = Store(v1_url)
    assert _version(v1_url) == str(SCHEMA_VERSION) and len(store.list_runs()) == 3
    assert all(r.run_hash.startswith("new-") for r in store.list_runs())


def _open_concurrently(folder: str, url: str, barrier, calls_file: str) -> None:
    def counting(**kwargs):
        with open(calls_file, "a") as handle:
            handle.write(kwargs["run_hash"] + "\n")
        return fake_upgrade(**kwargs)

    migrations._upgrade_run = counting
    migrations._upgrade_ablation_name = fake_ablation_name
    import os

    os.chdir(folder)
    barrier.wait(timeout=20)
    store = Store(url)
    assert len(store.list_runs()) == 3 and all(r.run_hash.startswith("new-") for r in store.list_runs())


def test_concurrent_first_open_upgrades_once(v1, v1_url, tmp_path):
    ctx = multiprocessing.get_context("fork")  # fast, and the children inherit the imported store
    barrier = ctx.Barrier(3)
    calls = tmp_path / "calls.txt"
    workers = [ctx.Process(target=_open_concurrently, args=(str(v1), v1_url, barrier, str(calls))) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert len(calls.read_text().splitlines()) == 3  # one upgrade call per run, from one process
    assert len(_backups(v1, v1_url)) == 1 and _version(v1_url) == str(SCHEMA_VERSION)
    assert len(Store(v1_url).evaluations()) == 12


def test_json_backup_for_other_dialects(v1, tmp_path):
    """PostgreSQL & co. get a JSON dump of every rb_ table in the current folder (here on SQLite; on
    PostgreSQL in test_upgrade_keeps_every_run_and_number)."""
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
    assert values == sorted(row["value"].hex() for row in before["rb_metrics"])


def test_newer_database_is_still_refused_before_any_upgrade(v1, v1_url):
    _execute(v1_url, f"UPDATE rb_meta SET value = '{SCHEMA_VERSION + 1}' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1} is newer than this reidbench supports"):
        Store(v1_url)
    assert _backups(v1, v1_url) == []


def test_runs_show_prints_aliases_fingerprint_and_evaluations(v1, v1_url):
    from click.testing import CliRunner

    from reidbench.harness.cli import main

    old_hash = _old_runs(v1.parent / "original.db")[2][0]
    Store(v1_url)
    result = CliRunner().invoke(main, ["runs", "show", old_hash[:10], "--db", v1_url])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["run_hash"] == "new-" + old_hash and shown["aliases"] == [old_hash]
    assert shown["train_fingerprint"] == "tfp-" + old_hash[:8]
    assert [(e["test_set"], e["test_fingerprint"], e["variant"], e["settings"]) for e in shown["evaluations"]] == [
        ("tiny", "fp-tiny", "", {"rerank": False}), ("tiny", "fp-tiny", "rerank", {"rerank": True}),
        ("tiny2", "fp-tiny2", "", {"rerank": False}), ("tiny2", "fp-tiny2", "rerank", {"rerank": True})]
    assert shown["metrics"]["tiny"] == shown["evaluations"][0]["metrics"]
    listed = CliRunner().invoke(main, ["runs", "list", "--db", v1_url])
    assert listed.exit_code == 0 and "tiny: R1 100.0" in listed.output


def test_new_hashes_may_swap_with_old_ones(v1, v1_url, tmp_path, monkeypatch):
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
    store = Store(v1_url)
    labels = {r.run_hash: r.label for r in store.list_runs()}
    assert labels[second] == runs[1][1] and labels[first] == runs[2][1]
    with sqlite3.connect(tmp_path / "original.db") as con:
        (old_name,) = con.execute("SELECT name FROM rb_ablations").fetchone()
    assert store.get_ablation().name == old_name  # a name the upgrade refuses stays as it was
