"""The papers' numbers: Bag of Tricks (Luo et al. 2019, from the shared reference bot.md), MGN, Mancs, AGW,
SPReID and SGGNN.

A run is first matched to a *system* (``paper_system``): ``bot`` for the bot architecture, ``mgn``
for exactly the paper's MGN (every branch, default options, the paper's two loss terms, no
trick). BoT rows are keyed by the set of tricks applied on top of Baseline-S, so a measured row
matches a paper row whatever the ablation mode that produced it (a cumulative ``+REA`` = {warmup,
rea}; a leave-one-out ``−REA`` = every trick but rea). MGN has one row (seed-systems.md §1.4; its
ablation table was not retrieved, so a branch subset or an MGN with BoT's tricks shows none).
Mancs likewise has one row (its numbers via BoT's Table 4, seed-systems.md §2.1), for exactly
experiments/mancs.yaml's model, loss terms and random erasing (its ablation rows show none).
AGW (Ye et al.'s survey baseline, seed-systems.md §6) is a bot-architecture run with exactly its
nine tricks (BoT's six + nonlocal, gem, wrt: experiments/agw.yaml, or ``ablate --base bot --add``
them all) and no other model option (the C/2 non-local variant has no published number); its row has R1, mAP
and mINP (the survey reports mINP; ask ``report --metrics r1,map,minp`` to see it).
SPReID has one row too, as BoT's Table 4 quotes it (``spreid``: the full feature, softmax CE
alone, no trick, and masks from a parser — ``folder:`` — never the stripe prior, which is not SPReID).
Values are percent, as printed in the papers.
"""

from __future__ import annotations

from typing import Iterable

from reidbench.harness.report.naming import RERANK_PREFIX, paper_dataset

PAPER_TRICK_ORDER: tuple[str, ...] = ("warmup", "rea", "ls", "stride", "bnneck", "center")
ALL_TRICKS = frozenset(PAPER_TRICK_ORDER)
PAPER_CITATION = "Luo et al., Bag of Tricks and A Strong Baseline for Deep Person Re-identification, CVPRW 2019"
MGN_CITATION = ("Wang et al., Learning Discriminative Features with Multiple Granularities for Person "
                "Re-Identification, ACM MM 2018")
MANCS_CITATION = ("Wang et al., Mancs: A Multi-task Attentional Network with Curriculum Sampling for Person "
                  "Re-identification, ECCV 2018 (numbers as quoted in BoT's Table 4)")
AGW_CITATION = ("Ye et al., Deep Learning for Person Re-identification: A Survey and Outlook, TPAMI 2021 "
                "(AGW; ReID-Survey README)")
SGGNN_CITATION = ("Shen et al., Person Re-identification with Deep Similarity-Guided Graph Neural Network, "
                  "ECCV 2018")
SPREID_CITATION = ("Kalayeh et al., Human Semantic Parsing for Person Re-identification, CVPR 2018 (as quoted in "
                   "BoT's Table 4)")
CITATIONS = {"bot": f"{PAPER_CITATION}, Tables 1 and 3", "mgn": MGN_CITATION, "mancs": MANCS_CITATION,
             "agw": AGW_CITATION, "spreid": SPREID_CITATION, "sggnn": SGGNN_CITATION}

# AGW, same domain: (R1, mAP, mINP) per dataset (mangye16/ReID-Survey README, ResNet-50).
AGW_TRICKS = frozenset({*PAPER_TRICK_ORDER, "nonlocal", "gem", "wrt"})
AGW: dict[str, tuple[float, float, float]] = {"market": (95.1, 87.8, 65.0), "duke": (89.0, 79.6, 45.7)}
_AGW_OPTIONS = {"pool": "gem", "gem_learnable": True, "nonlocal_layers": [0, 2, 3, 0]}  # as a stored spec writes them

