"""How datasets, test-set groups and metrics are named in tables and figures. Pure, no I/O."""

from __future__ import annotations

import re

# Canonical key (lower case, alphanumerics only) → (full name, short name) of the well-known benchmarks.
_KNOWN: dict[str, tuple[str, str]] = {
    "market": ("Market-1501", "Market"),
    "market1501": ("Market-1501", "Market"),
    "duke": ("DukeMTMC-reID", "Duke"),
    "dukemtmc": ("DukeMTMC-reID", "Duke"),
    "dukemtmcreid": ("DukeMTMC-reID", "Duke"),
    "msmt": ("MSMT17", "MSMT17"),
    "msmt17": ("MSMT17", "MSMT17"),
    "cuhk03": ("CUHK03-NP", "CUHK03"),
    "cuhk03np": ("CUHK03-NP", "CUHK03"),
}

METRIC_NAMES: tuple[str, ...] = ("R1", "R5", "R10", "mAP", "mINP")
RERANK_PREFIX = "rerank_"


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def dataset_title(name: str) -> str:
    """``market`` → ``Market-1501``; unknown names (``synth-a``, ``my_set``) stay as they are."""
    return _KNOWN.get(_key(name), (name, name))[0]


def dataset_short(name: str) -> str:
    """``market`` → ``Market``: the form used on either side of the arrow of a cross-domain group."""
    return _KNOWN.get(_key(name), (name, name))[1]


def group_label(train: str, test: str) -> str:
    """Column-group title: the test set's name same-domain, ``Market→Duke`` cross-domain."""
    if train == test:
        return dataset_title(test)
    return f"{dataset_short(train)}→{dataset_short(test)}"


def paper_dataset(name: str) -> str | None:
    """``market*`` → ``market``, ``duke*`` → ``duke`` (the datasets the paper reports); else None."""
    low = name.lower()
    for key in ("market", "duke"):
        if low.startswith(key):
            return key
    return None


def parse_metrics(text: str) -> tuple[str, ...]:
    """``"r1,map,minp"`` → ``("R1", "mAP", "mINP")``; ``rerank_map`` → ``rerank_mAP``. Unknown names fail."""
    by_lower = {m.lower(): m for m in METRIC_NAMES}
    out: list[str] = []
    for raw in text.split(","):
        item = raw.strip().lower()
        if not item:
            continue
        prefix = ""
        for p in (RERANK_PREFIX, "rerank-", "rr-", "rr_"):
            if item.startswith(p):
                prefix, item = RERANK_PREFIX, item[len(p):]
                break
        if item not in by_lower:
            valid = ", ".join(m.lower() for m in METRIC_NAMES)
            raise ValueError(f"--metrics: {raw.strip()!r} is not a metric; valid: {valid} (rerank_<name> for re-ranked)")
        name = prefix + by_lower[item]
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError("--metrics is empty; give e.g. r1,map")
    return tuple(out)


def metric_label(metric: str) -> str:
    """``R1`` → ``R1``; ``rerank_mAP`` → ``mAP (RR)`` (RR = with k-reciprocal re-ranking)."""
    if metric.startswith(RERANK_PREFIX):
        return f"{metric[len(RERANK_PREFIX):]} (RR)"
    return metric
