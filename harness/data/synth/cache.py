"""Embedded default datasets: generated on first use into a cache folder and reused afterwards.

Folder: ``$REIDBENCH_DATA`` or ``~/.cache/reidbench/``, one subfolder per dataset name and
generator version (``synth-a-v1``), so a new ``GENERATOR_VERSION`` regenerates instead of
reusing stale pixels. Generation writes into a hidden temporary folder and renames it into place
in one step, under an exclusive lock: a killed run never leaves a folder that looks complete,
and two processes asking at once generate it once. Folders of older versions are left alone
(another checkout may still use them); delete them by hand to reclaim space.
"""

from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import generate as _generate
from .domains import get_domain

ENV_VAR = "REIDBENCH_DATA"


@dataclass(frozen=True)
class DefaultDataset:
    """How an embedded dataset is generated."""

    domain: str
    num_ids: int
    seed: int = 0
    image_size: tuple[int, int] = (128, 64)  # (height, width)


# Sized for the CPU profile: ~180 train identities x ~14 images (~2,500 train images), ~180 test
# identities (~700 queries, ~2,500 gallery images including distractors and junk).
DEFAULT_DATASETS: dict[str, DefaultDataset] = {
    "synth-a": DefaultDataset(domain="A", num_ids=360),
    "synth-b": DefaultDataset(domain="B", num_ids=340),
}


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$REIDBENCH_DATA``, else ``~/.cache/reidbench``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "reidbench"


def _config(name: str, num_ids: int | None, image_size: tuple[int, int] | None) -> tuple[DefaultDataset, str]:
    """The dataset's recipe (with overrides) and the name of its cache folder."""
    if name not in DEFAULT_DATASETS:
        raise ValueError(f"unknown synthetic dataset {name!r}; valid: {', '.join(DEFAULT_DATASETS)}")
    base = DEFAULT_DATASETS[name]
    cfg = DefaultDataset(
        domain=base.domain,
        num_ids=base.num_ids if num_ids is None else int(num_ids),
        seed=base.seed,
        image_size=base.image_size if image_size is None else (int(image_size[0]), int(image_size[1])),
    )
    folder = f"{name}-v{_generate.GENERATOR_VERSION}"
    if cfg != base:  # overrides (tests, quick trials) never share a folder with the real default
        folder += f"-{cfg.num_ids}ids-{cfg.image_size[0]}x{cfg.image_size[1]}"
    return cfg, folder


def _is_complete(folder: Path, cfg: DefaultDataset) -> bool:
    meta = _generate.read_meta(folder)
    return (
        meta is not None
        and meta.get("generator_version") == _generate.GENERATOR_VERSION
        and meta.get("domain") == get_domain(cfg.domain).name
        and meta.get("seed") == cfg.seed
        and meta.get("num_ids") == cfg.num_ids
        and tuple(meta.get("image_size", ())) == tuple(cfg.image_size)
    )


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive advisory lock on ``path`` (released by the OS if the process dies).

    Yields whether a lock is really held: without ``fcntl`` (Windows) it is not, and callers
    rely on the atomic rename alone.
    """
    try:
        import fcntl
    except ImportError:
        yield False
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def default_dataset_path(name: str, cache_dir: str | Path | None = None, *, num_ids: int | None = None,
                         image_size: tuple[int, int] | None = None) -> Path:
    """Where ``ensure_default_dataset`` keeps ``name`` (whether generated yet or not)."""
    _, folder = _config(name, num_ids, image_size)
    return cache_root(cache_dir) / folder


def ensure_default_dataset(name: str, cache_dir: str | Path | None = None, progress: bool = True, *,
                           num_ids: int | None = None, image_size: tuple[int, int] | None = None) -> Path:
    """Folder of embedded dataset ``name`` (``synth-a``, ``synth-b``), generating it on first use.

    ``num_ids`` / ``image_size`` override the default recipe (for tests and quick trials); the
    result then lives in its own folder.
    """
    cfg, folder = _config(name, num_ids, image_size)
    root = cache_root(cache_dir)
    final = root / folder
    if _is_complete(final, cfg):
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root / f".{folder}.lock") as locked:
        if _is_complete(final, cfg):  # another process finished it while we waited
            return final
        if locked:  # temporary folders of killed runs; only safe to remove while holding the lock
            for leftover in root.glob(f".{folder}.tmp-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        # os.mkdir honours the umask (mkdtemp would make the dataset private to this user)
        tmp = root / f".{folder}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        os.mkdir(tmp)
        try:
            _generate.generate_domain(tmp, domain=cfg.domain, num_ids=cfg.num_ids, seed=cfg.seed,
                                      image_size=cfg.image_size, progress=progress)
            if _is_complete(final, cfg):  # lost a lock-free race: keep the winner's folder
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            if final.exists():  # incomplete or mismatching leftover under the final name
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if _is_complete(final, cfg):  # the rename raced with another process: theirs is whole
                return final
            raise
    return final


def list_datasets(cache_dir: str | Path | None = None) -> list[dict]:
    """One entry per embedded dataset: name, domain, generated or not, path, counts (if generated)."""
    items = []
    for name in DEFAULT_DATASETS:
        cfg, folder = _config(name, None, None)
        path = cache_root(cache_dir) / folder
        generated = _is_complete(path, cfg)
        meta = _generate.read_meta(path) if generated else None
        items.append({
            "name": name,
            "domain": cfg.domain,
            "description": get_domain(cfg.domain).description,
            "num_ids": cfg.num_ids,
            "image_size": list(cfg.image_size),
            "generator_version": _generate.GENERATOR_VERSION,
            "generated": generated,
            "path": str(path),
            "counts": meta["counts"] if meta else None,
        })
    return items
