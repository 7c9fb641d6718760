"""Figures from a real store filled by the test: every `reidbench plot` command, the numbers behind them."""

from __future__ import annotations

import math

import click
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from reidbench.harness.ablation.expand import expand
from reidbench.harness.spec.hashing import run_hash
from reidbench.harness.report.plots import ablation_deltas
from reidbench.harness.report.points import points_from_runs
from reidbench.harness.report import ranks as ranks_module
from reidbench.harness.report.ranks import choose, load_features, rank_queries
from reidbench.harness.spec import RunSpec, replace_section
from reidbench.harness.store import Store
from reidbench.tricks import parse_trick_list

TESTS = ("synth-a", "synth-b")


def cli():
    from reidbench.harness.cli.report import plot, report

    return click.Group(commands=[report, plot])


def record(store, spec, metrics, *, history=(), out_dir="/nonexistent", label="run", h=None):
    h = h or run_hash(spec)
    store.ensure_run(h, spec.to_dict(), label)
    store.record_result(h, None, {
        "run_hash": h, "spec": spec.to_dict(), "metrics": metrics, "history": list(history),
        "provenance": {t: {"name": t, "root": "/data", "format": "market", "synthetic": True} for t in TESTS},
        "model_info": {"pretrained_source": "imagenet"}, "environment": {}, "seconds_train": 1.0,
        "seconds_eval": 1.0, "out_dir": str(out_dir)})
    return h


def base_spec():
    return replace_section(RunSpec(profile="cpu"), "data", train="synth-a", test=TESTS)


def check_image(path, size_px, min_std=8.0):
    """Dimensions as requested and not a blank canvas."""
    with Image.open(path) as img:
        assert img.size == size_px
        gray = np.asarray(img.convert("L"), dtype=float)
    assert gray.std() > min_std, gray.std()
    assert (gray < 200).mean() > 0.02  # some ink beyond the white background


@pytest.fixture()
def store(tmp_path):
    st = Store(f"sqlite:///{tmp_path / 'results.db'}")
    yield st
    st.close()


# --------------------------------------------------------------------------- sweeps


def fill_batch_sweep(store):
    hashes = []
    for p in (8, 16):
        for k in (2, 4):
            for seed in (0, 1):
                spec = replace_section(replace_section(base_spec(), "data", ids_per_batch=p, imgs_per_id=k),
                                       "train", seed=seed)
                value = 0.01 * p + 0.1 * k + 0.02 * seed  # known: mean over seeds = 0.01p + 0.1k + 0.01
                hashes.append(record(store, spec, {t: {"R1": value + 0.1, "mAP": value} for t in TESTS}))
    return hashes


def test_points_from_runs_holds_sweep_variables(store):
    hashes = fill_batch_sweep(store)
    points = points_from_runs(store, hashes)
    assert len(points) == 8 * 2 * 2
    row = points[(points.ids_per_batch == 16) & (points.imgs_per_id == 4) & (points.seed == 1)
                 & (points.metric == "mAP") & (points.test_set == "synth-b")]
    assert row["value"].tolist() == [pytest.approx(100 * (0.16 + 0.4 + 0.02))]
    assert row["batch"].tolist() == ["16×4"] and row["group"].tolist() == ["synth-a→synth-b"]
    assert points["image_size"].unique().tolist() == ["256×128"]
    assert points["group"].iloc[0] == "synth-a"  # same-domain first


def test_plot_batch_size_cli(store, tmp_path):
    fill_batch_sweep(store)
    out = tmp_path / "batch.png"
    res = CliRunner().invoke(cli(), ["plot", "batch-size", "--db", store.url, "--out", str(out),
                                     "--figsize", "8x6", "--dpi", "60", "--where", "data.train=synth-a"])
    assert res.exit_code == 0, res.output
    assert "(8 runs)" in res.output
    check_image(out, (480, 360))


def test_plot_sweep_refuses_runs_that_differ_in_more(store, tmp_path):
    fill_batch_sweep(store)
    other = replace_section(base_spec(), "model", neck="bnneck")
    record(store, other, {t: {"R1": 0.5, "mAP": 0.4} for t in TESTS})
    args = ["plot", "batch-size", "--db", store.url, "--out", str(tmp_path / "x.png")]
    res = CliRunner().invoke(cli(), args)
    assert res.exit_code == 2 and "also model.neck" in res.output and res.output.count("\n") == 1
    res = CliRunner().invoke(cli(), [*args, "--where", "model.neck=plain"])  # the filter narrows it
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli(), [*args, "--where", "model.nek=plain"])
    assert res.exit_code == 2 and "model.nek: not a spec field" in res.output


