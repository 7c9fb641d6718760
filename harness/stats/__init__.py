"""Statistics for comparing runs: paired t intervals over seeds and paired bootstrap over queries.

Pure numpy/scipy functions (no I/O, no torch); see ``paired`` for the methods and references.
``factorial`` (import it directly) holds the two-level designs, their alias structure, effects and
Shapley values of ``ablate --mode factorial|fractional``.
"""

from reidbench.harness.stats.paired import (BOOTSTRAP_METHOD, DEFAULT_RESAMPLES, T_METHOD, Interval,
                                            metric_from_per_query, paired_bootstrap, paired_t_interval)

__all__ = ["BOOTSTRAP_METHOD", "DEFAULT_RESAMPLES", "Interval", "T_METHOD", "metric_from_per_query",
           "paired_bootstrap", "paired_t_interval"]
