"""The convergence upgrade on the real schema-3 database (tests/fixtures/db-v3, written by the previous
main; its README): every finished run gets its record from its stored history, or ``unknown`` with
the reason, and nothing else in the database or in its reports changes."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from reidbench.harness.cli import main
from reidbench.harness.store import Store
from reidbench.harness.store.tables import SCHEMA_VERSION
from reidbench.harness.train.convergence import NO, RUN_END, UNKNOWN, YES

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "db-v3"
COSINE = "90fc1fb8f8524f03ac6867584382ef79fd9e1cd1bc51d115242390d27e4960cc"  # +cosine LR: anneals over 2 epochs
# the fixture's rb_epochs of +cosine LR (loss/id + loss/triplet at epochs 1 and 2)
COSINE_LOSS = (1.8558215141296386 + 0.3591397076845169, 1.7993444442749023 + 0.2100347626954317)
MILESTONE_AT_2 = "no window: fewer than two epochs at the peak LR before the first decay (epoch 2)"
RUN_HASHES = [  # the fixture's runs, as its README and rb_runs name them
    "8206749a5cea3e80e2f4d1d48f430b95d4dbd77a27fccdfc54def7573b3621a6",
    COSINE,
    "c9a9f79877e7eae5506a96350b6fd97393a4fac9b0edaff381bf21dd5c6d104b",
    "bbfe704ce7d486ce963573086ac894d0031eaa1744d5fb8b567cea580e85f7be",
    "bc24a6ad109fd432ff49ed350a72802c67c963ea9579c6f47b967180aa7d55ca",
]
EXPECTED = {  # run hash prefix → (status, window, reason)
    "8206749a5cea": (UNKNOWN, None, MILESTONE_AT_2),
    "bbfe704ce7d4": (UNKNOWN, None, MILESTONE_AT_2),
    "c9a9f79877e7": (UNKNOWN, None, MILESTONE_AT_2),  # +warmup: its 2-epoch warmup ends at the milestone
    "bc24a6ad109f": (UNKNOWN, None, "no window: 1 epoch(s): a window needs two"),
    COSINE[:12]: (NO, (1, 2), "loss changed -9.3 % (limit 1 %); mAP: not scored at epoch 1 (the loss alone decides)"),
}


def _tables(db: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(db) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'rb_%'")]
        return {n: sorted(map(repr, conn.execute(f'SELECT * FROM "{n}"'))) for n in names}


def _earlier_steps(url: str, monkeypatch) -> None:
    """Every upgrade step before the convergence one, as a reidbench without it would run them."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from reidbench.harness.store import migrations

    earlier = tuple(m for m in migrations.MIGRATIONS if m.apply is not migrations._to_v5)
    with monkeypatch.context() as patch:
        patch.setattr(migrations, "MIGRATIONS", earlier)
        engine = create_engine(url)
        try:
            migrations.upgrade(engine.begin, url=make_url(url), name="results.db", stored_version=3,
                               stream=io.StringIO())
        finally:
            engine.dispose()


def test_db_v3_runs_get_their_convergence_and_nothing_else_changes(old_project, same_numbers, capsys, monkeypatch):
    work = old_project("db-v3")
    _earlier_steps("sqlite:///results.db", monkeypatch)  # what the convergence step starts from
    before = _tables(work / "results.db")
    finished = sum("'done'" in row for row in before["rb_runs"])
    with sqlite3.connect(work / "results.db") as conn:
        start = conn.execute("SELECT value FROM rb_meta WHERE key = 'schema_version'").fetchone()[0]
    store = Store("sqlite:///results.db")
    err = capsys.readouterr().err
    assert f"to {SCHEMA_VERSION}" in err
    assert (f"convergence of {finished} finished run(s) read from their stored history (0 converged, 1 not, "
            f"{finished - 1} unknown)") in err
    assert len(list(work.glob(f"results.db.schema{start}-backup-*"))) == 1  # a backup of what the step started from

    after = _tables(work / "results.db")
    assert set(after) == set(before) | {"rb_convergence"}
    for name in before:
        if name != "rb_meta":
            assert after[name] == before[name], name  # runs, evaluations, metrics, epochs, ablations: untouched
    assert after["rb_meta"] == [repr(("schema_version", str(SCHEMA_VERSION)))]

    # the fixture's hashes (aliases where an earlier step re-keyed a run) → their records
    found = store.convergence(RUN_HASHES)
    assert {h[:12]: (c.status, c.epochs, c.reason) for h, c in found.items()} == EXPECTED
    cosine = found[COSINE]
    assert cosine.where == RUN_END and cosine.decay_epoch == 2 and cosine.test_set == "tiny"
    assert cosine.loss == COSINE_LOSS
    assert cosine.loss_change == pytest.approx(COSINE_LOSS[1] / COSINE_LOSS[0] - 1) and cosine.map is None

    # the reports: every old column cell for cell, then each row's profile and convergence counts
    for ablation, rows in {1: {"Baseline": 0, "+cosine LR": 1, "+warmup": 0}, 2: {"Baseline": 0},
                           3: {"Baseline": 0}}.items():
        result = CliRunner().invoke(main, ["report", "--ablation", str(ablation), "--format", "csv",
                                           "--db", "sqlite:///results.db"])
        assert result.exit_code == 0, result.output
        assert same_numbers(result.stdout, FIXTURE / f"report-v3-ablation{ablation}.csv")
        table = pd.read_csv(io.StringIO(result.stdout), index_col=0)
        assert list(table.columns[-4:]) == ["profile", "runs", "converged", "not converged"]
        assert table["not converged"].to_dict() == rows and set(table["converged"]) == {0}
        assert set(table["runs"]) == {1}
        assert set(table["profile"]) == {"cpu, 1 epoch" if ablation == 3 else "cpu, 2 epochs"}
        markdown = CliRunner().invoke(main, ["report", "--ablation", str(ablation), "--db", "sqlite:///results.db"])
        converged = f"Converged: 0 of {len(rows)} runs ("
        assert converged in markdown.stdout and "profile" not in markdown.stdout.splitlines()[0]


