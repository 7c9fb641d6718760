"""SGGNN re-scoring: the graph update by hand, top-k re-ordering, training, stored weights, and the
evaluation it records (``evaluate --rescore sggnn``, ``ablate --eval sggnn``)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from reidbench.harness.cli import main
from reidbench.harness.evaluation.protocol import score, score_blocks
from reidbench.harness.evaluation.rescorers import RESCORERS, RescoreContext, sparse_options
from reidbench.harness.evaluation.rescorers import sggnn_net as net
from reidbench.harness.evaluation.rescorers.sggnn import SGGNNParams
from reidbench.harness.evaluation.settings import EvaluationSettings, parse_variants
from reidbench.harness.spec.sections import SpecError
from reidbench.harness.store import Store


# --------------------------------------------------------------------------- the network, by hand


def _set_bn(bn: torch.nn.BatchNorm1d, weight, bias) -> None:
    """Eval-mode BN that computes weight * x + bias exactly (running mean 0, variance 1, eps 0)."""
    bn.eps = 0.0
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0)
    bn.weight.data = torch.tensor(weight, dtype=torch.float32)
    bn.bias.data = torch.tensor(bias, dtype=torch.float32)


def _hand_model(alpha: float = 0.9) -> net.SGGNN:
    model = net.SGGNN(dim=2, hidden_dim=2, alpha=alpha, iterations=1).eval()
    _set_bn(model.relation_bn, [2.0, 1.0], [0.0, -1.0])
    fc1, bn1, _, fc2, bn2, _ = model.message
    fc1.weight.data = torch.eye(2)
    fc1.bias.data = torch.zeros(2)
    _set_bn(bn1, [1.0, 1.0], [0.0, 0.0])
    fc2.weight.data = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    fc2.bias.data = torch.tensor([0.5, 0.5])
    _set_bn(bn2, [1.0, 1.0], [0.0, 0.0])
    model.classifier.weight.data = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    model.classifier.bias.data = torch.tensor([0.0, 0.1])
    return model


PROBE = torch.tensor([[1.0, 0.0]])
NODES = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])  # g1, g2


def test_two_node_update_without_self_loops_by_hand():
    # d_raw = (p - g)^2: g1 -> [1, 1], g2 -> [0, 1]; relation BN (2x, x - 1): d1 = [2, 0], d2 = [0, 0]
    # t = relu(fc2(relu(d)) + 0.5): t1 = relu([2 + 0 + .5, 0 - 0 + .5]) = [2.5, .5], t2 = [.5, .5]
    # W without self loops on 2 nodes: W12 = W21 = 1 (a softmax over the one other node)
    # d1' = .1 [2, 0] + .9 t2 = [.65, .45];  d2' = .1 [0, 0] + .9 t1 = [2.25, .45]
    # logits = [0, d'_0 - d'_1 + .1]: node 1 [0, .3], node 2 [0, 1.9]
    weights = net.graph_weights(NODES, self_loops=False)
    assert torch.equal(weights, torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))
    model = _hand_model()
    d = model.relation(PROBE, NODES)
    assert torch.allclose(d, torch.tensor([[[2.0, 0.0], [0.0, 0.0]]]))
    updated = model.propagate(d, weights)
    assert torch.allclose(updated, torch.tensor([[[0.65, 0.45], [2.25, 0.45]]]), atol=1e-6)
    logits = model(PROBE, NODES, weights)
    assert torch.allclose(logits, torch.tensor([[[0.0, 0.3], [0.0, 1.9]]]), atol=1e-6)


def test_two_node_update_with_self_loops_and_temperature_by_hand():
    # cos(g1, g2) = 1/sqrt(2); with self loops row i is softmax([cos(gi, g1), cos(gi, g2)] / T)
    temperature = 0.5
    c = 1 / math.sqrt(2)
    w_self = math.exp(1 / temperature) / (math.exp(1 / temperature) + math.exp(c / temperature))
    w_other = 1 - w_self
    weights = net.graph_weights(NODES, self_loops=True, temperature=temperature)
    expected_w = torch.tensor([[[w_self, w_other], [w_other, w_self]]])
    assert torch.allclose(weights, expected_w, atol=1e-6)
    # t1 = [2.5, .5], t2 = [.5, .5] (as above); messages m1 = w_self t1 + w_other t2, m2 = w_other t1 + w_self t2
    t1, t2 = np.array([2.5, 0.5]), np.array([0.5, 0.5])
    m1, m2 = w_self * t1 + w_other * t2, w_other * t1 + w_self * t2
    alpha = 0.7
    d1 = (1 - alpha) * np.array([2.0, 0.0]) + alpha * m1
    d2 = (1 - alpha) * np.array([0.0, 0.0]) + alpha * m2
    expected = np.array([[0.0, d1[0] - d1[1] + 0.1], [0.0, d2[0] - d2[1] + 0.1]])
    logits = _hand_model(alpha)(PROBE, NODES, weights)
    assert np.allclose(logits[0].detach().numpy(), expected, atol=1e-5)


def test_graph_weights_rows_are_softmaxes_over_the_other_nodes():
    torch.manual_seed(0)
    nodes = torch.randn(3, 5, 4)
    w = net.graph_weights(nodes)
    assert torch.allclose(w.sum(2), torch.ones(3, 5)) and torch.all(w.diagonal(dim1=1, dim2=2) == 0)
    unit = torch.nn.functional.normalize(nodes, dim=2)
    sim = unit[1, 2] @ unit[1].T  # row 2 of graph 1, by the formula
    keep = [0, 1, 3, 4]
    assert torch.allclose(w[1, 2, keep], torch.softmax(sim[keep], 0), atol=1e-6)
    lonely = net.graph_weights(torch.randn(2, 1, 4))  # one node, no self loop: no message, no NaN
    assert torch.equal(lonely, torch.zeros(2, 1, 1))


# --------------------------------------------------------------------------- top-k re-ordering


def test_rescoring_reorders_only_the_top_k_and_keeps_the_rest_in_base_order():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(6, 8)).astype(np.float32)
    g = rng.normal(size=(40, 8)).astype(np.float32)
    torch.manual_seed(1)
    model = net.SGGNN(8).eval()
    k = 7
    out = net.rescore_block(model, torch.from_numpy(q), torch.from_numpy(g), "sqeuclidean", k, False, 1.0).numpy()
    base = ((q[:, None, :].astype(np.float64) - g[None]) ** 2).sum(2)  # independent: brute force
    for row in range(len(q)):
        base_order = np.argsort(base[row], kind="stable")
        new_order = np.argsort(out[row], kind="stable")
        assert set(new_order[:k]) == set(base_order[:k])  # the same top-k, re-ordered
        assert list(new_order[k:]) == list(base_order[k:])  # everything beyond k: base order
        assert np.all(out[row, base_order[:k]] <= 1.0) and np.all(out[row, base_order[k:]] >= 2.0)
        # the top-k ordered by descending same-probability of the model on those nodes
        nodes = torch.from_numpy(g[base_order[:k]])[None]
        with torch.no_grad():
            logits = model(torch.from_numpy(q[row:row + 1]), nodes, net.graph_weights(nodes))[0]
        p_same = torch.softmax(logits.double(), 1)[:, 1].numpy()
        assert list(new_order[:k]) == list(base_order[:k][np.argsort(-p_same, kind="stable")])
        assert np.allclose(out[row, base_order[:k]], 1 - p_same, atol=1e-6)


def test_cosine_base_ranking_picks_the_cosine_top_k():
    rng = np.random.default_rng(3)
    q, g = rng.normal(size=(3, 5)).astype(np.float32), rng.normal(size=(30, 5)).astype(np.float32) * 4
    g[:, 0] *= rng.uniform(0.1, 10, size=30).astype(np.float32)  # norms differ: Euclidean would pick others
    out = net.rescore_block(net.SGGNN(5).eval(), torch.from_numpy(q), torch.from_numpy(g), "cosine", 5, False, 1.0)
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    for row in range(3):
        assert set(np.flatnonzero(out[row].numpy() <= 1.0)) == set(np.argsort(-cos[row])[:5])


def test_score_blocks_equals_score_and_checks_coverage():
    rng = np.random.default_rng(5)
    q, g = rng.normal(size=(9, 6)).astype(np.float32), rng.normal(size=(25, 6)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, 4, 9), rng.integers(0, 4, 25)
    q_cams, g_cams = rng.integers(0, 2, 9), rng.integers(0, 3, 25)
    whole = score(q, g, q_pids, g_pids, q_cams, g_cams, metric="euclidean", per_query=True)
    dist = np.sqrt(((q[:, None].astype(np.float64) - g[None]) ** 2).sum(2))
    blocks = [(0, dist[:4]), (4, dist[4:5]), (5, dist[5:])]
    got = score_blocks(iter(blocks), q_pids, g_pids, q_cams, g_cams, per_query=True)
    for key in ("R1", "R5", "R10", "mAP", "mINP", "num_valid_queries"):
        assert got[key] == pytest.approx(whole[key], abs=1e-6)
    assert np.allclose(got["per_query"]["ap"], whole["per_query"]["ap"], atol=1e-6, equal_nan=True)
    with pytest.raises(ValueError, match="in order"):
        score_blocks(iter([(0, dist[:4]), (5, dist[5:])]), q_pids, g_pids, q_cams, g_cams)
    with pytest.raises(ValueError, match="covered 4 of 9"):
        score_blocks(iter([(0, dist[:4])]), q_pids, g_pids, q_cams, g_cams)


# --------------------------------------------------------------------------- training


def _toy(seed: int, ids: int = 12, per_id: int = 6, dim: int = 8, noise: float = 0.25):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(ids, dim))
    pids = np.repeat(np.arange(ids), per_id)
    feats = (centers[pids] + noise * rng.normal(size=(len(pids), dim))).astype(np.float32)
    return feats / np.linalg.norm(feats, axis=1, keepdims=True), pids


def _held_out_accuracy(model: net.SGGNN, feats: np.ndarray, pids: np.ndarray, params: SGGNNParams) -> float:
    """Balanced pair accuracy (mean of same- and different-pair recall) on batches the training never drew."""
    batches = net.PairBatches(pids, params.ids_per_batch, params.probes_per_id, params.gallery_per_id, seed=999)
    f, p = torch.from_numpy(feats), torch.from_numpy(pids)
    hits = {0: [], 1: []}
    with torch.no_grad():
        for _ in range(5):
            probe_idx, gallery_idx = batches.next()
            probe, nodes, weights, labels = net.batch_graph(f, p, probe_idx, gallery_idx, params.k, "sqeuclidean",
                                                            params.self_loops, params.temperature)
            pred = model.eval()(probe, nodes, weights).argmax(-1)
            for c in (0, 1):
                hits[c].extend((pred[labels == c] == c).tolist())
    return float(np.mean([np.mean(hits[0]), np.mean(hits[1])]))


def test_training_on_separable_features_drives_pair_accuracy_up():
    feats, pids = _toy(0)
    held_feats, held_pids = _toy(1)  # other identities: accuracy must generalise to unseen people
    params = SGGNNParams(k=12, ids_per_batch=4, steps=150, lr=1e-2, seed=0)
    torch.manual_seed(params.seed)
    untrained = net.SGGNN(feats.shape[1]).eval()
    before = _held_out_accuracy(untrained, held_feats, held_pids, params)
    model, history = net.train_sggnn(feats, pids, params, "sqeuclidean")
    after = _held_out_accuracy(model, held_feats, held_pids, params)
    assert before <= 0.6 and after >= 0.9, (before, after)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    again, _ = net.train_sggnn(feats, pids, params, "sqeuclidean")  # seeded: the same network again
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_pretrain_steps_train_the_verification_head_alone():
    feats, pids = _toy(0)
    params = SGGNNParams(k=12, ids_per_batch=4, pretrain_steps=4, steps=1, lr=1e-2, seed=3)
    torch.manual_seed(params.seed)
    fresh = net.SGGNN(feats.shape[1])
    model, history = net.train_sggnn(feats, pids, params, "sqeuclidean")
    assert history[-1]["step"] == 5
    moved = {name: float((a - fresh.state_dict()[name]).abs().max())
             for name, a in model.state_dict().items() if a.is_floating_point()}
    # message layers got gradients in the last step only: Adam's first step moves each weight by <= lr
    assert 0 < moved["message.0.weight"] <= 1.01 * params.lr and 0 < moved["message.3.weight"] <= 1.01 * params.lr
    assert moved["classifier.weight"] > 1.01 * params.lr  # the head trained for all five steps


def test_balanced_pair_loss_is_the_mean_of_the_two_class_means():
    torch.manual_seed(0)
    logits = torch.randn(40, 2)
    labels = torch.zeros(40, dtype=torch.long)
    labels[[3, 17, 29]] = 1  # 3 positives of 40, the imbalance of a top-k graph
    per_pair = -torch.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    assert float(net.pair_loss(logits, labels)) == pytest.approx(float(per_pair.mean()), rel=1e-6)
    by_class = 0.5 * (per_pair[labels == 0].mean() + per_pair[labels == 1].mean())
    assert float(net.pair_loss(logits, labels, balanced=True)) == pytest.approx(float(by_class), rel=1e-6)
    negatives_only = torch.zeros(40, dtype=torch.long)  # a class absent from the batch: no NaN, plain mean
    plain = float(net.pair_loss(logits, negatives_only))
    assert float(net.pair_loss(logits, negatives_only, balanced=True)) == pytest.approx(plain, rel=1e-6)


def test_balanced_class_weights_train_on_and_are_keyed_only_when_set():
    feats, pids = _toy(0)
    plain = SGGNNParams(k=12, ids_per_batch=4, steps=20, lr=1e-2, seed=0)
    balanced = SGGNNParams(k=12, ids_per_batch=4, steps=20, lr=1e-2, seed=0, class_weights="balanced")
    a, _ = net.train_sggnn(feats, pids, plain, "sqeuclidean")
    b, history = net.train_sggnn(feats, pids, balanced, "sqeuclidean")
    assert history[-1]["loss"] < history[0]["loss"]
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # stored re-scorers of the defaults keep their identity; the balanced one gets its own
    identity = {"run": "r"}
    assert '"class_weights"' not in net.weights_identity(identity, plain)
    assert net.weights_identity(identity, balanced) != net.weights_identity(identity, plain)
    with pytest.raises(ValueError, match="class_weights='inverse' is not valid: none or balanced"):
        SGGNNParams(class_weights="inverse").validate()
    s = EvaluationSettings(rescore="sggnn", rescore_options=(("class_weights", "none"),)).validate()
    assert s.rescore_options == ()  # the default is not part of an evaluation's key


def test_pair_batches_are_p_identities_of_one_probe_and_three_gallery_images():
    pids = np.repeat(np.arange(10), 5)
    probe, gallery = net.PairBatches(pids, 6, 1, 3, seed=0).next()
    assert len(probe) == 6 and len(gallery) == 18
    assert list(pids[gallery]) == [pid for pid in pids[probe] for _ in range(3)]
    assert not set(probe) & set(gallery) and len(set(pids[probe])) == 6
    with pytest.raises(ValueError, match="identities with at least 2 images"):
        net.PairBatches(np.arange(5), 4, 1, 3, seed=0)


# --------------------------------------------------------------------------- stored weights


def _context(tmp_path: Path, params: SGGNNParams, train) -> RescoreContext:
    feats, pids = _toy(2, ids=6, per_id=5)
    return RescoreContext(q_feats=feats[::5], g_feats=feats, metric="sqeuclidean", params=params, out_dir=tmp_path,
                          identity={"run_hash": "abc", "train_fingerprint": "fp"}, train=train)


def test_stored_weights_are_reused_without_training(tmp_path, monkeypatch):
    feats, pids = _toy(0)
    calls = []

    def train():
        calls.append(1)
        return feats, pids, np.zeros(len(pids))

    params = SGGNNParams(k=10, ids_per_batch=4, steps=5)
    blocks, info = net.distances(_context(tmp_path, params, train))
    first = np.concatenate([b.numpy() for _, b in blocks])
    path = Path(info["weights"])
    assert info["trained"] and calls == [1] and path.is_file() and path.parent == tmp_path
    mtime = path.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(net, "train_sggnn", no_training)
    blocks, info = net.distances(_context(tmp_path, params, train))
    again = np.concatenate([b.numpy() for _, b in blocks])
    assert not info["trained"] and calls == [1] and info["weights"] == str(path)
    assert path.stat().st_mtime_ns == mtime and np.array_equal(first, again)
    # other parameters are another re-scorer: another file (and here, training is refused)
    with pytest.raises(AssertionError, match="trained again"):
        net.distances(_context(tmp_path, dataclasses.replace(params, alpha=0.5), train))


def test_damaged_weights_are_trained_again(tmp_path):
    feats, pids = _toy(0)
    params = SGGNNParams(k=10, ids_per_batch=4, steps=3)
    _, info = net.distances(_context(tmp_path, params, lambda: (feats, pids, None)))
    Path(info["weights"]).write_bytes(b"not a checkpoint")
    _, info = net.distances(_context(tmp_path, params, lambda: (feats, pids, None)))
    assert info["trained"]


# --------------------------------------------------------------------------- settings


def test_settings_validate_the_rescorer_and_keep_only_non_default_options():
    assert "sggnn" in RESCORERS
    s = EvaluationSettings(rescore="sggnn", rescore_options=(("alpha", 0.9), ("k", 50))).validate()
    assert s.rescore_options == (("k", 50),)
    assert s.identity() == {"rescore": "sggnn", "rescore_options": {"k": 50}}
    assert s.key("fp") != EvaluationSettings(rescore="sggnn").validate().key("fp")
    assert EvaluationSettings().to_dict() == {"feature": "auto", "normalize": True, "metric": "sqeuclidean",
                                              "flip": False, "rerank": False, "rescore": None}
    assert sparse_options("sggnn", {"k": 100, "steps": 7}) == (("steps", 7),)
    for bad, message in (({"rescore": "nope"}, "rescore='nope' is not valid: sggnn"),
                         ({"rescore": "sggnn", "rerank": True}, "cannot be combined with rerank"),
                         ({"rescore": "sggnn", "rescore_options": (("end_to_end", True),)},
                          "end_to_end=true is not implemented yet"),
                         ({"rescore": "sggnn", "rescore_options": (("kk", 3),)}, "kk is not a known field"),
                         ({"rescore_options": (("k", 3),)}, "needs a re-scorer")):
        with pytest.raises(SpecError, match=message):
            EvaluationSettings(**bad).validate()
    (variant,) = parse_variants({"sg": {"rescore": "sggnn", "rescore_options": {"k": 100, "steps": 9},
                                        "label": "SGGNN"}})
    assert dict(variant.changes) == {"rescore": "sggnn", "rescore_options": (("steps", 9),)}


def test_paper_numbers_for_a_sggnn_row():
    from reidbench.harness.report.paper import paper_value
    from reidbench.harness.report.tables import ranking_of

    ranking = ranking_of({"feature": "f_i", "metric": "sqeuclidean", "normalize": True, "rescore": "sggnn"})
    assert ranking == "f_i cosine + sggnn"
    assert paper_value("market", "market", [], "R1", ranking=ranking) == 92.3
    assert paper_value("market", "market", ["bnneck"], "mAP", ranking=ranking) == 82.8
    assert paper_value("market", "duke", [], "mAP", ranking=ranking) is None
    tuned = ranking_of({"feature": "f_i", "rescore": "sggnn", "rescore_options": {"k": 5}})
    assert paper_value("market", "market", [], "R1", ranking=tuned) is None
    # a re-scored row of the Table 2 model is not a Table 2 row
    table2 = ["warmup", "rea", "ls", "stride", "bnneck"]
    assert paper_value("market", "market", table2, "R1", ranking="f_i cosine") == 94.1
    assert paper_value("market", "market", table2, "R1", ranking=tuned) is None


# --------------------------------------------------------------------------- end to end


TINY_OPTIONS = {"steps": 8, "ids_per_batch": 4, "k": 20}


@pytest.fixture(scope="module")
def ablated(tiny_market, study_spec_file, tmp_path_factory):
    """One tiny run trained by ``ablate --eval sg`` (an sggnn variant with small options): (db, run, root)."""
    root = tmp_path_factory.mktemp("sggnn")
    base = root / "tiny-sggnn.yaml"
    options = ", ".join(f"{k}: {v}" for k, v in TINY_OPTIONS.items())
    base.write_text(study_spec_file.read_text()
                    + f"\nevaluations:\n  sg: {{rescore: sggnn, rescore_options: {{{options}}}, label: SGGNN}}\n")
    db = f"sqlite:///{root / 'results.db'}"
    args = ["ablate", "--base", str(base), "--add", "", "--data", f"tiny={tiny_market}", "--profile", "cpu",
            "--epochs", "1", "--db", db, "--runs-dir", str(root / "runs"), "--workers", "0", "--device", "cpu",
            "--eval", "sg"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "rescore sggnn: training on" in result.output
    run = Store(db).list_runs()[0]
    return db, run, root


def _evaluate(db: str, run, *extra: str):
    result = CliRunner().invoke(main, ["evaluate", "--db", db, "--device", "cpu", "--run", run.run_hash[:10],
                                       "--json", *extra])
    return result


def test_ablation_records_the_rescored_evaluation_with_per_query_results(ablated):
    db, run, _ = ablated
    store = Store(db)
    (e,) = store.evaluations([run.run_hash], variant="sg")
    assert e.settings["rescore"] == "sggnn" and e.settings["rescore_options"] == TINY_OPTIONS
    assert e.has_per_query
    pq = store.query_scores(run.run_hash, e.key)
    assert float(np.nanmean(pq["ap"][pq["valid"]])) == pytest.approx(e.metrics["mAP"], abs=1e-6)
    assert float(np.mean(pq["first_match_rank"][pq["valid"]] == 1)) == pytest.approx(e.metrics["R1"], abs=1e-6)
    folder = Path(run.out_dir)
    assert len(list(folder.glob("rescorer-sggnn-*.pt"))) == 1
    assert (folder / "features-train-tiny-f_t.npz").is_file()
    default = next(x for x in store.evaluations([run.run_hash], variant=""))
    assert default.key != e.key


def test_evaluate_rescore_reuses_the_ablations_rescorer_then_trains_another(ablated):
    db, run, _ = ablated
    store = Store(db)
    folder = Path(run.out_dir)
    (weights,) = folder.glob("rescorer-sggnn-*.pt")
    mtime = weights.stat().st_mtime_ns
    n = len(store.evaluations([run.run_hash]))
    stored = store.evaluations([run.run_hash], variant="sg")[0]
    opts = [a for k, v in TINY_OPTIONS.items() for a in ("--rescore-option", f"{k}={v}")]

    same = _evaluate(db, run, "--rescore", "sggnn", *opts)
    assert same.exit_code == 0, same.output
    assert "reusing" in same.stderr and "training on" not in same.stderr
    out = json.loads(same.stdout)
    assert [o["variant"] for o in out] == ["sg"] and out[0]["key"] == stored.key  # same settings, same record
    assert out[0]["metrics"] == stored.metrics and weights.stat().st_mtime_ns == mtime
    assert len(store.evaluations([run.run_hash])) == n

    other = _evaluate(db, run, "--rescore", "sggnn", *opts, "--rescore-option", "alpha=0.5")
    assert other.exit_code == 0, other.output
    assert "training on" in other.stderr
    out = json.loads(other.stdout)
    assert out[0]["variant"] == "sggnn-alpha=0.5-ids_per_batch=4-k=20-steps=8"
    assert out[0]["settings"]["rescore_options"] == {**TINY_OPTIONS, "alpha": 0.5}
    assert len(list(folder.glob("rescorer-sggnn-*.pt"))) == 2
    recorded = store.evaluations([run.run_hash], variant=out[0]["variant"])
    assert len(recorded) == 1 and recorded[0].has_per_query


def test_evaluate_rescore_errors_are_one_line(ablated, tmp_path):
    db, run, _ = ablated
    for extra, message in ((("--rescore", "nope"), "rescore='nope' is not valid: sggnn"),
                           (("--rescore", "sggnn", "--rescore-option", "end_to_end=true"),
                            "end_to_end=true is not implemented yet"),
                           (("--rescore", "sggnn", "--rerank"), "cannot be combined with rerank"),
                           (("--rescore-option", "k=5"), "--rescore-option needs --rescore"),
                           (("--rescore", "sggnn", "--rescore-option", "k"), "KEY=VALUE")):
        result = _evaluate(db, run, *extra)
        assert result.exit_code == 2, (extra, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (extra, result.output)
    features = CliRunner().invoke(main, ["evaluate", "--features", str(tmp_path / "f.npz"), "--rescore", "sggnn"])
    assert features.exit_code == 2 and "--rescore needs --run" in features.output
