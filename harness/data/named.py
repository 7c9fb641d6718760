"""Dataset names → folders and parsed datasets.

A name is resolved in this order: a ``--data NAME=PATH`` given by the user (real data, format
guessed from the name), then the embedded synthetic datasets (generated on first use into the
cache folder). Provenance (synthetic or real, root, fingerprint) travels with the dataset into
the store; see ``fingerprint.py`` for what identifies a dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

SYNTHETIC_NAMES = ("synth-a", "synth-b")


@dataclass(frozen=True)
class DataProvenance:
    name: str
    root: str
    format: str
    synthetic: bool
    # DataFingerprint.to_dict() of the data that was loaded; None where nobody computed it.
    fingerprint: dict | None = field(default=None, hash=False)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "root": self.root, "format": self.format, "synthetic": self.synthetic,
                "fingerprint": self.fingerprint}


def _synthetic_names() -> tuple[str, ...]:
    from reidbench.harness.data.synth import DEFAULT_DATASETS

    return tuple(DEFAULT_DATASETS)


def dataset_root(name: str, data_paths: Mapping[str, str], progress: bool = True) -> Path:
    """Folder of dataset ``name``; synthetic defaults are generated on first use."""
    if name in data_paths:
        root = Path(data_paths[name]).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"--data {name}={data_paths[name]}: no such folder")
        return root
    synthetic = _synthetic_names()
    if name in synthetic:
        from reidbench.harness.data.synth import ensure_default_dataset

        return Path(ensure_default_dataset(name, progress=progress))
    known = sorted(set(synthetic) | set(data_paths))
    raise ValueError(
        f"dataset {name!r} is not known: give its folder with --data {name}=PATH, or use one of {', '.join(known)}"
    )


def provenance(name: str, data_paths: Mapping[str, str], root: Path) -> DataProvenance:
    from reidbench.harness.data.formats import guess_format

    synthetic = name not in data_paths and name in _synthetic_names()
    fmt = "market" if synthetic else guess_format(name)
    return DataProvenance(name=name, root=str(root), format=fmt, synthetic=synthetic)


def load_named_dataset(name: str, data_paths: Mapping[str, str], progress: bool = True):  # -> (ReidDataset, DataProvenance)
    """Parse dataset ``name`` (see module doc) and say where it came from."""
    from reidbench.harness.data.fingerprint import folder_fingerprint, synthetic_fingerprint
    from reidbench.harness.data.formats import load_dataset

    root = dataset_root(name, data_paths, progress=progress)
    prov = provenance(name, data_paths, root)
    dataset = load_dataset(root, prov.format, name=name)
    if prov.synthetic:  # same recipe fingerprint as `dataset_fingerprint` gives before generation
        fingerprint = synthetic_fingerprint(name)
    else:  # reuse the parse above when the fingerprint cache misses
        fingerprint = folder_fingerprint(name, root, prov.format, dataset=dataset)
    return dataset, replace(prov, fingerprint=fingerprint.to_dict())


def describe_datasets(data_paths: Mapping[str, str]) -> list[str]:
    """Lines for ``reidbench data list``."""
    from reidbench.harness.data.formats import guess_format
    from reidbench.harness.data.synth import list_datasets

    lines = [f"{'name':<12} {'kind':<10} {'status':<14} path"]
    for item in list_datasets():
        status = "generated" if item.get("generated") else "on first use"
        lines.append(f"{item['name']:<12} {'synthetic':<10} {status:<14} {item.get('path', '')}")
    for name, path in data_paths.items():
        exists = Path(path).expanduser().is_dir()
        lines.append(f"{name:<12} {guess_format(name):<10} {'found' if exists else 'MISSING':<14} {path}")
    return lines