# MGN, same domain: (R1, mAP) per dataset; re-ranked numbers from the abstract (Market only).
MGN: dict[str, tuple[float, float]] = {"market": (95.7, 86.9), "duke": (88.7, 78.4)}
MGN_RERANK: dict[str, tuple[float, float]] = {"market": (96.6, 94.2)}
# SPReID, same domain, as BoT's Table 4 quotes it (reference/bot.md): (R1, mAP) per dataset.
SPREID: dict[str, tuple[float, float]] = {"market": (92.5, 81.3), "duke": (84.4, 71.0)}
# The paper's MGN as a spec (experiments/mgn.yaml): what a run must be to be compared with MGN.
_MGN_TERMS = ({"kind": "ce", "reads": "logits_*", "weight": 1.0, "combine": "sum"},
              {"kind": "triplet", "reads": ["f_g", "f_p2", "f_p3"], "weight": 1.0, "combine": "sum", "margin": 1.2})


# Mancs, same domain: (R1, mAP); and the spec a run must have to be compared with it.
MANCS: dict[str, tuple[float, float]] = {"market": (93.1, 82.3), "duke": (84.9, 71.8)}
_MANCS_TERMS = ({"kind": "curriculum_triplet", "name": "rank", "reads": "f_rank", "weight": 1.0},
                {"kind": "focal", "name": "cls", "reads": "logits", "weight": 1.0},
                {"kind": "bce", "name": "att", "reads": "logits_att", "weight": 0.2})
_MANCS_REA = 0.5


def _mancs_system(spec: dict) -> str | None:
    model = spec.get("model") or {}
    generic = {"arch", "backbone", "pretrained", "weights_path", "last_stride", "neck"}  # neck: not read by mancs
    if any(k not in generic for k in model) or model.get("last_stride", 2) != 2:
        return None  # a Mancs option changed (no FAB, no PReLU, pooling, ...): not the paper's model
    if (spec.get("data") or {}).get("random_erasing_prob", 0.0) != _MANCS_REA:
        return None  # its "w/o REA" ablation row
    terms = [{k: v for k, v in t.items() if v is not None and k != "combine"}
             for t in (spec.get("loss") or {}).get("terms") or []]
    return "mancs" if terms == [dict(t) for t in _MANCS_TERMS] else None


def paper_system(spec: dict) -> str | None:
    """Which paper's numbers a stored run (its spec as plain data) is comparable with: bot, agw, mgn, mancs, spreid or None."""
    model = spec.get("model") or {}
    arch = model.get("arch", "bot")
    if arch == "bot":
        if frozenset(spec.get("tricks") or ()) != AGW_TRICKS:
            return "bot"
        generic = {"arch", "backbone", "pretrained", "weights_path", "last_stride", "neck"}
        options = {k: v for k, v in model.items() if k not in generic}
        # AGW's model exactly (a C/2 non-local or a cosine classifier on top is another model), and
        # its loss: WRT with the reference's softmax weights (the exact ones are another loss)
        terms = (spec.get("loss") or {}).get("terms") or []
        if any(t.get("weights", "reference") != "reference" for t in terms):
            return None
        return "agw" if options == _AGW_OPTIONS else None
    if arch == "spreid":
        return _spreid_system(spec)
    if spec.get("tricks"):
        return None
    if arch == "mancs":
        return _mancs_system(spec)
    if arch != "mgn":
        return None
    generic = {"arch", "backbone", "pretrained", "weights_path", "last_stride", "neck"}
    if any(k not in generic for k in model) or model.get("neck", "plain") != "plain" or model.get("last_stride", 2) != 2:
        return None  # an MGN option changed (branches, pooling, ...): not the paper's model
    terms = [{k: v for k, v in t.items() if v is not None} for t in (spec.get("loss") or {}).get("terms") or []]
    return "mgn" if terms == [dict(t) for t in _MGN_TERMS] else None


