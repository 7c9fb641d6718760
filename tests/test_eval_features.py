"""extract_features()/extract_feature_set() with tiny dummy models, score() and the npz round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reidbench.harness.evaluation import features as features_module
from reidbench.harness.evaluation import protocol as evaluation
from reidbench.harness.evaluation.features import extract_feature_set, extract_features, load_features_npz
from reidbench.harness.evaluation.protocol import score


# --------------------------------------------------------------------------- extract_features


class LeftRightModel(torch.nn.Module):
    """f_i = (mean of the left half, mean of the right half, 1): flipping swaps the first two.
    f_t = f_i * 2 + 1, so the two keys can be told apart. Also counts its calls and records
    whether it ran in eval mode with autograd off."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.seen = []

    def forward(self, images):
        self.seen.append((self.training, torch.is_grad_enabled()))
        half = images.shape[-1] // 2
        left = images[..., :half].mean(dim=(1, 2, 3))
        right = images[..., half:].mean(dim=(1, 2, 3))
        f_i = torch.stack([left, right, torch.ones_like(left)], 1) * self.scale
        return {"f_i": f_i, "f_t": f_i * 2 + 1}


def make_loader(num_images=10, batch_size=4, shuffled=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(num_images, 3, 8, 6, generator=gen)
    images[:, :, :, :3] += torch.arange(num_images, dtype=torch.float32)[:, None, None, None]  # left != right
    pids = torch.arange(num_images) % 3
    camids = torch.arange(num_images) % 2 + 10
    order = torch.randperm(num_images, generator=gen) if shuffled else torch.arange(num_images)
    batches = [(images[idx], pids[idx], camids[idx], idx) for idx in order.split(batch_size)]
    return batches, images, pids, camids


def expected_features(images, flip, key="f_i"):
    half = images.shape[-1] // 2

    def feats(x):
        left, right = x[..., :half].mean(dim=(1, 2, 3)), x[..., half:].mean(dim=(1, 2, 3))
        f = torch.stack([left, right, torch.ones_like(left)], 1)
        return f if key == "f_i" else f * 2 + 1

    f = feats(images)
    if flip:
        f = (f + feats(images.flip(-1))) / 2  # averaged before normalisation
    return f


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_features_flip_and_normalize(flip, normalize):
    model = LeftRightModel()
    loader, images, pids, camids = make_loader()
    feats, out_pids, out_camids = extract_features(model, loader, "cpu", flip=flip, normalize=normalize)
    expected = expected_features(images, flip)
    if normalize:
        expected = expected / expected.norm(dim=1, keepdim=True)
    assert feats.dtype == torch.float32 and feats.device.type == "cpu" and feats.shape == (10, 3)
    torch.testing.assert_close(feats, expected)
    np.testing.assert_array_equal(out_pids, pids.numpy())
    np.testing.assert_array_equal(out_camids, camids.numpy())
    if flip:  # the flip-averaged left and right means are equal
        torch.testing.assert_close(feats[:, 0], feats[:, 1])
    else:
        assert not torch.allclose(feats[:, 0], feats[:, 1])


def test_features_eval_mode_no_grad_mode_restored_and_key():
    model = LeftRightModel()
    model.train()
    loader, images, _, _ = make_loader()
    feats, _, _ = extract_features(model, loader, torch.device("cpu"), feature_key="f_t", normalize=False,
                                   amp_dtype=torch.float16)  # autocast request ignored on CPU
    torch.testing.assert_close(feats, expected_features(images, flip=False, key="f_t"))
    assert all(not training and not grad for training, grad in model.seen)
    assert model.training  # restored
    assert not feats.requires_grad


def test_features_come_back_in_dataset_order():
    model = LeftRightModel()
    loader, images, pids, _ = make_loader(shuffled=True, seed=3)
    assert [int(b[3][0]) for b in loader] != sorted(int(b[3][0]) for b in loader)  # really shuffled
    feats, out_pids, _ = extract_features(model, loader, "cpu", normalize=False)
    torch.testing.assert_close(feats, expected_features(images, flip=False))
    np.testing.assert_array_equal(out_pids, pids.numpy())


def test_unknown_feature_key_names_the_outputs():
    loader, *_ = make_loader()
    with pytest.raises(ValueError, match=r"feature_key 'f_x' is not among the model outputs \(\['f_i', 'f_t'\]\)"):
        extract_features(LeftRightModel(), loader, "cpu", feature_key="f_x")


def test_tuple_feature_key_concatenates_in_order_then_normalises_the_whole():
    model = LeftRightModel()
    loader, images, _, _ = make_loader()
    for flip in (False, True):
        feats, _, _ = extract_features(model, loader, "cpu", flip=flip, feature_key=("f_t", "f_i"), normalize=True)
        expected = torch.cat([expected_features(images, flip, "f_t"), expected_features(images, flip, "f_i")], 1)
        torch.testing.assert_close(feats, expected / expected.norm(dim=1, keepdim=True))
    feats, _, _ = extract_features(model, loader, "cpu", feature_key=["f_i", "f_t"], normalize=False)
    torch.testing.assert_close(feats[:, :3], expected_features(images, False, "f_i"))
    torch.testing.assert_close(feats[:, 3:], expected_features(images, False, "f_t"))
    single, _, _ = extract_features(model, loader, "cpu", feature_key=("f_i",), normalize=False)
    torch.testing.assert_close(single, expected_features(images, False, "f_i"))


@pytest.mark.parametrize("flip", [False, True])
def test_feature_set_takes_every_key_from_one_pass(flip):
    model = LeftRightModel()
    model.train()
    loader, images, _, _ = make_loader(shuffled=True, seed=1)
    out = extract_feature_set(model, loader, "cpu", ["f_t", "f_i"], flip=flip)
    assert list(out) == ["f_t", "f_i"]
    assert len(model.seen) == len(loader) * (2 if flip else 1)  # one forward per batch (and its mirror)
    for key in ("f_t", "f_i"):
        assert out[key].dtype == torch.float32 and out[key].device.type == "cpu"
        torch.testing.assert_close(out[key], expected_features(images, flip, key))  # not normalised, in order
    assert model.training
    single, _, _ = extract_features(LeftRightModel(), loader, "cpu", flip=flip, feature_key="f_t", normalize=False)
    torch.testing.assert_close(out["f_t"], single)


def test_feature_key_errors_name_the_field():
    loader, *_ = make_loader()
    with pytest.raises(ValueError, match=r"keys 'f_x' is not among the model outputs \(\['f_i', 'f_t'\]\)"):
        extract_feature_set(LeftRightModel(), loader, "cpu", ["f_i", "f_x"])
    with pytest.raises(ValueError, match="keys must be a list of output names, got the string 'f_i'"):
        extract_feature_set(LeftRightModel(), loader, "cpu", "f_i")
    with pytest.raises(ValueError, match=r"feature_key must be an output name or a non-empty list"):
        extract_features(LeftRightModel(), loader, "cpu", feature_key=())
    with pytest.raises(ValueError, match="keys must be an output name or a non-empty list"):
        extract_feature_set(LeftRightModel(), loader, "cpu", [])


def test_feature_output_must_be_2d():
    class MapModel(torch.nn.Module):
        def forward(self, images):
            return {"f_i": images}

    loader, *_ = make_loader()
    with pytest.raises(ValueError, match=r"model output 'f_i' has shape \(4, 3, 8, 6\); a feature must be 2-D"):
        extract_features(MapModel(), loader, "cpu")


def test_protocol_still_exports_the_moved_names():
    assert evaluation.extract_features is extract_features
    assert evaluation.load_features_npz is load_features_npz
    assert evaluation.NPZ_KEYS == features_module.NPZ_KEYS


# --------------------------------------------------------------------------- score and npz


def identity_features(seed=0, num_query=30, num_gallery=120, dim=16, num_ids=10):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids + 1, dim))
    q_pids = rng.integers(1, num_ids + 1, num_query)
    g_pids = rng.integers(0, num_ids + 1, num_gallery)
    q_cams, g_cams = rng.integers(0, 3, num_query), rng.integers(0, 3, num_gallery)
    scale_q = rng.uniform(0.5, 3.0, (num_query, 1))  # unequal norms: normalising changes the ranking
    q = (centres[q_pids] + 1.2 * rng.normal(size=(num_query, dim))) * scale_q
    g = centres[g_pids] + 1.2 * rng.normal(size=(num_gallery, dim))
    return {"q_feats": q.astype(np.float32), "g_feats": g.astype(np.float32), "q_pids": q_pids, "g_pids": g_pids,
            "q_camids": q_cams, "g_camids": g_cams}


