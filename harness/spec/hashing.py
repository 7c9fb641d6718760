"""Run hash: sha256 over canonical JSON of {schema version, spec, applied trick versions}.

Runtime options (device, output folder, loader workers, data root paths) are not part of the
spec and so never change the hash; the git commit and library versions are recorded, not hashed.
"""

from __future__ import annotations

import hashlib
from typing import Mapping

from reidbench.harness.spec import SCHEMA_VERSION, RunSpec, canonical_json


def run_hash(spec: RunSpec, trick_versions: Mapping[str, int] | None = None) -> str:
    """Hex sha256 identifying the run ``spec`` describes.

    ``trick_versions`` maps each applied trick name to its version, so bumping a trick's version
    makes old cached runs stop matching. Names absent from the mapping hash with version 0.
    """
    versions = dict(trick_versions or {})
    payload = {
        "schema": SCHEMA_VERSION,
        "spec": spec.to_dict(),
        "tricks": {name: int(versions.get(name, 0)) for name in sorted(spec.tricks)},
    }
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def short_hash(full_hash: str, length: int = 10) -> str:
    return full_hash[:length]
