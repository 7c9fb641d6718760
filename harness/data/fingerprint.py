"""Dataset identity ("fingerprints"): what a run hash and an evaluation say they were given.

A dataset's *name* is not its identity: a regenerated synthetic set or another folder passed as
``--data market=...`` must not be served a cached result of different data. A fingerprint has one
digest for the training split and one for query + gallery, so a changed test set is told apart
from a changed training set.

* Synthetic datasets (``synth-a``, ...) are fingerprinted from their recipe alone
  (``DEFAULT_DATASETS[name]`` and ``GENERATOR_VERSION``): the generator is deterministic, and
  nothing is generated, so ``--dry-run`` stays instant.
* Folders are parsed with the format guessed from the name, and each split's digest is a sha256
  over sorted lines ``relpath\\tsize_bytes\\tpid\\tcamid`` (test lines start with the split name).
  Paths are relative to the dataset root, so moving the folder keeps its fingerprint; renaming,
  adding, removing, resizing or relabelling an image changes it. Pixels are not read: hashing
  tens of thousands of images on every run would cost more than the runs it protects.

Folder digests are cached in ``<cache_root()>/fingerprints.json`` keyed by resolved root and
format, with a stamp: ``st_mtime_ns`` of the root, of every folder holding records and of the
MSMT17 list files. Directory mtimes change when entries are added, removed or renamed, not when a
file is rewritten in place under the same name; such an edit is seen once anything else in its
folder changes, or with ``folder_fingerprint(..., use_cache=False)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

if TYPE_CHECKING:
    from reidbench.harness.data.formats import ImageRecord, ReidDataset

CACHE_FILE = "fingerprints.json"
# Bump when the digest recipe changes: cache entries of another version are recomputed.
FINGERPRINT_VERSION = 1
DIGEST_HEX_CHARS = 24
SYNTH_PREFIX = "synth:"
FOLDER_PREFIX = "dir:"
# A stamp younger than this when its digest was computed is not cached: directory mtimes come
# from a coarse clock (a few ms), so an edit right after the stamp was taken could keep it.
RACY_WINDOW_NS = 2_000_000_000


@dataclass(frozen=True)
class DataFingerprint:
    """Identity of one dataset; equal fingerprints mean equal data (``detail`` is not compared)."""

    name: str  # dataset name as the user gave it (synth-a, market, ...)
    kind: str  # "synthetic" | "folder"
    train: str  # identity of the training split: "synth:<24 hex>" or "dir:<24 hex>"
    test: str  # identity of query + gallery, same form
    # What went in (recipe or root/format/counts); the root differs between copies of one folder.
    detail: dict = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "train": self.train, "test": self.test,
                "detail": dict(self.detail)}


def _digest(prefix: str, lines: Iterable[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return prefix + h.hexdigest()[:DIGEST_HEX_CHARS]


# ----------------------------------------------------------------------------- synthetic


def synthetic_fingerprint(name: str) -> DataFingerprint:
    """Fingerprint of embedded dataset ``name`` from its recipe; generates nothing."""
    # Module attributes read at call time, so a patched recipe or version is seen.
    from reidbench.harness.data.synth import cache as cache_mod
    from reidbench.harness.data.synth import generate as generate_mod

    if name not in cache_mod.DEFAULT_DATASETS:
        raise ValueError(f"unknown synthetic dataset {name!r}; valid: {', '.join(cache_mod.DEFAULT_DATASETS)}")
    cfg = cache_mod.DEFAULT_DATASETS[name]
    detail = {
        "generator_version": generate_mod.GENERATOR_VERSION,
        "domain": cfg.domain,
        "num_ids": int(cfg.num_ids),
        "seed": int(cfg.seed),
        "image_size": [int(cfg.image_size[0]), int(cfg.image_size[1])],
    }
    recipe = json.dumps(detail, sort_keys=True)
    return DataFingerprint(name=name, kind="synthetic",
                           train=_digest(SYNTH_PREFIX, ["train", recipe]),
                           test=_digest(SYNTH_PREFIX, ["test", recipe]),
                           detail=detail)


# ----------------------------------------------------------------------------- folders


def _record_line(record: "ImageRecord", base: str) -> str:
    rel = Path(os.path.relpath(record.path, base)).as_posix()
    size_bytes = os.stat(record.path).st_size
    # orig_pid is the pid on disk; train pids are relabelled 0..N-1, which would hide some changes.
    return f"{rel}\t{size_bytes}\t{record.orig_pid}\t{record.camid}"


def split_digests(dataset: "ReidDataset") -> tuple[str, str]:
    """(train, test) digests of a parsed dataset; paths taken relative to ``dataset.root``."""
    base = dataset.root
    train = sorted(_record_line(r, base) for r in dataset.train)
    test = sorted(f"{split}\t{_record_line(r, base)}"
                  for split in ("query", "gallery") for r in getattr(dataset, split))
    return _digest(FOLDER_PREFIX, train), _digest(FOLDER_PREFIX, test)


def _stamp_paths(dataset: "ReidDataset", parse_root: str) -> list[str]:
    """Paths whose mtimes make the stamp, relative to ``parse_root`` (POSIX separators)."""
    from reidbench.harness.data.formats import MSMT_LISTS

    folders = {parse_root, dataset.root}
    for split in ("train", "query", "gallery"):
        folders.update(os.path.dirname(r.path) for r in getattr(dataset, split))
    paths = set(folders)
    paths.update(p for p in (os.path.join(dataset.root, n) for n in MSMT_LISTS.values()) if os.path.isfile(p))
    return sorted(Path(os.path.relpath(p, parse_root)).as_posix() for p in paths)


def _read_stamp(root: Path, rel_paths: Iterable[str]) -> dict[str, int] | None:
    """``{relpath: st_mtime_ns}``; None when a path is gone (the entry is then stale)."""
    stamp = {}
    for rel in rel_paths:
        try:
            stamp[rel] = os.stat(root / rel).st_mtime_ns
        except OSError:
            return None
    return stamp


def _cache_path() -> Path:
    from reidbench.harness.data.synth.cache import cache_root

    return cache_root() / CACHE_FILE


def _load_cache(path: Path) -> dict[str, dict]:
    """Entries of the cache file; a missing, unreadable or foreign file reads as empty."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != FINGERPRINT_VERSION:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _valid_entry(entry: object, root: Path) -> dict | None:
    if not isinstance(entry, dict):
        return None
    stamp, train, test = entry.get("stamp"), entry.get("train"), entry.get("test")
    if not (isinstance(stamp, dict) and stamp and isinstance(train, str) and isinstance(test, str)):
        return None
    if not isinstance(entry.get("counts"), dict):
        return None
    return entry if _read_stamp(root, stamp) == stamp else None