def _spreid_system(spec: dict) -> str | None:
    """``spreid`` for the paper's SPReID: default options (all three features), CE on the logits only, no trick,
    a parser's masks."""
    model = spec.get("model") or {}
    generic = {"arch", "backbone", "pretrained", "weights_path", "last_stride", "neck"}
    if spec.get("tricks") or any(k not in generic for k in model) or model.get("last_stride", 2) != 2:
        return None  # a trick or an option (features, mask_stride, ...) changed: not the paper's model
    if not str((spec.get("data") or {}).get("masks", "")).startswith("folder:"):
        return None  # the stripe prior is no parser; oracle masks exist on synthetic data only
    terms = (spec.get("loss") or {}).get("terms") or []
    if len(terms) != 1:
        return None
    term = {k: v for k, v in terms[0].items() if v is not None and k not in ("weight", "name", "combine")}
    return "spreid" if term in ({"kind": "ce", "reads": "logits"}, {"kind": "ce", "reads": ["logits"]}) else None


def _cumulative(k: int) -> frozenset[str]:
    return frozenset(PAPER_TRICK_ORDER[:k])


# Table 1 — same domain, tricks added cumulatively. (R1, mAP) per dataset.
TABLE1: dict[frozenset[str], dict[str, tuple[float, float]]] = {
    _cumulative(0): {"market": (87.7, 74.0), "duke": (79.7, 63.7)},  # Baseline-S
    _cumulative(1): {"market": (88.7, 75.2), "duke": (80.6, 65.1)},  # +warmup
    _cumulative(2): {"market": (91.3, 79.3), "duke": (81.5, 68.3)},  # +REA
    _cumulative(3): {"market": (91.4, 80.3), "duke": (82.4, 69.3)},  # +LS
    _cumulative(4): {"market": (92.0, 81.7), "duke": (82.6, 70.6)},  # +stride=1
    _cumulative(5): {"market": (94.1, 85.7), "duke": (86.2, 75.9)},  # +BNNeck
    _cumulative(6): {"market": (94.5, 85.9), "duke": (86.4, 76.4)},  # +center loss
}
# Table 1's "+re-ranking" row: all tricks, re-ranked (our rerank_R1 / rerank_mAP columns).
TABLE1_RERANK: dict[str, tuple[float, float]] = {"market": (95.4, 94.2), "duke": (90.3, 89.1)}

# Table 3 — cross domain. Keys of the inner dict are (train, test): M→D = ("market", "duke").
TABLE3: dict[frozenset[str], dict[tuple[str, str], tuple[float, float]]] = {
    _cumulative(0): {("market", "duke"): (24.4, 12.9), ("duke", "market"): (34.2, 14.5)},  # Baseline
    _cumulative(1): {("market", "duke"): (26.3, 14.1), ("duke", "market"): (39.7, 17.4)},  # +warmup
    _cumulative(2): {("market", "duke"): (21.5, 10.2), ("duke", "market"): (32.5, 13.5)},  # +REA
    _cumulative(3): {("market", "duke"): (23.2, 11.3), ("duke", "market"): (36.5, 14.9)},  # +LS
    _cumulative(4): {("market", "duke"): (23.1, 11.8), ("duke", "market"): (37.1, 15.4)},  # +stride=1
    _cumulative(5): {("market", "duke"): (26.7, 15.2), ("duke", "market"): (47.7, 21.6)},  # +BNNeck
    _cumulative(6): {("market", "duke"): (27.5, 15.0), ("duke", "market"): (47.4, 21.4)},  # +center loss
    ALL_TRICKS - {"rea"}: {("market", "duke"): (41.4, 25.7), ("duke", "market"): (54.3, 25.5)},  # −REA
}