def test_plot_image_size_cli_with_run_list(store, tmp_path):
    hashes = []
    for size in ((128, 64), (256, 128), (224, 224)):
        for seed in (0, 1, 2):
            spec = replace_section(replace_section(base_spec(), "data", image_size=size), "train", seed=seed)
            v = size[0] * size[1] / 100000 + 0.01 * seed
            hashes.append(record(store, spec, {t: {"R1": v + 0.1, "mAP": v} for t in TESTS}))
    out = tmp_path / "size.png"
    res = CliRunner().invoke(cli(), ["plot", "image-size", "--db", store.url, "--out", str(out),
                                     "--runs", ",".join(h[:14] for h in hashes), "--figsize", "9x4", "--dpi", "50"])
    assert res.exit_code == 0, res.output
    check_image(out, (450, 200))


# --------------------------------------------------------------------------- curves


def test_plot_curves_cli(store, tmp_path):
    history = [{"epoch": e, "losses": {"id": 6.0 / e, "triplet": 1.0 / e, "center": 0.5 / e},
                "lr": 3.5e-4 * (0.1 if e > 6 else 1.0), "images_per_s": 100.0,
                "extra": {"synth-a/mAP": 0.1 * e, "synth-a/R1": 0.1 * e + 0.05} if e % 3 == 0 else {}}
               for e in range(1, 10)]
    h = record(store, base_spec(), {t: {"R1": 0.9, "mAP": 0.85} for t in TESTS}, history=history)
    out = tmp_path / "curves.png"
    res = CliRunner().invoke(cli(), ["plot", "curves", "--db", store.url, "--run", h[:10], "--out", str(out),
                                     "--figsize", "12x4", "--dpi", "50"])
    assert res.exit_code == 0, res.output
    check_image(out, (600, 200))
    res = CliRunner().invoke(cli(), ["plot", "curves", "--db", store.url, "--run", "ffff", "--out", str(out)])
    assert res.exit_code == 2 and "no run 'ffff'" in res.output


# --------------------------------------------------------------------------- ablation deltas


def tidy(rows):
    """(row, step, group, values...) → a minimal ablation frame (no value: a row without metric, as a failed run)."""
    out = [(r, step, group, "mAP", v) for r, step, group, values in rows for v in values]
    out += [(r, step, group, None, math.nan) for r, step, group, values in rows if not values]
    return pd.DataFrame(out, columns=["row", "step", "group", "metric", "value"])


def test_ablation_deltas_per_mode():
    frame = tidy([(0, "A", "g", [0.50, 0.60]), (1, "B", "g", [0.70]), (2, "C", "g", [0.65])])
    cumulative = ablation_deltas(frame, "cumulative")
    assert cumulative["step"].tolist() == ["B", "C"] and cumulative["reference"].tolist() == ["A", "B"]
    assert cumulative["delta"].tolist() == pytest.approx([15.0, -5.0])
    assert cumulative["std"].iloc[0] == pytest.approx(100 * np.std([0.5, 0.6], ddof=1))
    single = ablation_deltas(frame, "single")
    assert single["delta"].tolist() == pytest.approx([15.0, 10.0]) and set(single["reference"]) == {"A"}
    loo = ablation_deltas(frame, "leave-one-out")
    assert loo["delta"].tolist() == pytest.approx([15.0, 10.0])
    against = ablation_deltas(frame, "cumulative", against="C")  # every other row against C, whatever the mode
    assert against["step"].tolist() == ["A", "B"] and set(against["reference"]) == {"C"}
    assert against["delta"].tolist() == pytest.approx([-10.0, 5.0])
    with_gap = ablation_deltas(tidy([(0, "A", "g", [0.5]), (1, "B", "g", [])]), "cumulative")
    assert math.isnan(with_gap["delta"].iloc[0])
    from reidbench.harness.report.plots import plot_ablation

    with pytest.raises(ValueError, match="no difference can be computed yet"):
        plot_ablation(with_gap, "unused.png", mode="cumulative")


