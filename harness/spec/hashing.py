"""Identities: the run hash (what was trained) and the evaluation key (how a run was scored).

Run hash = sha256 over canonical JSON of
``{"schema": 2, "spec": <hashed fields that differ from their defaults>, "data": {"train": <fingerprint>},
"tricks": {name: version}}``, plus ``"weights": <digest>`` for a pretrained run.

- Only fields that differ from their defaults enter, at every level (sections, loss terms,
  component options), so a field added later with a default-off value never changes the hash of
  a spec that does not set it. The corollary: **never change an existing field's default** —
  add a new field instead.
- Fields marked ``metadata={"hash": False}`` never enter (checkpoint frequency, the test sets,
  the ``eval`` section, the training set's *name*); runtime options (device, output folder,
  loader workers, data paths) are not in the spec at all.
- The training data enters as its fingerprint (``harness/data/fingerprint.py``): a regenerated
  synthetic set or another folder under the same name is another run.
- Trick versions always enter, looked up in the trick registry; an unknown trick is an error.
- A run that pools with part masks (``data.masks`` set) also records the mask provider's version
  under ``data.masks`` (``harness/data/masks.py``: ``oracle-v1``, ``stripes-v1``, the folder), so
  regenerated masks are a new run; a run without masks has no such entry.
- A pretrained run (``model.pretrained``) enters the digest of the backbone weights it starts
  from (``models/weights_digest.py``: sha256 over the tensors as loaded, classifier keys left
  out), resolved by the caller with ``models.weights.weights_identity`` exactly as the run will
  load them: two installs that start MobileNetV2 from different ImageNet weights never share a
  cached run. Runs without pretraining have no such entry, so their hashes are what they were
  before weights entered; callers without access to the weights (unit tests) pass None and get
  the hash without the entry.

Evaluation key = sha256 over ``{"test": <test-set fingerprint>, "settings": <non-default
evaluation settings>}``: the same settings on the same test data are the same evaluation.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

from reidbench.harness.spec.sections import RunSpec, SpecError, canonical_json, to_jsonable

HASH_SCHEMA = 2


def training_identity(spec: RunSpec, trick_versions: Mapping[str, int] | None = None,
                      train_fingerprint: str | None = None, weights: str | None = None) -> dict[str, Any]:
    """The plain data the run hash is computed over (shown by ``runs show`` and ``--dry-run``).

    ``train_fingerprint`` None (callers without access to the data, e.g. unit tests) hashes the
    dataset name instead, marked as such. ``weights``: the pretrained weights' digest
    (``models.weights.weights_identity``); it enters only when ``spec.model.pretrained``.
    """
    versions = dict(trick_versions) if trick_versions is not None else _registered_versions(spec.tricks)
    missing = sorted(set(spec.tricks) - set(versions))
    if missing:
        raise SpecError(f"tricks: {', '.join(missing)} not registered; `reidbench tricks` lists the valid names")
    data = {"train": train_fingerprint} if train_fingerprint else {"train_name": spec.data.train}
    if spec.data.masks:
        from reidbench.harness.data.masks import masks_identity  # pure: no torch, no I/O

        data["masks"] = masks_identity(spec.data.masks)
    payload = {
        "schema": HASH_SCHEMA,
        "spec": to_jsonable(spec, prune_defaults=True, hashed_only=True),
        "data": data,
        "tricks": {name: int(versions[name]) for name in sorted(spec.tricks)},
    }
    if weights is not None and spec.model.pretrained:
        payload["weights"] = weights
    return payload


def run_hash(spec: RunSpec, trick_versions: Mapping[str, int] | None = None,
             train_fingerprint: str | None = None, weights: str | None = None) -> str:
    """Hex sha256 identifying the training ``spec`` describes (see the module doc)."""
    payload = training_identity(spec, trick_versions, train_fingerprint, weights)
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def evaluation_key(settings: Mapping[str, Any], test_fingerprint: str | None) -> str:
    """Identity of one evaluation of a run: its test data + its (non-default) settings."""
    payload = {"test": test_fingerprint, "settings": dict(settings)}
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()[:32]


def short_hash(full_hash: str, length: int = 10) -> str:
    return full_hash[:length]


def _registered_versions(names: tuple[str, ...]) -> dict[str, int]:
    from reidbench.tricks import trick_versions  # lazy: tricks import the spec package

    return dict(trick_versions(names))
