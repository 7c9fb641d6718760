"""harness/evaluation: ``features`` (extraction, npz files), ``protocol`` (distances, Market
protocol, per-query scores, ``score``), ``rerank`` (k-reciprocal re-ranking).

Nothing is imported here: the CLI imports these lazily, and torch is slow to load.
"""
