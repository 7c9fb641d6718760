"""harness/data/samplers."""
