"""The SGGNN network, its training on a run's training features, and top-k re-scoring (torch).

See ``sggnn`` for the method and docs/sggnn.md for which choices are the paper's. Shapes: a batch
of ``P`` probes, each with ``N`` gallery nodes of ``D``-dimensional base features.

Cost and memory: re-scoring handles the queries in blocks of about ``_NODES_PER_BLOCK`` nodes
(queries x k), so what is held besides the features is a few (block nodes x D) activations and
one (block queries x gallery) distance block; nothing grows with the number of queries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

# Nodes (queries x k) re-scored at a time: two (nodes x D) float32 activations of 2048-d features
# are ~64 MB each at this size, and the GEMMs are already at full speed.
_NODES_PER_BLOCK = 4096
# Stored weights are keyed by this too: bump it when the network or its training changes meaning.
VERSION = 1
WEIGHTS_PREFIX = "rescorer-sggnn-"


class SGGNN(nn.Module):
    """Relation features → message passing over the gallery graph → same/different logits.

    ``forward(probe P x D, nodes P x N x D, weights P x N x N)`` returns logits P x N x 2 (index 1 =
    same identity). ``weights[p, i, j]`` is W_ij of probe p's graph (rows sum to 1, or 0 for a node
    without neighbours).
    """

    def __init__(self, dim: int, hidden_dim: int = 0, alpha: float = 0.9, iterations: int = 1) -> None:
        super().__init__()
        hidden = hidden_dim or dim
        self.dim, self.alpha, self.iterations = dim, alpha, iterations
        self.relation_bn = nn.BatchNorm1d(dim)
        self.message = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                     nn.Linear(hidden, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(dim, 2)
        # as the authors' predecessor code (kpm_rw_person_reid RandomWalkEmbed): BN weight 1 / bias 0,
        # classifier weights ~ N(0, 0.001), bias 0
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    def relation(self, probe: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """d_i = BN((f_probe - f_gallery_i)^2), P x N x D."""
        p, n, d = nodes.shape
        diff = (probe[:, None, :] - nodes).square()
        return self.relation_bn(diff.reshape(p * n, d)).view(p, n, d)

    def propagate(self, d: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``iterations`` rounds of d_i <- (1 - alpha) d_i + alpha sum_j W_ij t_j, t = message(d)."""
        p, n, dim = d.shape
        for _ in range(self.iterations):
            t = self.message(d.reshape(p * n, dim)).view(p, n, dim)
            d = (1.0 - self.alpha) * d + self.alpha * torch.bmm(weights.to(t.dtype), t)
        return d

    def forward(self, probe: torch.Tensor, nodes: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Logits P x N x 2; ``weights`` None skips message passing (the verification head alone: d_i → FC)."""
        d = self.relation(probe, nodes)
        return self.classifier(d if weights is None else self.propagate(d, weights))


def graph_weights(nodes: torch.Tensor, self_loops: bool = False, temperature: float = 1.0) -> torch.Tensor:
    """W (P x N x N): softmax over j of cos(g_i, g_j) / temperature, over j != i unless ``self_loops``.

    A node without any neighbour (N = 1 without self loops) gets a zero row: it receives no message.
    """
    unit = nn.functional.normalize(nodes.float(), dim=2)
    sim = torch.bmm(unit, unit.transpose(1, 2)) / temperature
    if not self_loops:
        n = sim.shape[1]
        sim = sim.masked_fill(torch.eye(n, dtype=torch.bool, device=sim.device), float("-inf"))
    return torch.softmax(sim, dim=2).nan_to_num(0.0)


def base_distances(q: torch.Tensor, g: torch.Tensor, metric: str) -> torch.Tensor:
    """Distances that rank as the evaluation's metric: 1 - cos for cosine, squared Euclidean otherwise
    (Euclidean ranks as its square)."""
    if metric == "cosine":
        return 1.0 - nn.functional.normalize(q, dim=1) @ nn.functional.normalize(g, dim=1).T
    out = torch.addmm((g * g).sum(1)[None, :], q, g.T, alpha=-2.0)
    return out.add_((q * q).sum(1, keepdim=True)).clamp_(min=0.0)


# --------------------------------------------------------------------------- training


class PairBatches:
    """P x (probes + gallery) batches of training indices: per step ``ids_per_batch`` identities drawn
    without replacement among those with at least ``probes_per_id + 1`` images; each gives
    ``probes_per_id`` probes and ``gallery_per_id`` gallery images from its other images (drawn with
    replacement when it has too few)."""

    def __init__(self, pids: Sequence[int], ids_per_batch: int, probes_per_id: int, gallery_per_id: int,
                 seed: int) -> None:
        pids = np.asarray(pids)
        by_id: dict[int, np.ndarray] = {}
        for pid in np.unique(pids):
            idx = np.flatnonzero(pids == pid)
            if len(idx) >= probes_per_id + 1:
                by_id[int(pid)] = idx
        if len(by_id) < 2:
            raise ValueError(f"rescore sggnn: the training set has {len(by_id)} identities with at least "
                             f"{probes_per_id + 1} images; training needs 2 (lower rescore_options.probes_per_id)")
        self.ids = sorted(by_id)
        self.by_id = by_id
        self.ids_per_batch = min(ids_per_batch, len(self.ids))
        self.probes_per_id, self.gallery_per_id = probes_per_id, gallery_per_id
        self.rng = np.random.default_rng(seed)

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        """(probe indices, gallery indices) of one batch, grouped by identity."""
        chosen = self.rng.choice(len(self.ids), size=self.ids_per_batch, replace=False)
        probes, gallery = [], []
        for c in chosen:
            idx = self.rng.permutation(self.by_id[self.ids[c]])
            probes.append(idx[: self.probes_per_id])
            rest = idx[self.probes_per_id:]
            gallery.append(self.rng.choice(rest, size=self.gallery_per_id, replace=len(rest) < self.gallery_per_id))
        return np.concatenate(probes), np.concatenate(gallery)


def batch_graph(feats: torch.Tensor, pids: torch.Tensor, probe_idx: Any, gallery_idx: Any, k: int, metric: str,
                self_loops: bool, temperature: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probe features, node features, W, same-identity labels) of one batch: every probe's nodes
    are its top-k of the batch's gallery by base distance."""
    probe_idx = torch.as_tensor(probe_idx, device=feats.device)
    gallery_idx = torch.as_tensor(gallery_idx, device=feats.device)
    probe, gallery = feats[probe_idx], feats[gallery_idx]
    kk = min(k, gallery.shape[0])
    top = base_distances(probe, gallery, metric).topk(kk, dim=1, largest=False, sorted=True).indices
    nodes = gallery[top]
    labels = (pids[probe_idx][:, None] == pids[gallery_idx][top]).long()
    return probe, nodes, graph_weights(nodes, self_loops, temperature), labels


def pair_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(accuracy, balanced accuracy = mean of the same- and different-pair recalls) of 2-way logits."""
    pred = logits.argmax(-1)
    hit = (pred == labels).float()
    acc = float(hit.mean())
    recalls = [float(hit[labels == c].mean()) for c in (0, 1) if bool((labels == c).any())]
    return acc, float(np.mean(recalls)) if recalls else acc


def pair_loss(logits: torch.Tensor, labels: torch.Tensor, balanced: bool = False) -> torch.Tensor:
    """Cross-entropy of (pairs x 2) logits; ``balanced``: each class weighted by N / (2 N_class) of
    these pairs, which makes the loss the mean of the two classes' mean losses (a class absent from
    the batch gets no weight)."""
    if not balanced:
        return nn.functional.cross_entropy(logits, labels)
    counts = torch.bincount(labels, minlength=2).to(logits.dtype)
    weight = torch.where(counts > 0, labels.numel() / (2 * counts.clamp(min=1)), torch.zeros_like(counts))
    return nn.functional.cross_entropy(logits, labels, weight=weight)


def train_sggnn(feats: Any, pids: Any, params: Any, metric: str, device: Any = None,
                log: Any = None) -> tuple[SGGNN, list[dict[str, float]]]:
    """Train an SGGNN on frozen features (N x D) with identity labels; returns it (eval mode) and a
    history of {step, loss, accuracy, balanced_accuracy} (every 10 steps and the last)."""
    device = torch.device(device or "cpu")
    feats = torch.as_tensor(np.asarray(feats), dtype=torch.float32, device=device)
    pids_t = torch.as_tensor(np.asarray(pids).astype(np.int64), device=device)
    batches = PairBatches(pids_t.cpu().numpy(), params.ids_per_batch, params.probes_per_id, params.gallery_per_id,
                          params.seed)
    if log is not None and batches.ids_per_batch < params.ids_per_batch:
        log(f"rescore sggnn: {batches.ids_per_batch} identities per batch (the training set has only "
            f"{len(batches.ids)} usable ones; ids_per_batch={params.ids_per_batch})")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(params.seed)
    model = SGGNN(feats.shape[1], params.hidden_dim, params.alpha, params.iterations).to(device)
    torch.random.set_rng_state(generator_state)  # the caller's random stream is left as it was
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    balance_classes = params.class_weights == "balanced"
    history: list[dict[str, float]] = []
    total = params.pretrain_steps + params.steps
    every = max(1, total // 5)
    model.train()
    for step in range(1, total + 1):
        probe_idx, gallery_idx = batches.next()
        probe, nodes, weights, labels = batch_graph(feats, pids_t, probe_idx, gallery_idx, params.k, metric,
                                                    params.self_loops, params.temperature)
        # the first pretrain_steps train the verification head alone (the paper's Siamese stage)
        logits = model(probe, nodes, weights if step > params.pretrain_steps else None)
        loss = pair_loss(logits.reshape(-1, 2), labels.reshape(-1), balance_classes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == total or step == 1:
            acc, balanced = pair_accuracy(logits.detach(), labels)
            history.append({"step": step, "loss": float(loss.detach()), "accuracy": acc,
                            "balanced_accuracy": balanced})
            if log is not None and (step % every == 0 or step == total):
                log(f"rescore sggnn: step {step}/{total}  loss {history[-1]['loss']:.4f}  pair accuracy "
                    f"{100 * acc:.1f}%  balanced {100 * balanced:.1f}%")
    return model.eval(), history


# --------------------------------------------------------------------------- re-scoring


@torch.no_grad()
def rescore_block(model: SGGNN, q: torch.Tensor, g: torch.Tensor, metric: str, k: int, self_loops: bool,
                  temperature: float) -> torch.Tensor:
    """Re-scored distances of a few queries to the whole gallery, float64 on the inputs' device.

    The top-k of the base ranking get 1 - P(same) (in [0, 1], computed as sigmoid(logit_diff -
    logit_same) so confident pairs do not round to ties); every other item gets
    2 + (base distance - the k-th base distance), i.e. it comes after the top-k, in base order.
    """
    base = base_distances(q, g, metric)
    kk = min(k, g.shape[0])
    top_d, top_i = base.topk(kk, dim=1, largest=False, sorted=True)
    nodes = g[top_i]
    logits = model(q, nodes, graph_weights(nodes, self_loops, temperature)).double()
    rescored = torch.sigmoid(logits[..., 0] - logits[..., 1])
    out = base.double().sub_(top_d[:, -1:].double()).add_(2.0)
    return out.scatter_(1, top_i, rescored)


def rescored_blocks(model: SGGNN, q: torch.Tensor, g: torch.Tensor, metric: str, params: Any
                    ) -> Iterator[tuple[int, torch.Tensor]]:
    """(first query, re-scored distance block on the CPU) over all queries, ``_NODES_PER_BLOCK`` nodes at a time."""
    rows = max(1, _NODES_PER_BLOCK // min(params.k, max(g.shape[0], 1)))
    model.eval()
    for start in range(0, q.shape[0], rows):
        block = rescore_block(model, q[start:start + rows], g, metric, params.k, params.self_loops,
                              params.temperature)
        yield start, block.cpu()


# --------------------------------------------------------------------------- stored weights


def weights_identity(identity: Mapping[str, Any], params: Any) -> str:
    """Canonical JSON of what stored weights are keyed by: the caller's identity (run, training data,
    base feature settings), every parameter and the implementation version."""
    fields = dataclasses.asdict(params)
    if fields.get("class_weights") == "none":
        del fields["class_weights"]  # added later: re-scorers stored before it keep their identity
    payload = {**dict(identity), "rescore": "sggnn", "version": VERSION, "params": fields}
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def weights_path(out_dir: Path, identity_json: str) -> Path:
    return Path(out_dir) / f"{WEIGHTS_PREFIX}{hashlib.sha256(identity_json.encode()).hexdigest()[:16]}.pt"


def load_weights(path: Path, identity_json: str, dim: int, params: Any, device: Any) -> SGGNN | None:
    """The stored re-scorer when ``path`` holds one with this identity and width; None otherwise
    (missing, damaged or from other settings: trained again, never trusted)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("identity") != identity_json or int(state.get("dim", -1)) != dim:
            return None
        model = SGGNN(dim, params.hidden_dim, params.alpha, params.iterations)
        model.load_state_dict(state["model"])
    except (OSError, RuntimeError, KeyError, ValueError, AttributeError, EOFError, pickle.UnpicklingError):
        return None
    return model.to(device).eval()