def reference_scores(arrays, metric, normalize):
    """Brute force: float64 distances, per-query sort, explicit ranks."""
    q, g = arrays["q_feats"].astype(np.float64), arrays["g_feats"].astype(np.float64)
    if normalize or metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
    dist = ((q[:, None] - g[None]) ** 2).sum(-1)
    if metric == "euclidean":
        dist = np.sqrt(dist)
    first, aps, inps = [], [], []
    for i in range(len(q)):
        keep = ~((arrays["g_pids"] == arrays["q_pids"][i]) & (arrays["g_camids"] == arrays["q_camids"][i]))
        order = np.argsort(dist[i][keep], kind="stable")
        ranks = np.flatnonzero((arrays["g_pids"][keep] == arrays["q_pids"][i])[order]) + 1
        if ranks.size:
            first.append(ranks[0])
            aps.append(np.mean(np.arange(1, ranks.size + 1) / ranks))
            inps.append(ranks.size / ranks[-1])
    first = np.array(first)
    return {"R1": np.mean(first <= 1), "R5": np.mean(first <= 5), "R10": np.mean(first <= 10),
            "mAP": np.mean(aps), "mINP": np.mean(inps), "num_valid_queries": len(aps)}


@pytest.mark.parametrize("metric, normalize", [("euclidean", False), ("sqeuclidean", True), ("cosine", False)])
def test_score_npz_round_trip(tmp_path, metric, normalize, monkeypatch):
    monkeypatch.setattr(evaluation, "_CHUNK_ELEMENTS", 8 * 120)  # several fused chunks
    arrays = identity_features()
    path = tmp_path / "features.npz"
    np.savez(path, **arrays, q_paths=np.array(["a.jpg"] * 30))  # extra arrays are ignored
    loaded = load_features_npz(path)
    assert sorted(loaded) == sorted(features_module.NPZ_KEYS)
    result = score(**loaded, metric=metric, normalize=normalize)
    expected = reference_scores(arrays, metric, normalize)
    assert result["num_valid_queries"] == expected["num_valid_queries"]
    for key in ("R1", "R5", "R10", "mAP", "mINP"):
        assert result[key] == pytest.approx(expected[key], abs=1e-9), key
        assert 0.0 <= result[key] <= 1.0


