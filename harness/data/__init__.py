"""reidbench.harness.data: dataset parsers, synthetic benchmark, sampler and transforms."""