def save_weights(path: Path, identity_json: str, model: SGGNN, history: list[dict[str, float]],
                 seconds: float) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"identity": identity_json, "dim": model.dim, "model": model.state_dict(),
                "history_json": json.dumps(history), "seconds_train": seconds}, tmp)
    os.replace(tmp, path)


def distances(context: Any) -> tuple[Iterator[tuple[int, torch.Tensor]], dict[str, Any]]:
    """The registry entry's work: reuse or train the re-scorer, then the re-scored distance blocks."""
    params = context.params
    device = torch.device(context.device or "cpu")
    q = torch.as_tensor(np.asarray(context.q_feats), dtype=torch.float32, device=device)
    g = torch.as_tensor(np.asarray(context.g_feats), dtype=torch.float32, device=device)
    identity_json = weights_identity(context.identity, params)
    path = weights_path(context.out_dir, identity_json)
    model = load_weights(path, identity_json, q.shape[1], params, device)
    info: dict[str, Any] = {"weights": str(path), "trained": model is None}
    if model is None:
        feats, pids, _ = context.train()
        if np.asarray(feats).shape[1] != q.shape[1]:
            raise ValueError(f"rescore sggnn: training features have {np.asarray(feats).shape[1]} dimensions but "
                             f"the test features {q.shape[1]}")
        context.log(f"rescore sggnn: training on {len(pids)} training images ({len(np.unique(pids))} ids), "
                    f"{params.steps} steps, k={params.k}")
        t0 = time.perf_counter()
        model, history = train_sggnn(feats, pids, params, context.metric, device, context.log)
        info["seconds_train"] = time.perf_counter() - t0
        info["history"] = history[-1] if history else {}
        save_weights(path, identity_json, model, history, info["seconds_train"])
    else:
        context.log(f"rescore sggnn: reusing {path.name}")
    return rescored_blocks(model, q, g, context.metric, params), info