def _store_entry(path: Path, key: str, entry: dict) -> None:
    """Add ``entry`` under an exclusive lock and replace the file in one step; never raises."""
    from reidbench.harness.data.synth.cache import _exclusive_lock

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(path.parent / f".{CACHE_FILE}.lock"):
            entries = _load_cache(path)  # re-read under the lock: keep other processes' entries
            entries[key] = entry
            # Drop entries of folders that are gone (tests and scratch copies would pile up).
            entries = {k: v for k, v in entries.items()
                       if isinstance(v, dict) and os.path.isdir(str(v.get("root", "")))}
            tmp = path.parent / f".{CACHE_FILE}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                tmp.write_text(json.dumps({"version": FINGERPRINT_VERSION, "entries": entries},
                                          indent=1, sort_keys=True), encoding="utf-8")
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only or full cache folder costs a recomputation next time, not the run


def folder_fingerprint(name: str, root: str | os.PathLike, format: str, *,
                       dataset: "ReidDataset | None" = None, use_cache: bool = True) -> DataFingerprint:
    """Fingerprint of the ``format`` dataset in folder ``root``, cached per folder (module doc).

    ``dataset``: the same folder already parsed by the caller, used instead of parsing it again
    when the cache misses. ``use_cache=False`` recomputes (and refreshes the cache entry).
    """
    from reidbench.harness.data import formats

    resolved = Path(root).expanduser().resolve()
    if not resolved.is_dir():
        raise FileNotFoundError(f"dataset root {root}: no such folder")
    key = f"{format}:{resolved}"
    cache_file = _cache_path()
    entry = _valid_entry(_load_cache(cache_file).get(key), resolved) if use_cache else None
    if entry is None:
        started_ns = time.time_ns()
        if dataset is None:
            # strict=False: a broken dataset is refused when loaded; its identity is still defined.
            dataset = formats.load_dataset(resolved, format, name=name, strict=False)
            parse_root = str(resolved)
        else:
            parse_root = str(Path(root).expanduser())
        stamp_paths = _stamp_paths(dataset, parse_root)
        stamp = _read_stamp(resolved, stamp_paths)
        train, test = split_digests(dataset)
        entry = {"root": str(resolved), "format": format, "stamp": stamp, "train": train, "test": test,
                 "counts": {s: len(getattr(dataset, s)) for s in ("train", "query", "gallery")}}
        if stamp and max(stamp.values()) < started_ns - RACY_WINDOW_NS:
            _store_entry(cache_file, key, entry)
    detail = {"root": str(resolved), "format": format, "counts": dict(entry["counts"])}
    return DataFingerprint(name=name, kind="folder", train=entry["train"], test=entry["test"], detail=detail)


# ----------------------------------------------------------------------------- by name


def dataset_fingerprint(name: str, data_paths: Mapping[str, str]) -> DataFingerprint:
    """Fingerprint of dataset ``name``, resolved as ``named.dataset_root`` does; never generates."""
    from reidbench.harness.data.formats import guess_format
    from reidbench.harness.data.synth import cache as cache_mod

    if name in data_paths:
        root = Path(data_paths[name]).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"--data {name}={data_paths[name]}: no such folder")
        return folder_fingerprint(name, root, guess_format(name))
    if name in cache_mod.DEFAULT_DATASETS:
        return synthetic_fingerprint(name)
    known = sorted(set(cache_mod.DEFAULT_DATASETS) | set(data_paths))
    raise ValueError(
        f"dataset {name!r} is not known: give its folder with --data {name}=PATH, or use one of {', '.join(known)}"
    )
