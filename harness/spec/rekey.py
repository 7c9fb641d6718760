"""A stored run's identity recomputed with today's code (used by the store's schema-4 upgrade).

``rekey_stored_run`` takes what the database holds about a run (its spec, training-data
fingerprint, ``model_info`` and when it started) and returns today's run hash:

- the spec is read with today's loader: ``spec_from_stored`` where it exists (lenient: a stored
  field that no component reads is dropped, so it stops splitting one training into two
  identities), else ``spec_from_dict``;
- the data enters as the stored fingerprint;
- a pretrained run enters the digest of the weights it *recorded*: ``model_info.pretrained_digest``
  when the run wrote one, else the digest of its ``pretrained_source`` found again on this machine
  (``models.weights.recorded_digest``: the same pinned package version, the same cache entry or
  file, unmodified since the run started). Never today's weights: they may differ.

A run whose identity cannot be established raises ``ValueError`` with the reason (its weights are
not on this machine any more, its spec does not load, or today's code does not reproduce its
stored hash from its stored spec — a trick version changed since, say): the upgrade keeps it
under its old hash and reports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence

from reidbench.harness.spec.hashing import run_hash


@dataclass(frozen=True)
class RekeyedRun:
    run_hash: str
    spec: dict[str, Any]
    weights: str | None  # the digest that entered the hash (None: not pretrained)


def _loaders() -> tuple[Any, Any]:
    from reidbench.harness.spec import loading

    strict = loading.spec_from_dict
    return getattr(loading, "spec_from_stored", strict), strict


def _recorded_weights(model_info: Mapping[str, Any] | None, started_at: datetime | None) -> str:
    from reidbench.models.weights import recorded_digest

    info = model_info or {}
    digest = info.get("pretrained_digest")
    if isinstance(digest, str) and digest:
        return digest
    source = info.get("pretrained_source")
    if not isinstance(source, str) or not source:
        raise ValueError("no pretrained weights recorded (the run never built its model)")
    try:
        return recorded_digest(source, not_after=started_at.timestamp() if started_at is not None else None)
    except LookupError as error:
        raise ValueError(f"its weights {source} are not on this machine ({error})") from None


def rekey_stored_run(*, run_hash: str, spec: Mapping[str, Any], train_fingerprint: str | None,
                     model_info: Mapping[str, Any] | None, started_at: datetime | None = None) -> RekeyedRun:
    """Today's identity of a stored run (see the module doc); ``ValueError`` when it cannot be had."""
    lenient, strict = _loaders()
    new = lenient(dict(spec))
    weights = _recorded_weights(model_info, started_at) if new.model.pretrained else None
    # Only what this code adds may change a hash: where today's strict loader still reads the stored
    # spec as it is, it must reproduce the stored hash (with or without the recorded weights).
    try:
        as_stored = strict(dict(spec))
    except ValueError:
        as_stored = None  # a field today's loader refuses (the lenient one dropped it): that is the change
    if as_stored is not None and run_hash not in {run_hash_of(as_stored, train_fingerprint, None),
                                                  run_hash_of(as_stored, train_fingerprint, weights)}:
        raise ValueError("today's code does not reproduce its stored hash from its stored spec (a trick version "
                         "or the data fingerprint changed since)")
    return RekeyedRun(run_hash_of(new, train_fingerprint, weights), new.to_dict(), weights)


def run_hash_of(spec: Any, train_fingerprint: str | None, weights: str | None) -> str:
    return run_hash(spec, None, train_fingerprint, weights)


def rekeyed_ablation_name(*, name: str, base: str, mode: str, meta: Mapping[str, Any],
                          old_member_hashes: Sequence[str], new_member_hashes: Sequence[str]) -> str | None:
    """The name today's ``ablate`` gives a stored ablation whose members were re-keyed, or None when its
    stored name is not the one its old member hashes give (then it keeps its name)."""
    from reidbench.harness.ablation.plan import ablation_name

    variants = [v["name"] for v in (meta.get("variants") or []) if isinstance(v, Mapping) and v.get("name")]
    if ablation_name(base, mode, list(old_member_hashes), variants) != name:
        return None
    return ablation_name(base, mode, list(new_member_hashes), variants)