# Table 2 — BNNeck analysis on the model with every trick but the center loss, by how it ranks:
# (R1, mAP) per dataset. "w/o BNNeck" is Table 1's +stride=1 row (f = f_t = f_i, cosine).
TABLE2_TRICKS = ALL_TRICKS - {"center"}
TABLE2: dict[str, dict[str, tuple[float, float]]] = {
    "f_t Euclidean": {"market": (94.2, 85.5), "duke": (85.7, 74.4)},
    "f_t cosine": {"market": (94.2, 85.7), "duke": (85.5, 74.6)},
    "f_i Euclidean": {"market": (93.8, 83.7), "duke": (86.6, 73.0)},
    "f_i cosine": {"market": (94.1, 85.7), "duke": (86.2, 75.9)},
}

# SGGNN (a re-scoring stage; seed-systems.md §5.1), same domain: (R1, mAP). Duke's mAP is unverified,
# so only Market is used. A row matches when it is re-scored with sggnn at its default options.
SGGNN: dict[str, tuple[float, float]] = {"market": (92.3, 82.8)}
SGGNN_RANKING_SUFFIX = " + sggnn"

_INDEX = {"R1": 0, "mAP": 1, "mINP": 2}  # mINP: AGW only (the BoT and MGN papers do not report it)


def paper_value(train: str, test: str, tricks: Iterable[str], metric: str, synthetic: bool = False,
                ranking: str | None = None, system: str | None = "bot") -> float | None:
    """The paper's number (percent) for a run trained on ``train``, tested on ``test``, with ``tricks``.

    ``system`` (``paper_system`` of the run) picks the paper: ``bot`` (Tables 1–3), ``mgn`` or
    ``mancs`` (one row each, same domain), ``agw`` (its one row, same domain, with mINP), None (no
    paper number).

    ``ranking`` (an evaluation variant's "f_t Euclidean", "f_i cosine", ...) looks up Table 2,
    which has numbers only for the BNNeck model without center loss, same domain; a ranking ending
    in " + sggnn" (re-scored with SGGNN at its default options) gets SGGNN's Market numbers,
    whatever the run's base and tricks (the paper's base is its own Siamese ResNet-50).
    None where the paper has no such number: synthetic data, a dataset other than Market/Duke, a
    trick set that is no row of Tables 1/3, or a metric other than R1/mAP (re-ranked: all tricks only).
    """
    if synthetic or system is None:
        return None
    src, dst = paper_dataset(train), paper_dataset(test)
    if src is None or dst is None:
        return None
    key = frozenset(tricks)
    rerank = metric.startswith(RERANK_PREFIX)
    base_metric = metric[len(RERANK_PREFIX):] if rerank else metric
    if base_metric not in _INDEX:
        return None
    i = _INDEX[base_metric]
    if ranking is not None and ranking.endswith(SGGNN_RANKING_SUFFIX):
        # The paper's whole system (its own Siamese ResNet-50 base + SGGNN) against this run + sggnn.
        row = SGGNN.get(src)
        return row[i] if row and i <= 1 and src == dst and not rerank else None
    if system == "agw":
        row_agw = AGW.get(src)
        return row_agw[i] if row_agw and src == dst and not rerank and ranking is None else None
    if i > 1:
        return None  # mINP: only AGW publishes it
    if system == "mgn":
        row = (MGN_RERANK if rerank else MGN).get(src)
        return row[i] if row and src == dst and not key and ranking is None else None
    if system == "mancs":
        row = None if rerank else MANCS.get(src)
        return row[i] if row and src == dst and not key and ranking is None else None
    if system == "spreid":
        row = SPREID.get(src)
        return row[i] if row and src == dst and not rerank and ranking is None else None
    if system != "bot":
        return None
    if ranking is not None:
        row2 = TABLE2.get(ranking)
        return row2[src][i] if row2 and src == dst and not rerank and key == TABLE2_TRICKS else None
    if src == dst:
        if rerank:
            return TABLE1_RERANK[src][i] if key == ALL_TRICKS else None
        row = TABLE1.get(key)
        return row[src][i] if row else None
    if rerank:
        return None
    row3 = TABLE3.get(key)
    return row3[(src, dst)][i] if row3 else None