def test_the_same_records_on_postgresql(old_project, db_url, copy_sqlite_database, run_sql):
    """The upgrade's SQL on either dialect: the fixture's rows laid into PostgreSQL get the same records."""
    work = old_project("db-v3")
    url = "sqlite:///results.db" if db_url.startswith("sqlite") else db_url
    if url != "sqlite:///results.db":
        copy_sqlite_database(work / "results.db", url)
    store = Store(url)
    found = store.convergence(RUN_HASHES)
    assert {h[:12]: (c.status, c.epochs, c.reason) for h, c in found.items()} == EXPECTED
    assert found[COSINE].loss == COSINE_LOSS
    assert run_sql(url, "SELECT count(*) FROM rb_convergence")[0][0] == len(store.list_runs(status="done"))
    store.close()


def test_an_old_run_with_a_periodic_map_gets_both_values(tmp_path):
    """A schema-3 database as the previous code wrote a 6-epoch run with eval.every_epochs: 1 (the
    fixture's Baseline bbfe704ce7d4 given that schedule and history by hand): the upgrade reads
    the loss and the periodic mAP over epochs 2→3, the last two before the milestone at 4."""
    db = tmp_path / "results.db"
    db.write_bytes((FIXTURE / "results.db").read_bytes())
    losses = {1: 2.2, 2: 1.50, 3: 1.494, 4: 1.40, 5: 1.38, 6: 1.37}  # 1.50 → 1.494: -0.006 of the first 2.2
    maps = {2: 0.8125, 3: 0.8150}  # +0.25 points
    with sqlite3.connect(db) as conn:
        run_id, spec = conn.execute("SELECT id, spec FROM rb_runs WHERE run_hash LIKE 'bbfe704ce7d4%'").fetchone()
        spec = json.loads(spec)
        spec["schedule"].update(max_epochs=6, milestones=[4, 6])
        conn.execute("UPDATE rb_runs SET spec = ? WHERE id = ?", (json.dumps(spec), run_id))
        conn.execute("DELETE FROM rb_epochs WHERE run_id = ?", (run_id,))
        for epoch, loss in losses.items():
            values = {"loss/id": loss, "lr": 3.5e-4 * (0.1 if epoch >= 4 else 1) * (0.1 if epoch >= 6 else 1),
                      "images_per_s": 10.0}
            if epoch in maps:
                values |= {"tiny/mAP": maps[epoch], "tiny/R1": 0.9}
            conn.execute('INSERT INTO rb_epochs (run_id, epoch, "values") VALUES (?, ?, ?)',
                         (run_id, epoch, json.dumps(values)))
    store = Store(f"sqlite:///{db}")
    record = store.convergence([RUN_HASHES[3]])[RUN_HASHES[3]]
    assert (record.status, record.epochs, record.decay_epoch) == (YES, (2, 3), 4)
    assert record.loss == (1.50, 1.494) and record.loss_change == pytest.approx(-0.006 / 2.2)
    assert record.map == (0.8125, 0.8150) and record.map_change == pytest.approx(0.25)