def test_ablation_deltas_compare_evaluation_rows_with_the_same_models_default():
    """Cumulative: "B" against "A", but "A [SG]" and "B [SG]" each against their own models' default row."""
    rows = [(0, "A", "h0", "", [0.50]), (1, "B", "h1", "", [0.70]),
            (2, "A [SG]", "h0", "sg", [0.55]), (3, "B [SG]", "h1", "sg", [0.60])]
    frame = pd.DataFrame([(r, step, h, v, "g", "mAP", x) for r, step, h, v, values in rows for x in values],
                         columns=["row", "step", "run_hash", "variant", "group", "metric", "value"])
    deltas = ablation_deltas(frame, "cumulative").set_index("step")
    assert dict(deltas["reference"]) == {"B": "A", "A [SG]": "A", "B [SG]": "B"}
    assert deltas.loc["B", "delta"] == pytest.approx(20.0)
    assert deltas.loc["A [SG]", "delta"] == pytest.approx(5.0) and deltas.loc["B [SG]", "delta"] == pytest.approx(-10.0)


def fill_ablation(store):
    base = base_spec()
    steps = expand(base, parse_trick_list("warmup,rea,ls"), "cumulative", [0, 1])
    for s in steps:
        v = 0.3 + 0.1 * s.position // 2 - (0.15 if s.step == "+REA" else 0.0) + 0.01 * s.seed
        record(store, s.spec, {t: {"R1": v + 0.1, "mAP": v} for t in TESTS}, label=s.label, h=s.run_hash)
    store.record_ablation("abl", "bot", "cumulative", {"profile": "cpu", "epochs": 120, "train": "synth-a",
                                                       "test": list(TESTS), "seeds": [0, 1]},
                          [{"position": s.position, "run_hash": s.run_hash, "label": s.label, "step": s.step,
                            "seed": s.seed} for s in steps])


@pytest.mark.parametrize("name, magic", [("abl.png", b"\x89PNG"), ("abl.pdf", b"%PDF"), ("abl.svg", b"<?xml")])
def test_plot_ablation_cli_formats(store, tmp_path, name, magic):
    fill_ablation(store)
    out = tmp_path / name
    res = CliRunner().invoke(cli(), ["plot", "ablation", "--db", store.url, "--out", str(out), "--figsize", "10x4",
                                     "--dpi", "50"])
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:len(magic)] == magic
    if name.endswith(".png"):
        check_image(out, (500, 200))
    if name.endswith(".svg"):
        assert b"<svg" in out.read_bytes()[:2000]
        res = CliRunner().invoke(cli(), ["plot", "ablation", "--db", store.url, "--out", str(out), "--against", "1",
                                         "--interval", "none"])
        assert res.exit_code == 0, res.output
        assert b"vs &#x27;Baseline&#x27;" in out.read_bytes() or b"vs 'Baseline'" in out.read_bytes()


def test_plot_rejects_unknown_figure_type(store, tmp_path):
    fill_ablation(store)
    res = CliRunner().invoke(cli(), ["plot", "ablation", "--db", store.url, "--out", str(tmp_path / "a.jpg")])
    assert res.exit_code == 2 and "unknown figure type .jpg; use .png, .pdf or .svg" in res.output


# --------------------------------------------------------------------------- ranked lists


def tiny_gallery():
    """q0 (pid 1, cam 1) at the origin; gallery at distance 0..4: same-camera match, miss, hit, miss, hit."""
    g = np.array([[i, 0.0] for i in range(5)], dtype=np.float32)
    return {
        "q_feats": np.array([[0.0, 0.0], [1.1, 0.0], [9.0, 9.0]], dtype=np.float32),
        "g_feats": g,
        "q_pids": np.array([1, 2, 9]), "g_pids": np.array([1, 2, 1, 3, 1]),
        "q_camids": np.array([1, 1, 1]), "g_camids": np.array([1, 2, 2, 2, 3]),
        "q_paths": np.array(["q0.jpg", "q1.jpg", "q2.jpg"]),
        "g_paths": np.array([f"g{i}.jpg" for i in range(5)]),
    }


def test_rank_queries_drops_same_camera_matches_and_scores_ap():
    ranked = rank_queries(tiny_gallery(), metric="euclidean", normalize=False, top=10)
    assert [r.index for r in ranked] == [0, 1]  # pid 9 has no match: skipped like the protocol
    q0 = ranked[0]
    assert q0.gallery == (1, 2, 3, 4) and q0.matches == (False, True, False, True)
    assert q0.ap == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert ranked[1].gallery[0] == 1 and ranked[1].ap == pytest.approx(1.0)
    assert [r.index for r in choose(ranked, "best", 1)] == [1]
    assert [r.index for r in choose(ranked, "worst", 2)] == [0, 1]
    assert len(choose(ranked, "random", 5, seed=3)) == 2


