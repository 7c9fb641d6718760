"""The digest of a backbone's pretrained weights: part of a run's identity (harness/spec/hashing.py).

``state_dict_digest`` = ``"sha256:"`` + sha256 over the tensors *as the backbone receives them*:
after the unwrapping and the key renames of ``models/pretrained.py`` (``state_dict``/``model``
wrappers, ``module.`` prefixes, the pip packages' key layouts), in sorted key order, each as
``key \\t dtype \\t shape \\n`` followed by its raw bytes (C order, CPU). Left out: ImageNet
classifier keys (``fc.``, ``classifier.``, … — never loaded into a backbone) and BatchNorm's
``num_batches_tracked`` counters (absent from older checkpoints; they do not change outputs).
So the same weights stored as ``.pth`` or ``.safetensors``, from torchvision's file or timm's
hub copy, have the same digest, and any changed tensor value changes it.

Digests are cached per file in ``<REIDBENCH_DATA or ~/.cache/reidbench>/weights-digests.json``,
keyed by (how the file is read, resolved path) and valid while (size, mtime) are unchanged, the
way ``harness/data/fingerprint.py`` caches folder digests: hashing ResNet-50 takes about a second,
a plan may need it for every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Callable, Mapping

import torch

CLASSIFIER_PREFIXES: tuple[str, ...] = ("fc.", "classifier.", "_fc.", "head.fc.", "last_linear.")
DIGEST_PREFIX = "sha256:"
DIGEST_VERSION = 1  # bump when the recipe above changes: cached digests of another version are recomputed
CACHE_FILE = "weights-digests.json"
# A file modified this recently is not cached: mtimes come from a coarse clock.
RACY_WINDOW_NS = 2_000_000_000

_MEMO: dict[tuple[str, str, int, int], str] = {}


def digested_keys(keys: object) -> list[str]:
    """The keys that enter the digest, sorted (see the module doc)."""
    return sorted(k for k in keys  # type: ignore[union-attr]
                  if not k.startswith(CLASSIFIER_PREFIXES) and not k.endswith("num_batches_tracked"))


def state_dict_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``sha256:<64 hex>`` of ``state_dict`` as defined in the module doc."""
    h = hashlib.sha256()
    for key in digested_keys(state_dict.keys()):
        tensor = state_dict[key].detach().to("cpu").contiguous()
        h.update(f"{key}\t{str(tensor.dtype).removeprefix('torch.')}\t{list(tensor.shape)}\n".encode("utf-8"))
        if tensor.numel():
            h.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return DIGEST_PREFIX + h.hexdigest()


def _cache_path() -> Path:
    # The folder every reidbench cache uses (datasets, fingerprints); imported lazily, it is light.
    from reidbench.harness.data.synth.cache import cache_root

    return cache_root() / CACHE_FILE


def _load(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != DIGEST_VERSION or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def _store(path: Path, key: str, entry: dict) -> None:
    """Add one entry under the cache's lock; a read-only cache folder only costs a recomputation."""
    from reidbench.harness.data.synth.cache import _exclusive_lock

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(path.parent / f".{CACHE_FILE}.lock"):
            entries = _load(path)
            entries[key] = entry
            entries = {k: v for k, v in entries.items() if isinstance(v, dict) and os.path.isfile(str(v.get("path")))}
            tmp = path.parent / f".{CACHE_FILE}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                tmp.write_text(json.dumps({"version": DIGEST_VERSION, "entries": entries}, indent=1, sort_keys=True),
                               encoding="utf-8")
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
    except OSError:
        pass


def file_digest(file: Path, reader: str, compute: Callable[[], str]) -> str:
    """The digest of ``file`` read by ``reader`` (a label for how its tensors are read and renamed),
    from the cache when the file's size and mtime are unchanged, else ``compute()`` (then cached)."""
    resolved = Path(file).expanduser().resolve()
    stat = resolved.stat()
    memo_key = (reader, str(resolved), stat.st_size, stat.st_mtime_ns)
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    key = f"{reader}:{resolved}"
    cache = _cache_path()
    entry = _load(cache).get(key)
    if (isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns
            and isinstance(entry.get("digest"), str) and entry["digest"].startswith(DIGEST_PREFIX)):
        digest = entry["digest"]
    else:
        digest = compute()
        if stat.st_mtime_ns < time.time_ns() - RACY_WINDOW_NS:
            _store(cache, key, {"path": str(resolved), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                "digest": digest})
    _MEMO[memo_key] = digest
    return digest
