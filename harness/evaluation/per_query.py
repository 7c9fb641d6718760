"""Per-query results of an evaluation: AP, INP and first-match rank of every query, stored compactly.

An evaluation's per-query results are what paired statistics need (a bootstrap over query
identities, "which queries did run B improve?"). They travel inside the evaluation record as text
(``"b64npz:" + base64 of a compressed npz``) and live in the results database as bytes in
``rb_query_scores`` (one row per evaluation): at Market size (3,368 queries) about 30 KB.

Arrays, one entry per query in the test set's query order:

- ``q_pids`` int32: the query's identity (the bootstrap resamples identities);
- ``ap``, ``inp`` float32: average precision and inverse negative penalty (NaN when invalid);
- ``first_match_rank`` int32: 1-based rank of the first true match after junk removal (0 when invalid);
- ``valid`` bool: the query has a true match in another camera (the protocol averages over these).
"""

from __future__ import annotations

import base64
import io
from typing import Any, Mapping

import numpy as np

PREFIX = "b64npz:"
FIELDS = {"q_pids": np.int32, "ap": np.float32, "inp": np.float32, "first_match_rank": np.int32, "valid": np.bool_}


def pack(per_query: Mapping[str, Any], q_pids: Any) -> bytes:
    """The protocol's per-query arrays + the query identities → compressed npz bytes."""
    arrays = {"q_pids": np.asarray(q_pids), **{k: np.asarray(per_query[k]) for k in FIELDS if k in per_query}}
    checked = _checked(arrays, "per-query results")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **checked)
    return buffer.getvalue()


def unpack(data: bytes) -> dict[str, np.ndarray]:
    """npz bytes → the arrays of ``FIELDS`` (ValueError naming what is wrong when they are not)."""
    try:
        with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"per-query results are not a readable npz ({err})") from None
    return _checked(arrays, "stored per-query results")


def to_text(data: bytes) -> str:
    return PREFIX + base64.b64encode(data).decode("ascii")


def from_text(text: str) -> bytes:
    if not isinstance(text, str) or not text.startswith(PREFIX):
        raise ValueError(f"per-query results must be text starting with {PREFIX!r}")
    try:
        return base64.b64decode(text[len(PREFIX):].encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as err:
        raise ValueError(f"per-query results are not valid base64 ({err})") from None


def _checked(arrays: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    missing = [k for k in FIELDS if k not in arrays]
    if missing:
        raise ValueError(f"{what} lack {', '.join(missing)}; needed: {', '.join(FIELDS)}")
    lengths = {k: int(np.asarray(arrays[k]).reshape(-1).shape[0]) for k in FIELDS}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{what} have arrays of different lengths: {lengths}")
    return {k: np.asarray(arrays[k]).reshape(-1).astype(dtype, copy=False) for k, dtype in FIELDS.items()}