def ranked_npz(tmp_path, seed=0, num_query=40, num_gallery=150, dim=6, num_ids=9, grid=None):
    """A features file as the runner writes it (float16 features, paths); ``grid`` rounds the
    features to a coarse grid so that many distances tie exactly."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids + 2, dim))
    q_pids, g_pids = rng.integers(1, num_ids + 1, num_query), rng.integers(0, num_ids + 1, num_gallery)
    q_pids[0] = num_ids + 1  # not in the gallery: no valid match
    q = centres[q_pids] + 1.5 * rng.normal(size=(num_query, dim))
    g = centres[g_pids] + 1.5 * rng.normal(size=(num_gallery, dim))
    if grid:
        q, g = np.round(q / grid) * grid, np.round(g / grid) * grid
    arrays = {"q_feats": q.astype(np.float16), "g_feats": g.astype(np.float16), "q_pids": q_pids, "g_pids": g_pids,
              "q_camids": rng.integers(0, 3, num_query), "g_camids": rng.integers(0, 3, num_gallery),
              "q_paths": np.array([f"q{i}.jpg" for i in range(num_query)]),
              "g_paths": np.array([f"g{i}.jpg" for i in range(num_gallery)])}
    path = tmp_path / "features-synth-a.npz"
    np.savez_compressed(path, **arrays)
    return path


def brute_force_list(dist, q_pid, q_cam, g_pids, g_cams):
    """Full sort of one row: junk dropped, by distance, non-matches before tied matches, then index."""
    keep = np.flatnonzero(~((g_pids == q_pid) & (g_cams == q_cam)))
    hits = g_pids[keep] == q_pid
    order = np.lexsort((keep, hits, dist[keep]))
    return keep[order], hits[order]


@pytest.mark.parametrize("metric, normalize, grid", [("sqeuclidean", True, None), ("euclidean", False, None),
                                                      ("cosine", False, None), ("euclidean", False, 1.0)])
def test_rank_queries_ap_is_the_evaluators(tmp_path, monkeypatch, metric, normalize, grid):
    import torch

    from reidbench.harness.evaluation.protocol import compute_distance, evaluate, score

    monkeypatch.setattr(ranks_module, "_CHUNK", 7)  # several query blocks
    arrays = load_features(ranked_npz(tmp_path, grid=grid))
    ranked = rank_queries(arrays, metric=metric, normalize=normalize, top=12)
    labels = [arrays[k] for k in ("q_pids", "g_pids", "q_camids", "g_camids")]
    q, g = arrays["q_feats"].astype(np.float32), arrays["g_feats"].astype(np.float32)
    if normalize:  # the same operation as score()'s
        q = torch.nn.functional.normalize(torch.from_numpy(q), dim=1).numpy()
        g = torch.nn.functional.normalize(torch.from_numpy(g), dim=1).numpy()
    dist = compute_distance(q, g, metric)
    if grid:  # the grid really makes matches tie with non-matches
        assert len(np.unique(dist)) < dist.size / 20
    pq = evaluate(dist, *labels, per_query=True)["per_query"]
    assert [r.index for r in ranked] == np.flatnonzero(pq["valid"]).tolist()
    assert 0 not in [r.index for r in ranked]
    assert [r.ap for r in ranked] == [float(a) for a in pq["ap"][pq["valid"]]]
    expected_map = score(*(arrays[k] for k in ("q_feats", "g_feats")), *labels, metric=metric,
                         normalize=normalize)["mAP"]
    assert np.mean([r.ap for r in ranked]) == pytest.approx(expected_map, rel=1e-6)
    for r in ranked:
        gallery, hits = brute_force_list(dist[r.index], arrays["q_pids"][r.index], arrays["q_camids"][r.index],
                                         arrays["g_pids"], arrays["g_camids"])
        assert r.gallery == tuple(gallery[:12].tolist()) and r.matches == tuple(hits[:12].tolist()), r.index
        if r.matches and any(r.matches):  # the listed first match is at the evaluator's rank
            assert r.matches.index(True) + 1 == pq["first_match_rank"][r.index]


def test_rank_queries_lists_a_tied_non_match_before_the_match():
    # q0 (id 1, cam 0): g0 match and g1 non-match both at distance 1, g2 junk at 0, g3 match at 2
    arrays = {"q_feats": np.array([[0.0, 0.0]], dtype=np.float32),
              "g_feats": np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [2.0, 0.0]], dtype=np.float32),
              "q_pids": np.array([1]), "g_pids": np.array([1, 4, 1, 1]), "q_camids": np.array([0]),
              "g_camids": np.array([1, 1, 0, 2]), "q_paths": np.array(["q0.jpg"]),
              "g_paths": np.array([f"g{i}.jpg" for i in range(4)])}
    (q0,) = rank_queries(arrays, metric="euclidean", normalize=False, top=2)
    assert q0.gallery == (1, 0) and q0.matches == (False, True)  # top 2 cuts inside the tie correctly
    assert q0.ap == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_load_features_errors(tmp_path):
    path = ranked_npz(tmp_path)
    with np.load(path) as npz:
        arrays = dict(npz)
    np.savez(tmp_path / "nopaths.npz", **{k: v for k, v in arrays.items() if k != "g_paths"})
    with pytest.raises(ValueError, match="nopaths.npz: missing arrays g_paths"):
        load_features(tmp_path / "nopaths.npz")
    np.savez(tmp_path / "short.npz", **dict(arrays, q_paths=arrays["q_paths"][:3]))
    with pytest.raises(ValueError, match=r"short.npz: q_paths has shape \(3,\), expected \(40,\)"):
        load_features(tmp_path / "short.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz: features file not found"):
        load_features(tmp_path / "nope.npz")
    nan = dict(arrays, g_feats=arrays["g_feats"].copy())
    nan["g_feats"][3, 1] = np.nan
    with pytest.raises(ValueError, match="g_feats contains NaN"):
        rank_queries(nan)
    with pytest.raises(ValueError, match="eval.metric='l1' is not valid"):
        rank_queries(arrays, metric="l1")


def make_ranked_run(store, tmp_path):
    """Features + images of 4 identities seen by 3 cameras; returns the run hash and the image folder."""
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    centers = rng.normal(size=(5, 8))
    q, g = [], []
    for pid in range(1, 5):
        color = tuple(int(c) for c in rng.integers(30, 230, 3))
        for cam in (1, 2, 3):
            path = images / f"{pid:04d}_c{cam}s1_000001_00.png"
            Image.new("RGB", (32, 64), color).save(path)
            (q if cam == 1 else g).append((pid, cam, str(path)))
    feats = lambda items: np.stack([centers[p] + 0.8 * rng.normal(size=8) for p, _, _ in items])  # noqa: E731
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    np.savez_compressed(run_dir / "features-synth-a.npz", q_feats=feats(q).astype(np.float16),
                        g_feats=feats(g).astype(np.float16), q_pids=np.array([p for p, _, _ in q]),
                        g_pids=np.array([p for p, _, _ in g]), q_camids=np.array([c for _, c, _ in q]),
                        g_camids=np.array([c for _, c, _ in g]), q_paths=np.array([x for *_, x in q]),
                        g_paths=np.array([x for *_, x in g]))
    h = record(store, base_spec(), {t: {"R1": 0.5, "mAP": 0.4} for t in TESTS}, out_dir=run_dir)
    return h, images


def test_plot_ranks_cli(store, tmp_path):
    h, images = make_ranked_run(store, tmp_path)
    out = tmp_path / "ranks.png"
    args = ["plot", "ranks", "--db", store.url, "--run", h[:12], "-n", "3", "--top", "5", "--out", str(out),
            "--figsize", "6x5", "--dpi", "60"]
    res = CliRunner().invoke(cli(), [*args, "--queries", "best"])
    assert res.exit_code == 0, res.output
    check_image(out, (360, 300))
    res = CliRunner().invoke(cli(), [*args, "--test", "synth-b"])
    assert res.exit_code == 2 and "features-synth-b.npz: features file not found" in res.output
    res = CliRunner().invoke(cli(), [*args, "--test", "market"])
    assert res.exit_code == 2 and "is not a test set of run" in res.output
    moved = tmp_path / "moved"
    images.rename(moved)
    res = CliRunner().invoke(cli(), args)
    assert res.exit_code == 2 and "image(s) not found" in res.output and "--image-root" in res.output
    assert res.output.count("\n") == 1
    res = CliRunner().invoke(cli(), [*args, "--image-root", str(moved)])
    assert res.exit_code == 0, res.output


def test_sweep_table_renders_like_an_ablation(store):
    from reidbench.harness.report.points import sweep_table
    from reidbench.harness.report.writers import render

    points = points_from_runs(store, fill_batch_sweep(store))
    table = sweep_table(points, "batch", ["mAP"])
    assert list(table.index) == ["8×2", "8×4", "16×2", "16×4"]
    assert table.loc["16×4", ("synth-a", "mAP", "mean")] == pytest.approx(100 * (0.16 + 0.4 + 0.01))
    md = render(table, "markdown")
    assert md.splitlines()[0] == "| P×K | synth-a mAP | synth-a→synth-b mAP |"
    assert "| 16×4 | **57.0±1.4** | **57.0±1.4** |" in md