def test_score_float16_features_and_normalize_matters():
    arrays = identity_features(seed=4)
    half = dict(arrays, q_feats=arrays["q_feats"].astype(np.float16), g_feats=arrays["g_feats"].astype(np.float16))
    assert score(**half)["mAP"] == pytest.approx(score(**arrays)["mAP"], abs=0.02)  # float16 upcast, not rejected
    plain, normed = score(**arrays), score(**arrays, normalize=True)
    assert plain["mAP"] != normed["mAP"]  # the query norms differ, so normalising re-orders


def test_score_with_rerank_is_evaluate_of_re_rank():
    arrays = identity_features(seed=2)
    result = score(**arrays, normalize=True, rerank=True, max_rank=5)
    q = arrays["q_feats"] / np.linalg.norm(arrays["q_feats"], axis=1, keepdims=True)
    g = arrays["g_feats"] / np.linalg.norm(arrays["g_feats"], axis=1, keepdims=True)
    dist = evaluation.re_rank(q, g)
    ranked = evaluation.evaluate(dist, arrays["q_pids"], arrays["g_pids"], arrays["q_camids"], arrays["g_camids"],
                                 max_rank=10)
    assert result["R10"] == pytest.approx(ranked["cmc"][9])  # R10 available although max_rank=5
    assert result["mAP"] == pytest.approx(ranked["mAP"])
    assert result["mINP"] == pytest.approx(ranked["mINP"])


def test_load_features_npz_errors(tmp_path):
    arrays = identity_features()
    missing = tmp_path / "missing.npz"
    np.savez(missing, **{k: v for k, v in arrays.items() if k != "g_camids"})
    with pytest.raises(ValueError, match=r"missing\.npz: missing array 'g_camids'"):
        load_features_npz(missing)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **dict(arrays, q_pids=arrays["q_pids"][:-1]))
    with pytest.raises(ValueError, match=r"bad\.npz: q_pids has shape \(29,\), expected \(30,\)"):
        load_features_npz(bad)
    dims = tmp_path / "dims.npz"
    np.savez(dims, **dict(arrays, g_feats=arrays["g_feats"][:, :3]))
    with pytest.raises(ValueError, match="dims.npz: q_feats has 16 dimensions but g_feats has 3"):
        load_features_npz(dims)
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_features_npz(tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    with pytest.raises(ValueError, match="junk.npz: not a readable .npz file"):
        load_features_npz(junk)


def test_score_rejects_unknown_metric():
    with pytest.raises(ValueError, match="metric 'l1'"):
        score(**identity_features(), metric="l1")
